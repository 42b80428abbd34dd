//! The embedded DNS of tasks on overlay networks: Docker's resolver at 127.0.0.11
//! inside each task's network namespace. It answers the service names of the task's
//! networks as libnetwork's records do (`NAME` and each alias: the service's virtual
//! IP, or every task's address in DNSRR mode; `tasks.NAME`: every task's address) and
//! forwards every other query to the nameservers the container had before (its
//! resolv.conf, which then names 127.0.0.11 only, with `options ndots:0` as Moby's).
//!
//! The socket is bound inside the namespace by a short-lived thread that enters it
//! (a socket stays in the namespace it was made in), and served here, in the swarm
//! service: nothing runs in the container. Dropping the [`Server`] closes it.
//! UDP and TCP, as Moby's resolver: an answer over 512 bytes comes truncated over UDP
//! (the first records, the TC bit set) and whole over TCP, where clients ask again.

use crate::overlay::SvcView;
use hickory_server::proto::op::{Message, MessageType, ResponseCode};
use hickory_server::proto::rr::rdata::A;
use hickory_server::proto::rr::{RData, Record, RecordType};
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Docker's address of the embedded resolver.
pub const ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
/// libnetwork's TTL for service records.
const TTL: u32 = 600;
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Queries forwarded at once, at most (Moby's resolver's maxConcurrent): a container
/// that floods its resolver with names to forward gets the rest dropped, instead of
/// a task and a socket each in the swarm service.
const MAX_FORWARDS: usize = 1024;
/// TCP connections served at once, at most (the others wait in the kernel's backlog),
/// and how long one may stay idle before it is closed.
const MAX_TCP_CONNS: usize = 64;
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Lower-case name → addresses.
pub type Names = HashMap<String, Vec<Ipv4Addr>>;

/// The names a task on networks with services `svcs` resolves (the hosts block's).
pub fn names_of(svcs: &BTreeMap<String, SvcView>) -> Names {
    let mut out: Names = HashMap::new();
    for v in svcs.values() {
        let names: Vec<String> = std::iter::once(v.name.clone()).chain(v.aliases.iter().cloned()).map(|n| n.to_ascii_lowercase()).collect();
        for n in &names {
            let plain = match v.vip {
                Some(vip) => vec![vip],
                None => v.tasks.clone(),
            };
            out.entry(n.clone()).or_default().extend(plain);
            out.entry(format!("tasks.{n}")).or_default().extend(v.tasks.iter().copied());
        }
    }
    for a in out.values_mut() {
        a.sort();
        a.dedup();
    }
    out
}

/// The answer to `query` from `names`, or None when the name is not ours (forward it).
/// Over UDP (`udp`) cut to 512 bytes.
pub fn answer(query: &[u8], names: &Names, udp: bool) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let first = q.queries.first()?;
    let name = first.name().to_ascii();
    let key = name.trim_end_matches('.').to_ascii_lowercase();
    let addrs = names.get(&key)?;
    let mut m = Message::new(q.metadata.id, MessageType::Response, q.metadata.op_code);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.authoritative = true;
    m.add_query(first.clone());
    match first.query_type() {
        RecordType::A | RecordType::ANY => {
            for a in addrs {
                m.add_answer(Record::from_rdata(first.name().clone(), TTL, RData::A(A(*a))));
            }
        }
        // a name of ours with no address of that kind: NOERROR, no records (Moby's),
        // so that the client does not ask the outside world
        _ => {}
    }
    m.metadata.response_code = ResponseCode::NoError;
    let mut b = m.to_vec().ok()?;
    if udp && b.len() > 512 {
        // what fits in a UDP answer: the first records, the truncation bit set
        let mut t = Message::new(q.metadata.id, MessageType::Response, q.metadata.op_code);
        t.metadata = m.metadata.clone();
        t.metadata.truncation = true;
        t.add_query(first.clone());
        for r in m.answers.iter().take(25) {
            t.add_answer(r.clone());
        }
        b = t.to_vec().ok()?;
    }
    Some(b)
}

/// SERVFAIL for `query` (no upstream answered).
fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let mut m = Message::new(q.metadata.id, MessageType::Response, q.metadata.op_code);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.response_code = ResponseCode::ServFail;
    if let Some(first) = q.queries.first() {
        m.add_query(first.clone());
    }
    m.to_vec().ok()
}

/// The nameservers of a resolv.conf, as socket addresses (port 53): its `nameserver`
/// lines but 127.0.0.11, and those of a `# ExtServers: [...]` line (where the embedded
/// resolver's own resolv.conf keeps them, as Moby's does: a restarted swarm service
/// finds them there).
pub fn nameservers(resolv: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for l in resolv.lines() {
        let t = l.trim();
        let addrs: Vec<&str> = if let Some(a) = t.strip_prefix("nameserver") {
            vec![a.trim()]
        } else if let Some(list) = t.strip_prefix("# ExtServers:") {
            list.trim().trim_start_matches('[').trim_end_matches(']').split_whitespace().collect()
        } else {
            continue;
        };
        for a in addrs {
            if let Ok(ip) = a.parse::<std::net::IpAddr>() {
                let sa = SocketAddr::new(ip, 53);
                if ip != std::net::IpAddr::V4(ADDR) && !out.contains(&sa) {
                    out.push(sa);
                }
            }
        }
    }
    out
}

/// The container's resolv.conf once it asks the embedded DNS: its search and options
/// lines kept, `ndots:0` as Moby writes it, the upstream servers in a comment.
pub fn resolv_conf(old: &str) -> String {
    let ext: Vec<String> = nameservers(old).iter().map(|s| s.ip().to_string()).collect();
    let mut out = format!("nameserver {ADDR}\n");
    let mut opts: Vec<String> = Vec::new();
    for l in old.lines() {
        let t = l.trim();
        if t.starts_with("search") || t.starts_with("domain") {
            out += t;
            out.push('\n');
        } else if let Some(o) = t.strip_prefix("options") {
            opts.extend(o.split_whitespace().filter(|o| !o.starts_with("ndots:")).map(str::to_string));
        }
    }
    opts.insert(0, "ndots:0".into());
    out += &format!("options {}\n", opts.join(" "));
    out += &format!("# ExtServers: [{}]\n", ext.join(" "));
    out
}

/// A running resolver in one task's namespace; dropped, it stops (its sockets closed).
pub struct Server {
    pub names: Arc<RwLock<Names>>,
    tasks: [tokio::task::AbortHandle; 2],
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Bind 127.0.0.11:53 (UDP and TCP) in the network namespace of process `pid` and
/// serve it.
pub async fn start(pid: i64, upstream: Vec<SocketAddr>) -> std::io::Result<Server> {
    let (udp, tcp) = tokio::task::spawn_blocking(move || bind_in(pid)).await.map_err(std::io::Error::other)??;
    let udp = Arc::new(tokio::net::UdpSocket::from_std(udp)?);
    let tcp = tokio::net::TcpListener::from_std(tcp)?;
    let names: Arc<RwLock<Names>> = Arc::default();
    let tasks = [
        tokio::spawn(serve(udp, names.clone(), upstream.clone(), MAX_FORWARDS)).abort_handle(),
        tokio::spawn(serve_tcp(tcp, names.clone(), upstream, MAX_TCP_CONNS)).abort_handle(),
    ];
    Ok(Server { names, tasks })
}

/// A thread of its own enters the namespace and binds: the sockets stay there when the
/// thread ends (setns changes only the calling thread).
fn bind_in(pid: i64) -> std::io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        let u = std::net::UdpSocket::bind((ADDR, 53))?;
        u.set_nonblocking(true)?;
        let t = std::net::TcpListener::bind((ADDR, 53))?;
        t.set_nonblocking(true)?;
        Ok((u, t))
    })
    .join()
    .map_err(|_| std::io::Error::other("the thread binding the resolver panicked"))?
}

/// DNS over TCP (RFC 7766): length-prefixed queries, answered in turn on each
/// connection, which closes when idle for TCP_IDLE; at most `max_conns` at once.
async fn serve_tcp(l: tokio::net::TcpListener, names: Arc<RwLock<Names>>, upstream: Vec<SocketAddr>, max_conns: usize) {
    let conns = Arc::new(tokio::sync::Semaphore::new(max_conns));
    loop {
        let Ok(permit) = conns.clone().acquire_owned().await else { return };
        let Ok((stream, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (names, upstream) = (names.clone(), upstream.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut stream = stream;
            while let Ok(Ok(q)) = tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await {
                let ours = answer(&q, &names.read().unwrap(), false);
                let b = match ours {
                    Some(b) => Some(b),
                    None => match forward_tcp(&q, &upstream).await {
                        Some(b) => Some(b),
                        None => servfail(&q),
                    },
                };
                let Some(b) = b else { return };
                if write_framed(&mut stream, &b).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// One length-prefixed DNS message (at most 65535 bytes, by its 16-bit length).
async fn read_framed<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let n = r.read_u16().await? as usize;
    let mut b = vec![0u8; n];
    r.read_exact(&mut b).await?;
    Ok(b)
}

async fn write_framed<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, b: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let n = u16::try_from(b.len()).map_err(|_| std::io::Error::other("a DNS message over 65535 bytes"))?;
    let mut out = Vec::with_capacity(b.len() + 2);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(b);
    w.write_all(&out).await
}

/// The query over TCP to each upstream in turn; the first answer wins.
async fn forward_tcp(query: &[u8], upstream: &[SocketAddr]) -> Option<Vec<u8>> {
    for s in upstream {
        let got = tokio::time::timeout(FORWARD_TIMEOUT, async {
            let mut c = tokio::net::TcpStream::connect(s).await.ok()?;
            write_framed(&mut c, query).await.ok()?;
            read_framed(&mut c).await.ok()
        })
        .await;
        if let Ok(Some(b)) = got {
            return Some(b);
        }
    }
    None
}

async fn serve(sock: Arc<tokio::net::UdpSocket>, names: Arc<RwLock<Names>>, upstream: Vec<SocketAddr>, max_forwards: usize) {
    let forwards = Arc::new(tokio::sync::Semaphore::new(max_forwards));
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let q = buf[..n].to_vec();
        let ours = answer(&q, &names.read().unwrap(), true);
        match ours {
            Some(b) => {
                let _ = sock.send_to(&b, from).await;
            }
            None => {
                let Ok(permit) = forwards.clone().try_acquire_owned() else {
                    tracing::debug!(max_forwards, "too many queries being forwarded: one dropped");
                    continue;
                };
                let (sock, upstream) = (sock.clone(), upstream.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let b = match forward(&q, &upstream).await {
                        Some(b) => Some(b),
                        None => servfail(&q),
                    };
                    if let Some(b) = b {
                        let _ = sock.send_to(&b, from).await;
                    }
                });
            }
        }
    }
}

/// The raw query to each upstream in turn (from the swarm service's namespace, the
/// node's, where the container's nameservers were reachable); the first answer wins.
async fn forward(query: &[u8], upstream: &[SocketAddr]) -> Option<Vec<u8>> {
    for s in upstream {
        let bind: SocketAddr = if s.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
        let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else { continue };
        if sock.connect(s).await.is_err() || sock.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        let got = tokio::time::timeout(FORWARD_TIMEOUT, async {
            loop {
                let n = sock.recv(&mut buf).await.ok()?;
                if n >= 2 && buf[..2] == query[..2] {
                    return Some(buf[..n].to_vec());
                }
            }
        })
        .await;
        if let Ok(Some(b)) = got {
            return Some(b);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_server::proto::op::{OpCode, Query};
    use hickory_server::proto::rr::Name;
    use tokio::io::AsyncWriteExt;

    fn view(name: &str, aliases: &[&str], vip: Option<[u8; 4]>, tasks: &[[u8; 4]]) -> SvcView {
        SvcView { name: name.into(), aliases: aliases.iter().map(|a| a.to_string()).collect(), vip: vip.map(Ipv4Addr::from), tasks: tasks.iter().map(|t| Ipv4Addr::from(*t)).collect() }
    }

    fn ask(name: &str, t: RecordType, names: &Names) -> Option<Message> {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        answer(&m.to_vec().unwrap(), names, true).map(|b| Message::from_vec(&b).unwrap())
    }

    fn addrs(m: &Message) -> Vec<Ipv4Addr> {
        m.answers.iter().filter_map(|r| if let RData::A(a) = &r.data { Some(a.0) } else { None }).collect()
    }

    #[test]
    fn service_names_as_libnetwork_records() {
        let mut svcs = BTreeMap::new();
        svcs.insert("s1".to_string(), view("web", &["front"], Some([10, 0, 1, 2]), &[[10, 0, 1, 4], [10, 0, 1, 3]]));
        svcs.insert("s2".to_string(), view("db", &[], None, &[[10, 0, 1, 6], [10, 0, 1, 5]]));
        let names = names_of(&svcs);
        let a = |n: &str| addrs(&ask(n, RecordType::A, &names).unwrap());
        assert_eq!(a("web"), vec![Ipv4Addr::new(10, 0, 1, 2)], "the VIP");
        assert_eq!(a("FRONT."), vec![Ipv4Addr::new(10, 0, 1, 2)], "an alias, any case");
        assert_eq!(a("tasks.web"), vec![Ipv4Addr::new(10, 0, 1, 3), Ipv4Addr::new(10, 0, 1, 4)]);
        assert_eq!(a("tasks.front"), a("tasks.web"));
        assert_eq!(a("db"), vec![Ipv4Addr::new(10, 0, 1, 5), Ipv4Addr::new(10, 0, 1, 6)], "DNSRR: the tasks");
        let m = ask("web", RecordType::AAAA, &names).unwrap();
        assert!(m.answers.is_empty() && m.metadata.response_code == ResponseCode::NoError && m.metadata.id == 7);
        assert!(ask("example.org", RecordType::A, &names).is_none(), "not ours: forwarded");
    }

    #[test]
    fn resolv_conf_names_the_embedded_resolver() {
        let old = "# x\nnameserver 10.0.0.2\nnameserver 127.0.0.11\nsearch corp.example\noptions ndots:2 timeout:1\n";
        assert_eq!(nameservers(old), vec!["10.0.0.2:53".parse().unwrap()]);
        let new = resolv_conf(old);
        assert_eq!(new, "nameserver 127.0.0.11\nsearch corp.example\noptions ndots:0 timeout:1\n# ExtServers: [10.0.0.2]\n");
        // rewritten again (a restarted swarm service): the upstream is kept
        assert_eq!(nameservers(&new), vec!["10.0.0.2:53".parse().unwrap()]);
        assert_eq!(resolv_conf(&new), new);
        assert_eq!(resolv_conf(""), "nameserver 127.0.0.11\noptions ndots:0\n# ExtServers: []\n");
    }

    #[tokio::test]
    async fn a_flood_of_queries_to_forward_is_bounded() {
        // an upstream that never answers: each forward holds its permit 2 s
        let upstream = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let sock = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let at = sock.local_addr().unwrap();
        let h = tokio::spawn(serve(sock, Arc::default(), vec![upstream.local_addr().unwrap()], 3));
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for i in 0..10u16 {
            let mut m = Message::new(i, MessageType::Query, OpCode::Query);
            m.add_query(Query::query(Name::from_ascii("example.org").unwrap(), RecordType::A));
            client.send_to(&m.to_vec().unwrap(), at).await.unwrap();
        }
        let mut got = 0;
        let mut buf = [0u8; 512];
        while tokio::time::timeout(Duration::from_millis(500), upstream.recv_from(&mut buf)).await.is_ok() {
            got += 1;
        }
        assert_eq!(got, 3, "forwarded at once, at most");
        h.abort();
    }

    #[tokio::test]
    async fn long_answers_come_whole_over_tcp() {
        let mut svcs = BTreeMap::new();
        let tasks: Vec<[u8; 4]> = (1..=60).map(|i| [10, 0, 1, i]).collect();
        svcs.insert("s1".to_string(), view("web", &[], Some([10, 0, 1, 200]), &tasks));
        let names = Arc::new(RwLock::new(names_of(&svcs)));
        let udp = ask("tasks.web", RecordType::A, &names.read().unwrap()).unwrap();
        assert!(udp.metadata.truncation && udp.answers.len() < 60, "over UDP: cut, the TC bit set");

        // an upstream over TCP for the names not ours
        let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_at = up.local_addr().unwrap();
        let upstream = tokio::spawn(async move {
            let (mut c, _) = up.accept().await.unwrap();
            let q = Message::from_vec(&read_framed(&mut c).await.unwrap()).unwrap();
            let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
            m.add_query(q.queries[0].clone());
            m.add_answer(Record::from_rdata(q.queries[0].name().clone(), 60, RData::A(A(Ipv4Addr::new(192, 0, 2, 1)))));
            write_framed(&mut c, &m.to_vec().unwrap()).await.unwrap();
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = l.local_addr().unwrap();
        let h = tokio::spawn(serve_tcp(l, names, vec![up_at], 2));
        let mut c = tokio::net::TcpStream::connect(at).await.unwrap();
        // two queries on one connection: ours whole, then one forwarded
        for (id, name) in [(1u16, "tasks.web"), (2, "example.org")] {
            let mut m = Message::new(id, MessageType::Query, OpCode::Query);
            m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
            write_framed(&mut c, &m.to_vec().unwrap()).await.unwrap();
            let r = Message::from_vec(&read_framed(&mut c).await.unwrap()).unwrap();
            assert_eq!(r.metadata.id, id);
            assert!(!r.metadata.truncation);
            if id == 1 {
                assert_eq!(addrs(&r).len(), 60, "every task");
            } else {
                assert_eq!(addrs(&r), vec![Ipv4Addr::new(192, 0, 2, 1)]);
            }
        }
        upstream.await.unwrap();
        // a length prefix promising more than is sent, then nothing: the connection
        // is read (and then closed when idle), the server goes on answering others
        c.write_all(&[0xff, 0xff, 1, 2]).await.unwrap();
        let mut c2 = tokio::net::TcpStream::connect(at).await.unwrap();
        let mut m = Message::new(3, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii("web").unwrap(), RecordType::A));
        write_framed(&mut c2, &m.to_vec().unwrap()).await.unwrap();
        let r = Message::from_vec(&read_framed(&mut c2).await.unwrap()).unwrap();
        assert_eq!(addrs(&r), vec![Ipv4Addr::new(10, 0, 1, 200)]);
        h.abort();
    }

    #[tokio::test]
    async fn unknown_names_without_upstream_fail_fast() {
        let mut m = Message::new(9, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii("example.org").unwrap(), RecordType::A));
        let q = m.to_vec().unwrap();
        assert!(forward(&q, &[]).await.is_none());
        let f = Message::from_vec(&servfail(&q).unwrap()).unwrap();
        assert_eq!((f.metadata.id, f.metadata.response_code), (9, ResponseCode::ServFail));
    }
}
