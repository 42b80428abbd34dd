//! The network service misses a container's removal (it was down when the runtime
//! gave the sandbox back): the sandbox of the removed container is dropped once the
//! service runs again (its sweep against the runtime), and a graceful stop then
//! leaves nothing: no bridge, veth, nft table, FORWARD rule or mount.

use berth_e2e::fixtures::{node_with_registry, pull_busybox};
use berth_e2e::require_root;
use std::process::Command;
use std::time::{Duration, Instant};

fn node_id(n: &berth_e2e::Node) -> String {
    std::fs::read_to_string(n.root.join("node-id")).unwrap().trim().to_string()
}

fn containers_on_bridge(n: &berth_e2e::Node) -> String {
    n.docker_ok(&["network", "inspect", "-f", "{{len .Containers}}", "bridge"]).trim().to_string()
}

fn signal(pid: i32, sig: i32) {
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

#[test]
fn a_sandbox_whose_removal_the_network_missed_is_dropped_and_a_stop_leaves_nothing() {
    require_root!();
    let (mut n, reg) = node_with_registry();
    let img = pull_busybox(&n, &reg);
    n.docker_ok(&["run", "-d", "--name", "web", "-p", "127.0.0.1::80", &img, "httpd", "-f", "-p", "80"]);
    assert_eq!(containers_on_bridge(&n), "1");
    let bridge = format!("be{}", n.name);

    // the network dies while `berth up` cannot restart it; the container goes meanwhile
    let up = n.state()["pid"].as_i64().unwrap() as i32;
    let net = n.service_pid("network").unwrap();
    signal(up, libc::SIGSTOP);
    signal(net, libc::SIGKILL);
    let rm = n.docker(&["rm", "-f", "web"]);
    signal(up, libc::SIGCONT);
    assert!(rm.status.success(), "{}", String::from_utf8_lossy(&rm.stderr));

    // the restarted network drops the sandbox of the removed container
    let t = Instant::now();
    loop {
        let left = n.docker(&["network", "inspect", "-f", "{{len .Containers}}", "bridge"]);
        if left.status.success() && String::from_utf8_lossy(&left.stdout).trim() == "0" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(90), "the sandbox stays:\n{}", n.logs());
        std::thread::sleep(Duration::from_millis(500));
    }
    let brif = std::fs::read_dir(format!("/sys/class/net/{bridge}/brif")).unwrap().count();
    assert_eq!(brif, 0, "a veth stays on the bridge");
    let netns = std::fs::read_dir(n.root.join("network/netns")).unwrap().count();
    assert_eq!(netns, 0, "a namespace file stays");

    // and a graceful stop takes everything the node put on the host away
    let id = node_id(&n);
    let table = format!("berth_{id}");
    n.shutdown();
    let mut left = Vec::new();
    if std::path::Path::new(&format!("/sys/class/net/{bridge}")).exists() {
        left.push(format!("bridge {bridge}"));
    }
    if Command::new("nft").args(["list", "table", "ip", &table]).output().unwrap().status.success() {
        left.push(format!("table {table}"));
    }
    let fwd = Command::new("iptables").args(["-w", "-S", "FORWARD"]).output().unwrap();
    left.extend(String::from_utf8_lossy(&fwd.stdout).lines().filter(|l| l.contains(&table)).map(str::to_string));
    let root = n.root.to_string_lossy().into_owned();
    for l in std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines() {
        if let Some(m) = l.split(' ').nth(4).filter(|m| m.starts_with(&root)) {
            left.push(format!("mount {m}"));
        }
    }
    assert!(left.is_empty(), "left after the stop: {left:?}");
}
