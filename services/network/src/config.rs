//! The service's settings: daemon.json's network keys (`bridge`, `bip`, `fixed-cidr`,
//! `default-address-pools`, `mtu`, `ip-masq`, `icc`, `ip-forward`, `iptables`, `ip`,
//! `dns*`) and the options Docker shows on bridge networks.

use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::ipam::{self, Pool};

pub const OPT_BRIDGE_NAME: &str = "com.docker.network.bridge.name";
pub const OPT_MASQ: &str = "com.docker.network.bridge.enable_ip_masquerade";
pub const OPT_ICC: &str = "com.docker.network.bridge.enable_icc";
pub const OPT_HOST_IP: &str = "com.docker.network.bridge.host_binding_ipv4";
pub const OPT_MTU: &str = "com.docker.network.driver.mtu";
pub const OPT_DEFAULT_BRIDGE: &str = "com.docker.network.bridge.default_bridge";

/// The service's settings, from daemon.json and the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `<root>/network`.
    pub dir: PathBuf,
    /// The node id: the firewall table and link marks carry it.
    pub node: String,
    /// The default bridge device (`bridge`, default `berth0`); None for `"none"`.
    pub bridge: Option<String>,
    /// daemon.json named the bridge: that one or none (when another node owns it, the
    /// service does not start). Otherwise `berth0` when it is free or the node's, else
    /// [`node_bridge_name`].
    pub bridge_explicit: bool,
    /// `bip`: the default bridge's address and prefix.
    pub bip: Option<(Ipv4Addr, u8)>,
    /// `fixed-cidr`: the default bridge's container range.
    pub fixed_cidr: Option<Ipv4Net>,
    pub pools: Vec<Pool>,
    pub mtu: u32,
    pub ip_masq: bool,
    pub icc: bool,
    pub ip_forward: bool,
    /// Program the firewall (`iptables`, default true).
    pub firewall: bool,
    /// `ip`: default host address for published ports.
    pub default_host_ip: Ipv4Addr,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub dns_opts: Vec<String>,
    /// The embedded DNS port (53; tests may use another).
    pub dns_port: u16,
    pub host_resolv_conf: PathBuf,
    pub host_hosts: PathBuf,
}

impl Config {
    pub fn from_daemon(
        cfg: &berth_config::DaemonConfig,
        root: &Path,
        node: &str,
    ) -> Result<Config, String> {
        let s = |k: &str| {
            cfg.other
                .get(k)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let bridge_explicit = s("bridge").is_some_and(|b| !b.is_empty());
        let bridge = match s("bridge").as_deref() {
            None | Some("") => Some(DEFAULT_BRIDGE.to_string()),
            Some("none") => None,
            Some(b) => Some(b.to_string()),
        };
        let bip = match &cfg.bip {
            None => None,
            Some(b) => {
                let n: ipnet::Ipv4Net = b.parse().map_err(|_| format!("invalid bip {b}"))?;
                Some((n.addr(), n.prefix_len()))
            }
        };
        let fixed_cidr = match s("fixed-cidr") {
            None => None,
            Some(c) => Some(ipam::parse_net(&c).map_err(|e| e.to_string())?),
        };
        let pools =
            ipam::pools_from_config(&cfg.default_address_pools).map_err(|e| e.to_string())?;
        let default_host_ip = match s("ip") {
            None => Ipv4Addr::UNSPECIFIED,
            Some(ip) => ip.parse().map_err(|_| format!("invalid ip {ip}"))?,
        };
        Ok(Config {
            dir: root.join("network"),
            node: node.to_string(),
            bridge,
            bridge_explicit,
            bip,
            fixed_cidr,
            pools,
            mtu: cfg.mtu.unwrap_or(1500),
            ip_masq: cfg.ip_masq.unwrap_or(true),
            icc: cfg
                .other
                .get("icc")
                .and_then(|v| v.as_bool())
                .unwrap_or(true),
            ip_forward: cfg.ip_forward.unwrap_or(true),
            firewall: cfg.iptables.unwrap_or(true),
            default_host_ip,
            dns: cfg.dns.clone(),
            dns_search: cfg.dns_search.clone(),
            dns_opts: cfg.dns_opts.clone(),
            dns_port: 53,
            host_resolv_conf: PathBuf::from("/etc/resolv.conf"),
            host_hosts: PathBuf::from("/etc/hosts"),
        })
    }

    /// The alias that marks this node's links (bridges, veths' host ends).
    pub fn mark(&self) -> String {
        format!("berth:{}", self.node)
    }
}

/// The default bridge of the first node on a host.
pub const DEFAULT_BRIDGE: &str = "berth0";

/// The default bridge of a node that finds [`DEFAULT_BRIDGE`] another's: `berth` and
/// the node id, within the kernel's 15 characters.
pub fn node_bridge_name(node: &str) -> String {
    let id: String = node.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let mut n = format!("berth{id}");
    n.truncate(15);
    n
}

/// The node whose mark a link carries (`berth:<node>`).
pub fn marked_by(alias: Option<&str>) -> Option<&str> {
    alias.and_then(|a| a.strip_prefix("berth:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_daemon_json() {
        let d = berth_config::DaemonConfig::parse(
            r#"{"bridge":"bx0","bip":"10.9.0.1/24","fixed-cidr":"10.9.0.128/25","icc":false,"ip":"127.0.0.1",
                "default-address-pools":[{"base":"10.10.0.0/16","size":24}],"mtu":1400,"iptables":false}"#,
            "t",
        )
        .unwrap();
        let c = Config::from_daemon(&d, Path::new("/r"), "n1").unwrap();
        assert_eq!(c.bridge.as_deref(), Some("bx0"));
        assert_eq!(c.bip, Some((Ipv4Addr::new(10, 9, 0, 1), 24)));
        assert_eq!(c.fixed_cidr, Some("10.9.0.128/25".parse().unwrap()));
        assert!(!c.icc);
        assert!(!c.firewall);
        assert_eq!(c.mtu, 1400);
        assert_eq!(c.default_host_ip, Ipv4Addr::LOCALHOST);
        assert_eq!(c.dir, PathBuf::from("/r/network"));
        let none = berth_config::DaemonConfig::parse(r#"{"bridge":"none"}"#, "t").unwrap();
        assert_eq!(
            Config::from_daemon(&none, Path::new("/r"), "n")
                .unwrap()
                .bridge,
            None
        );
        let dflt = berth_config::DaemonConfig::default();
        assert_eq!(
            Config::from_daemon(&dflt, Path::new("/r"), "n")
                .unwrap()
                .bridge
                .as_deref(),
            Some("berth0")
        );
        assert!(c.bridge_explicit);
        assert!(!Config::from_daemon(&dflt, Path::new("/r"), "n").unwrap().bridge_explicit);
    }

    #[test]
    fn node_bridge_names_fit_the_kernel() {
        assert_eq!(node_bridge_name("3f9a0c2b7d1e"), "berth3f9a0c2b7d");
        assert_eq!(node_bridge_name("n-1"), "berthn1");
        assert_eq!(marked_by(Some("berth:n1")), Some("n1"));
        assert_eq!(marked_by(Some("other")), None);
        assert_eq!(marked_by(None), None);
    }
}
