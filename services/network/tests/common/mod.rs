//! A network service against a real nats-server and the real kernel, with unique
//! names (node id, bridge), and helpers that act from inside sandboxes.

#![allow(dead_code)]

use berth_bus::Bus;
use berth_network::NetworkClient;
use berth_network::{Config, NetworkApi, NetworkService};
use berth_test_support::Nats;
use bus_schema::network::*;
use bus_schema::{docker, event::Event};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use berth_test_support::{is_root, require_root};

pub fn hex(n: usize) -> String {
    berth_network::store::new_id()[..n].to_string()
}

pub struct Harness {
    pub nats: Nats,
    pub bus: Bus,
    pub node: String,
    pub dir: tempfile::TempDir,
    pub bridge: String,
    pub svc: Option<Arc<NetworkService>>,
    pub server: Option<tokio::task::JoinHandle<()>>,
    pub client: NetworkClient,
    pub events: Arc<Mutex<Vec<Event>>>,
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut Config)) -> Harness {
        let nats = Nats::start();
        let node = format!("t{}", hex(8));
        let bus = Bus::connect(&nats.url(), None, &node, "test")
            .await
            .unwrap();
        let dir = tempfile::Builder::new()
            .prefix("berth-net-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let bridge = format!("bt{}", hex(8));
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let mut sub = bus
            .client()
            .subscribe("berth.v1.events.network.>")
            .await
            .unwrap();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if let Ok(e) = bus_schema::decode::<Event>(&m.payload) {
                    ev.lock().unwrap().push(e);
                }
            }
        });
        let client = NetworkClient::new(bus.clone());
        let mut h = Harness {
            nats,
            bus,
            node,
            dir,
            bridge,
            svc: None,
            server: None,
            client,
            events,
        };
        let cfg = h.config();
        let mut cfg = cfg;
        f(&mut cfg);
        h.boot(cfg).await;
        h
    }

    pub fn config(&self) -> Config {
        let d =
            berth_config::DaemonConfig::parse(&format!(r#"{{"bridge":"{}"}}"#, self.bridge), "t")
                .unwrap();
        Config::from_daemon(&d, self.dir.path(), &self.node).unwrap()
    }

    pub async fn boot(&mut self, cfg: Config) {
        let (server, svc) = berth_network::start_with(self.bus.clone(), cfg)
            .await
            .expect("start network service");
        self.server = Some(tokio::spawn(async move {
            let _ = server.run().await;
        }));
        self.svc = Some(svc);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// Stop the service as a crash would: no cleanup.
    pub async fn crash(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
            let _ = s.await;
        }
        self.svc = None;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    pub fn svc(&self) -> &NetworkService {
        self.svc.as_ref().unwrap()
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn table(&self) -> String {
        berth_network::firewall::table_name(&self.node)
    }

    pub fn events(&self) -> Vec<(String, String, HashMap<String, String>)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e.action.clone(),
                    e.actor.id.clone(),
                    e.actor.attributes.clone().into_iter().collect(),
                )
            })
            .collect()
    }

    pub async fn create_net(
        &self,
        name: &str,
        f: impl FnOnce(&mut docker::NetworkCreateRequest),
    ) -> String {
        let mut body = docker::NetworkCreateRequest {
            name: name.into(),
            ..Default::default()
        };
        f(&mut body);
        self.client
            .network_create(NetworkCreate { body })
            .await
            .unwrap()
            .id
    }

    pub async fn sandbox(
        &self,
        id: &str,
        name: &str,
        mode: &str,
        f: impl FnOnce(&mut SandboxCreate),
    ) -> Result<Sandbox, bus_schema::BusError> {
        let mut r = sandbox_req(id, name, mode);
        f(&mut r);
        self.client.sandbox_create(r).await
    }

    /// Remove every sandbox and user network, stop gracefully, and check that
    /// nothing of the node is left in the kernel.
    pub async fn finish(mut self) {
        let nets = self
            .client
            .network_list(NetworkList::default())
            .await
            .unwrap();
        for n in &nets {
            let ins = self
                .client
                .network_inspect(NetworkInspect {
                    id: n.id.clone().unwrap(),
                    verbose: false,
                })
                .await
                .unwrap();
            for cid in ins.containers.unwrap_or_default().keys() {
                self.client
                    .sandbox_remove(SandboxRemove {
                        container_id: cid.clone(),
                    })
                    .await
                    .unwrap();
            }
        }
        for n in nets {
            let name = n.name.unwrap();
            if !["bridge", "host", "none"].contains(&name.as_str()) {
                self.client
                    .network_remove(NetworkRemove { id: name })
                    .await
                    .unwrap();
            }
        }
        self.svc().shutdown().await;
        self.crash().await;
        assert_clean(&self.node, self.root());
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // on failure: take away what the node may have left
        force_clean(&self.node, self.dir.path());
    }
}

pub fn sandbox_req(id: &str, name: &str, mode: &str) -> SandboxCreate {
    SandboxCreate {
        container_id: id.into(),
        name: name.into(),
        hostname: id[..id.len().min(12)].into(),
        domainname: String::new(),
        network_mode: mode.into(),
        endpoints: vec![],
        port_bindings: HashMap::new(),
        publish_all: false,
        exposed_ports: vec![],
        dns: vec![],
        dns_search: vec![],
        dns_options: vec![],
        extra_hosts: vec![],
    }
}

pub fn cid() -> String {
    berth_network::store::new_id()
}

/// Links whose alias marks them as the node's (bridges and veths' host ends).
pub fn node_links(node: &str) -> Vec<String> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/class/net") {
        for e in rd.flatten() {
            let alias = std::fs::read_to_string(e.path().join("ifalias")).unwrap_or_default();
            if alias.trim() == format!("berth:{node}") {
                v.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    v
}

/// Ports (veths) attached to a bridge.
pub fn bridge_ports(bridge: &str) -> Vec<String> {
    std::fs::read_dir(format!("/sys/class/net/{bridge}/brif"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The bridge's ports once they are down to `want` or the kernel has had 10 s to
/// delete the veths of namespaces that are gone (it does that in the background).
pub fn bridge_ports_settled(bridge: &str, want: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let p = bridge_ports(bridge);
        if p.len() <= want || std::time::Instant::now() > deadline {
            return p;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

pub fn nft_table(table: &str) -> Option<String> {
    let o = std::process::Command::new("nft")
        .args(["list", "table", "ip", table])
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

pub fn mounts_under(root: &Path) -> Vec<String> {
    let r = root.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&r))
        .collect()
}

/// The node's links once none is left or the kernel has had 10 s to delete the veths
/// of namespaces that are gone (it does that in the background).
pub fn node_links_settled(node: &str) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let l = node_links(node);
        if l.is_empty() || std::time::Instant::now() > deadline {
            return l;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

pub fn assert_clean(node: &str, root: &Path) {
    assert_eq!(node_links_settled(node), Vec::<String>::new(), "links left");
    assert!(
        nft_table(&berth_network::firewall::table_name(node)).is_none(),
        "firewall table left"
    );
    let ns: Vec<String> = mounts_under(root)
        .into_iter()
        .filter(|m| m.contains("/network/netns/"))
        .collect();
    assert!(ns.is_empty(), "namespaces left: {ns:?}");
}

pub fn force_clean(node: &str, root: &Path) {
    for l in node_links(node) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &l])
            .status();
    }
    let t = berth_network::firewall::table_name(node);
    let _ = std::process::Command::new("nft")
        .args(["delete", "table", "ip", &t])
        .output();
    let mut ms = mounts_under(root);
    ms.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in ms {
        let _ = nix::mount::umount2(Path::new(&m), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Serve HTTP on `port` inside the namespace at `ns`: every request gets `body`.
pub async fn http_server_in(ns: &str, port: u16, body: &'static str) {
    let l = berth_network::netns::run_in(PathBuf::from(ns), move || {
        std::net::TcpListener::bind(("0.0.0.0", port))
    })
    .await
    .unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { break };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = c.read(&mut buf);
                let resp = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(resp.as_bytes());
            });
        }
    });
}

/// GET / from `addr`, from the host (ns None) or inside a namespace.
pub async fn http_get(ns: Option<&str>, addr: SocketAddr) -> Result<String, String> {
    let f = move || -> std::io::Result<String> {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        c.set_read_timeout(Some(Duration::from_secs(3)))?;
        c.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        Ok(s)
    };
    let r = match ns {
        Some(p) => berth_network::netns::run_in(PathBuf::from(p), f).await,
        None => tokio::task::spawn_blocking(f).await.unwrap(),
    };
    r.map_err(|e| e.to_string())
        .and_then(|s| s.split("\r\n\r\n").nth(1).map(str::to_string).ok_or(s))
}

/// A DNS A query from inside a namespace.
pub async fn resolve_in(ns: &str, server: Ipv4Addr, name: &str) -> Result<Vec<Ipv4Addr>, String> {
    let name = name.to_string();
    berth_network::netns::run_in(PathBuf::from(ns), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(rt.block_on(berth_network::dns::query_a(
            SocketAddr::from((server, 53)),
            &name,
            None,
        )))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|c| format!("{c:?}"))
}

pub fn ip_of(s: &Sandbox, net: &str) -> Ipv4Addr {
    s.networks[net]
        .ip_address
        .as_ref()
        .unwrap()
        .parse()
        .unwrap()
}

pub fn nameserver(resolv: &str) -> Ipv4Addr {
    resolv
        .lines()
        .find_map(|l| l.strip_prefix("nameserver "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
