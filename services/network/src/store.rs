//! The service's records under `<root>/network/`: one JSON file per network
//! (`networks/<id>.json`) and per sandbox (`sandboxes/<container id>.json`), each
//! written atomically. The kernel state (links, addresses, rules, DNS names) is
//! derived from these records and reconciled against them at start.

use ipnet::Ipv4Net;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::ports::{PortMapping, Proto};

pub const DRIVER_BRIDGE: &str = "bridge";
pub const DRIVER_HOST: &str = "host";
pub const DRIVER_NULL: &str = "null";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub id: String,
    pub name: String,
    /// bridge, host or null.
    pub driver: String,
    /// RFC 3339 with nanoseconds.
    pub created: String,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub attachable: bool,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// As given at create: none (`"Options": null`, Moby's nil map) or a map.
    #[serde(default)]
    pub ipam_options: Option<BTreeMap<String, String>>,
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub ip_range: Option<Ipv4Net>,
    #[serde(default)]
    pub aux: BTreeMap<String, Ipv4Addr>,
    /// The user gave the subnet (`--ip` is allowed only then, as in Docker).
    #[serde(default)]
    pub user_ipam: bool,
    /// The bridge device (bridge driver only).
    #[serde(default)]
    pub bridge: String,
    /// The default `bridge` network: no DNS, Docker's default-bridge options.
    #[serde(default)]
    pub default_bridge: bool,
    #[serde(default = "yes")]
    pub masquerade: bool,
    #[serde(default = "yes")]
    pub icc: bool,
    #[serde(default)]
    pub mtu: u32,
    /// Host address for published ports without one (`host_binding_ipv4`).
    #[serde(default = "any")]
    pub host_ip: Ipv4Addr,
    /// Last address handed out, so a freed one is not reused at once.
    #[serde(default)]
    pub last_ip: Option<Ipv4Addr>,
    /// `EnableIPv6`: endpoints get an address of `subnet6` too.
    #[serde(default)]
    pub enable_ipv6: bool,
    /// The IPv6 subnet given at create (listed in IPAM even without EnableIPv6, as Moby).
    #[serde(default)]
    pub subnet6: Option<crate::ipam::Subnet6>,
}

fn yes() -> bool {
    true
}
fn any() -> Ipv4Addr {
    Ipv4Addr::UNSPECIFIED
}

impl NetworkRecord {
    /// A network the node makes itself (`host`, `none`, the default `bridge`): a new
    /// id, no options, labels or IPAM of the user's.
    pub fn builtin(name: &str, driver: &str) -> NetworkRecord {
        NetworkRecord {
            id: new_id(),
            name: name.into(),
            driver: driver.into(),
            created: now_rfc3339(),
            internal: false,
            attachable: false,
            options: BTreeMap::new(),
            labels: BTreeMap::new(),
            ipam_options: None,
            subnet: None,
            gateway: None,
            ip_range: None,
            aux: BTreeMap::new(),
            user_ipam: false,
            bridge: String::new(),
            default_bridge: false,
            masquerade: false,
            icc: true,
            mtu: 0,
            host_ip: Ipv4Addr::UNSPECIFIED,
            last_ip: None,
            enable_ipv6: false,
            subnet6: None,
        }
    }

    pub fn predefined(&self) -> bool {
        self.default_bridge || self.driver == DRIVER_HOST || self.driver == DRIVER_NULL
    }
    /// User-defined bridges get the embedded DNS; the default bridge does not.
    pub fn has_dns(&self) -> bool {
        self.driver == DRIVER_BRIDGE && !self.default_bridge
    }
    pub fn is_bridge(&self) -> bool {
        self.driver == DRIVER_BRIDGE
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub network_id: String,
    pub endpoint_id: String,
    /// Interface inside the sandbox (`eth0`); empty for host/none endpoints.
    #[serde(default)]
    pub ifname: String,
    /// Host side of the veth pair.
    #[serde(default)]
    pub host_veth: String,
    #[serde(default)]
    pub mac: String,
    pub ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub dns_names: Vec<String>,
    #[serde(default)]
    pub links: Vec<String>,
    #[serde(default)]
    pub driver_opts: BTreeMap<String, String>,
    #[serde(default)]
    pub gw_priority: i64,
    /// `--ip` as asked (shown back as IPAMConfig).
    #[serde(default)]
    pub requested_ip: Option<String>,
    /// The IPv6 address (networks with EnableIPv6), prefix of the network's subnet6.
    #[serde(default)]
    pub ip6: Option<std::net::Ipv6Addr>,
    /// `--ip6` as asked.
    #[serde(default)]
    pub requested_ip6: Option<String>,
    /// `--link-local-ip`s as asked, each on the interface too.
    #[serde(default)]
    pub link_local: Vec<String>,
    /// A swarm overlay network's endpoint (its name): the swarm service holds its
    /// address and its veth (`network_id` is the swarm network's ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swarm_network: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub container_id: String,
    pub name: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub domainname: String,
    /// HostConfig.NetworkMode as given.
    pub mode: String,
    /// Network namespace path; empty for the host's.
    pub key: String,
    /// The namespace is this sandbox's own (not the host's nor another container's).
    pub owns_netns: bool,
    /// `container:<id>`: the sandbox whose namespace this one shares.
    #[serde(default)]
    pub joined: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<EndpointRecord>,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// The network whose endpoint the published ports go to (the gateway endpoint).
    #[serde(default)]
    pub ports_network: Option<String>,
    #[serde(default)]
    pub all_ports: Vec<(u16, Proto)>,
    #[serde(default)]
    pub dns: Vec<String>,
    #[serde(default)]
    pub dns_search: Vec<String>,
    #[serde(default)]
    pub dns_options: Vec<String>,
    #[serde(default)]
    pub extra_hosts: Vec<String>,
    #[serde(default)]
    pub resolv_conf: String,
    #[serde(default)]
    pub hosts: String,
}

/// Files under `<root>/network/`.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Store> {
        let s = Store { dir: dir.into() };
        for d in [s.networks_dir(), s.sandboxes_dir(), s.netns_dir()] {
            std::fs::create_dir_all(d)?;
        }
        Ok(s)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn networks_dir(&self) -> PathBuf {
        self.dir.join("networks")
    }
    pub fn sandboxes_dir(&self) -> PathBuf {
        self.dir.join("sandboxes")
    }
    /// Network namespace files (bind mounts), one per container.
    pub fn netns_dir(&self) -> PathBuf {
        self.dir.join("netns")
    }
    pub fn netns_path(&self, container_id: &str) -> PathBuf {
        self.netns_dir().join(container_id)
    }

    pub fn save_network(&self, n: &NetworkRecord) -> std::io::Result<()> {
        save(&self.networks_dir().join(format!("{}.json", n.id)), n)
    }
    pub fn delete_network(&self, id: &str) -> std::io::Result<()> {
        remove(&self.networks_dir().join(format!("{id}.json")))
    }
    pub fn load_networks(&self) -> Vec<NetworkRecord> {
        load_all(&self.networks_dir())
    }

    /// Sandboxes do not outlive a reboot (their namespaces do not), so their records
    /// are renamed into place atomically but not fsynced: a crash of the service
    /// sees the old record or the new one, and a power loss finds no namespace to
    /// keep anyway.
    pub fn save_sandbox(&self, s: &SandboxRecord) -> std::io::Result<()> {
        let path = self
            .sandboxes_dir()
            .join(format!("{}.json", s.container_id));
        let data = serde_json::to_vec(s).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, data)?;
        std::fs::rename(&tmp, &path)
    }
    pub fn delete_sandbox(&self, id: &str) -> std::io::Result<()> {
        remove(&self.sandboxes_dir().join(format!("{id}.json")))
    }
    pub fn load_sandboxes(&self) -> Vec<SandboxRecord> {
        load_all(&self.sandboxes_dir())
    }
}

fn save<T: Serialize>(path: &Path, v: &T) -> std::io::Result<()> {
    let data = serde_json::to_vec_pretty(v).map_err(std::io::Error::other)?;
    berth_config::paths::write_atomic(path, &data)
}

fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn load_all<T: DeserializeOwned>(dir: &Path) -> Vec<T> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return v;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        match std::fs::read(&p)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(r) => v.push(r),
            Err(e) => tracing::warn!(path = %p.display(), error = %e, "skipping unreadable record"),
        }
    }
    v
}

pub use berth_rules::clock::now_rfc3339;
pub use berth_rules::id::new_id;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_roundtrip_on_disk() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path().join("network")).unwrap();
        let n = NetworkRecord {
            id: new_id(),
            name: "web".into(),
            driver: DRIVER_BRIDGE.into(),
            created: now_rfc3339(),
            internal: false,
            attachable: false,
            options: BTreeMap::new(),
            labels: BTreeMap::from([("a".into(), "b".into())]),
            ipam_options: None,
            subnet: Some("172.18.0.0/16".parse().unwrap()),
            gateway: Some(Ipv4Addr::new(172, 18, 0, 1)),
            ip_range: None,
            aux: BTreeMap::new(),
            user_ipam: false,
            bridge: "br-0123456789ab".into(),
            default_bridge: false,
            masquerade: true,
            icc: true,
            mtu: 1500,
            host_ip: Ipv4Addr::UNSPECIFIED,
            last_ip: None,
            enable_ipv6: true,
            subnet6: Some(crate::ipam::Subnet6::parse("fd00:1::/64", None, Some("fd00:1::fe")).unwrap()),
        };
        s.save_network(&n).unwrap();
        assert_eq!(s.load_networks(), vec![n.clone()]);
        assert_eq!(n.id.len(), 64);
        assert!(n.created.contains('T'));
        s.delete_network(&n.id).unwrap();
        s.delete_network(&n.id).unwrap();
        assert!(s.load_networks().is_empty());
        // a torn file is skipped, not fatal
        std::fs::write(s.networks_dir().join("x.json"), b"{").unwrap();
        assert!(s.load_networks().is_empty());
    }
}
