//! The node's nats-server: a generated config listening on 127.0.0.1 only, JetStream
//! under the data root, one user per service with least-privilege permissions, and
//! credentials in root-only files.

use anyhow::Context;
use bus_schema::Service;
use std::path::Path;

/// The bus users of a node: one per service, plus `admin` for the CLI.
pub const USERS: &[&str] = &["gateway", "images", "storage", "runtime", "network", "builder", "swarm", "admin"];

/// (publish allow, publish deny, subscribe allow) for a user on `node`.
pub fn permissions(user: &str, node: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let svc = |s: &str| match Service::from_name(s) {
        Some(x) => x.wildcard(node),
        None => format!("berth.v1.{s}.>"),
    };
    let ev = |t: &str| format!("berth.v1.events.{t}.>");
    let inbox_all = "_I.>".to_string();
    let own_inbox = format!("_I.{user}.>");
    let (mut publish, deny, mut subscribe): (Vec<String>, Vec<String>, Vec<String>) = match user {
        "gateway" => (
            vec!["berth.v1.>".into(), "$JS.API.>".into()],
            vec![bus_schema::subject::EVENTS_WILDCARD.into()],
            vec![bus_schema::subject::EVENTS_WILDCARD.into()],
        ),
        "images" => (vec![svc("storage"), svc("runtime"), ev("image")], vec![], vec![svc("images")]),
        "storage" => (vec![svc("runtime"), ev("volume"), ev("image")], vec![], vec![svc("storage")]),
        "runtime" => (
            vec![svc("storage"), svc("images"), svc("network"), ev("container")],
            vec![],
            vec![svc("runtime")],
        ),
        "network" => (vec![svc("runtime"), ev("network")], vec![], vec![svc("network")]),
        "builder" => (
            vec![svc("images"), svc("storage"), svc("runtime"), svc("network"), ev("image"), ev("builder")],
            vec![],
            vec![svc("builder")],
        ),
        "swarm" => (
            vec!["berth.v1.>".into(), "$JS.API.>".into()],
            vec![],
            vec![svc("swarm"), bus_schema::subject::EVENTS_WILDCARD.into()],
        ),
        _ => (vec![">".into()], vec![], vec![">".into()]),
    };
    publish.push(inbox_all);
    let (mut publish, mut deny) = (publish, deny);
    if user != "admin" {
        subscribe.push(own_inbox);
        // instance notices: everyone hears them; `exited` comes from `berth up`
        // (admin) only, `started` from the service itself
        subscribe.push(format!("{}.instance.>", bus_schema::subject::PREFIX));
        if let Some(svc) = Service::from_name(user) {
            let own = bus_schema::subject::instance_subject(node, svc, bus_schema::subject::InstanceEvent::Started);
            if publish.iter().any(|p| p == "berth.v1.>") {
                deny.push(format!("{}.instance.*.*.{}", bus_schema::subject::PREFIX, bus_schema::subject::InstanceEvent::Exited.token()));
                deny.extend(
                    Service::ALL
                        .into_iter()
                        .filter(|o| *o != svc)
                        .map(|o| bus_schema::subject::instance_subject("*", o, bus_schema::subject::InstanceEvent::Started)),
                );
            } else {
                publish.push(own);
            }
        }
    }
    (publish, deny, subscribe)
}

fn random_secret() -> String {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).expect("random");
    hex::encode(b)
}

fn q(v: &[String]) -> String {
    v.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ")
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Write fresh credentials and the server config; returns the config path.
pub fn write_config(bus_dir: &Path, port: u16, node: &str) -> anyhow::Result<std::path::PathBuf> {
    Ok(write_config_with(bus_dir, port, node, false)?.0)
}

/// The config for a running server after an upgrade: the users keep their passwords
/// (the services connected with them), the permissions are this version's. Returns the
/// path and whether the text changed (then nats-server is told to reload it).
pub fn write_config_keeping(bus_dir: &Path, port: u16, node: &str) -> anyhow::Result<(std::path::PathBuf, bool)> {
    write_config_with(bus_dir, port, node, true)
}

fn write_config_with(bus_dir: &Path, port: u16, node: &str, keep: bool) -> anyhow::Result<(std::path::PathBuf, bool)> {
    let creds = bus_dir.join("creds");
    std::fs::create_dir_all(&creds)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bus_dir, std::fs::Permissions::from_mode(0o700))?;
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o700))?;
    let mut users = String::new();
    for u in USERS {
        let kept = if keep {
            std::fs::read_to_string(creds.join(u))
                .ok()
                .and_then(|t| t.trim().strip_prefix(&format!("{u}:")).map(str::to_string))
        } else {
            None
        };
        let pw = match kept {
            Some(pw) => pw,
            None => {
                let pw = random_secret();
                write_private(&creds.join(u), &format!("{u}:{pw}\n"))?;
                pw
            }
        };
        let (publish, deny, subscribe) = permissions(u, node);
        let deny = if deny.is_empty() { String::new() } else { format!(", deny: [{}]", q(&deny)) };
        users.push_str(&format!(
            "    {{ user: \"{u}\", password: \"{pw}\", permissions: {{ publish: {{ allow: [{}]{deny} }}, subscribe: {{ allow: [{}] }}, allow_responses: true }} }}\n",
            q(&publish),
            q(&subscribe)
        ));
    }
    let js = bus_dir.join("jetstream");
    let conf = format!(
        "# generated by berth up; do not edit\nserver_name: \"berth-{node}\"\nlisten: \"127.0.0.1:{port}\"\nmax_payload: 1048576\njetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 1GB\n}}\nauthorization {{\n  users = [\n{users}  ]\n}}\n",
        js.display()
    );
    let path = bus_dir.join("nats.conf");
    let changed = std::fs::read_to_string(&path).map(|old| old != conf).unwrap_or(true);
    if changed {
        write_private(&path, &conf).context("writing nats.conf")?;
    }
    Ok((path, changed))
}

pub fn nats_server_bin() -> anyhow::Result<std::path::PathBuf> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/sbin", "/usr/local/sbin", "/usr/bin"]) {
        let p = Path::new(dir).join("nats-server");
        if p.is_file() {
            return Ok(p);
        }
    }
    anyhow::bail!("nats-server not found: install it (apt-get install nats-server) or pass --nats URL")
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn least_privilege() {
        let (p, _, s) = permissions("images", "n1");
        assert!(s.contains(&"berth.v1.images.n1.>".to_string()));
        assert!(!s.iter().any(|x| x.contains("runtime")));
        assert!(p.contains(&"berth.v1.storage.n1.>".to_string()));
        assert!(!p.iter().any(|x| x == ">" || x == "berth.v1.>"));
        let (_, deny, _) = permissions("gateway", "n1");
        assert!(deny.contains(&"berth.v1.events.>".to_string()));
        // only berth up announces exits; a service announces its own start
        assert!(deny.contains(&"berth.v1.instance.*.*.exited".to_string()));
        assert!(deny.contains(&"berth.v1.instance.*.runtime.started".to_string()));
        let (p, _, s) = permissions("runtime", "n1");
        assert!(p.contains(&"berth.v1.instance.n1.runtime.started".to_string()));
        assert!(!p.iter().any(|x| x.contains("exited")));
        assert!(s.contains(&"berth.v1.instance.>".to_string()));
    }
}
