//! The swarm server's configuration: the nats-server a node runs for the swarm bus
//! (never the node's own bus, see docs/swarm.md).
//!
//! - A lone manager: JetStream standalone (nats-server cannot elect a meta leader with
//!   fewer than two peers), client port (TLS) for the join handshake and the local
//!   swarm service, leaf port (mutual TLS) for the other nodes.
//! - Managers of a cluster: the same plus `cluster {}` with routes to the other
//!   managers (mutual TLS, a route user), JetStream clustered, replicas follow the
//!   number of managers.
//! - A worker: no JetStream, a client port on loopback for its swarm service, and a
//!   leaf remote to every manager (mutual TLS, its own user).
//!
//! Every store user lives in account `SWARM`; managers' JetStream domain is `swarm`, so a
//! worker reaches the store through its leaf with the `$JS.swarm.API` prefix. The store
//! is encrypted at rest (`cipher`, `key`): secrets never reach a manager's disk in clear.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The JetStream domain of the managers.
pub const DOMAIN: &str = "swarm";
/// The account of every swarm bus user.
pub const ACCOUNT: &str = "SWARM";
/// The join handshake's user: it may only ask the join subject.
pub const JOIN_USER: &str = "join";
pub const JOIN_PASSWORD: &str = "join";

/// Files of a node's swarm server under `<root>/swarm/`.
#[derive(Debug, Clone)]
pub struct Files {
    pub dir: PathBuf,
}

impl Files {
    pub fn new(swarm_dir: &Path) -> Files {
        Files { dir: swarm_dir.to_path_buf() }
    }
    pub fn conf(&self) -> PathBuf {
        self.dir.join("server").join("nats.conf")
    }
    pub fn store(&self) -> PathBuf {
        self.dir.join("server").join("js")
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.join("tls").join("ca.pem")
    }
    pub fn cert(&self) -> PathBuf {
        self.dir.join("tls").join("node.pem")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("tls").join("node-key.pem")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }
}

/// A bus user on the managers' swarm servers.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub name: String,
    /// A bcrypt hash (or, for local users, the password itself).
    pub password: String,
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The manager's own swarm service, and other managers' leaf connections.
    Manager,
    /// A worker's leaf connection.
    Worker,
    /// The join handshake.
    Join,
}

/// What a server config needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub node_id: String,
    pub files: Files,
    pub kind: Kind,
    /// The local swarm service's user (plain password: the file is 0600 on this node).
    pub local_user: String,
    pub local_password: String,
    /// The JetStream encryption key (hex), managers only: passed in the server's
    /// environment, never written into the config ([`crate::lock`]).
    pub store_key: String,
    /// The node's TLS key: the file on disk, or a memfd's path while autolock keeps it off disk.
    pub key_file: PathBuf,
}

impl ServerConfig {
    /// The environment the server needs besides its config file (values quoted: the
    /// server parses them as config values).
    pub fn env(&self) -> Vec<(String, String)> {
        match self.kind {
            Kind::Manager { .. } => vec![(crate::lock::STORE_KEY_ENV.to_string(), q(&self.store_key))],
            Kind::Worker { .. } => Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Kind {
    Manager {
        /// `ip:port` of the client port (join handshake, local service).
        client: String,
        /// `ip:port` of the leaf port.
        leaf: String,
        /// `ip:port` of the route port; `routes` the other managers' (empty: standalone).
        route: String,
        routes: Vec<String>,
        cluster_name: String,
        route_user: String,
        route_password: String,
        /// Every node's user (all roles), from the store.
        users: Vec<User>,
        sys_password: String,
    },
    Worker {
        /// `127.0.0.1:port` for the local swarm service.
        client: String,
        /// Every manager's leaf address (`ip:port`).
        managers: Vec<String>,
        user: String,
        password: String,
    },
}

fn q(s: &str) -> String {
    // nats-server config strings: double-quoted, backslash and quote escaped.
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn list(v: &[String]) -> String {
    v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ")
}

/// What a role's user may do on the managers' servers (for a worker: what its leaf
/// may send to them, and receive from them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    /// Refused even where `publish` allows (nats-server: deny wins).
    pub publish_deny: Vec<String>,
    pub subscribe: Vec<String>,
}

/// The buckets a worker may not read: secrets, and configs, are given to it by the
/// managers for its own tasks only ([`crate::taskfiles`]), as swarmkit's dispatcher does.
const WORKER_UNREADABLE: &[&str] = &[crate::store::buckets::SECRETS, crate::store::buckets::CONFIGS];

pub fn permissions(role: Role, user: &str) -> Permissions {
    match role {
        // Managers run the store and call every node.
        Role::Manager => Permissions { publish: vec![">".into()], publish_deny: Vec::new(), subscribe: vec![">".into()] },
        // A worker reads the store through its leaf (the JetStream API of the swarm
        // domain: stream and consumer info, watches, direct gets) but for the secrets
        // and configs, writes only its own task status and heartbeat, asks the managers
        // for its own tasks' files, and receives only what is addressed to it: its
        // inboxes and its node's requests. Everything else (another node's keys, the
        // managers' buckets, deleting or purging a stream, the answers to other nodes'
        // requests) is refused by its managers: a worker's root holds its credentials.
        Role::Worker => {
            let node = user.strip_prefix("n-").unwrap_or(user);
            let mut deny = Vec::new();
            for api in [format!("$JS.{DOMAIN}.API"), "$JS.API".to_string()] {
                for b in WORKER_UNREADABLE {
                    let stream = format!("KV_{b}");
                    for op in ["STREAM.MSG.GET", "DIRECT.GET", "CONSUMER.CREATE"] {
                        deny.push(format!("{api}.{op}.{stream}"));
                        deny.push(format!("{api}.{op}.{stream}.>"));
                    }
                }
            }
            Permissions {
                publish: worker_publish(node),
                publish_deny: deny,
                subscribe: vec![
                    format!("{}.>", node_inbox_prefix(node)),
                    format!("{}.node.{node}.>", bus_schema::swarm::cluster::PREFIX),
                    // leaf loop detection
                    "$LDS.>".into(),
                ],
            }
        }
        Role::Join => Permissions {
            publish: vec![bus_schema::swarm::cluster::JOIN.into()],
            publish_deny: Vec::new(),
            subscribe: vec![format!("_I.{user}.>"), "_INBOX.>".into()],
        },
    }
}

/// The inbox prefix of node `node`'s swarm service: a worker receives answers there
/// only (not the answers to other nodes' requests, a secret's among them).
pub fn node_inbox_prefix(node: &str) -> String {
    bus_schema::subject::inbox_prefix(&format!("n-{node}"))
}

/// What a worker (node `node`) may publish into the managers' servers.
fn worker_publish(node: &str) -> Vec<String> {
    use crate::store::buckets::{HEARTBEATS, TASK_STATUS};
    // the JetStream API calls a reader makes (async-nats' KV bind, watch, get)
    const READS: &[&str] = &["INFO", "STREAM.INFO.*", "STREAM.NAMES", "STREAM.LIST", "STREAM.MSG.GET.*", "DIRECT.GET.>", "CONSUMER.CREATE.>", "CONSUMER.INFO.>"];
    // its own keys: `<node>.<task>` task status, `<node>` heartbeat (the overlay
    // addresses it needs it asks of the managers: crate::networks::serve_addresses)
    let own = [format!("$KV.{TASK_STATUS}.{node}.>"), format!("$KV.{HEARTBEATS}.{node}")];
    let mut v = Vec::new();
    for api in [format!("$JS.{DOMAIN}.API"), "$JS.API".to_string()] {
        v.extend(READS.iter().map(|r| format!("{api}.{r}")));
        // a KV put through a JetStream domain goes to `<API prefix>.$KV.<bucket>.<key>`
        v.extend(own.iter().map(|k| format!("{api}.{k}")));
    }
    v.extend(own);
    // an ordered consumer's flow-control answers
    v.push("$JS.FC.>".into());
    // its own tasks' secrets and configs, asked of the managers
    v.push(crate::taskfiles::subject(node));
    // its overlay addresses, asked of the managers
    v.push(crate::networks::addresses_subject(node));
    // inboxes: answers, and the frames of a log stream it serves (xstream); it asks
    // no node anything (`berth.swarm.v1.node.…` are the nodes' own)
    v.extend(["_INBOX.>".to_string(), "_I.>".to_string()]);
    v
}

fn user_entry(out: &mut String, u: &User) {
    let p = permissions(u.role, &u.name);
    let deny = if p.publish_deny.is_empty() { String::new() } else { format!(", deny: [{}]", list(&p.publish_deny)) };
    let _ = writeln!(
        out,
        "      {{ user: {}, password: {}, permissions: {{ publish: {{ allow: [{}]{deny} }}, subscribe: {{ allow: [{}] }}, allow_responses: true }} }}",
        q(&u.name),
        q(&u.password),
        list(&p.publish),
        list(&p.subscribe)
    );
}

fn tls_block(out: &mut String, indent: &str, f: &Files, key_file: &Path, verify: bool) {
    let _ = writeln!(out, "{indent}tls {{");
    let _ = writeln!(out, "{indent}  cert_file: {}", q(&f.cert().display().to_string()));
    let _ = writeln!(out, "{indent}  key_file: {}", q(&key_file.display().to_string()));
    let _ = writeln!(out, "{indent}  ca_file: {}", q(&f.ca().display().to_string()));
    if verify {
        let _ = writeln!(out, "{indent}  verify: true");
    }
    let _ = writeln!(out, "{indent}  timeout: 5");
    let _ = writeln!(out, "{indent}}}");
}

/// The config file's text.
pub fn render(c: &ServerConfig) -> String {
    let mut out = String::from("# generated by berth-swarm; do not edit\n");
    let _ = writeln!(out, "server_name: {}", q(&format!("swarm-{}", c.node_id)));
    let _ = writeln!(out, "max_payload: 1048576");
    match &c.kind {
        Kind::Manager { client, leaf, route, routes, cluster_name, route_user, route_password, users, sys_password } => {
            let _ = writeln!(out, "listen: {}", q(client));
            tls_block(&mut out, "", &c.files, &c.key_file, false);
            let _ = writeln!(out, "jetstream {{");
            let _ = writeln!(out, "  store_dir: {}", q(&c.files.store().display().to_string()));
            let _ = writeln!(out, "  domain: {}", q(DOMAIN));
            let _ = writeln!(out, "  cipher: chachapoly");
            let _ = writeln!(out, "  key: ${}", crate::lock::STORE_KEY_ENV);
            let _ = writeln!(out, "  max_memory_store: 64MB");
            let _ = writeln!(out, "  max_file_store: 1GB");
            let _ = writeln!(out, "}}");
            let _ = writeln!(out, "leafnodes {{");
            let _ = writeln!(out, "  listen: {}", q(leaf));
            tls_block(&mut out, "  ", &c.files, &c.key_file, true);
            let _ = writeln!(out, "}}");
            if !routes.is_empty() {
                let _ = writeln!(out, "cluster {{");
                let _ = writeln!(out, "  name: {}", q(cluster_name));
                let _ = writeln!(out, "  listen: {}", q(route));
                let _ = writeln!(out, "  authorization {{ user: {}, password: {} }}", q(route_user), q(route_password));
                let urls: Vec<String> = routes.iter().map(|r| format!("nats-route://{route_user}:{route_password}@{r}")).collect();
                let _ = writeln!(out, "  routes: [{}]", list(&urls));
                tls_block(&mut out, "  ", &c.files, &c.key_file, true);
                let _ = writeln!(out, "}}");
            }
            let _ = writeln!(out, "accounts {{");
            let _ = writeln!(out, "  {ACCOUNT} {{");
            let _ = writeln!(out, "    jetstream: enabled");
            let _ = writeln!(out, "    users: [");
            user_entry(&mut out, &User { name: c.local_user.clone(), password: c.local_password.clone(), role: Role::Manager });
            user_entry(&mut out, &User { name: JOIN_USER.into(), password: JOIN_PASSWORD.into(), role: Role::Join });
            for u in users {
                if u.name != c.local_user && u.name != JOIN_USER {
                    user_entry(&mut out, u);
                }
            }
            let _ = writeln!(out, "    ]");
            let _ = writeln!(out, "  }}");
            let _ = writeln!(out, "  SYS {{ users: [ {{ user: \"sys\", password: {} }} ] }}", q(sys_password));
            let _ = writeln!(out, "}}");
            let _ = writeln!(out, "system_account: SYS");
        }
        Kind::Worker { client, managers, user, password } => {
            let _ = writeln!(out, "listen: {}", q(client));
            let urls: Vec<String> = managers.iter().map(|m| format!("nats-leaf://{user}:{password}@{m}")).collect();
            let _ = writeln!(out, "leafnodes {{");
            let _ = writeln!(out, "  reconnect: 1");
            let _ = writeln!(out, "  remotes: [");
            let _ = writeln!(out, "    {{");
            let _ = writeln!(out, "      urls: [{}]", list(&urls));
            let _ = writeln!(out, "      account: {ACCOUNT}");
            tls_block(&mut out, "      ", &c.files, &c.key_file, false);
            let _ = writeln!(out, "    }}");
            let _ = writeln!(out, "  ]");
            let _ = writeln!(out, "}}");
            let _ = writeln!(out, "accounts {{");
            let _ = writeln!(out, "  {ACCOUNT} {{ users: [");
            user_entry(&mut out, &User { name: c.local_user.clone(), password: c.local_password.clone(), role: Role::Manager });
            let _ = writeln!(out, "  ] }}");
            let _ = writeln!(out, "}}");
        }
    }
    out
}

/// Write `text` to `path` with mode 0600, atomically.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> Files {
        Files::new(Path::new("/r/swarm"))
    }

    #[test]
    fn lone_manager_is_standalone_with_encrypted_store() {
        let c = ServerConfig {
            node_id: "n1".into(),
            files: files(),
            kind: Kind::Manager {
                client: "0.0.0.0:2377".into(),
                leaf: "0.0.0.0:2378".into(),
                route: "0.0.0.0:2379".into(),
                routes: vec![],
                cluster_name: "c".into(),
                route_user: "r".into(),
                route_password: "rp".into(),
                users: vec![User { name: "n-w1".into(), password: "$2b$hash".into(), role: Role::Worker }],
                sys_password: "s".into(),
            },
            local_user: "local".into(),
            local_password: "pw".into(),
            store_key: "k".repeat(32),
            key_file: files().key(),
        };
        let t = render(&c);
        assert!(t.contains("cipher: chachapoly"));
        // the store key reaches the server by its environment, never the file
        assert!(!t.contains(&"k".repeat(32)), "{t}");
        assert!(t.contains("key: $BERTH_SWARM_STORE_KEY"), "{t}");
        assert_eq!(c.env(), vec![("BERTH_SWARM_STORE_KEY".to_string(), format!("\"{}\"", "k".repeat(32)))]);
        assert!(t.contains("key_file: \"/r/swarm/tls/node-key.pem\""), "{t}");
        assert!(t.contains("domain: \"swarm\""));
        assert!(!t.contains("cluster {"), "{t}");
        assert!(t.contains("user: \"n-w1\""));
        assert!(t.contains("verify: true"));
    }

    #[test]
    fn managers_route_to_each_other() {
        let mut c = ServerConfig {
            node_id: "n1".into(),
            files: files(),
            kind: Kind::Manager {
                client: "10.0.0.1:2377".into(),
                leaf: "10.0.0.1:2378".into(),
                route: "10.0.0.1:2379".into(),
                routes: vec!["10.0.0.2:2379".into()],
                cluster_name: "c".into(),
                route_user: "r".into(),
                route_password: "rp".into(),
                users: vec![],
                sys_password: "s".into(),
            },
            local_user: "local".into(),
            local_password: "pw".into(),
            store_key: "k".into(),
            key_file: files().key(),
        };
        let t = render(&c);
        assert!(t.contains("nats-route://r:rp@10.0.0.2:2379"), "{t}");
        c.kind = Kind::Worker { client: "127.0.0.1:1".into(), managers: vec!["10.0.0.1:2378".into()], user: "n-w".into(), password: "p".into() };
        let t = render(&c);
        assert!(t.contains("nats-leaf://n-w:p@10.0.0.1:2378"), "{t}");
        assert!(!t.contains("jetstream"), "{t}");
    }

    #[test]
    fn a_worker_may_write_only_its_own_keys() {
        let perm = permissions(Role::Worker, "n-w1");
        let p = &perm.publish;
        for want in ["$JS.swarm.API.$KV.swarm_task_status.w1.>", "$JS.swarm.API.$KV.swarm_heartbeats.w1", "$KV.swarm_task_status.w1.>", "$JS.swarm.API.CONSUMER.CREATE.>", "$JS.swarm.API.DIRECT.GET.>", "berth.swarm.v1.task_files.w1", "berth.swarm.v1.addresses.w1"] {
            assert!(p.contains(&want.to_string()), "{want} in {p:?}");
        }
        for p in p {
            // no wildcard over the store: no other bucket, no stream delete or purge
            assert!(!["$KV.>", "$JS.API.>", "$JS.swarm.API.>", ">"].contains(&p.as_str()), "{p}");
            assert!(!p.contains("DELETE") && !p.contains("PURGE") && !p.contains("UPDATE"), "{p}");
            assert!(!p.starts_with("berth.swarm.v1") || p == "berth.swarm.v1.task_files.w1" || p == "berth.swarm.v1.addresses.w1", "{p}: a worker asks no node (another's logs)");
            // its own keys only: not the networks' records (the managers allocate)
            if p.contains("$KV.") {
                assert!(p.contains(".w1"), "{p}");
            }
        }
    }

    #[test]
    fn a_worker_reads_no_secret_and_receives_only_its_own() {
        let perm = permissions(Role::Worker, "n-w1");
        for api in ["$JS.swarm.API", "$JS.API"] {
            for op in ["DIRECT.GET.KV_swarm_secrets", "DIRECT.GET.KV_swarm_secrets.>", "STREAM.MSG.GET.KV_swarm_secrets", "CONSUMER.CREATE.KV_swarm_secrets.>", "CONSUMER.CREATE.KV_swarm_configs"] {
                let d = format!("{api}.{op}");
                assert!(perm.publish_deny.contains(&d), "{d} in {:?}", perm.publish_deny);
            }
        }
        assert!(perm.publish_deny.iter().all(|d| d.contains("KV_swarm_secrets") || d.contains("KV_swarm_configs")), "{:?}", perm.publish_deny);
        // not `>`: no other node's answers, no bucket's puts as they pass
        assert_eq!(perm.subscribe, vec!["_I.n-w1.>".to_string(), "berth.swarm.v1.node.w1.>".into(), "$LDS.>".into()]);
        let mut out = String::new();
        user_entry(&mut out, &User { name: "n-w1".into(), password: "h".into(), role: Role::Worker });
        assert!(out.contains("deny: [\"$JS.swarm.API.STREAM.MSG.GET.KV_swarm_secrets\""), "{out}");
        let mut out = String::new();
        user_entry(&mut out, &User { name: "n-m1".into(), password: "h".into(), role: Role::Manager });
        assert!(!out.contains("deny"), "{out}");
    }

    #[test]
    fn join_user_may_only_ask_to_join() {
        let p = permissions(Role::Join, "join");
        assert_eq!(p.publish, vec![bus_schema::swarm::cluster::JOIN.to_string()]);
    }
}
