//! Networks through the real docker CLI against `berth up`: create, ls, inspect, rm,
//! prune, and (once the runtime runs containers) names, ports and network modes.

use berth_e2e::{require_root, Node};
use std::process::Command;

fn err(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn links() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn network_create_ls_inspect_rm_prune() {
    require_root!();
    let node = Node::start();
    let bridge = format!("be{}", node.name);

    // predefined networks, Docker's drivers and scope
    let ls = node.docker_ok(&[
        "network",
        "ls",
        "--format",
        "{{.Name}} {{.Driver}} {{.Scope}}",
    ]);
    let mut rows: Vec<&str> = ls.lines().collect();
    rows.sort();
    assert_eq!(
        rows,
        vec!["bridge bridge local", "host host local", "none null local"],
        "{ls}"
    );
    // the default bridge is the node's own device, never docker0
    let dev = node.docker_ok(&[
        "network",
        "inspect",
        "bridge",
        "--format",
        "{{index .Options \"com.docker.network.bridge.name\"}}",
    ]);
    assert_eq!(dev.trim(), bridge);
    assert!(links().contains(&bridge));

    // create with the usual options
    let id = node.docker_ok(&[
        "network",
        "create",
        "--subnet",
        "10.240.7.0/24",
        "--gateway",
        "10.240.7.254",
        "--ip-range",
        "10.240.7.128/25",
        "--label",
        "tier=front",
        "-o",
        "com.docker.network.driver.mtu=1400",
        "--internal",
        "web",
    ]);
    let id = id.trim().to_string();
    assert_eq!(id.len(), 64, "{id}");
    let j: serde_json::Value =
        serde_json::from_str(&node.docker_ok(&["network", "inspect", "web"])).unwrap();
    let n = &j[0];
    assert_eq!(n["Name"], "web");
    assert_eq!(n["Id"], id.as_str());
    assert_eq!(n["Driver"], "bridge");
    assert_eq!(n["Scope"], "local");
    assert_eq!(n["Internal"], true);
    assert_eq!(n["IPAM"]["Driver"], "default");
    assert_eq!(n["IPAM"]["Config"][0]["Subnet"], "10.240.7.0/24");
    assert_eq!(n["IPAM"]["Config"][0]["Gateway"], "10.240.7.254");
    assert_eq!(n["IPAM"]["Config"][0]["IPRange"], "10.240.7.128/25");
    assert_eq!(n["Labels"]["tier"], "front");
    assert_eq!(n["Options"]["com.docker.network.driver.mtu"], "1400");
    assert_eq!(n["Containers"], serde_json::json!({}));
    assert!(n["Created"].as_str().unwrap().contains('T'));
    let br = format!("br-{}", &id[..12]);
    assert!(links().contains(&br), "bridge {br} missing");
    // --format, by ID prefix
    let name = node.docker_ok(&[
        "network",
        "inspect",
        &id[..8],
        "--format",
        "{{.Name}} {{.Internal}}",
    ]);
    assert_eq!(name.trim(), "web true");

    // an automatically allocated subnet
    node.docker_ok(&["network", "create", "auto"]);
    let sub = node.docker_ok(&[
        "network",
        "inspect",
        "auto",
        "--format",
        "{{(index .IPAM.Config 0).Subnet}}",
    ]);
    assert!(sub.trim().contains('/'), "{sub}");

    // errors, as Docker words them
    let o = node.docker(&["network", "create", "web"]);
    assert!(!o.status.success());
    assert!(
        err(&o).contains("network with name web already exists"),
        "{}",
        err(&o)
    );
    let o = node.docker(&["network", "create", "--subnet", "10.240.7.0/25", "clash"]);
    assert!(!o.status.success());
    assert!(
        err(&o).contains("Pool overlaps with other one on this address space"),
        "{}",
        err(&o)
    );
    let o = node.docker(&["network", "create", "-d", "nosuchdriver", "x"]);
    assert!(!o.status.success());
    assert!(
        err(&o).contains("plugin \"nosuchdriver\" not found"),
        "{}",
        err(&o)
    );
    let o = node.docker(&["network", "rm", "bridge"]);
    assert!(!o.status.success());
    assert!(
        err(&o).contains("bridge is a pre-defined network and cannot be removed"),
        "{}",
        err(&o)
    );
    let o = node.docker(&["network", "inspect", "nosuch"]);
    assert!(!o.status.success());
    assert!(err(&o).contains("nosuch"), "{}", err(&o));

    // ls: filters, quiet, format
    let f = node.docker_ok(&[
        "network",
        "ls",
        "--filter",
        "label=tier=front",
        "--format",
        "{{.Name}}",
    ]);
    assert_eq!(f.trim(), "web");
    let f = node.docker_ok(&[
        "network",
        "ls",
        "--filter",
        "type=custom",
        "--format",
        "{{.Name}}",
    ]);
    let mut f: Vec<&str> = f.lines().collect();
    f.sort();
    assert_eq!(f, vec!["auto", "web"]);
    let q = node.docker_ok(&["network", "ls", "-q", "--filter", "name=web"]);
    assert_eq!(q.trim(), &id[..12]);
    let q = node.docker_ok(&["network", "ls", "-q", "--no-trunc", "--filter", "name=web"]);
    assert_eq!(q.trim(), id);
    let f = node.docker_ok(&[
        "network",
        "ls",
        "--filter",
        "driver=null",
        "--format",
        "{{.Name}}",
    ]);
    assert_eq!(f.trim(), "none");
    // the table view renders
    let t = node.docker_ok(&["network", "ls"]);
    assert!(t.starts_with("NETWORK ID"), "{t}");

    // rm and prune
    let o = node.docker_ok(&["network", "rm", "web"]);
    assert_eq!(o.trim(), "web");
    assert!(!links().contains(&br), "bridge {br} left behind");
    let o = node.docker(&["network", "inspect", "web"]);
    assert!(!o.status.success());
    node.docker_ok(&["network", "create", "--label", "keep=1", "kept"]);
    let o = node.docker_ok(&["network", "prune", "-f", "--filter", "label!=keep"]);
    assert!(o.contains("Deleted Networks:") && o.contains("auto"), "{o}");
    assert!(!o.contains("kept"), "{o}");
    let o = node.docker_ok(&["network", "prune", "-f"]);
    assert!(o.contains("kept"), "{o}");
    let ls = node.docker_ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert_eq!(ls.lines().count(), 3, "{ls}");

    // info shows the network plugins berth supports
    let p = node.docker_ok(&["info", "--format", "{{json .Plugins.Network}}"]);
    assert!(
        p.contains("bridge") && p.contains("null") && p.contains("host"),
        "{p}"
    );
}

#[test]
fn the_node_leaves_no_bridge_or_rules_behind() {
    require_root!();
    let mut node = Node::start();
    let bridge = format!("be{}", node.name);
    node.docker_ok(&["network", "create", "leftover"]);
    let id = node.docker_ok(&["network", "inspect", "leftover", "--format", "{{.Id}}"]);
    let br = format!("br-{}", &id.trim()[..12]);
    assert!(links().contains(&br));
    node.shutdown();
    // no container was left, so the stop took the node's kernel state away
    assert!(
        !links().contains(&bridge),
        "{bridge} left after the node stopped"
    );
    assert!(!links().contains(&br), "{br} left after the node stopped");
    let t = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    let node_id = std::fs::read_to_string(node.root.join("node-id")).unwrap();
    assert!(!String::from_utf8_lossy(&t.stdout).contains(&format!("berth_{}", node_id.trim())));
    // and a new start brings the network back from its record
    node.boot();
    let ls = node.docker_ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(ls.contains("leftover"), "{ls}");
    assert!(links().contains(&br));
    node.docker_ok(&["network", "rm", "leftover"]);
}

// ---- containers (need the runtime) ------------------------------------------

use berth_e2e::fixtures::{node_with_registry, pull_busybox as busybox};

const HTTPD: &str =
    "mkdir -p /www && echo hello-$(hostname) > /www/index.html && exec httpd -f -p 80 -h /www";

#[test]
fn two_containers_on_a_user_network_talk_by_name() {
    require_root!();
    let (node, reg) = node_with_registry();
    let img = busybox(&node, &reg);
    node.docker_ok(&["network", "create", "app"]);
    node.docker_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "app",
        "--network-alias",
        "www",
        "--hostname",
        "web1",
        &img,
        "sh",
        "-c",
        HTTPD,
    ]);
    let on_app = |cmd: &[&str]| node.docker_ok(&[&["run", "--rm", "--network", "app", &img][..], cmd].concat());
    assert_eq!(on_app(&["wget", "-qO-", "http://web/"]).trim(), "hello-web1");
    assert_eq!(on_app(&["wget", "-qO-", "http://www/"]).trim(), "hello-web1");
    // IPv4-only networks: eth0 without IPv6 (as Docker's), lo with ::1
    if std::path::Path::new("/proc/sys/net/ipv6").exists() {
        let out = on_app(&[
            "sh",
            "-c",
            "cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6 /proc/sys/net/ipv6/conf/lo/disable_ipv6; grep -c eth0 /proc/net/if_inet6 || true",
        ]);
        assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["1", "0", "0"], "{out}");
    }
    // on the default bridge names do not resolve
    let o = node.docker(&[
        "run",
        "--rm",
        &img,
        "wget",
        "-T",
        "2",
        "-qO-",
        "http://web/",
    ]);
    assert!(!o.status.success());
    // another network cannot reach it
    node.docker_ok(&["network", "create", "other"]);
    let ip = node.docker_ok(&[
        "inspect",
        "web",
        "--format",
        "{{.NetworkSettings.Networks.app.IPAddress}}",
    ]);
    let o = node.docker(&[
        "run",
        "--rm",
        "--network",
        "other",
        &img,
        "wget",
        "-T",
        "2",
        "-qO-",
        &format!("http://{}/", ip.trim()),
    ]);
    assert!(!o.status.success(), "other network reached app");
    // connect, then it can
    node.docker_ok(&[
        "run",
        "-d",
        "--name",
        "probe",
        "--network",
        "other",
        &img,
        "sleep",
        "300",
    ]);
    node.docker_ok(&["network", "connect", "--alias", "p", "app", "probe"]);
    let out = node.docker_ok(&["exec", "probe", "wget", "-qO-", "http://web/"]);
    assert_eq!(out.trim(), "hello-web1");
    node.docker_ok(&["network", "disconnect", "app", "probe"]);
    let o = node.docker(&["exec", "probe", "wget", "-T", "2", "-qO-", "http://web/"]);
    assert!(!o.status.success());
    node.docker_ok(&["rm", "-f", "web", "probe"]);
    node.docker_ok(&["network", "rm", "app", "other"]);
}

#[test]
fn a_published_port_answers_from_the_host() {
    require_root!();
    let (node, reg) = node_with_registry();
    let img = busybox(&node, &reg);
    node.docker_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "127.0.0.1::80",
        "--hostname",
        "pub",
        &img,
        "sh",
        "-c",
        HTTPD,
    ]);
    let port = node.docker_ok(&["port", "web", "80"]);
    let addr = port.lines().next().unwrap().trim().to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let mut body = String::new();
    for _ in 0..50 {
        let o = Command::new("curl")
            .args(["-s", "--max-time", "2", &format!("http://{addr}/")])
            .output()
            .unwrap();
        body = String::from_utf8_lossy(&o.stdout).into_owned();
        if body.contains("hello") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(body.trim(), "hello-pub");
    // a taken host port is a clear error at start
    let p = addr.rsplit(':').next().unwrap();
    let o = node.docker(&[
        "run",
        "-d",
        "--name",
        "clash",
        "-p",
        &format!("127.0.0.1:{p}:80"),
        &img,
        "sleep",
        "10",
    ]);
    assert!(!o.status.success());
    assert!(err(&o).contains("port is already allocated"), "{}", err(&o));
    node.docker_ok(&["rm", "-f", "web", "clash"]);
}

#[test]
fn host_and_none_modes_behave_as_dockers() {
    require_root!();
    let (node, reg) = node_with_registry();
    let img = busybox(&node, &reg);
    let out = node.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        &img,
        "sh",
        "-c",
        "ls /sys/class/net",
    ]);
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), vec!["lo"]);
    // the host's links (other tests add and remove veths meanwhile: the node's own
    // bridge is the stable witness)
    let out = node.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "host",
        &img,
        "sh",
        "-c",
        "ls /sys/class/net",
    ]);
    let seen: Vec<&str> = out.split_whitespace().collect();
    let bridge = format!("be{}", node.name);
    assert!(seen.contains(&bridge.as_str()), "host mode does not see {bridge}: {seen:?}");
    assert!(seen.contains(&"lo"));
    let o = node.docker_ok(&["run", "-d", "--name", "base", &img, "sleep", "300"]);
    let _ = o;
    let a = node.docker_ok(&["exec", "base", "cat", "/sys/class/net/eth0/address"]);
    let b = node.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "container:base",
        &img,
        "cat",
        "/sys/class/net/eth0/address",
    ]);
    assert_eq!(a, b);
    node.docker_ok(&["rm", "-f", "base"]);
}

#[test]
fn a_hundred_containers_with_ports_leave_nothing() {
    require_root!();
    let (node, reg) = node_with_registry();
    let img = busybox(&node, &reg);
    let bridge = format!("be{}", node.name);
    let members = |b: &str| -> Vec<String> {
        std::fs::read_dir(format!("/sys/class/net/{b}/brif"))
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };
    for i in 0..100 {
        node.docker_ok(&["run", "-d", "--name", &format!("c{i}"), "-p", "80", &img, "sleep", "600"]);
    }
    let vethers: Vec<String> = members(&bridge);
    assert_eq!(vethers.len(), 100);
    for i in 0..100 {
        node.docker_ok(&["rm", "-f", &format!("c{i}")]);
    }
    // the kernel deletes the veths of the removed namespaces in the background
    let t = std::time::Instant::now();
    while !members(&bridge).is_empty() && t.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(members(&bridge).is_empty(), "veths still on the bridge: {:?}", members(&bridge));
    let left: Vec<String> = links().into_iter().filter(|l| vethers.contains(l)).collect();
    assert!(left.is_empty(), "links left: {left:?}");
    let node_id = std::fs::read_to_string(node.root.join("node-id")).unwrap();
    let t = Command::new("nft")
        .args(["list", "table", "ip", &format!("berth_{}", node_id.trim())])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&t.stdout).contains("dnat"),
        "rules left"
    );
}

/// `docker network disconnect` from the network of the container's mode keeps the
/// mode (as Docker records it) and keeps the container off that network when it
/// starts again; `network connect` brings it back.
#[test]
fn disconnect_from_the_mode_network_survives_a_restart() {
    require_root!();
    let (node, reg) = node_with_registry();
    let img = busybox(&node, &reg);
    node.docker_ok(&["run", "-d", "--name", "detach", &img, "sleep", "600"]);
    node.docker_ok(&["network", "disconnect", "bridge", "detach"]);
    let nets = |n: &Node| n.docker_ok(&["inspect", "-f", "{{.HostConfig.NetworkMode}} {{json .NetworkSettings.Networks}}", "detach"]).trim().to_string();
    assert_eq!(nets(&node), "bridge {}");
    node.docker_ok(&["restart", "-t", "0", "detach"]);
    assert_eq!(nets(&node), "bridge {}");
    let ifs = node.docker_ok(&["exec", "detach", "ls", "/sys/class/net"]);
    assert_eq!(ifs.split_whitespace().collect::<Vec<_>>(), ["lo"]);
    node.docker_ok(&["network", "connect", "bridge", "detach"]);
    node.docker_ok(&["restart", "-t", "0", "detach"]);
    let ip = node.docker_ok(&["inspect", "-f", "{{.NetworkSettings.Networks.bridge.IPAddress}}", "detach"]);
    assert!(!ip.trim().is_empty(), "back on bridge after connect");
    node.docker_ok(&["rm", "-f", "detach"]);
}

/// IPv6 user networks, link-local addresses and links on a user network, through the
/// docker CLI, with Moby 20.10's answers: an IPv6 address for every endpoint (auto and
/// `--ip6`), the gateway's, `IPAMConfig` as asked, the addresses in the sandbox, and
/// a link alias only the linking container resolves.
#[test]
fn ipv6_link_local_and_links_on_a_user_network() {
    require_root!();
    let (node, reg) = node_with_registry();
    let img = busybox(&node, &reg);
    // no default IPv6 pools, as Moby 20.10
    let o = node.docker(&["network", "create", "--ipv6", "nov6"]);
    assert!(
        err(&o).contains("could not find an available, non-overlapping IPv6 address pool among the defaults"),
        "{}",
        err(&o)
    );
    // a group without leading zeros: Docker lists the subnet in its canonical form
    // ("fd00:06ba::" is shown as "fd00:6ba::")
    let p = format!("{:x}", u16::from_str_radix(&berth_e2e::uniq()[..4], 16).unwrap().max(1));
    let sub = format!("fd00:{p}::/64");
    node.docker_ok(&["network", "create", "--ipv6", "--subnet", &sub, "v6"]);
    let ipam = node.docker_ok(&["network", "inspect", "v6", "--format", "{{.EnableIPv6}} {{json .IPAM.Config}}"]);
    // an IPv4 subnet is picked as well; the IPv6 one is listed as given (no gateway)
    assert!(ipam.starts_with("true [{\"Subnet\":\""), "{ipam}");
    assert!(ipam.trim().ends_with(&format!(",{{\"Subnet\":\"{sub}\"}}]")), "{ipam}");

    node.docker_ok(&["run", "-d", "--name", "up", "--network", "v6", &img, "sleep", "300"]);
    let f = "{{with .NetworkSettings.Networks.v6}}{{.GlobalIPv6Address}} {{.GlobalIPv6PrefixLen}} {{.IPv6Gateway}} {{json .IPAMConfig}}{{end}}";
    let up = node.docker_ok(&["inspect", "up", "--format", f]);
    assert_eq!(up.trim(), format!("fd00:{p}::2 64 fd00:{p}::1 null"));
    let fixed = format!("fd00:{p}::f00d");
    node.docker_ok(&[
        "run", "-d", "--name", "down", "--network", "v6", "--ip6", &fixed, "--link-local-ip", "169.254.8.8",
        "--link", "up:bar", &img, "sleep", "300",
    ]);
    let down = node.docker_ok(&["inspect", "down", "--format", f]);
    assert_eq!(
        down.trim(),
        format!("{fixed} 64 fd00:{p}::1 {{\"IPv6Address\":\"{fixed}\",\"LinkLocalIPs\":[\"169.254.8.8\"]}}")
    );
    let links = node.docker_ok(&["inspect", "down", "--format", "{{json .NetworkSettings.Networks.v6.Links}} {{json .HostConfig.Links}}"]);
    assert_eq!(links.trim(), "[\"up:bar\"] null");
    // in the sandbox: both addresses on eth0, the default IPv6 route, the hosts line
    let addrs = node.docker_ok(&["exec", "down", "ip", "addr", "show", "eth0"]);
    assert!(addrs.contains(&format!("inet6 {fixed}/64")), "{addrs}");
    assert!(addrs.contains("inet 169.254.8.8/16"), "{addrs}");
    let routes = node.docker_ok(&["exec", "down", "ip", "-6", "route"]);
    assert!(routes.contains(&format!("default via fd00:{p}::1 dev eth0")), "{routes}");
    let hosts = node.docker_ok(&["exec", "down", "cat", "/etc/hosts"]);
    assert!(hosts.contains(&format!("{fixed}\t")), "{hosts}");
    // IPv6 between the two containers and to the gateway
    node.docker_ok(&["exec", "down", "ping", "-6", "-c", "1", "-W", "3", &format!("fd00:{p}::2")]);
    node.docker_ok(&["exec", "down", "ping", "-6", "-c", "1", "-W", "3", &format!("fd00:{p}::1")]);
    // the link alias: for `down` only
    let up_ip = node.docker_ok(&["inspect", "up", "--format", "{{.NetworkSettings.Networks.v6.IPAddress}}"]);
    let ns = node.docker_ok(&["exec", "down", "nslookup", "bar"]);
    assert!(ns.contains(&format!("Address: {}", up_ip.trim())), "{ns}");
    let ns = node.docker_ok(&["exec", "down", "nslookup", "bar.v6"]);
    assert!(ns.contains(&format!("Address: {}", up_ip.trim())), "{ns}");
    let o = node.docker(&["exec", "up", "nslookup", "bar"]);
    assert!(!String::from_utf8_lossy(&o.stdout).contains(up_ip.trim()), "bar resolved for up");
    // AAAA records: the IPv6 address by link alias and by name (ping -6 resolves it)
    let ns = node.docker_ok(&["exec", "down", "nslookup", "-type=aaaa", "bar"]);
    assert!(ns.contains(&format!("Address: fd00:{p}::2")), "{ns}");
    node.docker_ok(&["exec", "down", "ping", "-6", "-c", "1", "-W", "3", "up"]);
    // `network connect --ip6` of a running container, as asked
    node.docker_ok(&["network", "disconnect", "v6", "up"]);
    let again = format!("fd00:{p}::beef");
    node.docker_ok(&["network", "connect", "--ip6", &again, "v6", "up"]);
    let up = node.docker_ok(&["inspect", "up", "--format", f]);
    assert_eq!(up.trim(), format!("{again} 64 fd00:{p}::1 {{\"IPv6Address\":\"{again}\"}}"));
    node.docker_ok(&["exec", "down", "ping", "-6", "-c", "1", "-W", "3", &again]);
    node.docker_ok(&["rm", "-f", "up", "down"]);
    node.docker_ok(&["network", "rm", "v6"]);
}
