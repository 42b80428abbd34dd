//! Two nodes on one host, both on berth's defaults (no `bridge`, no `cgroup-parent`
//! in daemon.json): each gets a bridge, a subnet, a firewall table and a cgroup
//! parent of its own, and each starts, stops and removes containers, stops and starts
//! again while the other's containers keep running and answering; after both stop,
//! neither left a link, a table, a FORWARD rule or a mount. A node told to use a
//! bridge another node owns refuses to start and names that node.

use berth_e2e::fixtures::{pull_busybox, Registry};
use berth_e2e::{require_root, Node, NodeOpts};
use std::process::Command;

const HTTPD: &str = "mkdir -p /www && echo hello-$(hostname) > /www/index.html && exec httpd -f -p 80 -h /www";

fn default_node(reg: &Registry) -> Node {
    let mut opts = NodeOpts::default();
    opts.config.insert("bridge".into(), serde_json::Value::Null);
    opts.config.insert("cgroup-parent".into(), serde_json::Value::Null);
    opts.config.insert("insecure-registries".into(), serde_json::json!([reg.addr()]));
    Node::start_opts(opts)
}

fn node_id(n: &Node) -> String {
    std::fs::read_to_string(n.root.join("node-id")).unwrap().trim().to_string()
}

fn bridge_of(n: &Node) -> String {
    n.docker_ok(&["network", "inspect", "-f", "{{index .Options \"com.docker.network.bridge.name\"}}", "bridge"])
        .trim()
        .to_string()
}

fn ports_of(bridge: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/sys/class/net/{bridge}/brif"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The cgroup (v2 path, else the first v1 one) of a container's init.
fn cgroup_of(n: &Node, c: &str) -> String {
    let pid = n.docker_ok(&["inspect", "-f", "{{.State.Pid}}", c]);
    let text = std::fs::read_to_string(format!("/proc/{}/cgroup", pid.trim())).unwrap();
    text.lines().find_map(|l| l.strip_prefix("0::")).or_else(|| text.lines().next()).unwrap().to_string()
}

/// GET / on a published 127.0.0.1 port.
fn get(addr: &str) -> String {
    let o = Command::new("curl").args(["-s", "--max-time", "5", &format!("http://{addr}/")]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// GET / once the container's httpd listens (it starts after `run -d` returns).
fn get_when_up(addr: &str) -> String {
    let t = std::time::Instant::now();
    loop {
        let body = get(addr);
        if !body.is_empty() || t.elapsed() > std::time::Duration::from_secs(20) {
            return body;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn published(n: &Node, c: &str) -> String {
    n.docker_ok(&["port", c, "80"]).lines().next().unwrap().trim().to_string()
}

fn nft_has(table: &str) -> bool {
    Command::new("nft").args(["list", "table", "ip", table]).output().unwrap().status.success()
}

#[test]
fn two_default_nodes_on_one_host_run_containers_through_each_others_start_and_stop() {
    require_root!();
    let berth0_was_free = !std::path::Path::new("/sys/class/net/berth0").exists();
    let reg = Registry::start();
    let mut a = default_node(&reg);
    let mut b = default_node(&reg);
    let img = pull_busybox(&a, &reg);
    pull_busybox(&b, &reg);

    // names that must not collide derive from the node
    let (bra, brb) = (bridge_of(&a), bridge_of(&b));
    assert_ne!(bra, brb);
    for (br, n) in [(&bra, &a), (&brb, &b)] {
        let own = format!("berth{}", &node_id(n)[..10]);
        assert!(*br == "berth0" || *br == own, "{br} (node {})", node_id(n));
    }
    if berth0_was_free {
        assert_eq!(bra, "berth0", "the first node on the host keeps Docker-like berth0");
    }
    let subnet = |n: &Node| n.docker_ok(&["network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}", "bridge"]);
    assert_ne!(subnet(&a), subnet(&b));

    // A serves; B runs and removes containers beside it
    a.docker_ok(&["run", "-d", "--name", "web", "--hostname", "web-a", "-p", "127.0.0.1::80", &img, "sh", "-c", HTTPD]);
    let a_web = published(&a, "web");
    assert_eq!(get_when_up(&a_web), "hello-web-a");
    let a_ports = ports_of(&bra);
    assert_eq!(a_ports.len(), 1);
    b.docker_ok(&["run", "-d", "--name", "web", "--hostname", "web-b", "-p", "127.0.0.1::80", &img, "sh", "-c", HTTPD]);
    assert_eq!(get_when_up(&published(&b, "web")), "hello-web-b");
    let (cga, cgb) = (cgroup_of(&a, "web"), cgroup_of(&b, "web"));
    let parent = |cg: &str| cg.rsplit_once('/').unwrap().0.to_string();
    assert_ne!(parent(&cga), parent(&cgb), "{cga} / {cgb}");
    for i in 0..3 {
        b.docker_ok(&["run", "--rm", "--name", &format!("b{i}"), &img, "true"]);
    }
    b.docker_ok(&["rm", "-f", "web"]);
    assert_eq!(ports_of(&bra), a_ports, "B's containers touched A's bridge");
    assert_eq!(get(&a_web), "hello-web-a");

    // B stops and starts again: A's bridge, veth, rules and container stay
    let table_a = format!("berth_{}", node_id(&a));
    b.shutdown();
    assert!(std::path::Path::new(&format!("/sys/class/net/{bra}")).exists());
    assert!(!std::path::Path::new(&format!("/sys/class/net/{brb}")).exists(), "B left its bridge");
    assert!(!nft_has(&format!("berth_{}", node_id(&b))), "B left its table");
    assert!(nft_has(&table_a));
    assert_eq!(ports_of(&bra), a_ports);
    assert_eq!(get(&a_web), "hello-web-a");
    b.boot();
    assert_eq!(bridge_of(&b), brb, "B keeps its bridge across restarts");
    assert_eq!(ports_of(&bra), a_ports, "B's start removed A's veths");
    assert_eq!(get(&a_web), "hello-web-a");

    // the other way round: A starts and stops containers, then stops, while B serves
    b.docker_ok(&["run", "-d", "--name", "web2", "--hostname", "web-b2", "-p", "127.0.0.1::80", &img, "sh", "-c", HTTPD]);
    let b_web = published(&b, "web2");
    assert_eq!(get_when_up(&b_web), "hello-web-b2");
    let b_ports = ports_of(&brb);
    a.docker_ok(&["run", "--rm", &img, "true"]);
    assert_eq!(get(&b_web), "hello-web-b2");
    // A stops: B keeps serving, A leaves nothing
    a.docker_ok(&["rm", "-f", "web"]);
    let (id_a, root_a) = (node_id(&a), a.root.clone());
    a.shutdown();
    assert_eq!(leftovers(&id_a, &bra, &root_a), Vec::<String>::new());
    assert!(std::path::Path::new(&format!("/sys/class/net/{brb}")).exists());
    assert_eq!(ports_of(&brb), b_ports);
    assert_eq!(get(&b_web), "hello-web-b2");
    b.docker_ok(&["rm", "-f", "web2"]);
    let (id_b, root_b) = (node_id(&b), b.root.clone());
    b.shutdown();
    assert_eq!(leftovers(&id_b, &brb, &root_b), Vec::<String>::new());
    drop(a);
}

/// What a stopped node left on the host: links it marked (`berth:<node>`), its
/// bridge, its nft table, FORWARD rules with its table's name as comment, mounts
/// under its root.
fn leftovers(node: &str, bridge: &str, root: &std::path::Path) -> Vec<String> {
    let mut left = Vec::new();
    let mark = format!("berth:{node}");
    for e in std::fs::read_dir("/sys/class/net").unwrap().flatten() {
        let alias = std::fs::read_to_string(e.path().join("ifalias")).unwrap_or_default();
        let name = e.file_name().to_string_lossy().into_owned();
        if alias.trim() == mark || name == bridge {
            left.push(format!("link {name}"));
        }
    }
    let table = format!("berth_{node}");
    if nft_has(&table) {
        left.push(format!("nft table {table}"));
    }
    let fwd = Command::new("iptables").args(["-w", "-S", "FORWARD"]).output().unwrap();
    for l in String::from_utf8_lossy(&fwd.stdout).lines().filter(|l| l.contains(&table)) {
        left.push(format!("rule {l}"));
    }
    let root = root.to_string_lossy().into_owned();
    for l in std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines() {
        if let Some(m) = l.split(' ').nth(4).filter(|m| m.starts_with(&root)) {
            left.push(format!("mount {m}"));
        }
    }
    left
}

#[test]
fn a_node_told_to_use_another_nodes_bridge_refuses_to_start_naming_it() {
    require_root!();
    let a = Node::start();
    let mut opts = NodeOpts::default();
    opts.config.insert("bridge".into(), format!("be{}", a.name).into());
    let out = Node::start_failing(opts).expect("the second node started");
    let want = format!("bridge be{} belongs to berth node {}", a.name, node_id(&a));
    assert!(out.contains(&want), "{out}");
    // and A's bridge is as it was
    assert!(a.docker_ok(&["network", "ls"]).contains("bridge"));
    assert!(std::path::Path::new(&format!("/sys/class/net/be{}", a.name)).exists());
}
