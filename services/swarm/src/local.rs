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

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// Autolock: the store key and the node's TLS key sealed with the unlock key
    /// ([`crate::lock`]); on disk `store_key` is then empty and the key file absent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sealed: String,
    /// In memory: the key-encryption key while autolock is on ([`LocalState::save`] seals).
    #[serde(skip)]
    pub kek: Option<[u8; 32]>,
    /// In memory: the node's TLS key once it left the disk (autolock on, or unlocked).
    #[serde(skip)]
    pub node_key: Option<std::sync::Arc<crate::lock::SecretFile>>,
}

impl LocalState {
    pub fn load(path: &Path) -> std::io::Result<Option<LocalState>> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Write the state (0600, atomically). With autolock on the secrets go sealed and the
    /// node's TLS key file is removed; with it off they go in clear and the key file is
    /// written back from memory if it had left the disk.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let files = crate::natsconf::Files::new(path.parent().unwrap_or(Path::new("/")));
        let mut disk = self.clone();
        match &self.kek {
            Some(kek) => {
                let node_key_pem = match &self.node_key {
                    Some(f) => f.read()?,
                    None => std::fs::read_to_string(files.key())?,
                };
                disk.sealed = crate::lock::seal(kek, &crate::lock::Sealed { store_key: self.store_key.clone(), node_key_pem });
                disk.store_key.clear();
            }
            None => {
                disk.sealed.clear();
                if let Some(f) = &self.node_key {
                    if !files.key().exists() {
                        crate::natsconf::write_private(&files.key(), &f.read()?)?;
                    }
                }
            }
        }
        crate::natsconf::write_private(path, &serde_json::to_string_pretty(&disk).map_err(std::io::Error::other)?)?;
        if self.kek.is_some() {
            match std::fs::remove_file(files.key()) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether the state on disk is sealed (a locked manager until unlocked).
    pub fn is_sealed(&self) -> bool {
        !self.sealed.is_empty() && self.kek.is_none()
    }

    /// Open the sealed secrets with `unlock_key`: Docker's errors for a malformed key
    /// (invalid argument) and for the wrong one (unauthorized).
    pub fn unseal(&mut self, unlock_key: &str) -> Result<(), bus_schema::BusError> {
        use bus_schema::{BusError, ErrorKind};
        let kek = crate::lock::kek(unlock_key).map_err(BusError::invalid)?;
        let s = crate::lock::open(&kek, &self.sealed).ok_or_else(|| BusError::new(ErrorKind::Unauthorized, crate::lock::ERR_WRONG_KEY))?;
        self.node_key = Some(std::sync::Arc::new(crate::lock::SecretFile::new(&s.node_key_pem).map_err(|e| BusError::internal(e.to_string()))?));
        self.store_key = s.store_key;
        self.kek = Some(kek);
        Ok(())
    }

    /// Turn sealing on (with `unlock_key`) or off (empty): the TLS key moves to memory
    /// first so the running server keeps reading it; the caller saves.
    pub fn set_unlock_key(&mut self, files: &crate::natsconf::Files, unlock_key: &str) -> std::io::Result<()> {
        if unlock_key.is_empty() {
            self.kek = None;
            return Ok(());
        }
        if self.node_key.is_none() {
            self.node_key = Some(std::sync::Arc::new(crate::lock::SecretFile::new(&std::fs::read_to_string(files.key())?)?));
        }
        self.kek = Some(crate::lock::kek(unlock_key).map_err(std::io::Error::other)?);
        Ok(())
    }

    /// The TLS key file the swarm server reads.
    pub fn key_file(&self, files: &crate::natsconf::Files) -> std::path::PathBuf {
        match &self.node_key {
            Some(f) => f.path(),
            None => files.key(),
        }
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
