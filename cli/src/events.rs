//! `berth events`: a readable live tail of the node's bus events.

use crate::node::{self, NodeState};
use berth_config::Paths;
use bus_schema::event::{matches, Event};
use std::collections::HashMap;
use std::path::PathBuf;

pub fn events(root: Option<PathBuf>, config: Option<PathBuf>, filters: Vec<String>, json: bool) -> anyhow::Result<()> {
    let cfg = node::load_config(&node::config_path(config))?;
    let paths = Paths::new(root.unwrap_or_else(|| cfg.data_root()));
    let text = std::fs::read_to_string(paths.run().join("node.json"))
        .map_err(|_| anyhow::anyhow!("no node is running on {}", paths.root().display()))?;
    let st: NodeState = serde_json::from_str(&text)?;
    let mut f: HashMap<String, Vec<String>> = HashMap::new();
    for x in filters {
        let (k, v) = x.split_once('=').ok_or_else(|| anyhow::anyhow!("bad filter {x:?}: use key=value"))?;
        if !bus_schema::event::FILTER_KEYS.contains(&k) {
            anyhow::bail!("invalid filter '{k}'");
        }
        f.entry(k.to_string()).or_default().push(v.to_string());
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let bus = node::connect_admin(&st.nats_url, &Some(paths.bus().join("creds")), &st.node).await?;
        let mut sub = bus.client().subscribe(bus_schema::subject::EVENTS_WILDCARD).await?;
        use futures_util::StreamExt;
        while let Some(m) = sub.next().await {
            let Ok(ev) = bus_schema::decode::<Event>(&m.payload) else { continue };
            if !matches(&ev, &f) {
                continue;
            }
            if json {
                println!("{}", serde_json::to_string(&ev)?);
            } else {
                let t = berth_rules::clock::rfc3339_nano_fixed(ev.time, (ev.time_nano % 1_000_000_000) as u32);
                let mut attrs: Vec<String> = ev.actor.attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
                attrs.sort();
                println!("{t} {:<9} {:<12} {} ({})  [{}]", ev.typ, ev.action, ev.actor.id, attrs.join(", "), m.subject);
            }
        }
        anyhow::Ok(())
    })
}
