//! The embedded DNS of user-defined networks: a hickory server on each network's
//! gateway address, port 53 (UDP and TCP). It answers the names of the containers on
//! the asking container's networks (container name, aliases, short ID, hostname,
//! also as `<name>.<network>`), and forwards everything else to the container's
//! `--dns` servers or the host's resolvers. Internal networks do not forward.
//!
//! A name with an IPv6 address (a container on a network with `--ipv6`) answers AAAA
//! queries with it; a name with no IPv6 address answers an AAAA query NOERROR with no
//! records (Moby's resolver does the same, so that clients fall back to its A record
//! instead of asking the outside world for it). PTR answers `in-addr.arpa` and
//! `ip6.arpa` names.
//!
//! The asking container is known by its source address, so a container on several
//! networks resolves the names of all of them, the asked network's first.

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Message, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, PTR};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Docker's TTL for container names.
const TTL: u32 = 600;
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// One container's names on one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsEntry {
    pub network_id: String,
    pub ip: Ipv4Addr,
    /// Its IPv6 address on an IPv6 network.
    pub ip6: Option<Ipv6Addr>,
    pub names: Vec<String>,
    /// Links on this network (`--link target:alias`): `alias` -> `target`, names only
    /// this container resolves (Moby's per-sandbox link aliases on user networks).
    pub links: Vec<(String, String)>,
}

/// `target:alias` or `target` (alias = target) as clients give links, `/` prefixes off.
pub fn parse_link(l: &str) -> Option<(String, String)> {
    let (target, alias) = l.split_once(':').unwrap_or((l, l));
    let (target, alias) = (target.trim_start_matches('/'), alias.trim_start_matches('/'));
    let alias = alias.rsplit('/').next().unwrap_or(alias);
    (!target.is_empty() && !alias.is_empty()).then(|| (alias.to_ascii_lowercase(), target.to_ascii_lowercase()))
}

/// The addresses of one name on one network.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Addrs {
    v4: Vec<Ipv4Addr>,
    v6: Vec<Ipv6Addr>,
}

impl Addrs {
    fn has(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v) => self.v4.contains(&v),
            IpAddr::V6(v) => self.v6.contains(&v),
        }
    }
}

#[derive(Debug, Default)]
struct Table {
    /// network id -> (network name, internal)
    nets: HashMap<String, (String, bool)>,
    /// container id -> (entries, forwarders)
    sandboxes: HashMap<String, (Vec<DnsEntry>, Vec<SocketAddr>)>,
    // derived
    names: HashMap<String, HashMap<String, Addrs>>,
    ptr: HashMap<IpAddr, String>,
    clients: HashMap<Ipv4Addr, String>,
}

impl Table {
    fn reindex(&mut self) {
        self.names.clear();
        self.ptr.clear();
        self.clients.clear();
        let mut ids: Vec<&String> = self.sandboxes.keys().collect();
        ids.sort();
        for cid in ids {
            let (entries, _) = &self.sandboxes[cid];
            for e in entries {
                let m = self.names.entry(e.network_id.clone()).or_default();
                for n in &e.names {
                    let v = m.entry(n.to_ascii_lowercase()).or_default();
                    if !v.v4.contains(&e.ip) {
                        v.v4.push(e.ip);
                    }
                    if let Some(ip6) = e.ip6.filter(|a| !v.v6.contains(a)) {
                        v.v6.push(ip6);
                    }
                }
                if let Some(first) = e.names.first() {
                    let net = self
                        .nets
                        .get(&e.network_id)
                        .map(|x| x.0.clone())
                        .unwrap_or_default();
                    self.ptr.insert(IpAddr::V4(e.ip), format!("{first}.{net}"));
                    if let Some(ip6) = e.ip6 {
                        self.ptr.insert(IpAddr::V6(ip6), format!("{first}.{net}"));
                    }
                }
                self.clients.insert(e.ip, cid.clone());
            }
        }
    }
}

/// What a query resolves to.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Addrs(Vec<IpAddr>),
    Ptr(String),
    /// Known name, no record of that type (AAAA of a container without IPv6, MX…).
    Empty,
    Forward(Vec<SocketAddr>),
    Refuse,
}

/// The names of every user network and the servers answering them.
pub struct Dns {
    table: Arc<RwLock<Table>>,
    host_forwarders: Arc<RwLock<Vec<SocketAddr>>>,
    servers: std::sync::Mutex<HashMap<String, hickory_server::Server<NetHandler>>>,
}

impl Dns {
    /// `host_forwarders`: the host's resolvers.
    pub fn new(host_forwarders: Vec<SocketAddr>) -> Dns {
        Dns {
            table: Arc::default(),
            host_forwarders: Arc::new(RwLock::new(host_forwarders)),
            servers: Default::default(),
        }
    }

    pub fn set_network(&self, id: &str, name: &str, internal: bool) {
        let mut t = self.table.write().unwrap();
        t.nets.insert(id.to_string(), (name.to_string(), internal));
        t.reindex();
    }

    /// Serve the network's names on `ip:port` (port 53 in production).
    pub async fn start(&self, net_id: &str, ip: Ipv4Addr, port: u16) -> std::io::Result<()> {
        self.stop(net_id);
        let udp = tokio::net::UdpSocket::bind((ip, port)).await?;
        let tcp = tokio::net::TcpListener::bind((ip, port)).await?;
        let h = NetHandler {
            net_id: net_id.to_string(),
            table: self.table.clone(),
            host_forwarders: self.host_forwarders.clone(),
            own: ip,
        };
        let mut s = hickory_server::Server::new(h);
        s.register_socket(udp);
        s.register_listener(tcp, Duration::from_secs(5), 65535);
        self.servers.lock().unwrap().insert(net_id.to_string(), s);
        Ok(())
    }

    /// Stop serving a network (its server's tasks are aborted) and forget it.
    pub fn stop(&self, net_id: &str) {
        if let Some(s) = self.servers.lock().unwrap().remove(net_id) {
            s.shutdown_token().cancel();
        }
    }

    pub fn remove_network(&self, net_id: &str) {
        self.stop(net_id);
        let mut t = self.table.write().unwrap();
        t.nets.remove(net_id);
        t.reindex();
    }

    pub fn serving(&self, net_id: &str) -> bool {
        self.servers.lock().unwrap().contains_key(net_id)
    }

    /// Set a sandbox's names (replacing what it had) and its forwarders (empty: the host's).
    pub fn set_sandbox(
        &self,
        container_id: &str,
        entries: Vec<DnsEntry>,
        forwarders: Vec<SocketAddr>,
    ) {
        let mut t = self.table.write().unwrap();
        if entries.is_empty() {
            t.sandboxes.remove(container_id);
        } else {
            t.sandboxes
                .insert(container_id.to_string(), (entries, forwarders));
        }
        t.reindex();
    }

    pub fn remove_sandbox(&self, container_id: &str) {
        let mut t = self.table.write().unwrap();
        t.sandboxes.remove(container_id);
        t.reindex();
    }

    /// Names registered on a network (for tests and leak checks).
    pub fn names(&self, net_id: &str) -> Vec<String> {
        let t = self.table.read().unwrap();
        let mut v: Vec<String> = t
            .names
            .get(net_id)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn sandbox_count(&self) -> usize {
        self.table.read().unwrap().sandboxes.len()
    }
}

/// Nameservers from a resolv.conf, as socket addresses on port 53, without `skip`.
pub fn forwarders(ns: &[String], skip: &[Ipv4Addr]) -> Vec<SocketAddr> {
    ns.iter()
        .filter_map(|n| n.parse::<IpAddr>().ok())
        .filter(|ip| match ip {
            IpAddr::V4(v) => !skip.contains(v),
            IpAddr::V6(_) => true,
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

struct NetHandler {
    net_id: String,
    table: Arc<RwLock<Table>>,
    host_forwarders: Arc<RwLock<Vec<SocketAddr>>>,
    own: Ipv4Addr,
}

impl NetHandler {
    fn resolve(&self, src: IpAddr, qname: &str, qtype: RecordType) -> Answer {
        let t = self.table.read().unwrap();
        let name = qname.trim_end_matches('.').to_ascii_lowercase();
        let client = match src {
            IpAddr::V4(v) => t.clients.get(&v).cloned(),
            _ => None,
        };
        // the asked network first, then the client's other networks
        let mut nets = vec![self.net_id.clone()];
        let mut fwd: Vec<SocketAddr> = Vec::new();
        if let Some(cid) = &client {
            if let Some((entries, f)) = t.sandboxes.get(cid) {
                for e in entries {
                    if !nets.contains(&e.network_id) {
                        nets.push(e.network_id.clone());
                    }
                }
                fwd = f.clone();
            }
        }
        if qtype == RecordType::PTR {
            if let Some(ip) = parse_arpa(&name) {
                if let Some(n) = t.ptr.get(&ip) {
                    let on_mine = nets.iter().any(|id| {
                        t.names
                            .get(id)
                            .map(|m| m.values().any(|v| v.has(ip)))
                            .unwrap_or(false)
                    });
                    if on_mine {
                        return Answer::Ptr(n.clone());
                    }
                }
            }
        } else {
            for id in &nets {
                let Some(m) = t.names.get(id) else { continue };
                let netname = t
                    .nets
                    .get(id)
                    .map(|x| x.0.to_ascii_lowercase())
                    .unwrap_or_default();
                let short = name.strip_suffix(&format!(".{netname}")).unwrap_or(&name);
                // the client's own link aliases on this network first
                let linked = client
                    .as_ref()
                    .and_then(|cid| t.sandboxes.get(cid))
                    .into_iter()
                    .flat_map(|(entries, _)| entries.iter())
                    .filter(|e| &e.network_id == id)
                    .flat_map(|e| e.links.iter())
                    .find(|(alias, _)| alias == &name || alias == short)
                    .and_then(|(_, target)| m.get(target));
                if let Some(ips) = linked.or_else(|| m.get(&name)).or_else(|| m.get(short)) {
                    return match qtype {
                        RecordType::A => Answer::Addrs(ips.v4.iter().map(|a| IpAddr::V4(*a)).collect()),
                        RecordType::AAAA if !ips.v6.is_empty() => {
                            Answer::Addrs(ips.v6.iter().map(|a| IpAddr::V6(*a)).collect())
                        }
                        _ => Answer::Empty,
                    };
                }
            }
        }
        // Not ours: forward, unless every network of the client is internal.
        let internal = nets
            .iter()
            .all(|id| t.nets.get(id).map(|x| x.1).unwrap_or(false));
        if internal {
            return Answer::Refuse;
        }
        if fwd.is_empty() {
            fwd = self.host_forwarders.read().unwrap().clone();
        }
        fwd.retain(|a| a.ip() != IpAddr::V4(self.own));
        if fwd.is_empty() {
            Answer::Refuse
        } else {
            Answer::Forward(fwd)
        }
    }
}

/// The address of a reverse name: `d.c.b.a.in-addr.arpa` or the 32 reversed nibbles
/// of an IPv6 address under `ip6.arpa`.
fn parse_arpa(name: &str) -> Option<IpAddr> {
    if let Some(rest) = name.strip_suffix(".in-addr.arpa") {
        let mut o: Vec<u8> = rest
            .split('.')
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        if o.len() != 4 {
            return None;
        }
        o.reverse();
        return Some(IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], o[3])));
    }
    let rest = name.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<u8> = rest
        .split('.')
        .map(|x| (x.len() == 1).then(|| u8::from_str_radix(x, 16).ok()).flatten())
        .collect::<Option<_>>()?;
    if nibbles.len() != 32 {
        return None;
    }
    let v = nibbles.iter().rev().fold(0u128, |acc, n| (acc << 4) | u128::from(*n));
    Some(IpAddr::V6(Ipv6Addr::from(v)))
}

#[async_trait::async_trait]
impl RequestHandler for NetHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut rh: R,
    ) -> ResponseInfo {
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.recursion_available = true;
        let Ok(info) = request.request_info() else {
            return send_err(request, rh, ResponseCode::FormErr).await;
        };
        let qname = info.query.name().to_string();
        let qtype = info.query.query_type();
        let src = request.src().ip();
        match self.resolve(src, &qname, qtype) {
            Answer::Addrs(ips) => {
                let name = Name::from(info.query.name().clone());
                let recs: Vec<Record> = ips
                    .into_iter()
                    .map(|ip| {
                        let data = match ip {
                            IpAddr::V4(a) => RData::A(A(a)),
                            IpAddr::V6(a) => RData::AAAA(AAAA(a)),
                        };
                        Record::from_rdata(name.clone(), TTL, data)
                    })
                    .collect();
                meta.authoritative = true;
                let resp = MessageResponseBuilder::from_message_request(request).build(
                    meta,
                    recs.iter(),
                    [],
                    [],
                    [],
                );
                rh.send_response(resp)
                    .await
                    .unwrap_or_else(|_| ResponseInfo::from(hdr(request, ResponseCode::ServFail)))
            }
            Answer::Ptr(target) => {
                let name = Name::from(info.query.name().clone());
                let Ok(t) = Name::from_ascii(format!("{target}.")) else {
                    return send_err(request, rh, ResponseCode::ServFail).await;
                };
                let recs = [Record::from_rdata(name, TTL, RData::PTR(PTR(t)))];
                meta.authoritative = true;
                let resp = MessageResponseBuilder::from_message_request(request).build(
                    meta,
                    recs.iter(),
                    [],
                    [],
                    [],
                );
                rh.send_response(resp)
                    .await
                    .unwrap_or_else(|_| ResponseInfo::from(hdr(request, ResponseCode::ServFail)))
            }
            Answer::Empty => {
                meta.authoritative = true;
                let resp =
                    MessageResponseBuilder::from_message_request(request).build_no_records(meta);
                rh.send_response(resp)
                    .await
                    .unwrap_or_else(|_| ResponseInfo::from(hdr(request, ResponseCode::ServFail)))
            }
            Answer::Refuse => send_err(request, rh, ResponseCode::ServFail).await,
            Answer::Forward(servers) => {
                let tcp = request.protocol() == hickory_server::net::xfer::Protocol::Tcp;
                match forward(request.as_slice(), &servers, tcp).await {
                    Some(m) => {
                        let mut meta = m.metadata;
                        meta.id = request.metadata.id;
                        let resp = MessageResponseBuilder::from_message_request(request).build(
                            meta,
                            m.answers.iter(),
                            m.authorities.iter(),
                            [],
                            m.additionals.iter(),
                        );
                        rh.send_response(resp).await.unwrap_or_else(|_| {
                            ResponseInfo::from(hdr(request, ResponseCode::ServFail))
                        })
                    }
                    None => send_err(request, rh, ResponseCode::ServFail).await,
                }
            }
        }
    }
}

fn hdr(request: &Request, code: ResponseCode) -> hickory_server::proto::op::Header {
    let mut m = Metadata::response_from_request(&request.metadata);
    m.response_code = code;
    hickory_server::proto::op::Header {
        metadata: m,
        counts: Default::default(),
    }
}

async fn send_err<R: ResponseHandler>(
    request: &Request,
    mut rh: R,
    code: ResponseCode,
) -> ResponseInfo {
    let resp =
        MessageResponseBuilder::from_message_request(request).error_msg(&request.metadata, code);
    rh.send_response(resp)
        .await
        .unwrap_or_else(|_| ResponseInfo::from(hdr(request, code)))
}

/// Send the raw query to each server in turn; the first answer wins.
async fn forward(query: &[u8], servers: &[SocketAddr], tcp: bool) -> Option<Message> {
    for s in servers {
        let r = if tcp {
            forward_tcp(query, *s).await
        } else {
            forward_udp(query, *s).await
        };
        match r {
            Ok(bytes) => {
                if let Ok(m) = Message::from_vec(&bytes) {
                    if m.metadata.truncation && !tcp {
                        if let Ok(b) = forward_tcp(query, *s).await {
                            if let Ok(m2) = Message::from_vec(&b) {
                                return Some(m2);
                            }
                        }
                    }
                    return Some(m);
                }
            }
            Err(e) => tracing::debug!(server = %s, error = %e, "DNS forward failed"),
        }
    }
    None
}

async fn forward_udp(query: &[u8], server: SocketAddr) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let sock = tokio::net::UdpSocket::bind(bind).await?;
    sock.connect(server).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 65535];
    let id = &query[..2.min(query.len())];
    tokio::time::timeout(FORWARD_TIMEOUT, async {
        loop {
            let n = sock.recv(&mut buf).await?;
            if n >= 2 && &buf[..2] == id {
                return Ok(buf[..n].to_vec());
            }
        }
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))?
}

async fn forward_tcp(query: &[u8], server: SocketAddr) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::time::timeout(FORWARD_TIMEOUT, async {
        let mut c = tokio::net::TcpStream::connect(server).await?;
        let mut out = (query.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(query);
        c.write_all(&out).await?;
        let mut len = [0u8; 2];
        c.read_exact(&mut len).await?;
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        c.read_exact(&mut buf).await?;
        Ok(buf)
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))?
}

/// A DNS query over UDP (for tests and health checks): the A records of `name`,
/// or the response code when there are none.
pub async fn query_a(
    server: SocketAddr,
    name: &str,
    from: Option<Ipv4Addr>,
) -> Result<Vec<Ipv4Addr>, ResponseCode> {
    query(server, name, RecordType::A, from).await.map(|m| {
        m.answers
            .iter()
            .filter_map(|r| {
                if let RData::A(a) = &r.data {
                    Some(a.0)
                } else {
                    None
                }
            })
            .collect()
    })
}

pub async fn query(
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    from: Option<Ipv4Addr>,
) -> Result<Message, ResponseCode> {
    use hickory_server::proto::op::{MessageType, OpCode, Query};
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let mut m = Message::new(u16::from_le_bytes(b), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    let n = Name::from_ascii(name).map_err(|_| ResponseCode::FormErr)?;
    m.add_query(Query::query(n, qtype));
    let bytes = m.to_vec().map_err(|_| ResponseCode::FormErr)?;
    let bind = SocketAddr::new(IpAddr::V4(from.unwrap_or(Ipv4Addr::UNSPECIFIED)), 0);
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|_| ResponseCode::ServFail)?;
    sock.connect(server)
        .await
        .map_err(|_| ResponseCode::ServFail)?;
    sock.send(&bytes)
        .await
        .map_err(|_| ResponseCode::ServFail)?;
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .map_err(|_| ResponseCode::ServFail)?
        .map_err(|_| ResponseCode::ServFail)?;
    let r = Message::from_vec(&buf[..n]).map_err(|_| ResponseCode::FormErr)?;
    if r.metadata.response_code != ResponseCode::NoError {
        return Err(r.metadata.response_code);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(net: &str, ip: [u8; 4], names: &[&str]) -> DnsEntry {
        DnsEntry {
            network_id: net.into(),
            ip: Ipv4Addr::from(ip),
            ip6: None,
            names: names.iter().map(|s| s.to_string()).collect(),
            links: vec![],
        }
    }

    /// `--link upstream:bar` on a user network: `bar` (and `bar.<net>`) resolve to
    /// the target for the linking container only, even when the target came later.
    #[test]
    fn link_aliases_resolve_for_the_linking_container() {
        let table: Arc<RwLock<Table>> = Arc::default();
        let h = NetHandler {
            net_id: "n1".into(),
            table: table.clone(),
            host_forwarders: Arc::default(),
            own: Ipv4Addr::new(172, 18, 0, 1),
        };
        {
            let mut t = table.write().unwrap();
            t.nets.insert("n1".into(), ("net1".into(), false));
            let mut a = entry("n1", [172, 18, 0, 2], &["a"]);
            a.links = ["upstream:bar", "/solo"].iter().filter_map(|l| parse_link(l)).collect();
            t.sandboxes.insert("ca".into(), (vec![a], vec![]));
            t.sandboxes.insert("cb".into(), (vec![entry("n1", [172, 18, 0, 3], &["b"])], vec![]));
            t.reindex();
        }
        let from_a = IpAddr::V4(Ipv4Addr::new(172, 18, 0, 2));
        let from_b = IpAddr::V4(Ipv4Addr::new(172, 18, 0, 3));
        // the target is not there yet: not resolved (forwarded: none here, refused)
        assert_eq!(h.resolve(from_a, "bar.", RecordType::A), Answer::Refuse);
        {
            let mut t = table.write().unwrap();
            t.sandboxes.insert("cu".into(), (vec![entry("n1", [172, 18, 0, 4], &["upstream"])], vec![]));
            t.sandboxes.insert("cs".into(), (vec![entry("n1", [172, 18, 0, 5], &["solo"])], vec![]));
            t.reindex();
        }
        let up = Answer::Addrs(vec![IpAddr::V4(Ipv4Addr::new(172, 18, 0, 4))]);
        assert_eq!(h.resolve(from_a, "bar.", RecordType::A), up);
        assert_eq!(h.resolve(from_a, "BAR.net1.", RecordType::A), up);
        assert_eq!(h.resolve(from_a, "solo.", RecordType::A), Answer::Addrs(vec![IpAddr::V4(Ipv4Addr::new(172, 18, 0, 5))]));
        assert_eq!(h.resolve(from_b, "bar.", RecordType::A), Answer::Refuse);
        assert_eq!(parse_link("x"), Some(("x".into(), "x".into())));
        assert_eq!(parse_link("/x:/a/y"), Some(("y".into(), "x".into())));
        assert_eq!(parse_link(":y"), None);
    }

    /// A container on an IPv6 network answers AAAA with its IPv6 address (by name,
    /// alias, link alias and `<name>.<network>`), PTR of its `ip6.arpa` name; a name
    /// with only an IPv4 address answers AAAA with no records (Moby's `ipv6Miss`),
    /// never forwarded.
    #[tokio::test]
    async fn aaaa_for_ipv6_endpoints_and_empty_for_ipv4_only_names() {
        let dns = Dns::new(vec![]);
        dns.set_network("n6", "net6", false);
        let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        let mut web = entry("n6", [127, 0, 6, 2], &["web", "www"]);
        web.ip6 = Some(v6("fd00:6::2"));
        web.links = ["db:store"].iter().filter_map(|l| parse_link(l)).collect();
        let mut db = entry("n6", [127, 0, 6, 3], &["db"]);
        db.ip6 = Some(v6("fd00:6::3"));
        dns.set_sandbox("web", vec![web], vec![]);
        dns.set_sandbox("db", vec![db], vec![]);
        // a v4-only name on a second network of web's
        dns.set_network("n4", "net4", false);
        dns.set_sandbox("old", vec![entry("n4", [127, 0, 4, 3], &["old"])], vec![]);
        dns.set_sandbox("web2", vec![entry("n4", [127, 0, 4, 2], &["web2"])], vec![]);
        let p = free_udp_port(Ipv4Addr::new(127, 0, 6, 1));
        dns.start("n6", Ipv4Addr::new(127, 0, 6, 1), p).await.unwrap();
        let s = SocketAddr::from((Ipv4Addr::new(127, 0, 6, 1), p));
        let from_web = Some(Ipv4Addr::new(127, 0, 6, 2));
        let aaaa = |m: Message| -> Vec<Ipv6Addr> {
            m.answers
                .iter()
                .filter_map(|r| if let RData::AAAA(a) = &r.data { Some(a.0) } else { None })
                .collect()
        };
        for name in ["db", "DB.net6.", "store", "store.net6"] {
            let m = query(s, name, RecordType::AAAA, from_web).await.unwrap();
            assert_eq!(aaaa(m), vec![v6("fd00:6::3")], "{name}");
        }
        assert_eq!(
            aaaa(query(s, "www", RecordType::AAAA, from_web).await.unwrap()),
            vec![v6("fd00:6::2")]
        );
        // A still answers the IPv4 address
        assert_eq!(query_a(s, "db", from_web).await.unwrap(), vec![Ipv4Addr::new(127, 0, 6, 3)]);
        // the link alias is web's only: db asks, nothing of ours, nowhere to forward
        let from_db = Some(Ipv4Addr::new(127, 0, 6, 3));
        assert_eq!(
            query(s, "store", RecordType::AAAA, from_db).await.unwrap_err(),
            ResponseCode::ServFail
        );
        // a name with only an IPv4 address: NOERROR, no records, not forwarded
        let from_web2 = Some(Ipv4Addr::new(127, 0, 4, 2));
        let p4 = free_udp_port(Ipv4Addr::new(127, 0, 4, 1));
        dns.start("n4", Ipv4Addr::new(127, 0, 4, 1), p4).await.unwrap();
        let s4 = SocketAddr::from((Ipv4Addr::new(127, 0, 4, 1), p4));
        let m = query(s4, "old", RecordType::AAAA, from_web2).await.unwrap();
        assert!(m.answers.is_empty());
        assert!(m.metadata.authoritative);
        // PTR of the IPv6 address
        let m = query(
            s,
            "3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.0.0.0.0.0.d.f.ip6.arpa",
            RecordType::PTR,
            from_web,
        )
        .await
        .unwrap();
        let ptrs: Vec<String> = m
            .answers
            .iter()
            .filter_map(|r| if let RData::PTR(p) = &r.data { Some(p.0.to_string()) } else { None })
            .collect();
        assert_eq!(ptrs, vec!["db.net6.".to_string()]);
        dns.remove_network("n6");
        dns.remove_network("n4");
    }

    #[test]
    fn arpa_names() {
        assert_eq!(
            parse_arpa("2.0.18.172.in-addr.arpa"),
            Some(IpAddr::V4(Ipv4Addr::new(172, 18, 0, 2)))
        );
        assert_eq!(
            parse_arpa("2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.0.0.0.0.0.d.f.ip6.arpa"),
            Some(IpAddr::V6("fd00:2::2".parse().unwrap()))
        );
        assert_eq!(parse_arpa("2.0.ip6.arpa"), None);
        assert_eq!(parse_arpa("x.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.0.0.0.0.0.d.f.ip6.arpa"), None);
        assert_eq!(parse_arpa("example.com"), None);
    }

    #[tokio::test]
    async fn resolves_per_network_and_forwards_the_rest() {
        // An upstream that answers every A query with 9.9.9.9.
        let upstream = Dns::new(vec![]);
        upstream.set_network("up", "up", false);
        upstream.set_sandbox(
            "u",
            vec![entry("up", [9, 9, 9, 9], &["example.com"])],
            vec![],
        );
        let up_port = free_udp_port(Ipv4Addr::new(127, 0, 0, 1));
        upstream
            .start("up", Ipv4Addr::new(127, 0, 0, 1), up_port)
            .await
            .unwrap();

        let dns = Dns::new(vec![SocketAddr::from((
            Ipv4Addr::new(127, 0, 0, 1),
            up_port,
        ))]);
        dns.set_network("n1", "front", false);
        dns.set_network("n2", "back", false);
        dns.set_network("n3", "sealed", true);
        // web on n1 and n2; db on n2 only; lone on n3 (internal)
        dns.set_sandbox(
            "web",
            vec![
                entry("n1", [127, 0, 1, 2], &["web", "www", "0123456789ab"]),
                entry("n2", [127, 0, 2, 2], &["web"]),
            ],
            vec![],
        );
        dns.set_sandbox("db", vec![entry("n2", [127, 0, 2, 3], &["db"])], vec![]);
        dns.set_sandbox("lone", vec![entry("n3", [127, 0, 3, 2], &["lone"])], vec![]);
        let p1 = free_udp_port(Ipv4Addr::new(127, 0, 1, 1));
        dns.start("n1", Ipv4Addr::new(127, 0, 1, 1), p1)
            .await
            .unwrap();
        let p3 = free_udp_port(Ipv4Addr::new(127, 0, 3, 1));
        dns.start("n3", Ipv4Addr::new(127, 0, 3, 1), p3)
            .await
            .unwrap();
        let s1 = SocketAddr::from((Ipv4Addr::new(127, 0, 1, 1), p1));
        let s3 = SocketAddr::from((Ipv4Addr::new(127, 0, 3, 1), p3));
        let web = Some(Ipv4Addr::new(127, 0, 1, 2));

        assert_eq!(
            query_a(s1, "web", web).await.unwrap(),
            vec![Ipv4Addr::new(127, 0, 1, 2)]
        );
        assert_eq!(
            query_a(s1, "WWW.", web).await.unwrap(),
            vec![Ipv4Addr::new(127, 0, 1, 2)]
        );
        assert_eq!(
            query_a(s1, "0123456789ab", web).await.unwrap(),
            vec![Ipv4Addr::new(127, 0, 1, 2)]
        );
        assert_eq!(
            query_a(s1, "web.front", web).await.unwrap(),
            vec![Ipv4Addr::new(127, 0, 1, 2)]
        );
        // web is also on n2, so it resolves db through n1's server
        assert_eq!(
            query_a(s1, "db", web).await.unwrap(),
            vec![Ipv4Addr::new(127, 0, 2, 3)]
        );
        // an unknown client on n1 sees only n1's names; db is forwarded (upstream says NXDOMAIN)
        assert!(query_a(s1, "db", None).await.is_err());
        // the rest is forwarded
        assert_eq!(
            query_a(s1, "example.com", web).await.unwrap(),
            vec![Ipv4Addr::new(9, 9, 9, 9)]
        );
        // AAAA of a container: no error, no records
        let m = query(s1, "web", RecordType::AAAA, web).await.unwrap();
        assert!(m.answers.is_empty());
        // PTR
        let m = query(s1, "2.1.0.127.in-addr.arpa", RecordType::PTR, web)
            .await
            .unwrap();
        assert_eq!(m.answers.len(), 1);
        // internal network: names yes, forwarding no
        let lone = Some(Ipv4Addr::new(127, 0, 3, 2));
        assert_eq!(
            query_a(s3, "lone", lone).await.unwrap(),
            vec![Ipv4Addr::new(127, 0, 3, 2)]
        );
        assert_eq!(
            query_a(s3, "example.com", lone).await.unwrap_err(),
            ResponseCode::ServFail
        );
        // names go with the sandbox
        dns.remove_sandbox("web");
        assert!(query_a(s1, "web", None).await.is_err());
        assert_eq!(dns.names("n1"), Vec::<String>::new());
        dns.remove_network("n1");
        assert!(!dns.serving("n1"));
    }

    fn free_udp_port(ip: Ipv4Addr) -> u16 {
        loop {
            let u = std::net::UdpSocket::bind((ip, 0)).unwrap();
            let p = u.local_addr().unwrap().port();
            if std::net::TcpListener::bind((ip, p)).is_ok() {
                return p;
            }
        }
    }
}
