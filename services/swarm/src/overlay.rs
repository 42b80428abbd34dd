//! The overlay data path of a node (issue 18): for each swarm overlay network a task of
//! this node is attached to, a Linux bridge (`bov<VNI>`) with a VXLAN device
//! (`bvx<VNI>`: the network's VNI, UDP 4789, learning off, ARP proxy) in the node's
//! namespace; FDB and neighbour entries for the other nodes' tasks (their MAC and IP,
//! the node's underlay address) computed from the store (`swarm_networks` addresses →
//! `swarm_tasks` placement → `swarm_nodes` Status.Addr) and kept up to date as it
//! changes; each task container gets a veth on the bridge with its address from the
//! network's subnet (allocated in the store, so unique across nodes; MAC `02:42:` + the
//! address as Moby's). Inside each attached container: the services of its networks'
//! virtual IPs load-balanced with nftables DNAT (`numgen random`) to the tasks, and
//! their names (`NAME` → VIP, or the tasks' IPs with `--endpoint-mode dnsrr`;
//! `tasks.NAME` → every task IP) in a block of the container's /etc/hosts.
//!
//! Plain containers on attachable networks (`docker run --network`, Moby's network
//! attachment) hold addresses as `ctr.<node>.<container>` and are put on the overlay as
//! tasks are, once they run ([`attach_container`], [`detach_container`]).
//!
//! Kernel objects are made with iproute2 (`ip`, `bridge`), nftables (`nft`) and
//! `nsenter`, from the swarm service (the network service has no bus operation for them
//! yet; see docs/status.md, issue 18).

use crate::cluster::Cluster;
use crate::model::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const VXLAN_PORT: u16 = 4789;

/// The swarm's data path port (`docker swarm init --data-path-port`; 4789 by default):
/// the UDP port of every VXLAN device of this node (one port holds a VNI once in a
/// network namespace: two nodes in one need two ports).
static DATA_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(VXLAN_PORT);

fn data_port() -> u16 {
    DATA_PORT.load(std::sync::atomic::Ordering::Relaxed)
}

/// Follow the swarm record's data path port.
pub fn set_data_port(c: &Cluster) {
    if let Some((cl, _)) = c.t.cluster.get("swarm") {
        let p = u16::try_from(cl.data_path_port).ok().filter(|p| *p > 0).unwrap_or(VXLAN_PORT);
        DATA_PORT.store(p, std::sync::atomic::Ordering::Relaxed);
    }
}
/// 1500 less the VXLAN encapsulation (50 bytes), as Moby's overlay.
pub const MTU: u32 = 1450;
const HOSTS_BEGIN: &str = "# berth swarm overlay: begin";
const HOSTS_END: &str = "# berth swarm overlay: end";
const NFT_TABLE: &str = "berth_vip";

/// This node's mark in the names of its overlay devices and its ingress table: four
/// letters made from the node's ID (`BERTH_NODE`), so that a second berth node in the
/// same network namespace neither takes nor deletes them; none in unit tests.
pub fn node_tag() -> &'static str {
    static T: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    T.get_or_init(|| std::env::var(berth_config::env::NODE).map(|n| tag_of(&n)).unwrap_or_default())
}

/// Four letters from `node`'s ID: never all digits, so a tagged name is never taken for
/// an untagged one of an older berth (`bov<VNI>`).
pub fn tag_of(node: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(node.as_bytes()).iter().take(4).map(|b| (b'a' + b % 26) as char).collect()
}

/// `bov<tag><VNI>`: at most 15 characters (VNIs have at most 8 digits).
pub fn bridge_name(vni: u32) -> String {
    format!("bov{}{vni}", node_tag())
}

pub fn vxlan_name(vni: u32) -> String {
    format!("bvx{}{vni}", node_tag())
}

/// Whether `name` is one of this node's overlay devices, or an untagged one an older
/// berth left (swept, as its VXLAN would hold the VNI and port).
fn ours(name: &str, tag: &str) -> bool {
    let Some(rest) = name.strip_prefix("bov").or_else(|| name.strip_prefix("bvx")) else { return false };
    let digits = |r: &str| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit());
    digits(rest) || rest.strip_prefix(tag).is_some_and(|r| !tag.is_empty() && digits(r))
}

/// Moby's MAC for an overlay address: `02:42:` and the address's four bytes.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// A task of another node on an overlay network: reached through that node's VXLAN.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    pub ip: Ipv4Addr,
    pub mac: String,
    /// The remote node's underlay address.
    pub dst: String,
}

/// What one overlay network needs on this node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetPlan {
    pub vni: u32,
    pub peers: BTreeSet<Peer>,
    /// This node's own address on the network (`a.b.c.d/len`, owner `node.<ID>`: the
    /// ingress network's, where the node forwards published ports), on its bridge.
    pub addr: Option<String>,
}

/// The owner of a node's own address in a network (the ingress network's).
pub fn node_owner(node_id: &str) -> String {
    format!("node.{node_id}")
}

/// The owner of a plain container's address in an attachable overlay network (Moby's
/// network attachment, `docker run --network`): the node it runs on and its ID. Not a
/// task: no service lists it.
pub fn container_owner(node_id: &str, container_id: &str) -> String {
    format!("ctr.{node_id}.{container_id}")
}

/// The node and container of a [`container_owner`].
pub fn container_of(owner: &str) -> Option<(&str, &str)> {
    owner.strip_prefix("ctr.")?.split_once('.')
}

/// The host end of a plain container's veth on the network of VXLAN ID `vni`.
pub fn container_veth(container_id: &str, vni: u32) -> String {
    let short: String = container_id.chars().take(5).collect();
    format!("bc{}{vni}", short.to_lowercase())
}

fn live(t: &TaskRecord) -> bool {
    t.desired_state <= TaskState::Running && t.node_id.is_some()
}

fn strip_len(a: &str) -> &str {
    a.split('/').next().unwrap_or(a)
}

/// The overlay networks this node needs (those one of its tasks, or the node itself,
/// holds an address in) with the peers each needs: every address held by a task of
/// another node, or by another node, whose underlay address is known.
pub fn plan(me: &str, nets: &[NetworkRecord], tasks: &[TaskRecord], nodes: &[NodeRecord]) -> BTreeMap<String, NetPlan> {
    // A task to stop keeps its peer entries until its address is given back (after its
    // container stopped): the routing mesh and VIPs may still send it a connection
    // begun a moment before they dropped it.
    let tasks: HashMap<&str, &TaskRecord> = tasks.iter().filter(|t| t.node_id.is_some()).map(|t| (t.id.as_str(), t)).collect();
    let addr_of: HashMap<&str, &str> = nodes.iter().map(|n| (n.id.as_str(), n.addr.as_str())).collect();
    let mut out = BTreeMap::new();
    for n in nets {
        let on = |owner: &str| -> Option<String> {
            if let Some(node) = owner.strip_prefix("node.") {
                return addr_of.get_key_value(node).map(|(k, _)| k.to_string());
            }
            if let Some((node, _)) = container_of(owner) {
                return Some(node.to_string());
            }
            tasks.get(owner).and_then(|t| t.node_id.clone())
        };
        if !n.allocated.values().any(|o| on(o).as_deref() == Some(me)) {
            continue;
        }
        let len = n.subnets.first().and_then(|(s, _)| s.split('/').nth(1)).unwrap_or("32");
        let mine = node_owner(me);
        let addr = n.allocated.iter().find(|(_, o)| **o == mine).map(|(a, _)| format!("{}/{len}", strip_len(a)));
        let mut p = NetPlan { vni: n.vni, peers: BTreeSet::new(), addr };
        for (a, owner) in &n.allocated {
            let Some(node) = on(owner) else { continue };
            if node == me {
                continue;
            }
            let Some(dst) = addr_of.get(node.as_str()).filter(|a| !a.is_empty()) else { continue };
            let Ok(ip) = strip_len(a).parse::<Ipv4Addr>() else { continue };
            p.peers.insert(Peer { ip, mac: mac_for(ip), dst: dst.to_string() });
        }
        out.insert(n.id.clone(), p);
    }
    out
}

pub(crate) fn cmd(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// The commands that make a network's bridge and VXLAN device (each may answer "File
/// exists": the device is there already).
pub fn create_commands(vni: u32, local: &str) -> Vec<Vec<String>> {
    let (br, vx) = (bridge_name(vni), vxlan_name(vni));
    let (id, port, mtu) = (vni.to_string(), data_port().to_string(), MTU.to_string());
    let mut vxlan = cmd(&["ip", "link", "add", &vx, "mtu", &mtu, "type", "vxlan", "id", &id, "dstport", &port, "nolearning", "proxy"]);
    if !local.is_empty() {
        vxlan.extend(cmd(&["local", local]));
    }
    vec![
        cmd(&["ip", "link", "add", &br, "mtu", &mtu, "type", "bridge"]),
        vxlan,
        cmd(&["ip", "link", "set", &vx, "master", &br, "up"]),
        cmd(&["ip", "link", "set", &br, "up"]),
    ]
}

/// The commands that take this node from `old` to `new`: devices for networks it now
/// needs, FDB and neighbour entries for new peers, gone peers' entries deleted, devices
/// of networks it no longer needs deleted.
pub fn commands(local: &str, old: &BTreeMap<String, NetPlan>, new: &BTreeMap<String, NetPlan>) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (id, p) in old {
        if new.get(id).map(|n| n.vni) != Some(p.vni) {
            out.push(cmd(&["ip", "link", "del", &vxlan_name(p.vni)]));
            out.push(cmd(&["ip", "link", "del", &bridge_name(p.vni)]));
        }
    }
    for (id, p) in new {
        let before = old.get(id).filter(|o| o.vni == p.vni);
        if before.is_none() {
            out.extend(create_commands(p.vni, local));
        }
        let vx = vxlan_name(p.vni);
        let had_addr = before.and_then(|b| b.addr.clone());
        if had_addr != p.addr {
            if let Some(a) = &had_addr {
                out.push(cmd(&["ip", "addr", "del", a, "dev", &bridge_name(p.vni)]));
            }
            if let Some(a) = &p.addr {
                out.push(cmd(&["ip", "addr", "replace", a, "dev", &bridge_name(p.vni)]));
            }
        }
        let had = before.map(|b| b.peers.clone()).unwrap_or_default();
        for gone in had.difference(&p.peers) {
            out.push(cmd(&["bridge", "fdb", "del", &gone.mac, "dev", &vx, "self"]));
            out.push(cmd(&["ip", "neigh", "del", &gone.ip.to_string(), "dev", &vx]));
        }
        for peer in p.peers.difference(&had) {
            out.push(cmd(&["bridge", "fdb", "replace", &peer.mac, "dev", &vx, "dst", &peer.dst, "self", "permanent"]));
            out.push(cmd(&["ip", "neigh", "replace", &peer.ip.to_string(), "lladdr", &peer.mac, "dev", &vx, "nud", "permanent"]));
        }
    }
    out
}

pub(crate) async fn run_cmd(args: &[String], stdin: Option<String>) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut c = tokio::process::Command::new(&args[0]);
    c.args(&args[1..]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    c.stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() });
    let mut child = c.spawn().map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if let (Some(s), Some(mut i)) = (stdin, child.stdin.take()) {
        let _ = i.write_all(s.as_bytes()).await;
    }
    let o = child.wait_with_output().await.map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!("{}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim()))
    }
}

/// Run `cmds` in order; "File exists" (a device there already) and, for deletions,
/// "not found" answers are fine. The first other failure is returned after the rest ran.
async fn run_all(cmds: &[Vec<String>]) -> Result<(), String> {
    let mut first = Ok(());
    for c in cmds {
        if let Err(e) = run_cmd(c, None).await {
            let deleting = c.iter().any(|a| a == "del");
            if e.contains("File exists") || (deleting && (e.contains("Cannot find") || e.contains("No such") || e.contains("not exist"))) {
                continue;
            }
            tracing::warn!(error = %e, "overlay data path");
            if first.is_ok() {
                first = Err(e);
            }
        }
    }
    first
}

/// A task container attached to overlay networks on this node.
#[derive(Clone)]
struct Attached {
    pid: i64,
    /// Network IDs.
    nets: Vec<String>,
    /// The last nftables script and hosts block applied.
    nft: String,
    hosts: String,
    /// Its embedded DNS (stops when the last clone of the entry goes).
    dns: Option<Arc<crate::dns::Server>>,
}

fn attached() -> &'static Mutex<HashMap<String, Attached>> {
    static A: std::sync::OnceLock<Mutex<HashMap<String, Attached>>> = std::sync::OnceLock::new();
    A.get_or_init(Default::default)
}

/// Wakes the loop when a container was attached.
fn kick() -> &'static tokio::sync::Notify {
    static K: std::sync::OnceLock<tokio::sync::Notify> = std::sync::OnceLock::new();
    K.get_or_init(Default::default)
}

/// The host end of a task's veth on its `i`th overlay network.
pub fn host_veth(task_id: &str, i: usize) -> String {
    let short: String = task_id.chars().take(10).collect();
    format!("bo{}{i}", short.to_lowercase())
}

/// The addresses a task holds in the overlay networks of its spec, allocated in the
/// store (one per network; kept when it holds one already).
pub async fn allocate(c: &Cluster, t: &TaskRecord) -> Result<Vec<(NetworkRecord, String)>, bus_schema::BusError> {
    let mut out = Vec::new();
    for target in task_targets(c, t) {
        let addr = c.allocate_address(&target, &t.id).await?;
        let Some((n, _)) = c.t.networks.get(&target) else { continue };
        out.push((n, addr));
    }
    Ok(out)
}

/// The networks a task is on: its spec's, and the ingress network when its service
/// publishes a port through the routing mesh (last, as swarmkit adds it).
pub fn task_targets(c: &Cluster, t: &TaskRecord) -> Vec<String> {
    let mut v: Vec<String> = t.spec.networks.clone().unwrap_or_default().into_iter().filter_map(|a| a.target).collect();
    let publishes = c.t.services.get(&t.service_id).map(|(s, _)| crate::ports::publishes_ingress(&s.spec)).unwrap_or(false);
    if publishes {
        if let Some((id, _, _)) = c.t.networks.values().into_iter().find(|(_, n, _)| n.ingress) {
            if !v.contains(&id) {
                v.push(id);
            }
        }
    }
    v
}

/// Whether a task holds an address in any overlay network.
pub fn holds_addresses(c: &Cluster, task_id: &str) -> bool {
    c.t.networks.values().iter().any(|(_, n, _)| n.allocated.values().any(|o| o == task_id))
}

/// Give back a task's addresses (in every network it holds one in).
pub async fn release(c: &Cluster, t: &TaskRecord) {
    let held: Vec<String> = c.t.networks.values().into_iter().filter(|(_, n, _)| n.allocated.values().any(|o| *o == t.id)).map(|(id, _, _)| id).collect();
    for target in held {
        if let Err(e) = c.release_addresses(&target, &t.id).await {
            tracing::warn!(task = %t.id, error = %e, "releasing the task's overlay address");
        }
    }
    attached().lock().unwrap().remove(&t.id);
}

/// Put a running task container (`pid`) on its overlay networks: the network's devices,
/// a veth on its bridge whose other end is `eth<i+1>` in the container with the task's
/// address and MAC. A container that has its veth already is left as it is.
pub async fn attach(c: &Cluster, t: &TaskRecord, pid: i64, nets: &[(NetworkRecord, String)]) -> Result<(), String> {
    let links: Vec<Link> = nets.iter().enumerate().map(|(i, (n, a))| Link { net: n.clone(), addr: a.clone(), host: host_veth(&t.id, i), inner: format!("eth{}", i + 1) }).collect();
    attach_links(c, &t.id, pid, &links).await
}

/// One veth of a container on an overlay network.
pub struct Link {
    pub net: NetworkRecord,
    /// `a.b.c.d/len`.
    pub addr: String,
    /// The host end (on the network's bridge).
    pub host: String,
    /// The container's end.
    pub inner: String,
}

/// Put the container of process `pid` (a task's, or a plain container's: `key` names
/// it) on the overlay through `links`.
async fn attach_links(c: &Cluster, key: &str, pid: i64, links: &[Link]) -> Result<(), String> {
    if links.is_empty() {
        return Ok(());
    }
    let local = c.t.nodes.get(&c.node_id()).map(|(n, _)| n.addr).unwrap_or_default();
    let ns = format!("--net=/proc/{pid}/ns/net");
    for Link { net: n, addr, host, inner } in links {
        set_data_port(c);
        run_all(&create_commands(n.vni, &local)).await?;
        if run_cmd(&cmd(&["ip", "link", "show", "dev", host]), None).await.is_ok() {
            continue;
        }
        let (host, inner) = (host.as_str(), inner.as_str());
        let ip: Ipv4Addr = strip_len(addr).parse().map_err(|_| format!("bad address {addr}"))?;
        let mtu = MTU.to_string();
        let pid = pid.to_string();
        let steps = vec![
            cmd(&["ip", "link", "add", host, "mtu", &mtu, "type", "veth", "peer", "name", inner, "mtu", &mtu, "netns", &pid]),
            cmd(&["ip", "link", "set", host, "master", &bridge_name(n.vni), "up"]),
            // the task's MAC on its port at once: the bridge may have learnt it at
            // another node's VXLAN (an address that moved), and the task says nothing
            // before it is spoken to
            cmd(&["bridge", "fdb", "replace", &mac_for(ip), "dev", host, "master", "static"]),
            cmd(&["nsenter", &ns, "ip", "link", "set", inner, "address", &mac_for(ip)]),
            cmd(&["nsenter", &ns, "ip", "addr", "add", addr, "dev", inner]),
            cmd(&["nsenter", &ns, "ip", "link", "set", inner, "up"]),
        ];
        for s in &steps {
            if let Err(e) = run_cmd(s, None).await {
                let _ = run_cmd(&cmd(&["ip", "link", "del", host]), None).await;
                return Err(e);
            }
        }
    }
    let running = attached().lock().unwrap().get(key).filter(|a| a.pid == pid).and_then(|a| a.dns.clone());
    let dns = match running {
        Some(d) => Ok(d),
        None => embedded_dns(pid).await.map(Arc::new),
    };
    let dns = match dns {
        Ok(d) => Some(d),
        Err(e) => {
            // names still resolve through the hosts block
            tracing::warn!(container = %key, error = %e, "the container's embedded DNS");
            None
        }
    };
    attached().lock().unwrap().insert(key.to_string(), Attached { pid, nets: links.iter().map(|l| l.net.id.clone()).collect(), nft: String::new(), hosts: String::new(), dns });
    kick().notify_one();
    Ok(())
}

/// The interface each plain container asked for inside, by (container, network ID)
/// (the network service picks it; after a restart of this service, `eth1`).
fn ifnames() -> &'static Mutex<HashMap<(String, String), String>> {
    static I: std::sync::OnceLock<Mutex<HashMap<(String, String), String>>> = std::sync::OnceLock::new();
    I.get_or_init(Default::default)
}

/// Moby's refusal of a network that is not attachable (the daemon's words around
/// swarmkit's `PermissionDenied`).
pub fn not_attachable(network: &str) -> String {
    format!("Could not attach to network {network}: {}", crate::rpc("PermissionDenied", format!("network {network} not manually attachable")))
}

/// A plain container of this node joins an attachable overlay network (Moby's network
/// attachment): its address allocated in the network's record (owner
/// [`container_owner`]); the container is put on the overlay once it runs.
pub async fn attach_container(c: &Arc<Cluster>, r: &bus_schema::swarm::SwarmNetworkAttach) -> Result<bus_schema::swarm::SwarmAttachment, bus_schema::BusError> {
    let (n, _) = crate::api::resolve(&c.t.networks.values(), &r.network, |n| n.name.clone(), "network")?;
    if !n.attachable {
        return Err(bus_schema::BusError::internal(not_attachable(&r.network)));
    }
    let owner = container_owner(&c.node_id(), &r.container_id);
    let address = c.allocate_named(&n.id, &owner, &r.names).await?;
    ifnames().lock().unwrap().insert((r.container_id.clone(), n.id.clone()), r.ifname.clone());
    let ip: Ipv4Addr = strip_len(&address).parse().map_err(|_| bus_schema::BusError::internal(format!("bad address {address}")))?;
    // the runtime starts the container's process once its sandbox is there
    let (c2, cid) = (c.clone(), r.container_id.clone());
    tokio::spawn(async move {
        for _ in 0..300 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            match c2.node_bus().inspect(&cid).await {
                Ok(i) => {
                    if let Some(pid) = i.state.and_then(|s| s.pid).filter(|p| *p > 0) {
                        if let Err(e) = attach_container_now(&c2, &cid, pid).await {
                            tracing::warn!(container = %cid, error = %e, "putting the container on the overlay");
                        }
                        return;
                    }
                }
                Err(e) if e.is(bus_schema::ErrorKind::NotFound) => return,
                Err(_) => {}
            }
        }
    });
    Ok(bus_schema::swarm::SwarmAttachment { network_id: n.id.clone(), network_name: n.name.clone(), address, mac: mac_for(ip) })
}

/// The networks (with its addresses) the plain container `cid` of this node is on.
fn container_links(c: &Cluster, cid: &str) -> Vec<Link> {
    let owner = container_owner(&c.node_id(), cid);
    let names = ifnames().lock().unwrap().clone();
    let mut out = Vec::new();
    for (id, n, _) in c.t.networks.values() {
        let Some((a, _)) = n.allocated.iter().find(|(_, o)| **o == owner) else { continue };
        let len = n.subnets.first().and_then(|(s, _)| s.split('/').nth(1).map(str::to_string)).unwrap_or_else(|| "32".into());
        let inner = names.get(&(cid.to_string(), id.clone())).cloned().unwrap_or_else(|| "eth1".into());
        out.push(Link { addr: format!("{}/{len}", strip_len(a)), host: container_veth(cid, n.vni), inner, net: n });
    }
    out
}

/// Put the running plain container `cid` (process `pid`) on the overlay networks it
/// holds addresses in.
async fn attach_container_now(c: &Cluster, cid: &str, pid: i64) -> Result<(), String> {
    // one at a time: the waiter and the loop may both find the container running
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _g = LOCK.lock().await;
    let links = container_links(c, cid);
    let ids: Vec<String> = links.iter().map(|l| l.net.id.clone()).collect();
    if attached().lock().unwrap().get(cid).is_some_and(|a| a.pid == pid && a.nets == ids) {
        return Ok(());
    }
    attach_links(c, cid, pid, &links).await
}

/// A plain container leaves an overlay network: its address given back, its veth
/// deleted (the namespace may live on: `network disconnect`), its VIP rules and names
/// then follow the networks it is still on.
pub async fn detach_container(c: &Cluster, net_id: &str, cid: &str) -> Result<(), bus_schema::BusError> {
    let owner = container_owner(&c.node_id(), cid);
    let vni = c.t.networks.get(net_id).map(|(n, _)| n.vni);
    c.release_addresses(net_id, &owner).await?;
    ifnames().lock().unwrap().remove(&(cid.to_string(), net_id.to_string()));
    if let Some(vni) = vni {
        let _ = run_cmd(&cmd(&["ip", "link", "del", &container_veth(cid, vni)]), None).await;
    }
    let left: Vec<String> = container_links(c, cid).into_iter().map(|l| l.net.id).collect();
    {
        let mut a = attached().lock().unwrap();
        if left.is_empty() {
            a.remove(cid);
        } else if let Some(e) = a.get_mut(cid) {
            e.nets = left;
        }
    }
    kick().notify_one();
    Ok(())
}

/// The plain containers of node `me` holding addresses in `nets`.
pub fn containers_of(me: &str, nets: &[NetworkRecord]) -> BTreeSet<String> {
    nets.iter().flat_map(|n| n.allocated.values()).filter_map(|o| container_of(o)).filter(|(node, _)| *node == me).map(|(_, cid)| cid.to_string()).collect()
}

/// This node's plain containers on the overlay: those running and not attached yet
/// (this service restarted, a start the waiter missed) are attached, the addresses of
/// those gone are given back (their removal was lost). Whether one is still to attach.
async fn sync_attachments(c: &Cluster, me: &str, nets: &[NetworkRecord]) -> bool {
    let mut pending = false;
    for cid in containers_of(me, nets) {
        let held: Vec<String> = container_links(c, &cid).into_iter().map(|l| l.net.id).collect();
        let done = attached().lock().unwrap().get(&cid).is_some_and(|a| a.nets == held);
        if done {
            continue;
        }
        match c.node_bus().inspect(&cid).await {
            Err(e) if e.is(bus_schema::ErrorKind::NotFound) => {
                for id in held {
                    let _ = detach_container(c, &id, &cid).await;
                }
            }
            Ok(i) => match i.state.and_then(|s| s.pid).filter(|p| *p > 0) {
                Some(pid) => {
                    if let Err(e) = attach_container_now(c, &cid, pid).await {
                        tracing::warn!(container = %cid, error = %e, "putting the container on the overlay");
                        pending = true;
                    }
                }
                // created, its process not started yet
                None => pending = true,
            },
            Err(_) => pending = true,
        }
    }
    pending
}

/// The embedded DNS in the container of process `pid`: its resolv.conf then names
/// 127.0.0.11 only (rewritten inside the container's root: a link it made there must
/// not lead this root process to a host file), its former servers the upstream.
async fn embedded_dns(pid: i64) -> Result<crate::dns::Server, String> {
    let root = berth_fsutil::InRoot::open_proc_root(pid).map_err(|e| format!("the container's root: {e}"))?;
    let mut old = String::new();
    root.rewrite("/etc/resolv.conf", |cur| {
        old = String::from_utf8_lossy(cur).into_owned();
        crate::dns::resolv_conf(&old).into_bytes()
    })
    .map_err(|e| format!("/etc/resolv.conf: {e}"))?;
    crate::dns::start(pid, crate::dns::nameservers(&old)).await.map_err(|e| format!("binding {}:53: {e}", crate::dns::ADDR))
}

/// A service as a container on its networks sees it: its name, its virtual IP in the
/// network (none in DNSRR mode) and its live tasks' addresses there.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SvcView {
    pub name: String,
    /// Its network aliases there (a stack's services are known by their compose names).
    pub aliases: Vec<String>,
    pub vip: Option<Ipv4Addr>,
    pub tasks: Vec<Ipv4Addr>,
}

/// The services reachable on networks `nets`, from the networks' addresses (`vip.<ID>`
/// owners) and the live tasks holding addresses there.
pub fn services_on(nets: &[&NetworkRecord], tasks: &[TaskRecord]) -> BTreeMap<String, SvcView> {
    let by_id: HashMap<&str, &TaskRecord> = tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    let names: HashMap<&str, &str> = tasks.iter().map(|t| (t.service_id.as_str(), t.service_name.as_str())).collect();
    let mut out: BTreeMap<String, SvcView> = BTreeMap::new();
    for n in nets {
        // the aliases of a service's attachment to this network (its tasks' spec)
        let aliases = |sid: &str| -> Vec<String> {
            let t = tasks.iter().filter(|t| t.service_id == sid).max_by_key(|t| t.spec_version);
            let att = t.and_then(|t| t.spec.networks.as_ref()).and_then(|a| a.iter().find(|a| a.target.as_deref().is_some_and(|x| x == n.id || x == n.name)));
            att.and_then(|a| a.aliases.clone()).unwrap_or_default()
        };
        for (a, owner) in &n.allocated {
            let Ok(ip) = strip_len(a).parse::<Ipv4Addr>() else { continue };
            let (sid, vip) = match owner.strip_prefix("vip.") {
                Some(sid) if names.contains_key(sid) => (sid.to_string(), true),
                Some(_) => continue,
                None => match by_id.get(owner.as_str()).filter(|t| live(t)) {
                    Some(t) => (t.service_id.clone(), false),
                    None => continue,
                },
            };
            let v = out.entry(sid.clone()).or_default();
            v.name = names[sid.as_str()].to_string();
            for al in aliases(&sid) {
                if al != v.name && !v.aliases.contains(&al) {
                    v.aliases.push(al);
                }
            }
            if vip {
                v.vip = Some(ip);
            } else {
                v.tasks.push(ip);
            }
        }
    }
    for v in out.values_mut() {
        v.tasks.sort();
        v.tasks.dedup();
    }
    out
}

/// The nftables script a container runs for the virtual IPs: each VIP with tasks is
/// DNATed to one of them at random (replaces the whole table at once).
pub fn nft_script(svcs: &BTreeMap<String, SvcView>) -> String {
    let mut rules = String::new();
    for v in svcs.values() {
        let (Some(vip), false) = (v.vip, v.tasks.is_empty()) else { continue };
        let map: Vec<String> = v.tasks.iter().enumerate().map(|(i, t)| format!("{i} : {t}")).collect();
        rules += &format!("    ip daddr {vip} dnat to numgen random mod {} map {{ {} }}\n", v.tasks.len(), map.join(", "));
    }
    format!(
        "table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\ntable ip {NFT_TABLE} {{\n  chain output {{\n    type nat hook output priority -100; policy accept;\n{rules}  }}\n}}\n"
    )
}

/// The names block of a container's /etc/hosts: `NAME` (its VIP, or in DNSRR mode
/// each task) and `tasks.NAME` (each task).
pub fn hosts_block(svcs: &BTreeMap<String, SvcView>) -> String {
    let mut s = String::new();
    for v in svcs.values() {
        // libnetwork's records: the name and each alias, and `tasks.` before each
        let names: Vec<&str> = std::iter::once(v.name.as_str()).chain(v.aliases.iter().map(String::as_str)).collect();
        let plain = names.join(" ");
        let tasks = names.iter().map(|n| format!("tasks.{n}")).collect::<Vec<_>>().join(" ");
        match v.vip {
            Some(vip) => s += &format!("{vip}\t{plain}\n"),
            None => {
                for t in &v.tasks {
                    s += &format!("{t}\t{plain}\n");
                }
            }
        }
        for t in &v.tasks {
            s += &format!("{t}\t{tasks}\n");
        }
    }
    s
}

/// `hosts` with its berth block replaced by `block`.
pub fn with_block(hosts: &str, block: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for l in hosts.lines() {
        if l == HOSTS_BEGIN {
            inside = true;
            continue;
        }
        if l == HOSTS_END {
            inside = false;
            continue;
        }
        if !inside {
            out += l;
            out.push('\n');
        }
    }
    if !block.is_empty() {
        out += &format!("{HOSTS_BEGIN}\n{block}{HOSTS_END}\n");
    }
    out
}

/// Every device of berth's overlay on this node (`bov*`, `bvx*`).
async fn our_links() -> Vec<String> {
    let o = tokio::process::Command::new("ip").args(["-o", "link", "show"]).output().await;
    let Ok(o) = o else { return Vec::new() };
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().split('@').next().unwrap_or("").to_string()))
        .filter(|n| ours(n, node_tag()))
        .collect()
}

/// Delete every overlay device of this node (swarm leave).
pub async fn remove_all() {
    let mut links = our_links().await;
    // VXLAN devices before their bridges
    links.sort_by_key(|l| !l.starts_with("bvx"));
    for l in links {
        let _ = run_cmd(&cmd(&["ip", "link", "del", &l]), None).await;
    }
    let _ = run_cmd(&cmd(&["nft", "-f", "-"]), Some(crate::ports::nft_script(None, &[]))).await;
    attached().lock().unwrap().clear();
    crate::ports::drop_untagged_table().await;
}

/// The node's overlay loop: follows the store and keeps the devices, FDB and neighbour
/// entries, and each attached container's VIP rules and names as they should be. On
/// the leader, also gives back the addresses of tasks that left the store.
pub async fn run(c: Arc<Cluster>) {
    c.t.tasks.wait_ready().await;
    c.t.networks.wait_ready().await;
    c.t.nodes.wait_ready().await;
    c.t.services.wait_ready().await;
    c.t.task_status.wait_ready().await;
    let me = c.node_id();
    let (mut rt, mut rn, mut rno) = (c.t.tasks.subscribe(), c.t.networks.subscribe(), c.t.nodes.subscribe());
    let (mut rs, mut rst) = (c.t.services.subscribe(), c.t.task_status.subscribe());
    let mut applied: BTreeMap<String, NetPlan> = BTreeMap::new();
    let mut applied_nft: Option<String> = None;
    let mut first = true;
    loop {
        let nets: Vec<NetworkRecord> = c.t.networks.values().into_iter().map(|(_, n, _)| n).collect();
        let tasks: Vec<TaskRecord> = c.t.tasks.values().into_iter().map(|(_, t, _)| t).collect();
        let nodes: Vec<NodeRecord> = c.t.nodes.values().into_iter().map(|(_, n, _)| n).collect();
        let services: Vec<ServiceRecord> = c.t.services.values().into_iter().map(|(_, s, _)| s).collect();
        set_data_port(&c);
        let local = nodes.iter().find(|n| n.id == me).map(|n| n.addr.clone()).unwrap_or_default();
        // The routing mesh: while a service publishes a port through it, this node holds
        // an address on the ingress network and forwards the port to the running tasks.
        let ingress = nets.iter().find(|n| n.ingress);
        let fw = ingress.map(|i| crate::ports::forwards(i, &services, &tasks, |t| c.task_state(t) == TaskState::Running)).unwrap_or_default();
        if let Some(i) = ingress {
            let owner = node_owner(&me);
            let holds = i.allocated.values().any(|o| *o == owner);
            let r = match (fw.is_empty(), holds) {
                (false, false) => c.allocate_address(&i.id, &owner).await.map(|_| ()),
                (true, true) => c.release_addresses(&i.id, &owner).await,
                _ => Ok(()),
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "this node's address on the ingress network");
            }
        }
        let nets: Vec<NetworkRecord> = c.t.networks.values().into_iter().map(|(_, n, _)| n).collect();
        let want = plan(&me, &nets, &tasks, &nodes);
        if first {
            crate::ports::drop_untagged_table().await;
            // devices a previous run left for networks this node no longer needs
            let keep: BTreeSet<String> = want.values().flat_map(|p| [bridge_name(p.vni), vxlan_name(p.vni)]).collect();
            for l in our_links().await {
                if !keep.contains(&l) {
                    let _ = run_cmd(&cmd(&["ip", "link", "del", &l]), None).await;
                }
            }
        }
        // the ingress bridge once this node has its address there, and the mesh's rules
        let mesh = |applied: &BTreeMap<String, NetPlan>| {
            let bridge = nets.iter().find(|n| n.ingress).and_then(|i| applied.get(&i.id).filter(|p| p.addr.is_some()).map(|p| bridge_name(p.vni)));
            let rules = bridge.as_deref().filter(|_| !fw.is_empty());
            let nft = crate::ports::nft_script(rules, &fw);
            (rules.map(str::to_string), nft)
        };
        // the mesh's rules first when the bridge is there already: a task leaves them
        // before anything else changes for it
        let (bridge, nft) = mesh(&applied);
        if !first && bridge.is_some() && applied_nft.as_ref() != Some(&nft) && apply_mesh(&nft, &fw, bridge.as_deref()).await {
            applied_nft = Some(nft);
        }
        let none = BTreeMap::new();
        let cmds = commands(&local, if first { &none } else { &applied }, &want);
        let mut ok = run_all(&cmds).await.is_ok();
        if ok {
            applied = want;
            first = false;
        }
        let (bridge, nft) = mesh(&applied);
        if applied_nft.as_ref() != Some(&nft) {
            if apply_mesh(&nft, &fw, bridge.as_deref()).await {
                applied_nft = Some(nft);
            } else {
                ok = false;
            }
        }
        if sync_attachments(&c, &me, &nets).await {
            ok = false;
        }
        sync_containers(&nets, &tasks).await;
        if c.leader_id().as_deref() == Some(me.as_str()) {
            release_orphans(&c, &nets, &tasks, &nodes).await;
        }
        tokio::select! {
            r = rt.changed() => { if r.is_err() { return; } }
            r = rn.changed() => { if r.is_err() { return; } }
            r = rno.changed() => { if r.is_err() { return; } }
            r = rs.changed() => { if r.is_err() { return; } }
            r = rst.changed() => { if r.is_err() { return; } }
            _ = kick().notified() => {}
            // a failed step is tried again
            _ = tokio::time::sleep(Duration::from_secs(if ok { 30 } else { 2 })) => {}
        }
    }
}

/// This node's routing mesh rules (`nft`, made from `fw`): whether they were applied.
async fn apply_mesh(nft: &str, fw: &[crate::ports::Forward], bridge: Option<&str>) -> bool {
    if let Some(b) = bridge {
        // a connection to 127.0.0.1:PORT leaves through the ingress bridge with its
        // loopback source until masqueraded: routable there only with route_localnet
        // (Moby sets it on docker_gwbridge); the table drops what comes in on the bridge
        // for a loopback address (a task reaching the node's loopback services)
        let p = format!("/proc/sys/net/ipv4/conf/{b}/route_localnet");
        if let Err(e) = std::fs::write(&p, "1") {
            tracing::warn!(bridge = b, error = %e, "route_localnet on the ingress bridge");
        }
    }
    match run_cmd(&cmd(&["nft", "-f", "-"]), Some(nft.to_string())).await {
        Ok(()) => {
            let backends: Vec<String> = fw.iter().map(|f| format!("{}/{}: {:?}", f.port, f.proto, f.backends)).collect();
            tracing::info!(?backends, "routing mesh rules");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "the routing mesh's rules");
            false
        }
    }
}

/// The plain containers attached to `nets`, by their names and aliases, each with its
/// address on that network (services' names come first, as Moby's resolver answers a
/// service before a container).
pub fn add_container_names(names: &mut crate::dns::Names, nets: &[&NetworkRecord]) {
    let services: BTreeSet<String> = names.keys().cloned().collect();
    for n in nets {
        for (a, owner) in &n.allocated {
            let (Some(list), Ok(ip)) = (n.names.get(owner), strip_len(a).parse::<Ipv4Addr>()) else { continue };
            for name in list {
                let key = name.to_ascii_lowercase();
                if !services.contains(&key) {
                    let v = names.entry(key).or_default();
                    if !v.contains(&ip) {
                        v.push(ip);
                    }
                }
            }
        }
    }
}

/// Each attached container's VIP rules and /etc/hosts block, rewritten when they change.
async fn sync_containers(nets: &[NetworkRecord], tasks: &[TaskRecord]) {
    let list: Vec<(String, Attached)> = attached().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (task, a) in list {
        let mine: Vec<&NetworkRecord> = nets.iter().filter(|n| a.nets.contains(&n.id)).collect();
        let svcs = services_on(&mine, tasks);
        let nft = nft_script(&svcs);
        let hosts = hosts_block(&svcs);
        if let Some(d) = &a.dns {
            let mut names = crate::dns::names_of(&svcs);
            add_container_names(&mut names, &mine);
            *d.names.write().unwrap() = names;
        }
        if !std::path::Path::new(&format!("/proc/{}", a.pid)).exists() {
            attached().lock().unwrap().remove(&task);
            continue;
        }
        let mut done = a.clone();
        if nft != a.nft {
            let ns = format!("--net=/proc/{}/ns/net", a.pid);
            match run_cmd(&cmd(&["nsenter", &ns, "nft", "-f", "-"]), Some(nft.clone())).await {
                Ok(()) => done.nft = nft,
                Err(e) => tracing::warn!(task = %task, error = %e, "the overlay VIP rules"),
            }
        }
        if hosts != a.hosts {
            // the container's /etc/hosts (a bind mount of the sandbox's file): written in
            // place, resolved inside the container's root (a link it made there must not
            // lead this root process to a file of the host)
            let written = berth_fsutil::InRoot::open_proc_root(a.pid)
                .and_then(|r| r.rewrite("/etc/hosts", |cur| with_block(&String::from_utf8_lossy(cur), &hosts).into_bytes()));
            match written {
                Ok(()) => done.hosts = hosts,
                Err(e) => tracing::warn!(task = %task, error = %e, "the overlay names in /etc/hosts"),
            }
        }
        if let Some(e) = attached().lock().unwrap().get_mut(&task) {
            e.nft = done.nft;
            e.hosts = done.hosts;
        }
    }
}

/// Addresses held by tasks that left the store, or whose node is down while they are
/// to stop (their agent cannot give them back).
async fn release_orphans(c: &Cluster, nets: &[NetworkRecord], tasks: &[TaskRecord], nodes: &[NodeRecord]) {
    let by_id: HashMap<&str, &TaskRecord> = tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    let down: BTreeSet<&str> = nodes.iter().filter(|n| n.state == "down").map(|n| n.id.as_str()).collect();
    let known: BTreeSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    for n in nets {
        let owners: BTreeSet<&String> = n.allocated.values().filter(|o| !o.starts_with("vip.")).collect();
        for o in owners {
            if let Some((node, _)) = container_of(o) {
                // a plain container's: its node gives it back when the container is
                // gone; here only when the node left the swarm
                if !known.contains(node) {
                    let _ = c.release_addresses(&n.id, o).await;
                }
                continue;
            }
            if let Some(node) = o.strip_prefix("node.") {
                // a node's ingress address: given back when the node left the swarm
                if !known.contains(node) {
                    let _ = c.release_addresses(&n.id, o).await;
                }
                continue;
            }
            let gone = match by_id.get(o.as_str()) {
                None => true,
                Some(t) => !live(t) && t.node_id.as_deref().map(|x| down.contains(x)).unwrap_or(true),
            };
            if gone {
                let _ = c.release_addresses(&n.id, o).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attached_containers_resolve_by_name_after_the_services() {
        let mut n = test_network("n1", 4097, &[("10.0.1.7", "ctr.node1.c1"), ("10.0.1.8", "ctr.node2.c2"), ("10.0.1.9", "ctr.node2.c3")]);
        n.names.insert("ctr.node1.c1".into(), vec!["DB".into(), "db-alias".into()]);
        n.names.insert("ctr.node2.c2".into(), vec!["web".into()]);
        // c3 holds an address but no names; a name with no address answers nothing
        n.names.insert("ctr.node9.gone".into(), vec!["gone".into()]);
        let mut names = crate::dns::Names::new();
        names.insert("web".into(), vec![Ipv4Addr::new(10, 0, 1, 2)]);
        add_container_names(&mut names, &[&n]);
        assert_eq!(names["db"], vec![Ipv4Addr::new(10, 0, 1, 7)]);
        assert_eq!(names["db-alias"], vec![Ipv4Addr::new(10, 0, 1, 7)]);
        assert_eq!(names["web"], vec![Ipv4Addr::new(10, 0, 1, 2)], "the service's name is the service's");
        assert!(!names.contains_key("gone"));
        assert_eq!(names.len(), 3);
        assert!(crate::networks::valid_names(&["db".into(), "my_app.v2-1".into()]));
        assert!(!crate::networks::valid_names(&["a b".into()]) && !crate::networks::valid_names(&["".into()]) && !crate::networks::valid_names(&vec!["x".to_string(); 33]));
    }

    #[test]
    fn a_node_sweeps_its_own_devices_and_an_older_berths_only() {
        assert!(ours("bvxkqzx4096", "kqzx") && ours("bovkqzx4097", "kqzx"));
        // an older berth's untagged devices (their VXLAN would hold the VNI and port)
        assert!(ours("bov4096", "kqzx") && ours("bvx4096", ""));
        // another node's, and names that are no overlay device's
        assert!(!ours("bvxabcd4096", "kqzx") && !ours("bvxkqzx4096", "") && !ours("bovkqzx", "kqzx") && !ours("bo12344096", "kqzx") && !ours("bov", ""));
        let t = tag_of("0123456789ab");
        assert_eq!(t, tag_of("0123456789ab"));
        assert!(t.len() == 4 && t.bytes().all(|b| b.is_ascii_lowercase()), "{t}");
        assert_ne!(t, tag_of("0123456789ac"));
        assert!(format!("bvx{t}16777215").len() <= 15, "an interface name");
    }

    use crate::model::test_network as net;

    use crate::model::{test_node as node, test_task as task};

    #[test]
    fn macs_as_moby() {
        assert_eq!(mac_for("10.0.1.3".parse().unwrap()), "02:42:0a:00:01:03");
        assert_eq!(host_veth("AbCdEfGhIjKlMn", 0), "boabcdefghij0");
        assert!(host_veth("AbCdEfGhIjKlMn", 9).len() <= 15);
    }

    #[test]
    fn the_plan_from_the_store() {
        let nets = vec![
            net("n1", 4097, &[("10.0.1.2", "vip.s1"), ("10.0.1.3", "t1"), ("10.0.1.4", "t2"), ("10.0.1.5", "t3"), ("10.0.1.6", "gone")]),
            // no task of this node on it: not needed here
            net("n2", 4098, &[("10.0.2.3", "t4")]),
        ];
        let tasks = vec![
            task("t1", "s1", "me", TaskState::Running),
            task("t2", "s1", "other", TaskState::Running),
            // to stop, its address not given back yet: still a peer
            task("t3", "s1", "other", TaskState::Shutdown),
            task("t4", "s2", "other", TaskState::Running),
        ];
        let nodes = vec![node("me", "192.168.1.1"), node("other", "192.168.1.2")];
        let p = plan("me", &nets, &tasks, &nodes);
        assert_eq!(p.keys().collect::<Vec<_>>(), vec!["n1"]);
        let n1 = &p["n1"];
        assert_eq!(n1.vni, 4097);
        assert_eq!(
            n1.peers.iter().cloned().collect::<Vec<_>>(),
            vec![
                Peer { ip: "10.0.1.4".parse().unwrap(), mac: "02:42:0a:00:01:04".into(), dst: "192.168.1.2".into() },
                Peer { ip: "10.0.1.5".parse().unwrap(), mac: "02:42:0a:00:01:05".into(), dst: "192.168.1.2".into() },
            ]
        );
        // the other node has none of its own tasks on n1 but t2's: its plan has t1 as a peer
        let q = plan("other", &nets, &tasks, &nodes);
        assert_eq!(q["n1"].peers.iter().map(|p| p.ip.to_string()).collect::<Vec<_>>(), vec!["10.0.1.3"]);
        assert_eq!(q["n2"].peers.len(), 0);
    }

    #[test]
    fn nodes_hold_their_ingress_address() {
        let mut ing = net("ing", 4096, &[("10.0.0.2", "vip.s1"), ("10.0.0.3", "node.me"), ("10.0.0.4", "node.other"), ("10.0.0.5", "t2")]);
        ing.subnets = vec![("10.0.0.0/24".into(), "10.0.0.1".into())];
        let tasks = vec![task("t2", "s1", "other", TaskState::Running)];
        let nodes = vec![node("me", "192.168.1.1"), node("other", "192.168.1.2")];
        let p = plan("me", &[ing.clone()], &tasks, &nodes);
        // no task of this node on it, but its own address: the network is here, the
        // address on its bridge, the other node and its task peers
        assert_eq!(p["ing"].addr.as_deref(), Some("10.0.0.3/24"));
        assert_eq!(p["ing"].peers.iter().map(|p| (p.ip.to_string(), p.dst.clone())).collect::<Vec<_>>(), vec![("10.0.0.4".into(), "192.168.1.2".into()), ("10.0.0.5".into(), "192.168.1.2".into())]);
        let s = |v: Vec<Vec<String>>| v.into_iter().map(|c| c.join(" ")).collect::<Vec<_>>();
        let cmds = s(commands("192.168.1.1", &BTreeMap::new(), &p));
        assert_eq!(cmds[4], "ip addr replace 10.0.0.3/24 dev bov4096");
        // a node that is not in the store holds nothing here
        let gone = plan("me", &[net("ing", 4096, &[("10.0.0.9", "node.ghost")])], &[], &nodes);
        assert!(gone.is_empty());
    }

    #[test]
    fn plain_containers_on_attachable_networks() {
        // a plain container of node `other` (Moby's network attachment) and a task of `me`
        let nets = vec![net("n1", 4097, &[("10.0.1.2", "vip.s1"), ("10.0.1.3", "t1"), ("10.0.1.4", &container_owner("other", "c0ffee1234"))])];
        let tasks = vec![task("t1", "s1", "me", TaskState::Running)];
        let nodes = vec![node("me", "192.168.1.1"), node("other", "192.168.1.2")];
        // the container is a peer of the task's node, at its node's address
        let p = plan("me", &nets, &tasks, &nodes);
        assert_eq!(p["n1"].peers.iter().map(|p| (p.ip.to_string(), p.dst.clone())).collect::<Vec<_>>(), vec![("10.0.1.4".into(), "192.168.1.2".into())]);
        // the container's node needs the network (no task of its own there) with the
        // task as its peer
        let q = plan("other", &nets, &tasks, &nodes);
        assert_eq!(q["n1"].peers.iter().map(|p| p.ip.to_string()).collect::<Vec<_>>(), vec!["10.0.1.3"]);
        // not a service's task: no name, no VIP backend
        let svcs = services_on(&[&nets[0]], &tasks);
        assert_eq!(svcs["s1"].tasks, vec!["10.0.1.3".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(containers_of("other", &nets).into_iter().collect::<Vec<_>>(), vec!["c0ffee1234".to_string()]);
        assert!(containers_of("me", &nets).is_empty());
        assert_eq!(container_of("ctr.n1.abc"), Some(("n1", "abc")));
        assert_eq!(container_of("t1"), None);
        assert_eq!(container_veth("C0FFEE1234", 4097), "bcc0ffe4097");
        assert!(container_veth("c0ffee1234", 16_777_215).len() <= 15);
        assert_eq!(not_attachable("plain"), "Could not attach to network plain: rpc error: code = PermissionDenied desc = network plain not manually attachable");
    }

    #[test]
    fn commands_from_one_plan_to_the_next() {
        let peer = |ip: &str, dst: &str| {
            let ip: Ipv4Addr = ip.parse().unwrap();
            Peer { ip, mac: mac_for(ip), dst: dst.into() }
        };
        let a = BTreeMap::from([("n1".to_string(), NetPlan { vni: 4097, peers: BTreeSet::from([peer("10.0.1.4", "192.168.1.2")]), addr: None })]);
        let s = |v: Vec<Vec<String>>| v.into_iter().map(|c| c.join(" ")).collect::<Vec<_>>();
        assert_eq!(
            s(commands("192.168.1.1", &BTreeMap::new(), &a)),
            vec![
                "ip link add bov4097 mtu 1450 type bridge",
                "ip link add bvx4097 mtu 1450 type vxlan id 4097 dstport 4789 nolearning proxy local 192.168.1.1",
                "ip link set bvx4097 master bov4097 up",
                "ip link set bov4097 up",
                "bridge fdb replace 02:42:0a:00:01:04 dev bvx4097 dst 192.168.1.2 self permanent",
                "ip neigh replace 10.0.1.4 lladdr 02:42:0a:00:01:04 dev bvx4097 nud permanent",
            ]
        );
        assert!(commands("192.168.1.1", &a, &a).is_empty());
        let b = BTreeMap::from([("n1".to_string(), NetPlan { vni: 4097, peers: BTreeSet::from([peer("10.0.1.5", "192.168.1.3")]), addr: None })]);
        assert_eq!(
            s(commands("192.168.1.1", &a, &b)),
            vec![
                "bridge fdb del 02:42:0a:00:01:04 dev bvx4097 self",
                "ip neigh del 10.0.1.4 dev bvx4097",
                "bridge fdb replace 02:42:0a:00:01:05 dev bvx4097 dst 192.168.1.3 self permanent",
                "ip neigh replace 10.0.1.5 lladdr 02:42:0a:00:01:05 dev bvx4097 nud permanent",
            ]
        );
        assert_eq!(s(commands("192.168.1.1", &a, &BTreeMap::new())), vec!["ip link del bvx4097", "ip link del bov4097"]);
    }

    #[test]
    fn vips_names_and_hosts() {
        let n = net("n1", 4097, &[("10.0.1.2", "vip.s1"), ("10.0.1.3", "t1"), ("10.0.1.4", "t2"), ("10.0.1.5", "t3")]);
        let tasks = vec![task("t1", "s1", "a", TaskState::Running), task("t2", "s1", "b", TaskState::Running), task("t3", "s2", "b", TaskState::Running)];
        let svcs = services_on(&[&n], &tasks);
        assert_eq!(svcs["s1"], SvcView { name: "name-s1".into(), aliases: vec![], vip: Some("10.0.1.2".parse().unwrap()), tasks: vec!["10.0.1.3".parse().unwrap(), "10.0.1.4".parse().unwrap()] });
        // s2 has no VIP (DNSRR)
        assert_eq!(svcs["s2"].vip, None);
        let nft = nft_script(&svcs);
        assert!(nft.contains("ip daddr 10.0.1.2 dnat to numgen random mod 2 map { 0 : 10.0.1.3, 1 : 10.0.1.4 }"), "{nft}");
        assert_eq!(nft.matches("dnat").count(), 1);
        let h = hosts_block(&svcs);
        assert_eq!(h, "10.0.1.2\tname-s1\n10.0.1.3\ttasks.name-s1\n10.0.1.4\ttasks.name-s1\n10.0.1.5\tname-s2\n10.0.1.5\ttasks.name-s2\n");
        let f = with_block("127.0.0.1\tlocalhost\n", &h);
        assert!(f.starts_with("127.0.0.1\tlocalhost\n# berth swarm overlay: begin\n10.0.1.2\tname-s1\n"));
        assert_eq!(with_block(&with_block(&f, "1.2.3.4\tx\n"), ""), "127.0.0.1\tlocalhost\n");
    }

    #[test]
    fn aliases_name_the_service_on_their_network() {
        // a stack's service `app_web` is `web` on the stack's network (not on another)
        let n = net("n1", 4097, &[("10.0.1.2", "vip.s1"), ("10.0.1.3", "t1")]);
        let other = net("n2", 4098, &[("10.0.2.2", "vip.s1"), ("10.0.2.3", "t1")]);
        let mut t = task("t1", "s1", "a", TaskState::Running);
        t.spec.networks = Some(vec![bus_schema::docker::NetworkAttachmentConfig { target: Some("n1".into()), aliases: Some(vec!["web".into()]), ..Default::default() }]);
        let svcs = services_on(&[&n], std::slice::from_ref(&t));
        assert_eq!(svcs["s1"].aliases, vec!["web".to_string()]);
        assert_eq!(hosts_block(&svcs), "10.0.1.2\tname-s1 web\n10.0.1.3\ttasks.name-s1 tasks.web\n");
        assert!(services_on(&[&other], &[t]).values().all(|v| v.aliases.is_empty()));
    }
}
