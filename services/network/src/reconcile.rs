//! The kernel against the records: at start, what the records say is put back
//! (bridges, addresses, ports, rules, DNS) and what they do not explain goes (links
//! marked as the node's, namespace files); the firewall rendered from the records;
//! and a graceful stop's cleanup.

use bus_schema::BusError;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::firewall::{FwNetwork, FwPort};
use crate::ports;
use crate::service::{internal, NetworkService};
use crate::state::State;
use crate::store::{NetworkRecord, SandboxRecord};

impl NetworkService {
    pub(crate) async fn reconcile(&self) -> Result<(), BusError> {
        let mut st = self.state.write().await;
        if self.cfg.ip_forward {
            if let Err(e) = self.k.links.sysctl("net/ipv4/ip_forward", "1") {
                tracing::warn!(error = %e, "cannot enable IPv4 forwarding");
            }
        }
        for n in self.store.load_networks() {
            st.networks.insert(n.id.clone(), n);
        }
        self.ensure_predefined(&mut st).await?;

        // Sandboxes whose namespace is gone (reboot, or removed behind our back) are dropped.
        let mut dropped = Vec::new();
        for s in self.store.load_sandboxes() {
            let alive = if s.owns_netns {
                self.k.ns.is_pinned(Path::new(&s.key))
            } else {
                true
            };
            if alive {
                st.sandboxes.insert(s.container_id.clone(), s);
            } else {
                dropped.push(s);
            }
        }
        let joined_gone: Vec<String> = st
            .sandboxes
            .values()
            .filter(|s| {
                s.joined
                    .as_ref()
                    .is_some_and(|j| !st.sandboxes.contains_key(j))
            })
            .map(|s| s.container_id.clone())
            .collect();
        for id in joined_gone {
            if let Some(s) = st.sandboxes.remove(&id) {
                dropped.push(s);
            }
        }
        for s in &dropped {
            tracing::info!(container = %s.container_id, "dropping the sandbox of a namespace that is gone");
            self.teardown(&mut st, s).await;
            let _ = self.store.delete_sandbox(&s.container_id);
        }

        // Bridges: ours exist with their addresses; links we do not know go.
        let mut bridge_idx: BTreeMap<u32, String> = BTreeMap::new();
        let nets: Vec<NetworkRecord> = st
            .networks
            .values()
            .filter(|n| n.is_bridge())
            .cloned()
            .collect();
        for n in &nets {
            match self.ensure_bridge(n).await {
                Ok(i) => {
                    bridge_idx.insert(i, n.id.clone());
                }
                Err(e) => tracing::warn!(network = %n.name, error = %e, "cannot set up bridge"),
            }
        }
        let known_veths: BTreeSet<String> = st
            .sandboxes
            .values()
            .flat_map(|s| s.endpoints.iter().map(|e| e.host_veth.clone()))
            .collect();
        let known_bridges: BTreeSet<String> = nets.iter().map(|n| n.bridge.clone()).collect();
        if let Ok(links) = self.k.links.links().await {
            let mark = self.cfg.mark();
            for l in links {
                // the node marks its bridges and its veths' host ends
                let ours = l.alias.as_deref() == Some(mark.as_str());
                let bridge = l.kind.as_deref() == Some("bridge");
                if bridge {
                    if ours && !known_bridges.contains(&l.name) {
                        tracing::info!(link = %l.name, "removing a bridge no network records");
                        let _ = self.k.links.delete(&l.name).await;
                    }
                } else if (ours
                    || (l.master.is_some_and(|m| bridge_idx.contains_key(&m))
                        && crate::config::marked_by(l.alias.as_deref()).is_none()))
                    && !known_veths.contains(&l.name)
                {
                    tracing::info!(link = %l.name, "removing a veth no sandbox records");
                    let _ = self.k.links.delete(&l.name).await;
                }
            }
        }
        // Namespace files no record knows.
        let known_ns: BTreeSet<PathBuf> = st
            .sandboxes
            .values()
            .filter(|s| s.owns_netns)
            .map(|s| PathBuf::from(&s.key))
            .collect();
        if let Ok(rd) = std::fs::read_dir(self.store.netns_dir()) {
            for e in rd.flatten() {
                if !known_ns.contains(&e.path()) {
                    let _ = self.k.ns.remove(&e.path());
                }
            }
        }
        // Host ports held again.
        let sbs: Vec<SandboxRecord> = st.sandboxes.values().cloned().collect();
        for s in &sbs {
            let mut rs = Vec::new();
            for m in &s.ports {
                match ports::rebind(*m) {
                    Ok(r) => rs.push(r),
                    Err(e) => {
                        tracing::warn!(port = m.host_port, error = %e, "cannot hold published port again")
                    }
                }
            }
            st.reservations.insert(s.container_id.clone(), rs);
        }
        for s in &sbs {
            self.dns_register(&st, s);
        }
        self.apply_firewall(&st).await?;
        for n in st.networks.values().filter(|n| n.has_dns()) {
            self.dns.set_network(&n.id, &n.name, n.internal);
            if let Some(gw) = n.gateway {
                if let Err(e) = self.dns.start(&n.id, gw, self.cfg.dns_port).await {
                    tracing::warn!(network = %n.name, error = %e, "cannot start the embedded DNS");
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn apply_firewall(&self, st: &State) -> Result<(), BusError> {
        if !self.cfg.firewall {
            return Ok(());
        }
        let nets: Vec<FwNetwork> = st
            .networks
            .values()
            .filter(|n| n.is_bridge())
            .filter_map(|n| {
                Some(FwNetwork {
                    bridge: n.bridge.clone(),
                    subnet: n.subnet?,
                    internal: n.internal,
                    masquerade: n.masquerade,
                    icc: n.icc,
                })
            })
            .collect();
        let mut fports = Vec::new();
        for s in st.sandboxes.values() {
            let Some(net) = &s.ports_network else {
                continue;
            };
            let Some(ip) = s
                .endpoints
                .iter()
                .find(|e| &e.network_id == net)
                .and_then(|e| e.ip)
            else {
                continue;
            };
            for m in &s.ports {
                fports.push(FwPort {
                    proto: m.proto,
                    host_ip: m.host_ip,
                    host_port: m.host_port,
                    container_ip: ip,
                    container_port: m.container_port,
                });
            }
        }
        self.k
            .fw
            .apply(&self.table, &nets, &fports)
            .await
            .map_err(internal)?;
        let mut bridges: Vec<String> = nets.iter().map(|n| n.bridge.clone()).collect();
        bridges.sort();
        self.sync_forward(bridges).await;
        Ok(())
    }

    /// iptables' FORWARD accept rules for these bridges (only when the set changed).
    pub(crate) async fn sync_forward(&self, bridges: Vec<String>) {
        let mut last = self.forward_synced.lock().await;
        if last.as_ref() == Some(&bridges) {
            return;
        }
        match self.k.fw.sync_forward(&self.table, &bridges).await {
            Ok(()) => *last = Some(bridges),
            Err(e) => {
                tracing::warn!(error = %e, "cannot add berth's accept rules to iptables' FORWARD chain")
            }
        }
    }

    /// The sandboxes of containers that no longer run: their removal never reached
    /// the service (it, the bus or the whole node was down), so no request will take
    /// them. A sandbox is stale when no process lives in its namespace and the
    /// runtime does not list its container as running (`running`; None when the
    /// runtime cannot be asked, as at a graceful stop after it). A sandbox without a
    /// namespace of its own (host mode, `container:<id>`) needs the runtime's word,
    /// or the one whose namespace it shares to be stale.
    pub(crate) fn stale_sandboxes(
        &self,
        st: &State,
        running: Option<&BTreeSet<String>>,
    ) -> BTreeSet<String> {
        let runs = |id: &str| running.map(|r| r.contains(id));
        let mut stale: BTreeSet<String> = st
            .sandboxes
            .values()
            .filter(|s| s.owns_netns && runs(&s.container_id) != Some(true))
            .filter(|s| !self.k.ns.in_use(Path::new(&s.key)))
            .map(|s| s.container_id.clone())
            .collect();
        for s in st.sandboxes.values().filter(|s| !s.owns_netns) {
            let owner_gone = s
                .joined
                .as_ref()
                .is_some_and(|j| stale.contains(j) || !st.sandboxes.contains_key(j));
            if runs(&s.container_id) == Some(false) || (owner_gone && running.is_none()) {
                stale.insert(s.container_id.clone());
            }
        }
        stale
    }

    /// Drop these sandboxes as `docker rm` would have.
    pub(crate) async fn drop_sandboxes(&self, st: &mut State, ids: &BTreeSet<String>) {
        for id in ids {
            tracing::info!(container = %id, "dropping the sandbox of a container that no longer runs");
            if let Err(e) = self.remove_sandbox(st, id).await {
                tracing::warn!(container = %id, error = %e, "cannot drop a stale sandbox");
            }
        }
    }

    /// Whether the node has any sandbox (the sweep asks the runtime only then).
    pub async fn has_sandboxes(&self) -> bool {
        !self.state.read().await.sandboxes.is_empty()
    }

    /// One round of the sweep against the runtime's list of running containers.
    /// `suspects` are the sandboxes found stale before, with when that was first seen;
    /// a sandbox goes once it has been stale for `grace` (a start in flight has its
    /// sandbox before its process and before the runtime lists it as running).
    /// Returns the suspects for the next round.
    pub async fn sweep(
        &self,
        running: &BTreeSet<String>,
        suspects: BTreeMap<String, std::time::Instant>,
        grace: std::time::Duration,
    ) -> BTreeMap<String, std::time::Instant> {
        let mut st = self.state.write().await;
        let now = std::time::Instant::now();
        let stale = self.stale_sandboxes(&st, Some(running));
        let mut next = BTreeMap::new();
        let mut ripe = BTreeSet::new();
        for id in stale {
            let since = suspects.get(&id).copied().unwrap_or(now);
            if now.duration_since(since) >= grace {
                ripe.insert(id);
            } else {
                next.insert(id, since);
            }
        }
        self.drop_sandboxes(&mut st, &ripe).await;
        next
    }

    /// A graceful stop. Sandboxes whose namespace no process lives in any more go
    /// (the runtime stopped before the network: their containers are gone). When no
    /// namespace is left, everything the node put in the kernel goes too: firewall
    /// table, FORWARD rules, bridges, the namespace directory's mount. Containers
    /// that outlive the node keep their namespaces, bridges and rules. The network
    /// records stay; the next start recreates the kernel state from them.
    pub async fn shutdown(&self) {
        let mut st = self.state.write().await;
        for n in st.networks.values() {
            self.dns.stop(&n.id);
        }
        let stale = self.stale_sandboxes(&st, None);
        self.drop_sandboxes(&mut st, &stale).await;
        let live = st.sandboxes.values().filter(|s| s.owns_netns).count();
        if live > 0 {
            tracing::info!(sandboxes = live, "containers outlive the node: its bridges and rules stay");
            return;
        }
        if self.cfg.firewall {
            if let Err(e) = self.k.fw.delete(&self.table).await {
                tracing::warn!(table = %self.table, error = %e, "cannot delete the firewall table");
            }
            self.sync_forward(Vec::new()).await;
        }
        for n in st.networks.values().filter(|n| n.is_bridge()) {
            self.delete_bridge(&n.bridge).await;
        }
        if let Err(e) = self.k.ns.release_dir(&self.store.netns_dir()) {
            tracing::warn!(error = %e, "cannot unmount the namespace directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::fake::TestService;
    use crate::NetworkApi;
    use bus_schema::network::*;
    use std::path::Path;

    fn req(id: &str) -> SandboxCreate {
        crate::sandboxes::tests::req(id, "bridge")
    }

    #[tokio::test]
    async fn a_restart_puts_back_what_the_records_say_and_removes_what_they_do_not() {
        let mut t = TestService::start().await;
        let kept = t.svc.sandbox_create(req("kept")).await.unwrap();
        // a namespace whose sandbox record was never written (crash mid-create)
        let stray = t.svc.store.netns_path("stray");
        drop(t.svc.k.ns.create(stray.clone()).await.unwrap());
        {
            let mut w = t.fake.world();
            // a veth of ours that no record knows, on our bridge
            let br = w.links["berth0"].index;
            w.add_foreign("vethdead001", "veth", Some("berth:n1"));
            w.links.get_mut("vethdead001").unwrap().master = Some(br);
            // one of ours left off any bridge, and another node's
            w.add_foreign("vethdead002", "veth", Some("berth:n1"));
            w.add_foreign("vethother01", "veth", Some("berth:n2"));
            // a bridge of ours no network records, and another node's bridge
            w.add_foreign("br-oldoldoldold", "bridge", Some("berth:n1"));
            w.add_foreign("berth-other", "bridge", Some("berth:n2"));
            w.add_foreign("eth0", "device", None);
            // the kernel lost the bridge's state (someone deleted it)
            w.links.remove("berth0");
            w.tables.clear();
        }
        t.restart().await;
        let w = t.fake.world();
        let mut links: Vec<&String> = w.links.keys().collect();
        links.sort();
        assert!(w.links.contains_key("berth0"));
        assert!(!w.links.contains_key("vethdead001"), "{links:?}");
        assert!(!w.links.contains_key("vethdead002"), "{links:?}");
        assert!(w.links.contains_key("vethother01"), "{links:?}");
        assert!(!w.links.contains_key("br-oldoldoldold"), "{links:?}");
        assert!(w.links.contains_key("berth-other"));
        assert!(w.links.contains_key("eth0"));
        assert!(!w.namespaces.contains_key(&stray));
        assert!(!stray.exists());
        assert!(w.namespaces.contains_key(Path::new(&kept.key)));
        assert_eq!(w.tables["berth_n1"].0.len(), 1);
    }

    #[tokio::test]
    async fn a_sandbox_whose_namespace_is_gone_is_dropped_at_start() {
        let mut t = TestService::start().await;
        let s = t.svc.sandbox_create(req("c1")).await.unwrap();
        t.svc.k.ns.remove(Path::new(&s.key)).unwrap();
        t.restart().await;
        let ins = t
            .svc
            .network_inspect(NetworkInspect {
                id: "bridge".into(),
                verbose: false,
            })
            .await
            .unwrap();
        assert!(ins.containers.unwrap().is_empty());
        assert!(!t.svc.store.sandboxes_dir().join("c1.json").exists());
    }

    #[tokio::test]
    async fn a_graceful_stop_without_sandboxes_takes_everything_away() {
        let t = TestService::start().await;
        t.svc.sandbox_create(req("c1")).await.unwrap();
        t.svc
            .sandbox_remove(SandboxRemove {
                container_id: "c1".into(),
            })
            .await
            .unwrap();
        t.svc.shutdown().await;
        let w = t.fake.world();
        assert!(w.bridges().is_empty());
        assert!(w.tables.is_empty());
        assert!(w.forward.is_empty());
        assert!(w.prepared_dirs.is_empty(), "the netns directory stays mounted");
    }

    fn set_in_use(t: &TestService, key: &str, yes: bool) {
        t.fake
            .world()
            .namespaces
            .get_mut(Path::new(key))
            .unwrap()
            .in_use = yes;
    }

    #[tokio::test]
    async fn a_graceful_stop_drops_sandboxes_no_process_lives_in_and_completes() {
        let t = TestService::start().await;
        let mut r = req("gone");
        r.port_bindings.insert(
            "80/tcp".into(),
            Some(vec![bus_schema::docker::PortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: Some(String::new()),
            }]),
        );
        let s = t.svc.sandbox_create(r).await.unwrap();
        // its container was removed while the network was down: no process in it
        set_in_use(&t, &s.key, false);
        t.svc.shutdown().await;
        let w = t.fake.world();
        assert!(w.bridges().is_empty());
        assert!(w.tables.is_empty());
        assert!(w.forward.is_empty());
        assert!(w.namespaces.is_empty());
        assert!(w.prepared_dirs.is_empty());
        assert!(!t.svc.store.sandboxes_dir().join("gone.json").exists());
    }

    #[tokio::test]
    async fn a_graceful_stop_leaves_what_running_containers_use() {
        let t = TestService::start().await;
        let s = t.svc.sandbox_create(req("runs")).await.unwrap();
        set_in_use(&t, &s.key, true);
        t.svc.shutdown().await;
        let w = t.fake.world();
        assert_eq!(w.bridges(), ["berth0"]);
        assert!(w.tables.contains_key("berth_n1"));
        assert!(w.namespaces.contains_key(Path::new(&s.key)));
        assert!(!w.prepared_dirs.is_empty());
    }

    #[tokio::test]
    async fn the_sweep_drops_sandboxes_of_containers_that_no_longer_run_after_a_grace() {
        use std::collections::{BTreeMap, BTreeSet};
        use std::time::{Duration, Instant};
        let t = TestService::start().await;
        let gone = t.svc.sandbox_create(req("gone")).await.unwrap();
        let busy = t.svc.sandbox_create(req("busy")).await.unwrap();
        let listed = t.svc.sandbox_create(req("listed")).await.unwrap();
        set_in_use(&t, &busy.key, true);
        let running = BTreeSet::from(["listed".to_string()]);
        let grace = Duration::from_secs(10);
        // first seen stale: kept for now (a start in flight looks the same)
        let s1 = t.svc.sweep(&running, BTreeMap::new(), grace).await;
        assert_eq!(s1.keys().collect::<Vec<_>>(), ["gone"]);
        assert!(t.fake.world().namespaces.contains_key(Path::new(&gone.key)));
        // still stale after the grace: gone
        let long_ago = BTreeMap::from([("gone".to_string(), Instant::now() - grace)]);
        let s2 = t.svc.sweep(&running, long_ago, grace).await;
        assert!(s2.is_empty());
        let w = t.fake.world();
        assert!(!w.namespaces.contains_key(Path::new(&gone.key)));
        assert!(w.namespaces.contains_key(Path::new(&busy.key)));
        assert!(w.namespaces.contains_key(Path::new(&listed.key)));
        drop(w);
        let ins = t
            .svc
            .network_inspect(NetworkInspect {
                id: "bridge".into(),
                verbose: false,
            })
            .await
            .unwrap();
        let mut ids: Vec<String> = ins.containers.unwrap().into_keys().collect();
        ids.sort();
        assert_eq!(ids, ["busy", "listed"]);
    }
}
