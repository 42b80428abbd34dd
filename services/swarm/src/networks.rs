//! The swarm's overlay networks (`swarm_networks`): create, list, inspect and remove as
//! Moby 20.10 answers them, their subnets from the swarm's default address pool, their
//! VXLAN IDs, and the addresses handed out in them (services' virtual IPs). Answers
//! compared with Moby 20.10.24 (notes in docs/swarm.md).

use crate::rpc;
use crate::cluster::Cluster;
use crate::filters::{self, Filters};
use crate::model::*;
use crate::store::buckets;
use bus_schema::{docker, BusError};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

/// The driver option Moby answers with each overlay network's VXLAN ID.
pub const VXLANID_OPTION: &str = "com.docker.network.driver.overlay.vxlanid_list";
/// The first VXLAN ID swarmkit hands out.
const FIRST_VNI: u32 = 4096;

/// `a.b.c.d/n` as (network address, prefix length).
pub fn parse_cidr(s: &str) -> Option<(u32, u8)> {
    let (ip, len) = s.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    if len > 32 {
        return None;
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Some((u32::from(ip) & mask, len))
}

fn overlaps(a: (u32, u8), b: (u32, u8)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a.0 & mask == b.0 & mask
}

/// The first subnet of `size` bits in `pool` that overlaps none of `used`.
pub fn next_subnet(pool: &[String], size: u32, used: &[(u32, u8)]) -> Option<(u32, u8)> {
    for p in pool {
        let (base, plen) = parse_cidr(p)?;
        let size = size as u8;
        if size < plen || size > 30 {
            continue;
        }
        let count: u64 = 1u64 << (size - plen);
        for i in 0..count {
            let net = base + ((i as u32) << (32 - size));
            if !used.iter().any(|u| overlaps(*u, (net, size))) {
                return Some((net, size));
            }
        }
    }
    None
}

/// The first free host address of `subnet` after `last` (from the start when `last` is
/// none or outside it; wrapping round), the gateway and `taken` excluded.
pub fn next_address(subnet: &str, gateway: &str, taken: &BTreeMap<String, String>, last: Option<&str>) -> Option<String> {
    let (net, len) = parse_cidr(subnet)?;
    let hosts: u32 = if len >= 31 { 0 } else { (1u32 << (32 - len)) - 2 };
    let start = last.and_then(|l| l.parse::<Ipv4Addr>().ok()).map(u32::from).filter(|l| *l > net && *l <= net + hosts).map(|l| l - net).unwrap_or(0);
    for k in 0..hosts {
        let i = (start + k) % hosts + 1;
        let a = Ipv4Addr::from(net + i).to_string();
        if a != gateway && !taken.contains_key(&a) {
            return Some(a);
        }
    }
    None
}

/// Moby's `types.NetworkResource` of a swarm network, as listed and inspected on a node
/// with no endpoint in it (`Containers` and an absent `Labels` are `null`: the gateway
/// writes them so).
pub fn resource(n: &NetworkRecord) -> docker::NetworkInspect {
    let mut options = n.options.clone();
    options.insert(VXLANID_OPTION.into(), n.vni.to_string());
    docker::NetworkInspect {
        name: Some(n.name.clone()),
        id: Some(n.id.clone()),
        created: Some(n.created_at.clone()),
        scope: Some("swarm".into()),
        driver: Some(n.driver.clone()),
        enable_ipv6: Some(n.enable_ipv6),
        ipam: Some(docker::Ipam {
            driver: Some(n.ipam_driver.clone()),
            options: n.ipam_options.clone(),
            config: Some(
                n.subnets
                    .iter()
                    .map(|(s, g)| docker::IpamConfig { subnet: Some(s.clone()), gateway: Some(g.clone()), ..Default::default() })
                    .collect(),
            ),
        }),
        internal: Some(n.internal),
        attachable: Some(n.attachable),
        ingress: Some(n.ingress),
        config_from: Some(docker::ConfigReference { network: Some(String::new()) }),
        config_only: Some(false),
        options: Some(options),
        labels: n.labels.clone(),
        ..Default::default()
    }
}

/// Moby's name of a node among a network's `Peers`: libnetwork names each daemon
/// `<hostname>-<12 hex>` in its NetworkDB (the hex random at each start); here the hex
/// is a digest of the node ID, so the name stays the same across restarts.
pub fn peer_name(n: &NodeRecord) -> String {
    use sha2::Digest as _;
    let h = hex::encode(sha2::Sha256::digest(n.id.as_bytes()));
    format!("{}-{}", n.description.hostname.clone().unwrap_or_default(), &h[..12])
}

/// An endpoint's ID in a swarm network (64 hex, as Moby's): a digest of the network
/// and the address's owner, so every node names it the same.
fn endpoint_id(net: &str, owner: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(format!("{net}/{owner}").as_bytes()))
}

/// A task as [`local_view`] needs it: where it runs, its container (once the node made
/// one and while it runs) and its container's name.
pub struct TaskEndpoint {
    pub node: String,
    pub container: Option<String>,
    pub name: String,
}

/// What inspecting swarm network `n` on node `me` shows beyond [`resource`], as Moby's
/// libnetwork answers on a node with endpoints in the network: `Containers` (this
/// node's task containers and attached plain containers by container ID, its ingress
/// sandbox as `ingress-sbox`) and `Peers` (every node holding an endpoint there, by
/// underlay address). None when this node holds no endpoint there (Moby's `null`
/// containers and no peers). `names`: the attached plain containers' names by ID (one
/// not there is gone: left out).
pub fn local_view(
    me: &str,
    n: &NetworkRecord,
    tasks: &HashMap<String, TaskEndpoint>,
    nodes: &[NodeRecord],
    names: &HashMap<String, String>,
) -> Option<(HashMap<String, docker::EndpointResource>, Vec<docker::PeerInfo>)> {
    let len = n.subnets.first().and_then(|(s, _)| s.split('/').nth(1)).unwrap_or("32");
    let mut containers = HashMap::new();
    let mut holders = std::collections::BTreeSet::new();
    for (a, owner) in &n.allocated {
        // (node, key in Containers and its name) of the endpoint, if on a node
        let (node, here): (&str, Option<(String, String)>) = if let Some(node) = owner.strip_prefix("node.") {
            (node, Some(("ingress-sbox".into(), "ingress-endpoint".into())))
        } else if let Some((node, cid)) = crate::overlay::container_of(owner) {
            (node, names.get(cid).map(|name| (cid.to_string(), name.clone())))
        } else if let Some(t) = tasks.get(owner) {
            (t.node.as_str(), t.container.clone().map(|c| (c, t.name.clone())))
        } else {
            continue;
        };
        holders.insert(node.to_string());
        if node != me {
            continue;
        }
        let Some((key, name)) = here else { continue };
        let ip = a.split('/').next().unwrap_or(a);
        let mac = ip.parse().map(crate::overlay::mac_for).unwrap_or_default();
        containers.insert(
            key,
            docker::EndpointResource {
                name: Some(name),
                endpoint_id: Some(endpoint_id(&n.id, owner)),
                mac_address: Some(mac),
                ipv4_address: Some(format!("{ip}/{len}")),
                ipv6_address: Some(String::new()),
            },
        );
    }
    if containers.is_empty() {
        return None;
    }
    let mut peers: Vec<docker::PeerInfo> = nodes
        .iter()
        .filter(|nd| holders.contains(&nd.id) && !nd.addr.is_empty())
        .map(|nd| docker::PeerInfo { name: Some(peer_name(nd)), ip: Some(nd.addr.clone()) })
        .collect();
    peers.sort_by(|a, b| a.ip.cmp(&b.ip));
    Some((containers, peers))
}

/// The subject on which node `node` asks the managers for its overlay addresses: only
/// that node may publish on it (its leaf's permissions, [`crate::natsconf`]), so the
/// managers know who asks. The addresses are the managers' to hand out (swarmkit's
/// allocator): a worker may not write the networks' records.
pub fn addresses_subject(node: &str) -> String {
    format!("{}.{ADDRESSES}.{node}", bus_schema::swarm::cluster::PREFIX)
}

/// The token of the overlay addresses' subjects ([`addresses_subject`]).
const ADDRESSES: &str = "addresses";

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct AddressRequest {
    network: String,
    owner: String,
    release: bool,
    /// a plain container's names on the network (`NetworkRecord::names`)
    #[serde(default)]
    names: Vec<String>,
}

/// The names a plain container may have on a network: at most 32, each a DNS name of at
/// most 255 characters (a worker's root sends them: nothing else goes into the store).
pub fn valid_names(names: &[String]) -> bool {
    names.len() <= 32 && names.iter().all(|n| !n.is_empty() && n.len() <= 255 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
}

/// The address (`a.b.c.d/len`; empty for a release) or why not.
type AddressAnswer = Result<String, String>;

/// Whether node `node` may take or give back the addresses of `owner`: its own
/// (ingress) address, its plain containers', and its tasks' — a task the store assigns
/// to it, still to run for a new address. Never a service's virtual IP nor another
/// node's.
pub fn node_may_hold(node: &str, owner: &str, task: Option<&TaskRecord>, release: bool) -> bool {
    if let Some(n) = owner.strip_prefix("node.") {
        return n == node;
    }
    if let Some((n, _)) = crate::overlay::container_of(owner) {
        return n == node;
    }
    if owner.starts_with("vip.") {
        return false;
    }
    task.map(|t| t.id == owner && t.node_id.as_deref() == Some(node) && (release || t.desired_state <= TaskState::Running)).unwrap_or(false)
}

/// A manager: allocate and give back the workers' overlay addresses (a queue group: one
/// manager answers each). The asking node is the subject's last token.
pub async fn serve_addresses(c: std::sync::Arc<Cluster>) {
    crate::cluster::serve_node_asks(c, ADDRESSES, |c: std::sync::Arc<Cluster>, node: String, r: AddressRequest| async move {
        // this manager's copy may not hold the task's assignment yet: the store does
        let mut task = c.t.tasks.get(&r.owner).map(|(t, _)| t);
        if !node_may_hold(&node, &r.owner, task.as_ref(), r.release) && !r.owner.contains('.') {
            task = c.bucket::<TaskRecord>(buckets::TASKS).get(&r.owner).await.ok().flatten().map(|(t, _)| t);
        }
        if !node_may_hold(&node, &r.owner, task.as_ref(), r.release) {
            tracing::warn!(node = %node, owner = %r.owner, "a node asked for an address that is not its own");
            Err(format!("node {node} may not hold addresses of {}", r.owner))
        } else if r.release {
            c.store_release(&r.network, &r.owner).await.map(|_| String::new()).map_err(|e| e.message)
        } else if !valid_names(&r.names) || (!r.names.is_empty() && !r.owner.starts_with("ctr.")) {
            Err(format!("bad names for {}", r.owner))
        } else {
            c.store_allocate(&r.network, &r.owner, &r.names).await.map_err(|e| e.message)
        }
    })
    .await
}

/// The targets of a service spec's network attachments (TaskTemplate.Networks and the
/// deprecated Spec.Networks).
pub fn spec_targets(spec: &docker::ServiceSpec) -> Vec<String> {
    let tt = spec.task_template.as_ref().and_then(|t| t.networks.as_ref()).cloned().unwrap_or_default();
    let old = spec.networks.clone().unwrap_or_default();
    tt.iter().chain(old.iter()).filter_map(|a| a.target.clone()).collect()
}

impl Cluster {
    fn find_network(&self, input: &str) -> Result<(NetworkRecord, u64), BusError> {
        crate::api::resolve(&self.t.networks.values(), input, |n| n.name.clone(), "network")
    }

    pub async fn network_create(&self, req: docker::NetworkCreateRequest) -> Result<docker::NetworkCreateResponse, BusError> {
        let driver = req.driver.clone().filter(|d| !d.is_empty()).unwrap_or_else(|| "overlay".into());
        if req.scope.as_deref() == Some("local") {
            return Err(BusError::forbidden("cannot downgrade network scope for overlay networks"));
        }
        if self.t.networks.values().iter().any(|(_, n, _)| n.name == req.name) {
            return Err(BusError::conflict(format!("network with name {} already exists", req.name)));
        }
        let ingress = req.ingress.unwrap_or(false);
        if ingress {
            if let Some((id, _, _)) = self.t.networks.values().into_iter().find(|(_, n, _)| n.ingress) {
                return Err(BusError::conflict(rpc("AlreadyExists", format!("ingress network ({id}) is already present"))));
            }
        }
        let ipam = req.ipam.clone().unwrap_or_default();
        let nets = self.t.networks.values();
        let mut used: Vec<(u32, u8)> = nets.iter().flat_map(|(_, n, _)| n.subnets.iter().filter_map(|(s, _)| parse_cidr(s))).collect();
        let mut subnets = Vec::new();
        for c in ipam.config.clone().unwrap_or_default() {
            let Some(s) = c.subnet.clone().filter(|s| !s.is_empty()) else { continue };
            let (net, len) = parse_cidr(&s).ok_or_else(|| BusError::invalid(format!("invalid CIDR address: {s}")))?;
            let gw = c.gateway.clone().filter(|g| !g.is_empty()).unwrap_or_else(|| Ipv4Addr::from(net + 1).to_string());
            used.push((net, len));
            subnets.push((format!("{}/{len}", Ipv4Addr::from(net)), gw));
        }
        if subnets.is_empty() {
            let (pool, size) = self.t.cluster.get("swarm").map(|(c, _)| (c.default_addr_pool, c.subnet_size)).unwrap_or_default();
            let (pool, size) = if pool.is_empty() { (vec!["10.0.0.0/8".to_string()], if size == 0 { 24 } else { size }) } else { (pool, if size == 0 { 24 } else { size }) };
            // A subnet routed in this manager's namespace is passed over when another is
            // free: the overlay's bridge lives in the node's namespace (a bridge of
            // another engine, or the ingress of another berth node's swarm there).
            let routed: Vec<(u32, u8)> = used.iter().copied().chain(berth_config::ipv4_routes().into_iter().map(|(a, p)| (u32::from(a), p))).collect();
            let (net, len) = next_subnet(&pool, size, &routed).or_else(|| next_subnet(&pool, size, &used)).ok_or_else(|| BusError::internal(rpc("ResourceExhausted", "could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network")))?;
            subnets.push((format!("{}/{len}", Ipv4Addr::from(net)), Ipv4Addr::from(net + 1).to_string()));
        }
        let mut vni = FIRST_VNI;
        while nets.iter().any(|(_, n, _)| n.vni == vni) {
            vni += 1;
        }
        let now = crate::now();
        let id = crate::ids::new_id();
        let rec = NetworkRecord {
            id: id.clone(),
            created_at: now.clone(),
            updated_at: now,
            name: req.name.clone(),
            driver,
            attachable: req.attachable.unwrap_or(false),
            ingress,
            internal: req.internal.unwrap_or(false),
            enable_ipv6: req.enable_ipv6.unwrap_or(false),
            ipam_driver: ipam.driver.clone().filter(|d| !d.is_empty()).unwrap_or_else(|| "default".into()),
            ipam_options: ipam.options.clone(),
            subnets,
            options: req.options.clone().unwrap_or_default(),
            labels: req.labels.clone().filter(|l| !l.is_empty()),
            vni,
            allocated: BTreeMap::new(),
            last_allocated: None,
            names: Default::default(),
        };
        let rev = self.bucket::<NetworkRecord>(buckets::NETWORKS).create(&id, &rec).await?;
        self.t.networks.note_put(&id, rec, rev);
        Ok(docker::NetworkCreateResponse { id, warning: String::new() })
    }

    pub fn network_list(&self, f: &Filters) -> Result<Vec<docker::NetworkInspect>, BusError> {
        filters::validate(f, &["dangling", "driver", "id", "label", "name", "scope", "type"])?;
        let mut out = Vec::new();
        for (id, n, _) in self.t.networks.values() {
            let ok = filters::pass(f, "id", |v| id.starts_with(v))
                && filters::pass(f, "name", |v| n.name.contains(v))
                && filters::pass(f, "driver", |v| v == n.driver)
                && filters::pass(f, "scope", |v| v == "swarm")
                && filters::pass(f, "type", |v| v == "custom")
                && filters::labels_pass(f, "label", n.labels.as_ref().unwrap_or(&HashMap::new()));
            if ok {
                out.push(resource(&n));
            }
        }
        // swarmkit's store order: by ID
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// A swarm network as this node's Moby answers it: with the endpoints held here
    /// and the network's peers ([`local_view`]).
    pub async fn network_inspect(&self, input: &str) -> Result<docker::NetworkInspect, BusError> {
        let (n, _) = self.find_network(input)?;
        let me = self.node_id();
        let mut names = HashMap::new();
        for o in n.allocated.values() {
            let Some((node, cid)) = crate::overlay::container_of(o) else { continue };
            if node != me {
                continue;
            }
            if let Ok(i) = self.node_bus().inspect(cid).await {
                names.insert(cid.to_string(), i.name.unwrap_or_default().trim_start_matches('/').to_string());
            }
        }
        let tasks: HashMap<String, TaskEndpoint> = self
            .t
            .tasks
            .values()
            .into_iter()
            .filter_map(|(_, t, _)| {
                let node = t.node_id.clone()?;
                let st = self.task_status(&t);
                let container = st.container_id.clone().filter(|_| st.state <= TaskState::Running);
                Some((t.id.clone(), TaskEndpoint { node, container, name: crate::agent::task_name(&t) }))
            })
            .collect();
        let nodes: Vec<NodeRecord> = self.t.nodes.values().into_iter().map(|(_, n, _)| n).collect();
        let mut r = resource(&n);
        if let Some((containers, peers)) = local_view(&me, &n, &tasks, &nodes, &names) {
            r.containers = Some(containers);
            r.peers = Some(peers);
        }
        Ok(r)
    }

    pub async fn network_remove(&self, input: &str) -> Result<(), BusError> {
        let (n, _) = self.find_network(input)?;
        if let Some((sid, _, _)) = self.t.services.values().into_iter().find(|(_, s, _)| spec_targets(&s.spec).contains(&n.id)) {
            return Err(BusError::invalid(rpc("FailedPrecondition", format!("network {} is in use by service {sid}", n.id))));
        }
        // a plain container attached to it (swarmkit names the attachment's task; here
        // the container stands for it)
        if let Some((_, cid)) = n.allocated.values().find_map(|o| crate::overlay::container_of(o)) {
            return Err(BusError::invalid(rpc("FailedPrecondition", format!("network {} is in use by task {cid}", n.id))));
        }
        self.bucket::<NetworkRecord>(buckets::NETWORKS).delete(&n.id).await?;
        self.t.networks.note_delete(&n.id);
        Ok(())
    }

    /// A service spec's attachments with their targets as network IDs (Moby answers
    /// IDs whatever the client sent); Moby's error for a network it does not know.
    pub fn resolve_attachments(&self, spec: &mut docker::ServiceSpec) -> Result<(), BusError> {
        let fix = |list: &mut Option<Vec<docker::NetworkAttachmentConfig>>| -> Result<(), BusError> {
            for a in list.iter_mut().flatten() {
                let t = a.target.clone().unwrap_or_default();
                let (n, _) = self.find_network(&t).map_err(|_| BusError::internal(format!("network {t} not found")))?;
                a.target = Some(n.id);
            }
            Ok(())
        };
        if let Some(tt) = spec.task_template.as_mut() {
            fix(&mut tt.networks)?;
        }
        fix(&mut spec.networks)
    }

    /// An address for `owner` in network `net_id` (the one it holds already, if any),
    /// as `a.b.c.d/len`: allocated in the store by a manager; a worker asks the
    /// managers ([`serve_addresses`]).
    pub async fn allocate_address(&self, net_id: &str, owner: &str) -> Result<String, BusError> {
        self.allocate_named(net_id, owner, &[]).await
    }

    /// An address for `owner` with the names the embedded DNS answers with it (a plain
    /// container's name and aliases).
    pub async fn allocate_named(&self, net_id: &str, owner: &str, names: &[String]) -> Result<String, BusError> {
        if !valid_names(names) {
            return Err(BusError::invalid("invalid container name or alias for an overlay network"));
        }
        if self.is_manager() {
            return self.store_allocate(net_id, owner, names).await;
        }
        self.ask_address(net_id, owner, false, names).await
    }

    /// Give back every address `owner` holds in network `net_id` (a worker asks the
    /// managers).
    pub async fn release_addresses(&self, net_id: &str, owner: &str) -> Result<(), BusError> {
        if self.is_manager() {
            return self.store_release(net_id, owner).await;
        }
        self.ask_address(net_id, owner, true, &[]).await.map(|_| ())
    }

    async fn ask_address(&self, net_id: &str, owner: &str, release: bool, names: &[String]) -> Result<String, BusError> {
        let req = AddressRequest { network: net_id.to_string(), owner: owner.to_string(), release, names: names.to_vec() };
        let a: AddressAnswer = crate::cluster::ask_managers(self, addresses_subject(&self.node_id()), &req, "an overlay address").await?;
        let a = a.map_err(BusError::internal)?;
        // the answering manager wrote the store: this copy follows it
        if let Ok(Some((n, rev))) = self.bucket::<NetworkRecord>(buckets::NETWORKS).get(net_id).await {
            self.t.networks.note_put(net_id, n, rev);
        }
        Ok(a)
    }

    async fn store_allocate(&self, net_id: &str, owner: &str, names: &[String]) -> Result<String, BusError> {
        let mut got = None;
        let b = self.bucket::<NetworkRecord>(buckets::NETWORKS);
        let r = b
            .modify(net_id, |n| {
                let (subnet, gw) = n.subnets.first().cloned().ok_or_else(|| BusError::internal(format!("network {net_id} has no subnet")))?;
                let len = subnet.split('/').nth(1).unwrap_or("32").to_string();
                let renamed = !names.is_empty() && n.names.get(owner).map(|v| v.as_slice()) != Some(names);
                if renamed {
                    n.names.insert(owner.to_string(), names.to_vec());
                }
                if let Some((a, _)) = n.allocated.iter().find(|(_, o)| o.as_str() == owner) {
                    got = Some(format!("{a}/{len}"));
                    return Ok(renamed);
                }
                let a = next_address(&subnet, &gw, &n.allocated, n.last_allocated.as_deref()).ok_or_else(|| BusError::internal(rpc("ResourceExhausted", format!("could not allocate an address in network {net_id}"))))?;
                n.allocated.insert(a.clone(), owner.to_string());
                n.last_allocated = Some(a.clone());
                got = Some(format!("{a}/{len}"));
                Ok(true)
            })
            .await?;
        let (n, rev) = r.ok_or_else(|| BusError::not_found(format!("network {net_id} not found")))?;
        self.t.networks.note_put(net_id, n, rev);
        got.ok_or_else(|| BusError::internal("no address"))
    }

    async fn store_release(&self, net_id: &str, owner: &str) -> Result<(), BusError> {
        let b = self.bucket::<NetworkRecord>(buckets::NETWORKS);
        if let Some((n, rev)) = b
            .modify(net_id, |n| {
                let before = n.allocated.len();
                n.allocated.retain(|_, o| o != owner);
                let named = n.names.remove(owner).is_some();
                Ok(n.allocated.len() != before || named)
            })
            .await?
        {
            self.t.networks.note_put(net_id, n, rev);
        }
        Ok(())
    }

    /// The service's endpoint: its endpoint spec, its published ports (checked against
    /// the other services', dynamic ones allocated) and, in VIP mode, one virtual IP per
    /// attached network, the ingress network among them when it publishes a port through
    /// the routing mesh (kept across updates, released for networks it left).
    pub async fn service_endpoint(&self, service_id: &str, spec: &docker::ServiceSpec, old: Option<&docker::ServiceEndpoint>) -> Result<Option<docker::ServiceEndpoint>, BusError> {
        let owner = format!("vip.{service_id}");
        let mut targets = spec_targets(spec);
        let others: Vec<ServiceRecord> = self.t.services.values().into_iter().map(|(_, s, _)| s).collect();
        crate::ports::check_conflicts(spec, service_id, &others).map_err(BusError::invalid)?;
        let ports = crate::ports::allocate(spec, service_id, old, &others).map_err(BusError::invalid)?;
        if crate::ports::publishes_ingress(spec) {
            // the routing mesh: the service on the ingress network too, with a VIP there
            let Some((ingress, _, _)) = self.t.networks.values().into_iter().find(|(_, n, _)| n.ingress) else {
                return Err(BusError::invalid(rpc("FailedPrecondition", "service needs ingress network, but no ingress network is present")));
            };
            if !targets.contains(&ingress) {
                targets.push(ingress);
            }
        }
        let old_vips: Vec<String> = old.and_then(|e| e.virtual_ips.clone()).unwrap_or_default().into_iter().filter_map(|v| v.network_id).collect();
        for gone in old_vips.iter().filter(|n| !targets.contains(n)) {
            self.release_addresses(gone, &owner).await?;
        }
        let dnsrr = spec.endpoint_spec.as_ref().and_then(|e| e.mode).map(|m| m == docker::EndpointSpecModeEnum::DNSRR).unwrap_or(false);
        if targets.is_empty() && old.is_none() && ports.is_empty() {
            return Ok(None);
        }
        let mut vips = Vec::new();
        if !dnsrr {
            for t in &targets {
                let addr = self.allocate_address(t, &owner).await?;
                vips.push(docker::ServiceEndpointVirtualIps { network_id: Some(t.clone()), addr: Some(addr) });
            }
        } else {
            for t in &targets {
                self.release_addresses(t, &owner).await?;
            }
        }
        let mut ep = old.cloned().unwrap_or_default();
        ep.spec = Some(spec.endpoint_spec.clone().unwrap_or_default());
        ep.virtual_ips = (!vips.is_empty()).then_some(vips);
        ep.ports = (!ports.is_empty()).then_some(ports);
        Ok(Some(ep))
    }

    /// The swarm's ingress network, made at init as Moby does.
    pub async fn create_ingress(&self) -> Result<(), BusError> {
        let req = docker::NetworkCreateRequest { name: "ingress".into(), driver: Some("overlay".into()), ingress: Some(true), ..Default::default() };
        self.network_create(req).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_from_the_pool_as_moby_hands_them_out() {
        let pool = vec!["10.0.0.0/8".to_string()];
        let a = next_subnet(&pool, 24, &[]).unwrap();
        assert_eq!((Ipv4Addr::from(a.0).to_string(), a.1), ("10.0.0.0".into(), 24));
        let b = next_subnet(&pool, 24, &[a]).unwrap();
        assert_eq!(Ipv4Addr::from(b.0).to_string(), "10.0.1.0");
        // a client's subnet inside the pool is skipped
        let c = next_subnet(&pool, 24, &[a, parse_cidr("10.0.1.0/25").unwrap()]).unwrap();
        assert_eq!(Ipv4Addr::from(c.0).to_string(), "10.0.2.0");
        assert!(next_subnet(&["10.0.0.0/24".to_string()], 24, &[a]).is_none());
    }

    #[test]
    fn addresses_skip_the_gateway_and_the_taken() {
        let mut taken = BTreeMap::new();
        assert_eq!(next_address("10.0.1.0/24", "10.0.1.1", &taken, None).as_deref(), Some("10.0.1.2"));
        taken.insert("10.0.1.2".to_string(), "vip.x".to_string());
        assert_eq!(next_address("10.0.1.0/24", "10.0.1.1", &taken, None).as_deref(), Some("10.0.1.3"));
        assert!(next_address("10.0.1.0/31", "10.0.1.1", &taken, None).is_none());
        // serial: after the last one handed out, even when a lower one is free again
        assert_eq!(next_address("10.0.1.0/24", "10.0.1.1", &taken, Some("10.0.1.7")).as_deref(), Some("10.0.1.8"));
        // and round again at the end of the subnet
        assert_eq!(next_address("10.0.1.0/24", "10.0.1.1", &taken, Some("10.0.1.254")).as_deref(), Some("10.0.1.3"));
        let mut full = BTreeMap::new();
        full.insert("10.0.2.2".to_string(), "t".to_string());
        assert_eq!(next_address("10.0.2.0/29", "10.0.2.1", &full, Some("10.0.2.5")).as_deref(), Some("10.0.2.6"));
        assert_eq!(next_address("10.0.2.0/29", "10.0.2.1", &full, Some("10.0.2.6")).as_deref(), Some("10.0.2.3"));
    }

    #[test]
    fn a_node_holds_only_its_own_addresses() {
        use crate::model::test_task;
        let mine = test_task("t1", "s1", "me", TaskState::Running);
        let other = test_task("t2", "s1", "other", TaskState::Running);
        let stopping = test_task("t3", "s1", "me", TaskState::Shutdown);
        assert!(node_may_hold("me", "node.me", None, false));
        assert!(!node_may_hold("me", "node.other", None, false));
        assert!(node_may_hold("me", &crate::overlay::container_owner("me", "c1"), None, false));
        assert!(!node_may_hold("me", &crate::overlay::container_owner("other", "c1"), None, true));
        assert!(!node_may_hold("me", "vip.s1", None, false));
        assert!(node_may_hold("me", "t1", Some(&mine), false));
        assert!(!node_may_hold("me", "t2", Some(&other), false));
        assert!(!node_may_hold("me", "t2", Some(&other), true));
        // a task on its way out: given back, not taken
        assert!(!node_may_hold("me", "t3", Some(&stopping), false));
        assert!(node_may_hold("me", "t3", Some(&stopping), true));
        // a task that is not the owner named, or not known
        assert!(!node_may_hold("me", "t9", Some(&mine), false));
        assert!(!node_may_hold("me", "t9", None, true));
    }

    #[test]
    fn inspect_on_a_node_shows_its_endpoints_and_the_peers() {
        use crate::model::test_node;
        let n = crate::model::test_network("net1", 4097, &[
            ("10.0.1.2", "vip.s1"),
            ("10.0.1.3", "t1"),
            ("10.0.1.4", "t2"),
            ("10.0.1.5", "node.me"),
            ("10.0.1.6", &crate::overlay::container_owner("me", "c0ffee")),
            ("10.0.1.7", "t3"),
        ]);
        let ep = |node: &str, c: Option<&str>, name: &str| TaskEndpoint { node: node.into(), container: c.map(Into::into), name: name.into() };
        let tasks = HashMap::from([
            ("t1".to_string(), ep("me", Some("c1"), "web.1.t1")),
            ("t2".to_string(), ep("other", Some("c2"), "web.2.t2")),
            // made, no container yet
            ("t3".to_string(), ep("me", None, "web.3.t3")),
        ]);
        let mut me = test_node("me", "192.168.1.1");
        me.description.hostname = Some("alpha".into());
        let mut other = test_node("other", "192.168.1.2");
        other.description.hostname = Some("beta".into());
        let nodes = vec![other, me, test_node("idle", "192.168.1.3")];
        let names = HashMap::from([("c0ffee".to_string(), "plain".to_string())]);
        let (c, peers) = local_view("me", &n, &tasks, &nodes, &names).unwrap();
        let j = serde_json::to_value(&c).unwrap();
        let mut keys: Vec<&String> = c.keys().collect();
        keys.sort();
        assert_eq!(keys, ["c0ffee", "c1", "ingress-sbox"]);
        assert_eq!(j["c1"]["Name"], "web.1.t1");
        assert_eq!(j["c1"]["MacAddress"], "02:42:0a:00:01:03");
        assert_eq!(j["c1"]["IPv4Address"], "10.0.1.3/24");
        assert_eq!(j["c1"]["IPv6Address"], "");
        assert_eq!(j["c1"]["EndpointID"].as_str().unwrap().len(), 64);
        assert_eq!(j["ingress-sbox"]["Name"], "ingress-endpoint");
        assert_eq!(j["c0ffee"]["Name"], "plain");
        // the nodes holding endpoints, by address; the idle node is not one
        let p = serde_json::to_value(&peers).unwrap();
        assert_eq!(p[0]["IP"], "192.168.1.1");
        assert!(p[0]["Name"].as_str().unwrap().starts_with("alpha-"), "{p}");
        assert_eq!(p[1]["IP"], "192.168.1.2");
        assert_eq!(peers.len(), 2);
        // every node names an endpoint alike
        let (again, _) = local_view("me", &n, &tasks, &nodes, &names).unwrap();
        assert_eq!(again["c1"].endpoint_id, c["c1"].endpoint_id);
        // a node with no endpoint there: Moby's null containers, no peers
        assert!(local_view("other-idle", &n, &tasks, &nodes, &names).is_none());
        // an attached container that is gone is left out
        let (c, _) = local_view("me", &n, &tasks, &nodes, &HashMap::new()).unwrap();
        assert!(!c.contains_key("c0ffee"));
    }

    #[test]
    fn resource_has_mobys_fields() {
        let mut n = crate::model::test_network("abc", 4097, &[]);
        n.created_at = "2026-12-06T10:11:39.622607575Z".into();
        n.name = "n1".into();
        n.attachable = true;
        n.options = HashMap::from([("o".to_string(), "v".to_string())]);
        let j = serde_json::to_value(resource(&n)).unwrap();
        assert_eq!(j["Scope"], "swarm");
        assert_eq!(j["Options"][VXLANID_OPTION], "4097");
        assert_eq!(j["Options"]["o"], "v");
        assert_eq!(j["IPAM"]["Config"][0]["Subnet"], "10.0.1.0/24");
        assert_eq!(j["IPAM"]["Config"][0]["Gateway"], "10.0.1.1");
        assert_eq!(j["ConfigFrom"]["Network"], "");
        assert_eq!(j["Attachable"], true);
    }
}
