//! The records in memory: networks and sandboxes by ID, and the host ports each
//! sandbox holds. Lookups by name, ID or ID prefix, as Docker resolves them.

use bus_schema::BusError;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use crate::ports::{self, Reservation};
use crate::store::{EndpointRecord, NetworkRecord, SandboxRecord};

/// Everything the service knows, behind its lock.
#[derive(Default)]
pub struct State {
    pub networks: BTreeMap<String, NetworkRecord>,
    pub sandboxes: BTreeMap<String, SandboxRecord>,
    /// Host ports held for each sandbox (sockets bound, never listening).
    pub reservations: HashMap<String, Vec<Reservation>>,
}

impl State {
    pub fn find_network(&self, key: &str) -> Result<&NetworkRecord, BusError> {
        if let Some(n) = self.networks.get(key) {
            return Ok(n);
        }
        if let Some(n) = self.networks.values().find(|n| n.name == key) {
            return Ok(n);
        }
        let m: Vec<&NetworkRecord> = if key.is_empty() {
            vec![]
        } else {
            self.networks
                .values()
                .filter(|n| n.id.starts_with(key))
                .collect()
        };
        match m.len() {
            0 => Err(BusError::not_found(format!("network {key} not found"))),
            1 => Ok(m[0]),
            n => Err(BusError::invalid(format!(
                "network {key} is ambiguous ({n} matches found based on ID prefix)"
            ))),
        }
    }

    pub fn find_sandbox(&self, key: &str) -> Option<&SandboxRecord> {
        self.sandboxes.get(key).or_else(|| {
            let key = key.trim_start_matches('/');
            self.sandboxes.values().find(|s| s.name == key).or_else(|| {
                let m: Vec<_> = self
                    .sandboxes
                    .values()
                    .filter(|s| s.container_id.starts_with(key))
                    .collect();
                if m.len() == 1 && !key.is_empty() {
                    Some(m[0])
                } else {
                    None
                }
            })
        })
    }

    pub fn endpoints_on<'a>(
        &'a self,
        net_id: &'a str,
    ) -> impl Iterator<Item = (&'a SandboxRecord, &'a EndpointRecord)> + 'a {
        self.sandboxes.values().flat_map(move |s| {
            s.endpoints
                .iter()
                .filter(move |e| e.network_id == net_id)
                .map(move |e| (s, e))
        })
    }

    pub fn used_ips(&self, net: &NetworkRecord) -> BTreeSet<Ipv4Addr> {
        let mut u: BTreeSet<Ipv4Addr> = net.aux.values().copied().collect();
        u.extend(net.gateway);
        u.extend(self.endpoints_on(&net.id).filter_map(|(_, e)| e.ip));
        u
    }

    /// IPv6 addresses of the endpoints on `net`.
    pub fn used_ips6(&self, net: &NetworkRecord) -> BTreeSet<std::net::Ipv6Addr> {
        self.endpoints_on(&net.id).filter_map(|(_, e)| e.ip6).collect()
    }

    pub fn port_taken(&self, proto: ports::Proto, ip: Ipv4Addr, port: u16) -> bool {
        self.sandboxes
            .values()
            .flat_map(|s| s.ports.iter())
            .any(|m| {
                m.proto == proto
                    && m.host_port == port
                    && (m.host_ip == ip || m.host_ip.is_unspecified() || ip.is_unspecified())
            })
    }

    pub fn default_gateway(&self) -> Option<Ipv4Addr> {
        self.networks
            .values()
            .find(|n| n.default_bridge)
            .and_then(|n| n.gateway)
    }
}
