//! What a node remembers of its swarm membership (`<root>/swarm/state.json`, 0600):
//! enough to start its swarm server and reconnect to the cluster after a restart. The
//! cluster's state itself is in the store.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// A manager's swarm server addresses (`ip:port`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerAddr {
    pub node_id: String,
    pub client: String,
    pub leaf: String,
    pub route: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalState {
    /// The swarm node ID.
    pub node_id: String,
    pub cluster_id: String,
    /// `manager` or `worker`: how the swarm server runs now.
    pub role: String,
    /// The address other nodes reach this one at (an IP).
    pub advertise_addr: String,
    /// Where the swarm server listens (`ip:port`, the client port; leaf +1, route +2).
    pub listen_addr: String,
    /// This node's user and password on the managers' servers.
    pub user: String,
    pub password: String,
    /// The local swarm service's user on its own server.
    pub local_user: String,
    pub local_password: String,
    /// Managers only: JetStream encryption key, system account password, route user.
    #[serde(default)]
    pub store_key: String,
    #[serde(default)]
    pub sys_password: String,
    #[serde(default)]
    pub route_user: String,
    #[serde(default)]
    pub route_password: String,
    /// The managers as last known (workers' leaf remotes, managers' routes).
    pub managers: Vec<ManagerAddr>,
    /// The managers' JetStream runs clustered (two or more managers ever).
    #[serde(default)]
    pub clustered: bool,
    /// Workers: the loopback port of their leaf server.
    #[serde(default)]
    pub local_port: u16,
}

impl LocalState {
    pub fn load(path: &Path) -> std::io::Result<Option<LocalState>> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        crate::natsconf::write_private(path, &serde_json::to_string_pretty(self).map_err(std::io::Error::other)?)
    }

    pub fn is_manager(&self) -> bool {
        self.role == "manager"
    }

    /// (client, leaf, route) addresses of this node's server.
    pub fn ports(&self) -> (String, String, String) {
        split_ports(&self.listen_addr, &self.advertise_addr)
    }

    pub fn own_addr(&self) -> ManagerAddr {
        let (client, leaf, route) = advertised(&self.listen_addr, &self.advertise_addr);
        ManagerAddr { node_id: self.node_id.clone(), client, leaf, route }
    }
}

/// The listening addresses derived from `--listen-addr ip:port`: client on the port,
/// leaf on port+1, route on port+2.
pub fn split_ports(listen: &str, _advertise: &str) -> (String, String, String) {
    let (ip, port) = host_port(listen);
    (join(&ip, port), join(&ip, port + 1), join(&ip, port + 2))
}

/// The addresses other nodes use: the advertise IP with the listen ports.
pub fn advertised(listen: &str, advertise: &str) -> (String, String, String) {
    let (_, port) = host_port(listen);
    let (aip, _) = host_port(advertise);
    (join(&aip, port), join(&aip, port + 1), join(&aip, port + 2))
}

/// `ip:port` or `[v6]:port` or a bare ip (port 2377).
pub fn host_port(s: &str) -> (String, u16) {
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once("]:") {
            return (h.to_string(), p.parse().unwrap_or(2377));
        }
        return (rest.trim_end_matches(']').to_string(), 2377);
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h.to_string(), p.parse().unwrap_or(2377)),
        _ => (s.to_string(), 2377),
    }
}

pub fn join(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_follow_the_listen_port() {
        assert_eq!(split_ports("0.0.0.0:2377", "10.0.0.1"), ("0.0.0.0:2377".into(), "0.0.0.0:2378".into(), "0.0.0.0:2379".into()));
        assert_eq!(advertised("0.0.0.0:4000", "10.0.0.1:2377").0, "10.0.0.1:4000");
        assert_eq!(host_port("10.1.2.3"), ("10.1.2.3".into(), 2377));
        assert_eq!(host_port("[::1]:5"), ("::1".into(), 5));
    }
}
