//! Networks: the predefined ones (`bridge`, `host`, `none`) and user-defined
//! bridges; each bridge network has a bridge device marked as the node's, a subnet
//! from the pools (or the user's), and its embedded DNS.

use bus_schema::event::Action;
use bus_schema::{docker, BusError};
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use crate::config::*;
use crate::ipam;
use crate::link::LinkError;
use crate::service::{internal, HostLock, NetworkService};
use crate::state::State;
use crate::store::{self, NetworkRecord, DRIVER_BRIDGE, DRIVER_HOST, DRIVER_NULL};

/// Who a link belongs to, by the mark berth nodes put on theirs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Owner {
    /// No such link.
    Nobody,
    Us,
    /// Another berth node.
    Node(String),
    /// Not a berth node's (another program's, or the user's).
    Unmarked,
}

impl NetworkService {
    pub(crate) async fn ensure_predefined(&self, st: &mut State) -> Result<(), BusError> {
        for (name, driver) in [("host", DRIVER_HOST), ("none", DRIVER_NULL)] {
            if !st
                .networks
                .values()
                .any(|n| n.name == name && n.driver == driver)
            {
                let n = NetworkRecord::builtin(name, driver);
                self.store.save_network(&n)?;
                st.networks.insert(n.id.clone(), n);
            }
        }
        let existing = st.networks.values().find(|n| n.default_bridge).cloned();
        if self.cfg.bridge.is_none() {
            // `"bridge": "none"`: no default bridge network.
            if let Some(n) = existing {
                if st.endpoints_on(&n.id).next().is_none() {
                    self.delete_bridge(&n.bridge).await;
                    st.networks.remove(&n.id);
                    self.store.delete_network(&n.id)?;
                }
            }
            return Ok(());
        }
        let in_use = existing
            .as_ref()
            .is_some_and(|n| st.endpoints_on(&n.id).next().is_some());
        // the choice of the name and the subnet, and the bridge that shows them to
        // other nodes, under the host's lock
        let _lock = HostLock::take();
        let dev = match &existing {
            Some(n) if in_use => n.bridge.clone(),
            _ => self.choose_default_bridge().await?,
        };
        let mut n = existing.clone().unwrap_or_else(|| NetworkRecord {
            bridge: dev.clone(),
            default_bridge: true,
            masquerade: true,
            ..NetworkRecord::builtin("bridge", DRIVER_BRIDGE)
        });
        if !in_use {
            if n.bridge != dev {
                self.delete_bridge(&n.bridge).await;
                n.bridge = dev.clone();
            }
            let others: Vec<Ipv4Net> = st
                .networks
                .values()
                .filter(|o| o.id != n.id)
                .filter_map(|o| o.subnet)
                .collect();
            match self.cfg.bip {
                Some((gw, prefix)) => {
                    let sub = Ipv4Net::new(gw, prefix).map_err(internal)?.trunc();
                    n.subnet = Some(sub);
                    n.gateway = Some(gw);
                }
                None => {
                    // keep the recorded subnet unless someone else routes it now
                    let ours_up = self.k.links.link(&dev).await.ok().flatten().is_some();
                    let routed = self.k.links.routes();
                    let keep = n
                        .subnet
                        .is_some_and(|s| ours_up || !routed.iter().any(|r| ipam::overlaps(r, &s)));
                    if !keep {
                        let s = ipam::pick_subnet(&self.cfg.pools, &others, &routed)
                            .map_err(|e| BusError::internal(e.to_string()))?;
                        n.subnet = Some(s);
                        n.gateway = Some(ipam::first_host(&s));
                    }
                }
            }
            n.ip_range = self.cfg.fixed_cidr;
            n.masquerade = self.cfg.ip_masq;
            n.icc = self.cfg.icc;
            n.mtu = self.cfg.mtu;
            n.host_ip = self.cfg.default_host_ip;
            n.options = BTreeMap::from([
                (OPT_DEFAULT_BRIDGE.to_string(), "true".to_string()),
                (OPT_ICC.to_string(), self.cfg.icc.to_string()),
                (OPT_MASQ.to_string(), self.cfg.ip_masq.to_string()),
                (
                    OPT_HOST_IP.to_string(),
                    self.cfg.default_host_ip.to_string(),
                ),
                (OPT_BRIDGE_NAME.to_string(), dev.clone()),
                (OPT_MTU.to_string(), self.cfg.mtu.to_string()),
            ]);
            // the address goes on the bridge while the lock is held, so another
            // node picking at the same time sees the route
            self.ensure_bridge(&n).await.map_err(internal)?;
        }
        if existing.as_ref() != Some(&n) {
            self.store.save_network(&n)?;
        }
        st.networks.insert(n.id.clone(), n);
        Ok(())
    }

    /// Which node's mark the link `name` carries.
    pub(crate) async fn owner_of(&self, name: &str) -> Result<Owner, BusError> {
        Ok(match self.k.links.link(name).await.map_err(internal)? {
            None => Owner::Nobody,
            Some(l) => match marked_by(l.alias.as_deref()) {
                Some(n) if n == self.cfg.node => Owner::Us,
                Some(n) => Owner::Node(n.to_string()),
                None => Owner::Unmarked,
            },
        })
    }

    /// The default bridge's device: the one daemon.json names unless another node
    /// owns it (then the service does not start, naming that node); without a name,
    /// `berth0` when it is free or ours, else one named after the node.
    async fn choose_default_bridge(&self) -> Result<String, BusError> {
        let name = self.cfg.bridge.clone().unwrap_or_default();
        match self.owner_of(&name).await? {
            Owner::Nobody | Owner::Us => return Ok(name),
            Owner::Node(other) if self.cfg.bridge_explicit => {
                return Err(BusError::conflict(format!(
                    "bridge {name} belongs to berth node {other}: give this node a \"bridge\" of its own in daemon.json"
                )))
            }
            // an existing device named in daemon.json is used, as Docker does
            Owner::Unmarked if self.cfg.bridge_explicit => return Ok(name),
            _ => {}
        }
        let own = node_bridge_name(&self.cfg.node);
        match self.owner_of(&own).await? {
            Owner::Nobody | Owner::Us => Ok(own),
            Owner::Node(other) => Err(BusError::conflict(format!(
                "bridge {own} belongs to berth node {other}"
            ))),
            Owner::Unmarked => Err(BusError::conflict(format!(
                "{name} belongs to another node and {own} is not berth's: set \"bridge\" in daemon.json"
            ))),
        }
    }

    /// Delete one of the node's bridges, never a link another node or program owns.
    pub(crate) async fn delete_bridge(&self, name: &str) {
        match self.owner_of(name).await {
            Ok(Owner::Us) => {
                if let Err(e) = self.k.links.delete(name).await {
                    tracing::warn!(bridge = %name, error = %e, "cannot delete bridge");
                }
            }
            Ok(Owner::Nobody) => {}
            Ok(o) => tracing::info!(bridge = %name, owner = ?o, "leaving a bridge that is not the node's"),
            Err(e) => tracing::warn!(bridge = %name, error = %e, "cannot look the bridge up"),
        }
    }

    pub(crate) async fn ensure_bridge(&self, n: &NetworkRecord) -> Result<u32, LinkError> {
        let (Some(sub), Some(gw)) = (n.subnet, n.gateway) else {
            return Err(LinkError::Netlink(format!(
                "network {} has no subnet",
                n.name
            )));
        };
        if let Some(l) = self.k.links.link(&n.bridge).await? {
            if let Some(other) = marked_by(l.alias.as_deref()).filter(|o| *o != self.cfg.node) {
                return Err(LinkError::Netlink(format!(
                    "bridge {} belongs to berth node {other}",
                    n.bridge
                )));
            }
        }
        let idx = self
            .k
            .links
            .ensure_bridge(&n.bridge, gw, sub.prefix_len(), n.mtu)
            .await?;
        let _ = self.k.links.set_alias(&n.bridge, &self.cfg.mark());
        if let Some(s6) = n.subnet6.as_ref().filter(|_| n.enable_ipv6) {
            self.k
                .links
                .add_address(&n.bridge, s6.gateway.into(), s6.subnet.prefix_len())
                .await?;
        }
        // 127.0.0.1 -> published port: the DNATed packet leaves with a loopback source
        let _ = self
            .k
            .links
            .sysctl(&format!("net/ipv4/conf/{}/route_localnet", n.bridge), "1");
        Ok(idx)
    }
    pub(crate) async fn create_network(
        &self,
        st: &mut State,
        body: docker::NetworkCreateRequest,
    ) -> Result<docker::NetworkCreateResponse, BusError> {
        let name = body.name.trim().to_string();
        if name.is_empty() {
            return Err(BusError::invalid("network name must not be empty"));
        }
        let driver = body
            .driver
            .clone()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| DRIVER_BRIDGE.into());
        if st.networks.values().any(|n| n.name == name) {
            return Err(BusError::conflict(format!(
                "network with name {name} already exists"
            )));
        }
        match driver.as_str() {
            DRIVER_BRIDGE => {}
            DRIVER_HOST | DRIVER_NULL => {
                return Err(BusError::forbidden(format!(
                    "only one instance of \"{driver}\" network is allowed"
                )))
            }
            other => return Err(BusError::not_found(format!("plugin \"{other}\" not found"))),
        }
        if body.enable_ipv4 == Some(false) {
            return Err(BusError::invalid("berth bridge networks need IPv4"));
        }
        if body.config_only == Some(true)
            || body
                .config_from
                .as_ref()
                .is_some_and(|c| c.network.as_deref().is_some_and(|n| !n.is_empty()))
        {
            return Err(BusError::not_implemented(
                "config-only networks are not supported",
            ));
        }
        if body.ingress == Some(true) {
            return Err(BusError::forbidden("ingress networks need swarm mode"));
        }
        let options: BTreeMap<String, String> = body
            .options
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let labels: BTreeMap<String, String> = body
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let ipam = body.ipam.clone().unwrap_or_default();
        if let Some(d) = ipam
            .driver
            .as_deref()
            .filter(|d| !d.is_empty() && *d != "default")
        {
            return Err(BusError::not_found(format!("plugin \"{d}\" not found")));
        }
        let bool_opt = |k: &str, default: bool| -> Result<bool, BusError> {
            match options.get(k) {
                None => Ok(default),
                Some(v) => v
                    .parse::<bool>()
                    .map_err(|_| BusError::invalid(format!("invalid value {v:?} for option {k}"))),
            }
        };
        let masquerade = bool_opt(OPT_MASQ, true)?;
        let icc = bool_opt(OPT_ICC, true)?;
        let mtu: u32 = match options.get(OPT_MTU) {
            None => self.cfg.mtu,
            Some(v) => v
                .parse()
                .map_err(|_| BusError::invalid(format!("invalid MTU value {v:?}")))?,
        };
        let host_ip: Ipv4Addr = match options.get(OPT_HOST_IP) {
            None => self.cfg.default_host_ip,
            Some(v) => v
                .parse()
                .map_err(|_| BusError::invalid(format!("invalid host binding address {v:?}")))?,
        };
        let id = store::new_id();
        let bridge = options
            .get(OPT_BRIDGE_NAME)
            .cloned()
            .unwrap_or_else(|| format!("br-{}", &id[..12]));
        if bridge.is_empty()
            || bridge.len() > 15
            || bridge.contains('/')
            || bridge.contains(char::is_whitespace)
        {
            return Err(BusError::invalid(format!("invalid bridge name {bridge:?}")));
        }
        if st.networks.values().any(|n| n.bridge == bridge) {
            return Err(BusError::forbidden(format!(
                "bridge name {bridge} is already in use by another network"
            )));
        }
        if let Owner::Node(other) = self.owner_of(&bridge).await? {
            return Err(BusError::forbidden(format!(
                "bridge name {bridge} is already in use by berth node {other}"
            )));
        }

        // IPAM: one IPv4 config at most, one IPv6 config at most.
        let (cfgs6, mut cfgs): (Vec<_>, Vec<_>) = ipam
            .config
            .clone()
            .unwrap_or_default()
            .into_iter()
            .partition(|c| c.subnet.as_deref().is_some_and(|s| s.contains(':')));
        if cfgs.len() > 1 {
            return Err(BusError::invalid("berth networks take one IPv4 subnet"));
        }
        if cfgs6.len() > 1 {
            return Err(BusError::invalid("berth networks take one IPv6 subnet"));
        }
        let enable_ipv6 = body.enable_ipv6 == Some(true);
        let subnet6 = match cfgs6.first() {
            Some(c) => {
                let given = |o: &Option<String>| o.clone().filter(|s| !s.is_empty());
                let s6 = ipam::Subnet6::parse(
                    c.subnet.as_deref().unwrap_or_default(),
                    given(&c.ip_range).as_deref(),
                    given(&c.gateway).as_deref(),
                )
                .map_err(|e| BusError::invalid(e.to_string()))?;
                if st
                    .networks
                    .values()
                    .filter_map(|n| n.subnet6.as_ref())
                    .any(|o| o.overlaps(&s6.subnet))
                {
                    return Err(BusError::forbidden(
                        "Pool overlaps with other one on this address space",
                    ));
                }
                Some(s6)
            }
            // Moby 20.10 has no default IPv6 pools
            None if enable_ipv6 => {
                return Err(BusError::not_found(
                    "could not find an available, non-overlapping IPv6 address pool among the defaults to assign to the network",
                ))
            }
            None => None,
        };
        let user = cfgs.pop().unwrap_or_default();
        let others: Vec<Ipv4Net> = st.networks.values().filter_map(|n| n.subnet).collect();
        let _lock = HostLock::take();
        let (subnet, user_ipam) = match user.subnet.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => {
                let sub = ipam::parse_net(s)
                    .map_err(|_| BusError::invalid(format!("invalid CIDR address: {s}")))?;
                if others.iter().any(|o| ipam::overlaps(o, &sub)) {
                    return Err(BusError::forbidden(
                        "Pool overlaps with other one on this address space",
                    ));
                }
                (sub, true)
            }
            None => {
                if user.ip_range.as_deref().is_some_and(|s| !s.is_empty())
                    || user.gateway.as_deref().is_some_and(|s| !s.is_empty())
                {
                    return Err(BusError::invalid(
                        "a subnet is required with --ip-range or --gateway",
                    ));
                }
                let s = ipam::pick_subnet(&self.cfg.pools, &others, &self.k.links.routes())
                    .map_err(|e| BusError::forbidden(e.to_string()))?;
                (s, false)
            }
        };
        let gateway = match user.gateway.as_deref().filter(|s| !s.is_empty()) {
            Some(g) => {
                let g: Ipv4Addr = g
                    .parse()
                    .map_err(|_| BusError::invalid(format!("invalid gateway address {g}")))?;
                if !subnet.contains(&g) || g == subnet.network() || g == subnet.broadcast() {
                    return Err(BusError::invalid(format!(
                        "no matching subnet for gateway {g}"
                    )));
                }
                g
            }
            None => ipam::first_host(&subnet),
        };
        let ip_range = match user.ip_range.as_deref().filter(|s| !s.is_empty()) {
            Some(r) => {
                let r = ipam::parse_net(r)
                    .map_err(|_| BusError::invalid(format!("invalid CIDR address: {r}")))?;
                if !subnet.contains(&r.network()) || r.prefix_len() < subnet.prefix_len() {
                    return Err(BusError::invalid(format!(
                        "no matching subnet for range {r}"
                    )));
                }
                Some(r)
            }
            None => None,
        };
        let mut aux = BTreeMap::new();
        for (k, v) in user.auxiliary_addresses.clone().unwrap_or_default() {
            let a: Ipv4Addr = v
                .parse()
                .map_err(|_| BusError::invalid(format!("invalid auxiliary address {v}")))?;
            if !subnet.contains(&a) {
                return Err(BusError::invalid(format!(
                    "no matching subnet for aux-address {a}"
                )));
            }
            aux.insert(k, a);
        }
        let n = NetworkRecord {
            id: id.clone(),
            name,
            driver,
            created: store::now_rfc3339(),
            internal: body.internal.unwrap_or(false),
            attachable: body.attachable.unwrap_or(false),
            options,
            labels,
            ipam_options: ipam.options.clone().map(|o| o.into_iter().collect()),
            subnet: Some(subnet),
            gateway: Some(gateway),
            ip_range,
            aux,
            user_ipam,
            bridge,
            default_bridge: false,
            masquerade,
            icc,
            mtu,
            host_ip,
            last_ip: None,
            enable_ipv6,
            subnet6,
        };
        self.ensure_bridge(&n).await.map_err(internal)?;
        drop(_lock);
        if let Err(e) = self.store.save_network(&n) {
            self.delete_bridge(&n.bridge).await;
            return Err(e.into());
        }
        st.networks.insert(id.clone(), n.clone());
        if let Err(e) = self.apply_firewall(st).await {
            st.networks.remove(&id);
            let _ = self.store.delete_network(&id);
            self.delete_bridge(&n.bridge).await;
            return Err(e);
        }
        self.dns.set_network(&n.id, &n.name, n.internal);
        if let Err(e) = self.dns.start(&n.id, gateway, self.cfg.dns_port).await {
            tracing::warn!(network = %n.name, error = %e, "cannot start the embedded DNS");
        }
        self.event(Action::Create, &n, None);
        Ok(docker::NetworkCreateResponse {
            id,
            warning: String::new(),
        })
    }

    pub(crate) async fn remove_network(&self, st: &mut State, key: &str) -> Result<(), BusError> {
        let n = st.find_network(key)?.clone();
        if n.predefined() {
            return Err(BusError::forbidden(format!(
                "{} is a pre-defined network and cannot be removed",
                n.name
            )));
        }
        if st.endpoints_on(&n.id).next().is_some() {
            return Err(BusError::forbidden(format!(
                "error while removing network: network {} id {} has active endpoints",
                n.name, n.id
            )));
        }
        self.dns.remove_network(&n.id);
        st.networks.remove(&n.id);
        self.store.delete_network(&n.id)?;
        if let Err(e) = self.apply_firewall(st).await {
            tracing::warn!(error = %e, "firewall update after network removal failed");
        }
        self.delete_bridge(&n.bridge).await;
        self.event(Action::Destroy, &n, None);
        Ok(())
    }

    /// `docker network prune`: every unused user network the filters select.
    pub(crate) async fn prune_networks(
        &self,
        st: &mut State,
        filters: &HashMap<String, Vec<String>>,
    ) -> Result<docker::NetworkPruneResponse, BusError> {
        let candidates = crate::inspect::prune_candidates(st, filters)?;
        let mut deleted = Vec::new();
        for n in candidates {
            match self.remove_network(st, &n.id).await {
                Ok(()) => deleted.push(n.name.clone()),
                Err(e) => tracing::warn!(network = %n.name, error = %e, "prune: cannot remove"),
            }
        }
        Ok(docker::NetworkPruneResponse {
            networks_deleted: Some(deleted),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::fake::TestService;
    use crate::NetworkApi;
    use bus_schema::network::*;
    use bus_schema::{docker, ErrorKind};
    use std::collections::HashMap;

    fn create(name: &str, subnet: Option<&str>) -> NetworkCreate {
        NetworkCreate {
            body: docker::NetworkCreateRequest {
                name: name.into(),
                ipam: subnet.map(|s| docker::Ipam {
                    config: Some(vec![docker::IpamConfig {
                        subnet: Some(s.into()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            },
        }
    }

    async fn subnet_of(t: &TestService, name: &str) -> String {
        let n = t
            .svc
            .network_inspect(NetworkInspect {
                id: name.into(),
                verbose: false,
            })
            .await
            .unwrap();
        n.ipam.unwrap().config.unwrap()[0].subnet.clone().unwrap()
    }

    #[tokio::test]
    async fn the_predefined_networks_and_the_default_bridge() {
        let t = TestService::start().await;
        let ls = t.svc.network_list(NetworkList::default()).await.unwrap();
        let mut names: Vec<(String, String)> = ls
            .iter()
            .map(|n| (n.name.clone().unwrap(), n.driver.clone().unwrap()))
            .collect();
        names.sort();
        assert_eq!(
            names,
            [("bridge", "bridge"), ("host", "host"), ("none", "null")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        assert_eq!(subnet_of(&t, "bridge").await, "172.17.0.0/16");
        let w = t.fake.world();
        assert_eq!(w.bridges(), ["berth0"]);
        let b = &w.links["berth0"];
        assert_eq!(b.alias.as_deref(), Some("berth:n1"));
        assert_eq!(b.addr, Some(("172.17.0.1".parse().unwrap(), 16)));
        assert_eq!(w.sysctls["net/ipv4/ip_forward"], "1");
        assert_eq!(w.sysctls["net/ipv4/conf/berth0/route_localnet"], "1");
        assert_eq!(w.tables["berth_n1"].0.len(), 1);
        assert_eq!(w.forward["berth_n1"], ["berth0"]);
    }

    #[tokio::test]
    async fn user_networks_take_free_subnets_and_give_their_bridge_back() {
        let t = TestService::start().await;
        // another engine routes 172.19.0.0/16 (docker0 of a Moby beside us)
        t.fake.world().routes.push("172.19.0.0/16".parse().unwrap());
        let a = t.svc.network_create(create("a", None)).await.unwrap().id;
        let b = t.svc.network_create(create("b", None)).await.unwrap().id;
        assert_eq!(subnet_of(&t, "a").await, "172.18.0.0/16");
        assert_eq!(subnet_of(&t, "b").await, "172.20.0.0/16");
        let (bra, brb) = (format!("br-{}", &a[..12]), format!("br-{}", &b[..12]));
        // bridges() lists in name order; the ids are random
        let mut want = vec!["berth0".to_string(), bra.clone(), brb.clone()];
        want.sort();
        assert_eq!(t.fake.world().bridges(), want);
        assert_eq!(t.fake.world().tables["berth_n1"].0.len(), 3);

        let e = t
            .svc
            .network_create(create("c", Some("172.18.5.0/24")))
            .await
            .unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (
                ErrorKind::Forbidden,
                "Pool overlaps with other one on this address space"
            )
        );
        let e = t.svc.network_create(create("a", None)).await.unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ErrorKind::Conflict, "network with name a already exists")
        );

        t.svc
            .network_remove(NetworkRemove { id: "a".into() })
            .await
            .unwrap();
        let w = t.fake.world();
        assert_eq!(w.bridges(), ["berth0".to_string(), brb]);
        assert_eq!(w.tables["berth_n1"].0.len(), 2);
        assert!(!w.forward["berth_n1"].contains(&bra));
        drop(w);
        assert_eq!(t.actions(), ["create", "create", "destroy"]);
        let e = t
            .svc
            .network_remove(NetworkRemove { id: "bridge".into() })
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Forbidden);
    }

    #[tokio::test]
    async fn prune_takes_unused_user_networks_the_filters_select() {
        let t = TestService::start().await;
        for (n, l) in [("x", "keep"), ("y", "go"), ("z", "go")] {
            let mut r = create(n, None);
            r.body.labels = Some(HashMap::from([("k".to_string(), l.to_string())]));
            t.svc.network_create(r).await.unwrap();
        }
        let r = t
            .svc
            .network_prune(NetworkPrune {
                filters: HashMap::from([("label".to_string(), vec!["k=go".to_string()])]),
            })
            .await
            .unwrap();
        let mut gone = r.networks_deleted.unwrap();
        gone.sort();
        assert_eq!(gone, ["y", "z"]);
        let e = t
            .svc
            .network_prune(NetworkPrune {
                filters: HashMap::from([("bogus".to_string(), vec![])]),
            })
            .await
            .unwrap_err();
        assert_eq!(e.message, "invalid filter 'bogus'");
    }

    fn bridge_opt(n: &docker::NetworkInspect) -> String {
        n.options.as_ref().unwrap()["com.docker.network.bridge.name"].clone()
    }

    async fn default_bridge(t: &TestService) -> String {
        bridge_opt(
            &t.svc
                .network_inspect(NetworkInspect {
                    id: "bridge".into(),
                    verbose: false,
                })
                .await
                .unwrap(),
        )
    }

    #[tokio::test]
    async fn a_second_node_on_the_host_takes_a_bridge_of_its_own() {
        let fake = crate::fake::Fake::new();
        fake.world()
            .add_foreign("berth0", "bridge", Some("berth:n2"));
        fake.world().routes.push("172.17.0.0/16".parse().unwrap());
        let mut t = TestService::start_with(fake, |_| {}).await;
        assert_eq!(default_bridge(&t).await, "berthn1");
        assert_eq!(subnet_of(&t, "bridge").await, "172.18.0.0/16");
        {
            let w = t.fake.world();
            assert_eq!(w.links["berth0"].alias.as_deref(), Some("berth:n2"));
            assert_eq!(w.links["berth0"].addr, None, "the other node's bridge was touched");
            assert_eq!(w.links["berthn1"].alias.as_deref(), Some("berth:n1"));
        }
        // our graceful stop leaves the other node's bridge
        t.svc.shutdown().await;
        assert_eq!(t.fake.world().bridges(), ["berth0"]);
        // once berth0 is free again, a start takes it back (and gives its own one up)
        t.fake.world().links.remove("berth0");
        t.fake.world().routes.clear();
        t.restart().await;
        assert_eq!(default_bridge(&t).await, "berth0");
        assert_eq!(t.fake.world().bridges(), ["berth0"]);
    }

    #[tokio::test]
    async fn a_named_bridge_another_node_owns_stops_the_start_naming_it() {
        let fake = crate::fake::Fake::new();
        fake.world().add_foreign("bx0", "bridge", Some("berth:n2"));
        let e = TestService::try_start_with(fake.clone(), |c| {
            c.bridge = Some("bx0".into());
            c.bridge_explicit = true;
        })
        .await
        .err()
        .unwrap();
        assert_eq!(
            e.message,
            "bridge bx0 belongs to berth node n2: give this node a \"bridge\" of its own in daemon.json"
        );
        assert_eq!(fake.world().links["bx0"].alias.as_deref(), Some("berth:n2"));
        // a device of the user's (unmarked) is used, as Docker uses a named bridge
        fake.world().add_foreign("bx1", "bridge", None);
        let t = TestService::start_with(fake, |c| {
            c.bridge = Some("bx1".into());
            c.bridge_explicit = true;
        })
        .await;
        assert_eq!(default_bridge(&t).await, "bx1");
        assert_eq!(t.fake.world().links["bx1"].alias.as_deref(), Some("berth:n1"));
    }

    #[tokio::test]
    async fn a_user_network_cannot_take_another_nodes_bridge() {
        let fake = crate::fake::Fake::new();
        fake.world().add_foreign("brx", "bridge", Some("berth:n2"));
        let t = TestService::start_with(fake, |_| {}).await;
        let mut r = create("x", None);
        r.body.options = Some(HashMap::from([(
            "com.docker.network.bridge.name".to_string(),
            "brx".to_string(),
        )]));
        let e = t.svc.network_create(r).await.unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (
                ErrorKind::Forbidden,
                "bridge name brx is already in use by berth node n2"
            )
        );
    }
}
