//! Sandboxes: a container's network namespace (or the host's, or another
//! container's) with one endpoint per network — an address, a veth pair into the
//! namespace, the default route — its published ports, its DNS names, and the
//! content of its /etc/resolv.conf and /etc/hosts.

use bus_schema::network::*;
use bus_schema::swarm::{SwarmNetworkAttach, SwarmNetworkDetach};
use bus_schema::event::Action;
use bus_schema::{docker, BusError};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use crate::dns::{self, DnsEntry};
use crate::files::{self, DnsOverrides, ResolvConf};
use crate::ipam;
use crate::kernel::Ns;
use crate::link;
use crate::ports::{self, PortError};
use crate::service::{internal, NetworkService};
use crate::state::State;
use crate::store::{self, EndpointRecord, SandboxRecord, DRIVER_HOST, DRIVER_NULL};

impl NetworkService {
    fn overrides(&self, r_dns: &[String], r_search: &[String], r_opts: &[String]) -> DnsOverrides {
        DnsOverrides {
            dns: if r_dns.is_empty() {
                self.cfg.dns.clone()
            } else {
                r_dns.to_vec()
            },
            search: if r_search.is_empty() {
                self.cfg.dns_search.clone()
            } else {
                r_search.to_vec()
            },
            options: if r_opts.is_empty() {
                self.cfg.dns_opts.clone()
            } else {
                r_opts.to_vec()
            },
        }
    }

    pub(crate) fn dns_register(&self, st: &State, s: &SandboxRecord) {
        let entries: Vec<DnsEntry> = s
            .endpoints
            .iter()
            .filter(|e| st.networks.get(&e.network_id).is_some_and(|n| n.has_dns()))
            .filter_map(|e| {
                Some(DnsEntry {
                    network_id: e.network_id.clone(),
                    ip: e.ip?,
                    ip6: e.ip6,
                    names: e.dns_names.clone(),
                    links: e.links.iter().filter_map(|l| dns::parse_link(l)).collect(),
                })
            })
            .collect();
        let fwd = dns::forwarders(&s.dns, &[]);
        self.dns.set_sandbox(&s.container_id, entries, fwd);
    }

    /// Undo what a sandbox record holds in the kernel and in memory (not the record file).
    pub(crate) async fn teardown(&self, st: &mut State, s: &SandboxRecord) {
        self.dns.remove_sandbox(&s.container_id);
        for e in s.endpoints.iter().filter(|e| e.swarm_network.is_some()) {
            self.swarm_detach(&s.container_id, &e.network_id).await;
        }
        st.reservations.remove(&s.container_id);
        // A namespace that goes with the sandbox takes its veths with it: the kernel
        // deletes both ends as it cleans the namespace up, in the background. An
        // explicit delete would hold the request (and the thread: netlink requests
        // run inside sendmsg) ~20 ms for RCU. A veth still there a second later
        // (something else pins the namespace) is deleted then, on a blocking thread.
        // A namespace another sandbox joined lives on: its veths go before the answer.
        let netns_goes = s.owns_netns
            && !st
                .sandboxes
                .values()
                .any(|o| o.joined.as_deref() == Some(s.container_id.as_str()));
        let veths: Vec<String> = s
            .endpoints
            .iter()
            .filter(|e| !e.host_veth.is_empty())
            .map(|e| e.host_veth.clone())
            .collect();
        if netns_goes {
            if !veths.is_empty() {
                self.k.links.delete_later(veths);
            }
        } else {
            for v in veths {
                if let Err(err) = self.k.links.delete(&v).await {
                    tracing::warn!(link = %v, error = %err, "cannot delete veth");
                }
            }
        }
        if s.owns_netns {
            if let Err(err) = self.k.ns.remove(Path::new(&s.key)) {
                tracing::warn!(path = %s.key, error = %err, "cannot remove network namespace");
            }
        }
    }

    pub(crate) fn host_files(&self) -> (String, String) {
        (
            std::fs::read_to_string(&self.cfg.host_resolv_conf).unwrap_or_default(),
            std::fs::read_to_string(&self.cfg.host_hosts).unwrap_or_default(),
        )
    }

    pub(crate) fn extra_hosts(
        &self,
        st: &State,
        extra: &[String],
        first_gw: Option<Ipv4Addr>,
    ) -> Result<Vec<String>, BusError> {
        let hg = st.default_gateway().or(first_gw);
        extra
            .iter()
            .map(|e| files::extra_host_line(e, hg).map_err(BusError::invalid))
            .collect()
    }

    /// One endpoint: address, veth into the namespace, address and route inside.
    /// The record is pushed before the kernel work so that a rollback finds the veth.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn attach(
        &self,
        st: &mut State,
        rec: &mut SandboxRecord,
        net_id: &str,
        settings: &docker::EndpointSettings,
        ns: &Ns,
        ifname: &str,
        want_gw: bool,
    ) -> Result<(), BusError> {
        let net = st
            .networks
            .get(net_id)
            .cloned()
            .ok_or_else(|| BusError::not_found(format!("network {net_id} not found")))?;
        let sub = net
            .subnet
            .ok_or_else(|| BusError::internal(format!("network {} has no subnet", net.name)))?;
        let mut used = st.used_ips(&net);
        used.extend(
            rec.endpoints
                .iter()
                .filter(|e| e.network_id == net.id)
                .filter_map(|e| e.ip),
        );
        let ipam_cfg = settings.ipam_config.clone().unwrap_or_default();
        let requested = ipam_cfg.ipv4_address.clone().filter(|s| !s.is_empty());
        let requested6 = ipam_cfg.ipv6_address.clone().filter(|s| !s.is_empty());
        user_ip_allowed(&net, requested.is_some(), requested6.is_some())?;
        let ip = match &requested {
            Some(s) => {
                let ip: Ipv4Addr = s
                    .parse()
                    .map_err(|_| BusError::invalid(format!("invalid IPv4 address: {s}")))?;
                ipam::check_addr(&sub, ip, &used).map_err(|e| match e {
                    ipam::IpamError::AddressInUse => BusError::forbidden("Address already in use"),
                    other => BusError::invalid(other.to_string()),
                })?;
                ip
            }
            None => {
                let ip = ipam::alloc_addr(&sub, net.ip_range.as_ref(), &used, net.last_ip)
                    .map_err(|e| BusError::unavailable(e.to_string()))?;
                // remembered in memory only: after a restart allocation starts over
                if let Some(n) = st.networks.get_mut(&net.id) {
                    n.last_ip = Some(ip);
                }
                ip
            }
        };
        // IPv6 (EnableIPv6 networks only: a request elsewhere is ignored, as
        // libnetwork does, and only shown back)
        let ip6 = match net.subnet6.as_ref().filter(|_| net.enable_ipv6) {
            None => None,
            Some(s6) => {
                let mut used6 = st.used_ips6(&net);
                used6.extend(
                    rec.endpoints
                        .iter()
                        .filter(|e| e.network_id == net.id)
                        .filter_map(|e| e.ip6),
                );
                Some(match &requested6 {
                    Some(s) => {
                        let a: Ipv6Addr = s
                            .parse()
                            .map_err(|_| BusError::invalid(format!("invalid IPv6 address: {s}")))?;
                        s6.check(a, &used6).map_err(|e| match e {
                            ipam::IpamError::AddressInUse => BusError::forbidden("Address already in use"),
                            other => BusError::invalid(other.to_string()),
                        })?;
                        a
                    }
                    None => s6.alloc(&used6).map_err(|e| BusError::unavailable(e.to_string()))?,
                })
            }
        };
        let link_local = ipam_cfg.link_local_ips.clone().unwrap_or_default();
        let mut extra: Vec<(IpAddr, u8)> = Vec::new();
        if let (Some(a), Some(s6)) = (ip6, net.subnet6.as_ref()) {
            extra.push((a.into(), s6.subnet.prefix_len()));
        }
        for l in &link_local {
            let a: IpAddr = l
                .parse()
                .map_err(|_| BusError::invalid(format!("invalid link-local IP address: {l}")))?;
            let ok = match a {
                IpAddr::V4(v) => v.is_link_local(),
                IpAddr::V6(v) => v.segments()[0] & 0xffc0 == 0xfe80,
            };
            if !ok {
                return Err(BusError::invalid(format!(
                    "invalid link-local IP address: {l}: not a link-local address"
                )));
            }
            // Moby's prefixes: 169.254.0.0/16, fe80::/64
            extra.push((a, if a.is_ipv4() { 16 } else { 64 }));
        }
        let mac = settings
            .mac_address
            .as_deref()
            .filter(|m| !m.is_empty())
            .and_then(link::parse_mac)
            .unwrap_or_else(|| link::mac_for(ip));
        let veth = link::veth_name();
        let idx = match self.k.links.link(&net.bridge).await.map_err(internal)? {
            Some(l) => l.index,
            None => self.ensure_bridge(&net).await.map_err(internal)?,
        };
        let mut dns_names = Vec::new();
        let aliases: Vec<String> = settings.aliases.clone().unwrap_or_default();
        if net.has_dns() {
            let short = &rec.container_id[..rec.container_id.len().min(12)];
            for n in std::iter::once(&rec.name)
                .chain(aliases.iter())
                .map(|s| s.as_str())
                .chain([short, rec.hostname.as_str()])
            {
                if !n.is_empty() && !dns_names.iter().any(|x: &String| x == n) {
                    dns_names.push(n.to_string());
                }
            }
        }
        self.k
            .links
            .add_veth(&veth, &self.cfg.mark(), idx, net.mtu, ifname, mac, ns)
            .await
            .map_err(internal)?;
        rec.endpoints.push(EndpointRecord {
            network_id: net.id.clone(),
            endpoint_id: store::new_id(),
            ifname: ifname.to_string(),
            host_veth: veth,
            mac: link::mac_string(&mac),
            ip: Some(ip),
            prefix: sub.prefix_len(),
            gateway: if want_gw { net.gateway } else { None },
            aliases,
            dns_names,
            links: settings.links.clone().unwrap_or_default(),
            driver_opts: settings
                .driver_opts
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            gw_priority: settings.gw_priority.unwrap_or(0),
            requested_ip: requested,
            ip6,
            requested_ip6: requested6,
            link_local,
            swarm_network: None,
        });
        ns.links
            .configure(
                ifname,
                ip,
                sub.prefix_len(),
                if want_gw { net.gateway } else { None },
            )
            .await
            .map_err(internal)?;
        if !extra.is_empty() {
            let gw6 = net.subnet6.as_ref().filter(|_| want_gw && ip6.is_some()).map(|s| s.gateway);
            ns.links
                .add_addresses(ifname, &extra, gw6)
                .await
                .map_err(internal)?;
        }
        Ok(())
    }

    /// An endpoint on the swarm overlay network `network` (a name this node does not
    /// know): the swarm service allocates its address and puts the container on the
    /// overlay once it runs; "network X not found" when the swarm has none either.
    pub(crate) async fn attach_swarm(
        &self,
        rec: &mut SandboxRecord,
        network: &str,
        settings: &docker::EndpointSettings,
        ifname: &str,
    ) -> Result<(), BusError> {
        let not_found = || BusError::not_found(format!("network {network} not found"));
        let s = self.swarm.get().ok_or_else(not_found)?;
        let r = SwarmNetworkAttach {
            network: network.to_string(),
            container_id: rec.container_id.clone(),
            ifname: ifname.to_string(),
            names: std::iter::once(rec.name.trim_start_matches('/').to_string()).chain(settings.aliases.clone().unwrap_or_default()).filter(|n| !n.is_empty()).collect(),
        };
        let a = match s.attach(r).await {
            Ok(a) => a,
            Err(e) if crate::swarm::is_absent(&e) => return Err(not_found()),
            Err(e) => return Err(e),
        };
        let (ip, prefix) = a.address.split_once('/').unwrap_or((&a.address, "32"));
        let ep = EndpointRecord {
            network_id: a.network_id.clone(),
            endpoint_id: store::new_id(),
            ifname: ifname.to_string(),
            host_veth: String::new(),
            mac: a.mac.clone(),
            ip: ip.parse().ok(),
            prefix: prefix.parse().unwrap_or(32),
            aliases: settings.aliases.clone().unwrap_or_default(),
            swarm_network: Some(a.network_name.clone()),
            ..empty_endpoint(&a.network_id)
        };
        if rec.endpoints.iter().any(|e| e.network_id == a.network_id) {
            return Err(BusError::forbidden(format!(
                "endpoint with name {} already exists in network {}",
                rec.name, a.network_name
            )));
        }
        rec.endpoints.push(ep);
        Ok(())
    }

    /// Give a container's swarm endpoint back (best effort: the swarm service also
    /// gives back the addresses of containers that are gone).
    pub(crate) async fn swarm_detach(&self, cid: &str, network_id: &str) {
        let Some(s) = self.swarm.get() else { return };
        let r = SwarmNetworkDetach {
            network_id: network_id.to_string(),
            container_id: cid.to_string(),
        };
        if let Err(e) = s.detach(r).await {
            tracing::warn!(container = %cid, network = %network_id, error = %e, "giving back a swarm network's address");
        }
    }

    pub(crate) async fn create_sandbox(
        &self,
        st: &mut State,
        r: SandboxCreate,
    ) -> Result<Sandbox, BusError> {
        let cid = r.container_id.clone();
        if cid.is_empty() || cid.contains('/') || cid.contains("..") {
            return Err(BusError::invalid(format!("invalid container id {cid:?}")));
        }
        // A sandbox left from an earlier start is replaced.
        if let Some(old) = st.sandboxes.remove(&cid) {
            self.teardown(st, &old).await;
            let _ = self.store.delete_sandbox(&cid);
        }
        let mode = match r.network_mode.trim() {
            "" | "default" => "bridge".to_string(),
            m => m.to_string(),
        };
        let o = self.overrides(&r.dns, &r.dns_search, &r.dns_options);
        let mut rec = SandboxRecord {
            container_id: cid.clone(),
            name: r.name.trim_start_matches('/').to_string(),
            hostname: r.hostname.clone(),
            domainname: r.domainname.clone(),
            mode: mode.clone(),
            key: String::new(),
            owns_netns: false,
            joined: None,
            endpoints: vec![],
            ports: vec![],
            ports_network: None,
            all_ports: vec![],
            dns: o.dns.clone(),
            dns_search: o.search.clone(),
            dns_options: o.options.clone(),
            extra_hosts: r.extra_hosts.clone(),
            resolv_conf: String::new(),
            hosts: String::new(),
        };

        // Which kind of sandbox: host, none, another container's, or networks.
        let mut kind = mode.clone();
        let mut first_net: Option<String> = None;
        if let Some(target) = mode.strip_prefix("container:") {
            kind = "container".into();
            let t = st
                .find_sandbox(target)
                .filter(|t| !t.key.is_empty() || t.mode == "host")
                .ok_or_else(|| {
                    BusError::conflict(format!(
                        "cannot join network of a non running container: {target}"
                    ))
                })?
                .clone();
            rec.key = t.key.clone();
            rec.joined = Some(t.container_id.clone());
            rec.resolv_conf = t.resolv_conf.clone();
            rec.hosts = t.hosts.clone();
        } else if mode == bus_schema::network::MODE_DETACHED {
            // a container disconnected from its mode's network: a namespace of its
            // own with only lo, which `network connect` can still join to networks
            kind = "none".into();
        } else if mode != "host" && mode != "none" {
            match st.find_network(&mode) {
                Ok(n) => match n.driver.as_str() {
                    DRIVER_HOST => kind = "host".into(),
                    DRIVER_NULL => kind = "none".into(),
                    _ => {
                        kind = "bridge".into();
                        first_net = Some(n.id.clone());
                    }
                },
                // perhaps the swarm's (an attachable overlay network)
                Err(e) if e.is(bus_schema::ErrorKind::NotFound) && self.swarm.get().is_some() => {
                    kind = "bridge".into();
                    first_net = Some(swarm_key(&mode));
                }
                Err(e) => return Err(e),
            }
        }

        match kind.as_str() {
            "host" => {
                let n = st.find_network("host")?.clone();
                rec.endpoints.push(empty_endpoint(&n.id));
                let (rc, hosts) = self.host_files();
                rec.resolv_conf = files::resolv_conf_host(&rc, &o);
                let extra = self.extra_hosts(st, &r.extra_hosts, None)?;
                rec.hosts = files::hosts_host(&hosts, &extra);
                let (_, all) = ports::plan(
                    &HashMap::new(),
                    false,
                    &r.exposed_ports,
                    Ipv4Addr::UNSPECIFIED,
                )
                .map_err(port_err)?;
                rec.all_ports = all;
            }
            "container" => {}
            "none" => {
                let n = st.find_network("none")?.clone();
                let extra = self.extra_hosts(st, &r.extra_hosts, None)?;
                let path = self.store.netns_path(&cid);
                let ns = self.k.ns.create(path.clone()).await?;
                rec.key = path.display().to_string();
                rec.owns_netns = true;
                let res = ns.links.lo_up().await.map_err(internal);
                if let Err(e) = res {
                    self.teardown(st, &rec).await;
                    return Err(e);
                }
                if mode != bus_schema::network::MODE_DETACHED {
                    rec.endpoints.push(empty_endpoint(&n.id));
                }
                let (rc, _) = self.host_files();
                rec.resolv_conf = files::resolv_conf_legacy(&ResolvConf::parse(&rc), &o);
                rec.hosts = files::hosts(&[], &r.hostname, &r.domainname, &extra);
            }
            _ => {
                let first = first_net.expect("bridge mode has a network");
                // the mode's network first (it gets eth0), then the others asked for
                let mut wanted: Vec<(String, docker::EndpointSettings)> = Vec::new();
                let mut first_settings = docker::EndpointSettings::default();
                for e in &r.endpoints {
                    let n = match st.find_network(&e.network) {
                        Ok(n) => n,
                        Err(err) if err.is(bus_schema::ErrorKind::NotFound) && self.swarm.get().is_some() => {
                            let key = swarm_key(&e.network);
                            if key == first {
                                first_settings = e.settings.clone();
                            } else if !wanted.iter().any(|(id, _)| id == &key) {
                                wanted.push((key, e.settings.clone()));
                            }
                            continue;
                        }
                        Err(err) => return Err(err),
                    };
                    if n.id == first {
                        first_settings = e.settings.clone();
                    } else if !wanted.iter().any(|(id, _)| id == &n.id) {
                        if !n.is_bridge() {
                            return Err(BusError::forbidden(
                                "container cannot be disconnected from host network or connected to host network",
                            ));
                        }
                        wanted.push((n.id.clone(), e.settings.clone()));
                    }
                }
                wanted.insert(0, (first, first_settings));
                let extra_check = self.extra_hosts(st, &r.extra_hosts, None)?;
                drop(extra_check);

                let path = self.store.netns_path(&cid);
                let ns = self.k.ns.create(path.clone()).await?;
                rec.key = path.display().to_string();
                rec.owns_netns = true;
                let res = self.build_endpoints(st, &mut rec, &ns, &wanted, &r).await;
                if let Err(e) = res {
                    self.teardown(st, &rec).await;
                    return Err(e);
                }
                // files
                let (rc, _) = self.host_files();
                let host_rc = ResolvConf::parse(&rc);
                let dns_net = rec
                    .endpoints
                    .iter()
                    .find(|e| st.networks.get(&e.network_id).is_some_and(|n| n.has_dns()))
                    .and_then(|e| st.networks.get(&e.network_id).and_then(|n| n.gateway));
                rec.resolv_conf = match dns_net {
                    Some(gw) => {
                        let ext = if o.dns.is_empty() {
                            host_rc.nameservers.clone()
                        } else {
                            o.dns.clone()
                        };
                        files::resolv_conf_embedded(gw, &host_rc, &o, &ext)
                    }
                    None => files::resolv_conf_legacy(&host_rc, &o),
                };
                let first_gw = rec
                    .endpoints
                    .first()
                    .and_then(|e| st.networks.get(&e.network_id))
                    .and_then(|n| n.gateway);
                let extra = self.extra_hosts(st, &r.extra_hosts, first_gw)?;
                let own: Vec<IpAddr> = rec
                    .endpoints
                    .first()
                    .map(|e| e.ip.map(IpAddr::from).into_iter().chain(e.ip6.map(IpAddr::from)).collect())
                    .unwrap_or_default();
                rec.hosts = files::hosts(
                    &own,
                    &r.hostname,
                    &r.domainname,
                    &extra,
                );
            }
        }

        let has_ports = !rec.ports.is_empty();
        let reservations = st.reservations.remove(&cid).unwrap_or_default();
        st.sandboxes.insert(cid.clone(), rec.clone());
        st.reservations.insert(cid.clone(), reservations);
        if has_ports {
            if let Err(e) = self.apply_firewall(st).await {
                st.sandboxes.remove(&cid);
                self.teardown(st, &rec).await;
                let _ = self.apply_firewall(st).await;
                return Err(e);
            }
        }
        self.dns_register(st, &rec);
        if let Err(e) = self.store.save_sandbox(&rec) {
            st.sandboxes.remove(&cid);
            self.teardown(st, &rec).await;
            if has_ports {
                let _ = self.apply_firewall(st).await;
            }
            return Err(e.into());
        }
        for e in &rec.endpoints {
            if let Some(n) = st.networks.get(&e.network_id) {
                self.event(Action::Connect, n, Some(&cid));
            }
            self.swarm_event(Action::Connect, e, &cid);
        }
        Ok(self.sandbox_reply(st, &rec))
    }

    /// The endpoints of a bridge-mode sandbox and its published ports.
    pub(crate) async fn build_endpoints(
        &self,
        st: &mut State,
        rec: &mut SandboxRecord,
        ns: &Ns,
        wanted: &[(String, docker::EndpointSettings)],
        r: &SandboxCreate,
    ) -> Result<(), BusError> {
        ns.links.lo_up().await.map_err(internal)?;
        let mut gw_net: Option<String> = None;
        for (i, (net_id, settings)) in wanted.iter().enumerate() {
            if let Some(name) = net_id.strip_prefix(SWARM_KEY) {
                self.attach_swarm(rec, name, settings, &format!("eth{i}")).await?;
                continue;
            }
            let internal_net = st.networks.get(net_id).is_some_and(|n| n.internal);
            let want_gw = gw_net.is_none() && !internal_net;
            self.attach(st, rec, net_id, settings, ns, &format!("eth{i}"), want_gw)
                .await?;
            if want_gw {
                gw_net = Some(net_id.clone());
            }
        }
        // Published ports go to the endpoint that has the default route.
        let host_ip = gw_net
            .as_ref()
            .and_then(|id| st.networks.get(id))
            .map(|n| n.host_ip)
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        let (specs, all) = ports::plan(&r.port_bindings, r.publish_all, &r.exposed_ports, host_ip)
            .map_err(port_err)?;
        rec.all_ports = all;
        if let Some(net) = gw_net {
            if !specs.is_empty() {
                let ep = rec
                    .endpoints
                    .iter()
                    .find(|e| e.network_id == net)
                    .map(|e| e.endpoint_id.clone())
                    .unwrap_or_default();
                let taken = |p, ip, port| st.port_taken(p, ip, port);
                let rs = ports::reserve_all(&specs, &taken).map_err(|e| {
                    BusError::internal(format!(
                        "driver failed programming external connectivity on endpoint {} ({ep}): {e}",
                        rec.name
                    ))
                })?;
                rec.ports = rs.iter().map(|r| r.mapping).collect();
                rec.ports_network = Some(net);
                st.reservations.insert(rec.container_id.clone(), rs);
            }
        }
        Ok(())
    }

    pub(crate) async fn remove_sandbox(&self, st: &mut State, cid: &str) -> Result<(), BusError> {
        let Some(rec) = st.sandboxes.remove(cid) else {
            // idempotent; a namespace file without record goes too
            let p = self.store.netns_path(cid);
            if !cid.is_empty() && !cid.contains('/') && p.exists() {
                let _ = self.k.ns.remove(&p);
            }
            let _ = self.store.delete_sandbox(cid);
            return Ok(());
        };
        self.teardown(st, &rec).await;
        if !rec.ports.is_empty() {
            self.apply_firewall(st).await?;
        }
        self.store.delete_sandbox(cid)?;
        for e in &rec.endpoints {
            if let Some(n) = st.networks.get(&e.network_id) {
                self.event(Action::Disconnect, n, Some(cid));
            }
            self.swarm_event(Action::Disconnect, e, cid);
        }
        Ok(())
    }

    /// A container was renamed: its DNS names follow.
    pub(crate) fn rename_sandbox(
        &self,
        st: &mut State,
        container_id: &str,
        name: &str,
    ) -> Result<(), BusError> {
        let Some(mut rec) = st.sandboxes.get(container_id).cloned() else {
            return Err(BusError::not_found(format!(
                "no sandbox for container {}",
                container_id
            )));
        };
        let new = name.trim_start_matches('/').to_string();
        for e in rec.endpoints.iter_mut() {
            for n in e.dns_names.iter_mut() {
                if *n == rec.name {
                    *n = new.clone();
                }
            }
        }
        rec.name = new;
        self.store.save_sandbox(&rec)?;
        st.sandboxes.insert(rec.container_id.clone(), rec.clone());
        self.dns_register(st, &rec);
        Ok(())
    }

    /// `docker network connect` of a running container: one more endpoint.
    pub(crate) async fn connect(
        &self,
        st: &mut State,
        container_id: &str,
        endpoint: &EndpointRequest,
    ) -> Result<docker::EndpointSettings, BusError> {
        let mut rec = st.sandboxes.get(container_id).cloned().ok_or_else(|| {
            BusError::not_found(format!("no sandbox for container {container_id}"))
        })?;
        if !rec.owns_netns || rec.endpoints.iter().any(|e| e.ifname.is_empty()) {
            return Err(BusError::forbidden(
                "container sharing network namespace with another container or host cannot be connected to any other network",
            ));
        }
        let used: BTreeSet<String> = rec.endpoints.iter().map(|e| e.ifname.clone()).collect();
        let n = match st.find_network(&endpoint.network) {
            Ok(n) => n.clone(),
            Err(e) if e.is(bus_schema::ErrorKind::NotFound) && self.swarm.get().is_some() => {
                let ifname = (0..).map(|i| format!("eth{i}")).find(|x| !used.contains(x)).unwrap();
                self.attach_swarm(&mut rec, &endpoint.network, &endpoint.settings, &ifname).await?;
                if let Err(e) = self.store.save_sandbox(&rec) {
                    let ep = rec.endpoints.last().expect("attached");
                    self.swarm_detach(&rec.container_id, &ep.network_id).await;
                    return Err(e.into());
                }
                st.sandboxes.insert(rec.container_id.clone(), rec.clone());
                let ep = rec.endpoints.last().expect("attached");
                self.swarm_event(Action::Connect, ep, &rec.container_id);
                return Ok(self.endpoint_settings(st, ep));
            }
            Err(e) => return Err(e),
        };
        if !n.is_bridge() {
            return Err(BusError::forbidden(
                "container cannot be disconnected from host network or connected to host network",
            ));
        }
        if rec.endpoints.iter().any(|e| e.network_id == n.id) {
            return Err(BusError::forbidden(format!(
                "endpoint with name {} already exists in network {}",
                rec.name, n.name
            )));
        }
        let ifname = (0..)
            .map(|i| format!("eth{i}"))
            .find(|x| !used.contains(x))
            .unwrap();
        let want_gw = !n.internal && !rec.endpoints.iter().any(|e| e.gateway.is_some());
        let ns = self.k.ns.open(PathBuf::from(&rec.key)).await?;
        let before = rec.endpoints.len();
        if let Err(e) = self
            .attach(
                st,
                &mut rec,
                &n.id,
                &endpoint.settings,
                &ns,
                &ifname,
                want_gw,
            )
            .await
        {
            if rec.endpoints.len() > before {
                if let Some(ep) = rec.endpoints.pop() {
                    let _ = self.k.links.delete(&ep.host_veth).await;
                }
            }
            return Err(e);
        }
        self.store.save_sandbox(&rec)?;
        st.sandboxes.insert(rec.container_id.clone(), rec.clone());
        self.dns_register(st, &rec);
        self.event(Action::Connect, &n, Some(&rec.container_id));
        let ep = rec.endpoints.last().expect("attached");
        Ok(self.endpoint_settings(st, ep))
    }

    /// `docker network disconnect` of a running container.
    pub(crate) async fn disconnect(
        &self,
        st: &mut State,
        container_id: &str,
        network: &str,
    ) -> Result<(), BusError> {
        let Some(mut rec) = st.sandboxes.get(container_id).cloned() else {
            return Ok(());
        };
        let n = match st.find_network(network) {
            Ok(n) => n.clone(),
            Err(e) if e.is(bus_schema::ErrorKind::NotFound) => {
                // a swarm network's endpoint: by its name or ID
                let Some(pos) = rec.endpoints.iter().position(|e| {
                    e.swarm_network.as_deref() == Some(network) || (e.swarm_network.is_some() && e.network_id == network)
                }) else {
                    return Err(e);
                };
                let ep = rec.endpoints.remove(pos);
                self.swarm_detach(&rec.container_id, &ep.network_id).await;
                st.sandboxes.insert(rec.container_id.clone(), rec.clone());
                self.store.save_sandbox(&rec)?;
                self.swarm_event(Action::Disconnect, &ep, &rec.container_id);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let Some(pos) = rec.endpoints.iter().position(|e| e.network_id == n.id) else {
            return Err(BusError::forbidden(format!(
                "container {} is not connected to network {}",
                rec.container_id, n.name
            )));
        };
        if rec.endpoints[pos].ifname.is_empty() {
            return Err(BusError::forbidden(
                "container cannot be disconnected from host network or connected to host network",
            ));
        }
        let ep = rec.endpoints.remove(pos);
        let _ = self.k.links.delete(&ep.host_veth).await;
        let mut fw = false;
        if rec.ports_network.as_deref() == Some(n.id.as_str()) {
            // the ports went to this endpoint: they go with it
            rec.ports.clear();
            rec.ports_network = None;
            st.reservations.remove(&rec.container_id);
            fw = true;
        }
        st.sandboxes.insert(rec.container_id.clone(), rec.clone());
        if fw {
            self.apply_firewall(st).await?;
        }
        self.store.save_sandbox(&rec)?;
        self.dns_register(st, &rec);
        self.event(Action::Disconnect, &n, Some(&rec.container_id));
        Ok(())
    }
}

/// Moby's checks of `--ip`/`--ip6`: user networks only, each family on a network
/// with a subnet of that family given by the user.
fn user_ip_allowed(net: &crate::store::NetworkRecord, v4: bool, v6: bool) -> Result<(), BusError> {
    if !v4 && !v6 {
        return Ok(());
    }
    if net.default_bridge {
        return Err(BusError::invalid(
            "user specified IP address is supported on user defined networks only",
        ));
    }
    if (v4 && !net.user_ipam) || (v6 && net.subnet6.is_none()) {
        return Err(BusError::invalid(
            "user specified IP address is supported only when connecting to networks with user configured subnets",
        ));
    }
    Ok(())
}

/// How a swarm network a sandbox asks for is named among its wanted networks
/// (`SWARM_KEY` + the name as given: no local network ID looks so).
const SWARM_KEY: &str = "swarm:";

fn swarm_key(name: &str) -> String {
    format!("{SWARM_KEY}{name}")
}

fn empty_endpoint(net_id: &str) -> EndpointRecord {
    EndpointRecord {
        network_id: net_id.to_string(),
        endpoint_id: store::new_id(),
        ifname: String::new(),
        host_veth: String::new(),
        mac: String::new(),
        ip: None,
        prefix: 0,
        gateway: None,
        aliases: vec![],
        dns_names: vec![],
        links: vec![],
        driver_opts: BTreeMap::new(),
        gw_priority: 0,
        requested_ip: None,
        ip6: None,
        requested_ip6: None,
        link_local: Vec::new(),
        swarm_network: None,
    }
}

fn port_err(e: PortError) -> BusError {
    BusError::invalid(e.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::fake::TestService;
    use crate::NetworkApi;
    use bus_schema::docker;
    use bus_schema::network::*;
    use std::collections::HashMap;
    use std::net::Ipv4Addr;
    use std::path::{Path, PathBuf};

    pub(crate) fn req(id: &str, mode: &str) -> SandboxCreate {
        SandboxCreate {
            container_id: id.into(),
            name: format!("c-{id}"),
            hostname: id.into(),
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

    fn on(mut r: SandboxCreate, nets: &[&str]) -> SandboxCreate {
        for n in nets {
            r.endpoints.push(EndpointRequest {
                network: n.to_string(),
                settings: docker::EndpointSettings::default(),
            });
        }
        r
    }

    async fn user_net(t: &TestService, name: &str, subnet: &str) {
        t.svc
            .network_create(NetworkCreate {
                body: docker::NetworkCreateRequest {
                    name: name.into(),
                    ipam: Some(docker::Ipam {
                        config: Some(vec![docker::IpamConfig {
                            subnet: Some(subnet.into()),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            })
            .await
            .unwrap();
    }

    /// IPv6 networks as Moby 20.10: no default pool, the bridge gets the gateway,
    /// each endpoint an address (auto or asked) and the default route, shown back;
    /// link-local addresses go on the interface and into IPAMConfig.
    #[tokio::test]
    async fn ipv6_and_link_local_endpoints() {
        let t = TestService::start().await;
        let create = |name: &str, v6: bool, cfg: Vec<docker::IpamConfig>| docker::NetworkCreateRequest {
            name: name.into(),
            enable_ipv6: Some(v6),
            ipam: Some(docker::Ipam { config: Some(cfg), ..Default::default() }),
            ..Default::default()
        };
        let e = t.svc.network_create(NetworkCreate { body: create("nov6", true, vec![]) }).await.unwrap_err();
        assert_eq!(e.kind, bus_schema::ErrorKind::NotFound, "{e:?}");
        assert!(e.message.starts_with("could not find an available, non-overlapping IPv6"), "{e:?}");
        let v6 = |sub: &str, range: Option<&str>, gw: Option<&str>| docker::IpamConfig {
            subnet: Some(sub.into()),
            ip_range: range.map(Into::into),
            gateway: gw.map(Into::into),
            ..Default::default()
        };
        t.svc
            .network_create(NetworkCreate {
                body: create("six", true, vec![v6("2001:389::/64", Some("2001:389::0/96"), Some("2001:389::ffff"))]),
            })
            .await
            .unwrap();
        let e = t
            .svc
            .network_create(NetworkCreate { body: create("again", true, vec![v6("2001:389::/80", None, None)]) })
            .await
            .unwrap_err();
        assert_eq!(e.kind, bus_schema::ErrorKind::Forbidden, "{e:?}");
        let i = t
            .svc
            .network_inspect(NetworkInspect { id: "six".into(), verbose: false })
            .await
            .unwrap();
        let bridge = {
            assert_eq!(i.enable_ipv6, Some(true));
            let cfg = i.ipam.unwrap().config.unwrap();
            assert_eq!(cfg.len(), 2, "an IPv4 subnet is picked too: {cfg:?}");
            assert_eq!(cfg[1].subnet.as_deref(), Some("2001:389::/64"));
            assert_eq!(cfg[1].ip_range.as_deref(), Some("2001:389::0/96"));
            assert_eq!(cfg[1].gateway.as_deref(), Some("2001:389::ffff"));
            format!("br-{}", &i.id.as_deref().unwrap()[..12])
        };
        assert_eq!(
            t.fake.world().addresses[&bridge],
            vec![("2001:389::ffff".parse::<std::net::IpAddr>().unwrap(), 64)]
        );
        let s = t.svc.sandbox_create(on(req("c1", "six"), &["six"])).await.unwrap();
        let ep = &s.networks["six"];
        assert_eq!(ep.global_ipv6_address.as_deref(), Some("2001:389::1"));
        assert_eq!(ep.global_ipv6_prefix_len, Some(64));
        assert_eq!(ep.ipv6_gateway.as_deref(), Some("2001:389::ffff"));
        assert_eq!(ep.ipam_config, None);
        assert!(s.hosts.contains("2001:389::1\tc1"), "{}", s.hosts);
        let mut r = req("c2", "six");
        r.endpoints.push(EndpointRequest {
            network: "six".into(),
            settings: docker::EndpointSettings {
                ipam_config: Some(docker::EndpointIpamConfig {
                    ipv6_address: Some("2001:389::f00d".into()),
                    link_local_ips: Some(vec!["169.254.8.8".into(), "fe80::8".into()]),
                    ..Default::default()
                }),
                ..Default::default()
            },
        });
        let s2 = t.svc.sandbox_create(r).await.unwrap();
        let ep = &s2.networks["six"];
        assert_eq!(ep.global_ipv6_address.as_deref(), Some("2001:389::f00d"));
        assert_eq!(
            ep.ipam_config,
            Some(docker::EndpointIpamConfig {
                ipv4_address: None,
                ipv6_address: Some("2001:389::f00d".into()),
                link_local_ips: Some(vec!["169.254.8.8".into(), "fe80::8".into()]),
            })
        );
        {
            let w = t.fake.world();
            let ns = &w.namespaces[&PathBuf::from(&s2.key)];
            let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
            assert_eq!(ns.extra["eth0"], vec![(ip("2001:389::f00d"), 64), (ip("169.254.8.8"), 16), (ip("fe80::8"), 64)]);
            assert_eq!(ns.gateway6, Some("2001:389::ffff".parse().unwrap()));
        }
        // the same address again, one outside the subnet, a link-local that is not
        let bad = |id: &str, v6: Option<&str>, ll: Option<&str>| {
            let mut r = req(id, "six");
            r.endpoints.push(EndpointRequest {
                network: "six".into(),
                settings: docker::EndpointSettings {
                    ipam_config: Some(docker::EndpointIpamConfig {
                        ipv6_address: v6.map(Into::into),
                        link_local_ips: ll.map(|l| vec![l.to_string()]),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            });
            r
        };
        let e = t.svc.sandbox_create(bad("c3", Some("2001:389::f00d"), None)).await.unwrap_err();
        assert_eq!(e.kind, bus_schema::ErrorKind::Forbidden, "{e:?}");
        let e = t.svc.sandbox_create(bad("c4", Some("2001:388::1"), None)).await.unwrap_err();
        assert_eq!(e.kind, bus_schema::ErrorKind::InvalidArgument, "{e:?}");
        let e = t.svc.sandbox_create(bad("c5", None, Some("10.0.0.1"))).await.unwrap_err();
        assert_eq!(e.kind, bus_schema::ErrorKind::InvalidArgument, "{e:?}");
        // --ip6 on a network without an IPv6 subnet: Moby's refusal
        user_net(&t, "four", "10.99.0.0/24").await;
        let mut r = bad("c6", Some("2001:389::7"), None);
        r.endpoints[0].network = "four".into();
        r.network_mode = "four".into();
        let e = t.svc.sandbox_create(r).await.unwrap_err();
        assert!(e.message.contains("user configured subnets"), "{e:?}");
    }

    #[tokio::test]
    async fn a_bridge_sandbox_is_a_namespace_with_a_veth_an_address_and_a_route() {
        let t = TestService::start().await;
        let s = t.svc.sandbox_create(req("c1", "bridge")).await.unwrap();
        let ep = &s.networks["bridge"];
        assert_eq!(ep.ip_address.as_deref(), Some("172.17.0.2"));
        assert_eq!(ep.gateway.as_deref(), Some("172.17.0.1"));
        assert_eq!(ep.mac_address.as_deref(), Some("02:42:ac:11:00:02"));
        assert_eq!(ep.ip_prefix_len, Some(16));
        assert!(s.resolv_conf.contains("nameserver 192.0.2.53"), "{}", s.resolv_conf);
        assert!(s.hosts.contains("172.17.0.2\tc1"), "{}", s.hosts);
        let key = PathBuf::from(&s.key);
        {
            let w = t.fake.world();
            let ns = &w.namespaces[&key];
            assert!(ns.lo_up);
            let eth0 = &ns.ifaces["eth0"];
            assert_eq!(eth0.addr, Some((Ipv4Addr::new(172, 17, 0, 2), 16)));
            assert_eq!(eth0.gateway, Some(Ipv4Addr::new(172, 17, 0, 1)));
            let ports = w.ports_of("berth0");
            assert_eq!(ports.len(), 1);
            assert_eq!(w.links[&ports[0]].alias.as_deref(), Some("berth:n1"));
        }
        assert!(t.svc.store.sandboxes_dir().join("c1.json").exists());
        // a second one gets the next address
        let s2 = t.svc.sandbox_create(req("c2", "bridge")).await.unwrap();
        assert_eq!(s2.networks["bridge"].ip_address.as_deref(), Some("172.17.0.3"));

        t.svc
            .sandbox_remove(SandboxRemove {
                container_id: "c1".into(),
            })
            .await
            .unwrap();
        let w = t.fake.world();
        assert!(!w.namespaces.contains_key(&key));
        assert_eq!(w.ports_of("berth0").len(), 1);
        assert!(!key.exists());
        drop(w);
        assert!(!t.svc.store.sandboxes_dir().join("c1.json").exists());
        assert_eq!(t.actions(), ["connect", "connect", "disconnect"]);
        // idempotent
        t.svc
            .sandbox_remove(SandboxRemove {
                container_id: "c1".into(),
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_failed_endpoint_leaves_nothing_behind() {
        let t = TestService::start().await;
        user_net(&t, "web", "10.50.0.0/24").await;
        t.fake.world().fail.insert("configure");
        let e = t
            .svc
            .sandbox_create(on(req("c1", "web"), &["bridge"]))
            .await
            .unwrap_err();
        assert!(e.message.contains("injected failure"), "{}", e.message);
        {
            let w = t.fake.world();
            assert!(w.namespaces.is_empty());
            assert!(w.veths().is_empty(), "{:?}", w.veths());
        }
        assert!(!t.svc.store.sandboxes_dir().join("c1.json").exists());
        assert!(t.actions().iter().all(|a| a != "connect"));
        t.fake.world().fail.clear();
        let s = t
            .svc
            .sandbox_create(on(req("c1", "web"), &["bridge"]))
            .await
            .unwrap();
        // as Moby, the address of the failed try is not handed out again at once
        assert_eq!(s.networks["web"].ip_address.as_deref(), Some("10.50.0.3"));
        // the mode's network is eth0 with the default route; the other network eth1
        let w = t.fake.world();
        let ns = &w.namespaces[&PathBuf::from(&s.key)];
        assert_eq!(ns.ifaces["eth0"].gateway, Some(Ipv4Addr::new(10, 50, 0, 1)));
        assert_eq!(
            ns.ifaces["eth1"].addr,
            Some((Ipv4Addr::new(172, 17, 0, 2), 16))
        );
        assert_eq!(ns.ifaces["eth1"].gateway, None);
    }

    #[tokio::test]
    async fn published_ports_go_to_the_firewall_and_come_back_with_the_sandbox() {
        let t = TestService::start().await;
        let mut r = req("c1", "bridge");
        r.port_bindings.insert(
            "80/tcp".into(),
            Some(vec![docker::PortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: Some(String::new()),
            }]),
        );
        r.exposed_ports = vec!["80/tcp".into(), "53/udp".into()];
        let s = t.svc.sandbox_create(r).await.unwrap();
        let b = s.ports["80/tcp"].clone().unwrap();
        let host_port: u16 = b[0].host_port.as_deref().unwrap().parse().unwrap();
        assert!(host_port > 0);
        assert_eq!(s.ports["53/udp"], None);
        {
            let w = t.fake.world();
            let fp = &w.tables["berth_n1"].1;
            assert_eq!(fp.len(), 1);
            assert_eq!(fp[0].host_port, host_port);
            assert_eq!(fp[0].container_ip, Ipv4Addr::new(172, 17, 0, 2));
            assert_eq!(fp[0].container_port, 80);
        }
        // the host port is held: binding it fails
        assert!(std::net::TcpListener::bind(("127.0.0.1", host_port)).is_err());
        t.svc
            .sandbox_remove(SandboxRemove {
                container_id: "c1".into(),
            })
            .await
            .unwrap();
        assert!(t.fake.world().tables["berth_n1"].1.is_empty());
        assert!(std::net::TcpListener::bind(("127.0.0.1", host_port)).is_ok());
    }

    #[tokio::test]
    async fn host_none_and_container_modes() {
        let t = TestService::start().await;
        let h = t.svc.sandbox_create(req("h", "host")).await.unwrap();
        assert_eq!(h.key, "");
        assert!(h.networks.contains_key("host"));
        let n = t.svc.sandbox_create(req("n", "none")).await.unwrap();
        assert!(t.fake.world().namespaces[Path::new(&n.key)].lo_up);
        assert!(t.fake.world().namespaces[Path::new(&n.key)].ifaces.is_empty());
        let b = t.svc.sandbox_create(req("b", "bridge")).await.unwrap();
        let j = t
            .svc
            .sandbox_create(req("j", "container:b"))
            .await
            .unwrap();
        assert_eq!(j.key, b.key);
        // a container sharing a namespace cannot connect elsewhere
        let e = t
            .svc
            .endpoint_create(EndpointCreate {
                container_id: "j".into(),
                endpoint: EndpointRequest {
                    network: "bridge".into(),
                    settings: Default::default(),
                },
            })
            .await
            .unwrap_err();
        assert_eq!(e.kind, bus_schema::ErrorKind::Forbidden);
        let e = t
            .svc
            .sandbox_create(req("x", "container:nope"))
            .await
            .unwrap_err();
        assert_eq!(e.kind, bus_schema::ErrorKind::Conflict);
    }

    #[tokio::test]
    async fn connect_and_disconnect_a_running_sandbox() {
        let t = TestService::start().await;
        user_net(&t, "web", "10.51.0.0/24").await;
        let s = t.svc.sandbox_create(req("c1", "bridge")).await.unwrap();
        let ep = t
            .svc
            .endpoint_create(EndpointCreate {
                container_id: "c1".into(),
                endpoint: EndpointRequest {
                    network: "web".into(),
                    settings: docker::EndpointSettings {
                        aliases: Some(vec!["db".into()]),
                        ..Default::default()
                    },
                },
            })
            .await
            .unwrap();
        assert_eq!(ep.ip_address.as_deref(), Some("10.51.0.2"));
        assert_eq!(
            ep.dns_names,
            Some(vec!["c-c1".into(), "db".into(), "c1".into()])
        );
        {
            let w = t.fake.world();
            let ns = &w.namespaces[Path::new(&s.key)];
            assert_eq!(ns.ifaces["eth1"].addr, Some((Ipv4Addr::new(10, 51, 0, 2), 24)));
        }
        let net = t
            .svc
            .network_inspect(NetworkInspect {
                id: "web".into(),
                verbose: false,
            })
            .await
            .unwrap();
        assert!(net.containers.unwrap().contains_key("c1"));
        t.svc
            .endpoint_remove(EndpointRemove {
                container_id: "c1".into(),
                network: "web".into(),
            })
            .await
            .unwrap();
        let w = t.fake.world();
        assert!(!w.namespaces[Path::new(&s.key)].ifaces.contains_key("eth1"));
        let bridge = w
            .bridges()
            .into_iter()
            .find(|b| b.starts_with("br-"))
            .unwrap();
        assert!(w.ports_of(&bridge).is_empty());
    }
}
