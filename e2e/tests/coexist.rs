//! berth beside another engine: a `docker0` bridge owning 172.17.0.0/16 with the
//! firewall state Docker leaves (a masquerade rule for its subnet, the FORWARD
//! policy DROP, br_netfilter sending bridged traffic through it). berth picks
//! another subnet, its containers still reach each other and their published
//! ports, and docker0, its address and its rules are untouched.
//!
//! Its own test binary: it changes host-wide firewall state (restored at the end,
//! even on failure), so no other test runs beside it.

use berth_e2e::fixtures::node_with_busybox;
use berth_e2e::{require_root, Node};
use std::process::Command;

fn sh(cmd: &str) -> (bool, String) {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
}

/// What the "other engine" made, and undoes on drop.
struct OtherEngine {
    made_bridge: bool,
    old_policy: String,
    rule: bool,
    /// docker0's subnet: 172.17.0.0/16 when this test makes it, else what the engine
    /// on this host gave it.
    subnet: String,
}

impl OtherEngine {
    fn start() -> OtherEngine {
        let made_bridge = !std::path::Path::new("/sys/class/net/docker0").exists();
        if made_bridge {
            assert!(sh("ip link add docker0 type bridge && ip addr add 172.17.0.1/16 dev docker0 && ip link set docker0 up").0);
        }
        let cidr = sh("ip -4 -o addr show docker0").1.split_whitespace().nth(3).unwrap_or("172.17.0.1/16").to_string();
        let subnet = network_of(&cidr);
        let (_, pol) = sh("iptables -S FORWARD | head -1");
        let old_policy = pol.split_whitespace().nth(2).unwrap_or("ACCEPT").to_string();
        assert!(sh("iptables -P FORWARD DROP").0, "iptables");
        let rule = sh(&format!("iptables -t nat -A POSTROUTING -s {subnet} ! -o docker0 -j MASQUERADE")).0;
        // Docker loads br_netfilter: bridged frames go through the FORWARD chain
        let _ = sh("modprobe br_netfilter 2>/dev/null; sysctl -qw net.bridge.bridge-nf-call-iptables=1");
        OtherEngine { made_bridge, old_policy, rule, subnet }
    }
}

/// `a.b.c.d/n` -> (network address as u32, prefix length).
fn parse_cidr(c: &str) -> (u32, u32) {
    let (ip, n) = c.trim().split_once('/').unwrap_or((c.trim(), "32"));
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
    let n: u32 = n.parse().unwrap();
    let mask = if n == 0 { 0 } else { u32::MAX << (32 - n) };
    (u32::from(ip) & mask, n)
}

fn network_of(cidr: &str) -> String {
    let (net, n) = parse_cidr(cidr);
    format!("{}/{n}", std::net::Ipv4Addr::from(net))
}

fn overlaps(a: &str, b: &str) -> bool {
    let ((na, la), (nb, lb)) = (parse_cidr(a), parse_cidr(b));
    let l = la.min(lb);
    let mask = if l == 0 { 0 } else { u32::MAX << (32 - l) };
    na & mask == nb & mask
}

impl Drop for OtherEngine {
    fn drop(&mut self) {
        if self.rule {
            let _ = sh(&format!("iptables -t nat -D POSTROUTING -s {} ! -o docker0 -j MASQUERADE", self.subnet));
        }
        let _ = sh(&format!("iptables -P FORWARD {}", self.old_policy));
        if self.made_bridge {
            let _ = sh("ip link del docker0");
        }
    }
}

fn node_name(n: &Node) -> &str {
    &n.name
}

#[test]
fn berth_runs_beside_an_engine_that_owns_docker0() {
    require_root!();
    let other = OtherEngine::start();
    let docker0_before = sh("ip -4 -o addr show docker0").1;
    assert!(docker0_before.contains(" docker0 "), "{docker0_before}");

    let (node, _reg, img) = node_with_busybox();

    // the default bridge: berth's own device, a subnet clear of docker0's
    let subnet = node.docker_ok(&["network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}", "bridge"]);
    assert!(!overlaps(subnet.trim(), &other.subnet), "berth took docker0's subnet {}: {subnet}", other.subnet);
    let dev = node.docker_ok(&["network", "inspect", "-f", "{{index .Options \"com.docker.network.bridge.name\"}}", "bridge"]);
    assert_ne!(dev.trim(), "docker0");

    const HTTPD: &str = "mkdir -p /www && echo hello-$(hostname) > /www/index.html && exec httpd -f -p 80 -h /www";
    node.docker_ok(&["run", "-d", "--name", "web", "--hostname", "web", "-p", "127.0.0.1::80", &img, "sh", "-c", HTTPD]);
    let ip = node.docker_ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "web"]);
    assert!(!overlaps(&format!("{}/32", ip.trim()), &other.subnet), "{ip}");
    // container to container on the default bridge (bridged, through FORWARD)
    let got = node.docker_ok(&["run", "--rm", &img, "timeout", "5", "wget", "-qO-", &format!("http://{}/", ip.trim())]);
    assert_eq!(got.trim(), "hello-web");
    // a user network: by name
    node.docker_ok(&["network", "create", "side"]);
    node.docker_ok(&["run", "-d", "--name", "api", "--hostname", "api", "--network", "side", &img, "sh", "-c", HTTPD]);
    let mut got = String::new();
    for _ in 0..30 {
        let o = node.docker(&["run", "--rm", "--network", "side", &img, "timeout", "5", "wget", "-qO-", "http://api/"]);
        got = String::from_utf8_lossy(&o.stdout).into_owned();
        if o.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(got.trim(), "hello-api");
    // the published port answers from the host
    let port = node.docker_ok(&["port", "web", "80"]);
    let addr = port.lines().next().unwrap().trim().to_string();
    let (ok, body) = sh(&format!("curl -s --max-time 5 http://{addr}/"));
    assert!(ok && body.trim() == "hello-web", "{addr}: {body}");

    node.docker_ok(&["rm", "-f", "web", "api"]);
    node.docker_ok(&["network", "rm", "side"]);
    let (_, fwd) = sh("iptables -S FORWARD");
    assert!(fwd.contains(&format!("-i be{} ", node_name(&node))), "berth's accept rules: {fwd}");
    // (other nodes may run on this host: only this one's rules count)
    let tag = format!("berth_{}", std::fs::read_to_string(node.root.join("node-id")).unwrap().trim());
    drop(node);
    // berth's accept rules went with its bridges
    let (_, fwd) = sh("iptables -S FORWARD");
    assert!(!fwd.contains(&format!("--comment {tag} ")), "berth left rules in FORWARD: {fwd}");
    // docker0, its address and the other engine's rule are as they were
    assert_eq!(sh("ip -4 -o addr show docker0").1, docker0_before);
    assert!(sh(&format!("iptables -t nat -C POSTROUTING -s {} ! -o docker0 -j MASQUERADE", other.subnet)).0, "the other engine's rule is gone");
    let (_, pol) = sh("iptables -S FORWARD | head -1");
    assert!(pol.contains("DROP"), "berth changed the FORWARD policy: {pol}");
    drop(other);
}
