//! What clients see: Docker's network inspect JSON, a container's endpoint settings,
//! the sandbox reply, and the filters of `network ls` and `network prune`.

use bus_schema::network::Sandbox;
use bus_schema::{docker, BusError};
use std::collections::HashMap;

use crate::ports;
use crate::service::NetworkService;
use crate::state::State;
use crate::store::{EndpointRecord, NetworkRecord, SandboxRecord};
use berth_rules::clock;
use berth_rules::filters::{labels_match, labels_select};

impl NetworkService {
    pub(crate) fn inspect_of(
        &self,
        st: &State,
        n: &NetworkRecord,
        with_containers: bool,
    ) -> docker::NetworkInspect {
        let mut cfgs = Vec::new();
        if let Some(sub) = n.subnet {
            cfgs.push(docker::IpamConfig {
                subnet: Some(sub.to_string()),
                ip_range: n.ip_range.map(|r| r.to_string()),
                gateway: n.gateway.map(|g| g.to_string()),
                auxiliary_addresses: if n.aux.is_empty() {
                    None
                } else {
                    Some(
                        n.aux
                            .iter()
                            .map(|(k, v)| (k.clone(), v.to_string()))
                            .collect(),
                    )
                },
            });
        }
        if let Some(s6) = &n.subnet6 {
            // as given: an unset gateway stays unset (Moby lists only what was asked)
            cfgs.push(docker::IpamConfig {
                subnet: Some(s6.subnet.to_string()),
                ip_range: s6.given_range.clone(),
                gateway: s6.given_gateway.clone(),
                auxiliary_addresses: None,
            });
        }
        let mut containers = HashMap::new();
        if with_containers {
            for (s, e) in st.endpoints_on(&n.id) {
                containers.insert(
                    s.container_id.clone(),
                    docker::EndpointResource {
                        name: Some(s.name.clone()),
                        endpoint_id: Some(e.endpoint_id.clone()),
                        mac_address: Some(e.mac.clone()),
                        ipv4_address: Some(
                            e.ip.map(|ip| format!("{ip}/{}", e.prefix))
                                .unwrap_or_default(),
                        ),
                        ipv6_address: Some(
                            e.ip6
                                .zip(n.subnet6.as_ref())
                                .map(|(ip, s)| format!("{ip}/{}", s.subnet.prefix_len()))
                                .unwrap_or_default(),
                        ),
                    },
                );
            }
        }
        docker::NetworkInspect {
            name: Some(n.name.clone()),
            id: Some(n.id.clone()),
            created: Some(n.created.clone()),
            scope: Some("local".into()),
            driver: Some(n.driver.clone()),
            enable_ipv4: Some(true),
            enable_ipv6: Some(n.enable_ipv6),
            ipam: Some(docker::Ipam {
                driver: Some("default".into()),
                config: Some(cfgs),
                // Moby's nil map unless the create gave options (the CLI sends {})
                options: n.ipam_options.clone().map(|o| o.into_iter().collect()),
            }),
            internal: Some(n.internal),
            attachable: Some(n.attachable),
            ingress: Some(false),
            config_from: Some(docker::ConfigReference {
                network: Some(String::new()),
            }),
            config_only: Some(false),
            options: Some(n.options.clone().into_iter().collect()),
            labels: Some(n.labels.clone().into_iter().collect()),
            peers: None,
            containers: Some(containers),
            services: None,
            status: None,
        }
    }

    pub(crate) fn endpoint_settings(
        &self,
        st: &State,
        e: &EndpointRecord,
    ) -> docker::EndpointSettings {
        let n = st.networks.get(&e.network_id);
        docker::EndpointSettings {
            // Moby's EndpointIPAMConfig: null unless something was asked, then only
            // the keys asked (`omitempty`)
            ipam_config: (e.requested_ip.is_some()
                || e.requested_ip6.is_some()
                || !e.link_local.is_empty())
            .then(|| docker::EndpointIpamConfig {
                ipv4_address: e.requested_ip.clone(),
                ipv6_address: e.requested_ip6.clone(),
                link_local_ips: Some(e.link_local.clone()).filter(|l| !l.is_empty()),
            }),
            links: if e.links.is_empty() {
                None
            } else {
                Some(e.links.clone())
            },
            mac_address: Some(e.mac.clone()),
            aliases: if e.aliases.is_empty() {
                None
            } else {
                Some(e.aliases.clone())
            },
            driver_opts: if e.driver_opts.is_empty() {
                None
            } else {
                Some(e.driver_opts.clone().into_iter().collect())
            },
            gw_priority: Some(e.gw_priority),
            network_id: Some(e.network_id.clone()),
            endpoint_id: Some(e.endpoint_id.clone()),
            gateway: Some(
                n.and_then(|n| n.gateway)
                    .filter(|_| e.ip.is_some())
                    .map(|g| g.to_string())
                    .unwrap_or_default(),
            ),
            ip_address: Some(e.ip.map(|i| i.to_string()).unwrap_or_default()),
            ip_prefix_len: Some(e.prefix as i64),
            ipv6_gateway: Some(
                n.and_then(|n| n.subnet6.as_ref())
                    .filter(|_| e.ip6.is_some())
                    .map(|s| s.gateway.to_string())
                    .unwrap_or_default(),
            ),
            global_ipv6_address: Some(e.ip6.map(|i| i.to_string()).unwrap_or_default()),
            global_ipv6_prefix_len: Some(
                n.and_then(|n| n.subnet6.as_ref())
                    .filter(|_| e.ip6.is_some())
                    .map(|s| s.subnet.prefix_len() as i64)
                    .unwrap_or(0),
            ),
            dns_names: if e.dns_names.is_empty() {
                None
            } else {
                Some(e.dns_names.clone())
            },
        }
    }

    pub(crate) fn sandbox_reply(&self, st: &State, s: &SandboxRecord) -> Sandbox {
        let mut networks = HashMap::new();
        for e in &s.endpoints {
            if let Some(n) = st.networks.get(&e.network_id) {
                networks.insert(n.name.clone(), self.endpoint_settings(st, e));
            } else if let Some(name) = &e.swarm_network {
                networks.insert(name.clone(), self.endpoint_settings(st, e));
            }
        }
        Sandbox {
            key: s.key.clone(),
            networks,
            ports: ports::port_map(&s.all_ports, &s.ports),
            resolv_conf: s.resolv_conf.clone(),
            hosts: s.hosts.clone(),
        }
    }
    pub(crate) fn list_filtered(
        &self,
        st: &State,
        filters: &HashMap<String, Vec<String>>,
    ) -> Result<Vec<docker::NetworkInspect>, BusError> {
        for k in filters.keys() {
            if !["driver", "id", "label", "name", "scope", "type", "dangling"].contains(&k.as_str())
            {
                return Err(BusError::invalid(format!("invalid filter '{k}'")));
            }
        }
        if let Some(v) = filters.get("type") {
            for t in v {
                if t != "custom" && t != "builtin" {
                    return Err(BusError::invalid(format!("invalid filter: 'type'='{t}'")));
                }
            }
        }
        let dangling = match filters.get("dangling").and_then(|v| v.first()) {
            None => None,
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" => Some(true),
                "false" | "0" => Some(false),
                _ => return Err(BusError::invalid(format!("invalid filter 'dangling={v}'"))),
            },
        };
        let mut out = Vec::new();
        let mut nets: Vec<&NetworkRecord> = st.networks.values().collect();
        nets.sort_by(|a, b| a.created.cmp(&b.created).then(a.name.cmp(&b.name)));
        for n in nets {
            let any = |k: &str, f: &dyn Fn(&str) -> bool| {
                filters
                    .get(k)
                    .is_none_or(|v| v.is_empty() || v.iter().any(|x| f(x)))
            };
            if !any("driver", &|d| n.driver == d) {
                continue;
            }
            if !any("id", &|i| n.id.starts_with(i)) {
                continue;
            }
            if !any("name", &|x| n.name.contains(x)) {
                continue;
            }
            if !any("scope", &|s| s == "local") {
                continue;
            }
            if !any("type", &|t| (t == "builtin") == n.predefined()) {
                continue;
            }
            if let Some(ls) = filters.get("label") {
                if !labels_match(&n.labels, ls) {
                    continue;
                }
            }
            if let Some(d) = dangling {
                let used = st.endpoints_on(&n.id).next().is_some();
                let is_dangling = !used && !n.predefined();
                if d != is_dangling {
                    continue;
                }
            }
            out.push(self.inspect_of(st, n, false));
        }
        Ok(out)
    }
}

/// The networks `docker network prune` removes: user networks without endpoints
/// that the filters (`until`, `label`, `label!`) select.
pub(crate) fn prune_candidates(
    st: &State,
    filters: &HashMap<String, Vec<String>>,
) -> Result<Vec<NetworkRecord>, BusError> {
    for k in filters.keys() {
        if !["until", "label", "label!"].contains(&k.as_str()) {
            return Err(BusError::invalid(format!("invalid filter '{k}'")));
        }
    }
    let until = berth_rules::filters::prune_until(filters).map_err(BusError::invalid)?;
    let none = Vec::new();
    let label = filters.get("label").unwrap_or(&none);
    let not_label = filters.get("label!").unwrap_or(&none);
    Ok(st
        .networks
        .values()
        .filter(|n| !n.predefined())
        .filter(|n| st.endpoints_on(&n.id).next().is_none())
        .filter(|n| labels_select(&n.labels, label, not_label))
        // Moby keeps what was created after `until`
        .filter(|n| until.is_none_or(|u| clock::rfc3339_to_nanos(&n.created).is_some_and(|c| c <= u)))
        .cloned()
        .collect())
}
