//! Several berth nodes on one machine, each in a network namespace of its own (with its
//! own hostname), joined by an underlay bridge inside a namespace the test creates. All
//! their traffic stays inside these namespaces; dropping the [`Underlay`] deletes them.
//!
//! A node runs `berth up` through [`Underlay::wrapper`]: `nsenter --net` into its
//! namespace, then `unshare --mount --uts` with a fresh sysfs (so `/sys/class/net` is
//! the namespace's) and the host's cgroup hierarchies moved back under it.

use crate::{uniq, Node, NodeOpts};
use std::path::{Path, PathBuf};
use std::process::Command;

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("ip (iproute2)");
    assert!(o.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

pub struct Underlay {
    pub id: String,
    /// The underlay's namespace (holds the bridge).
    pub ns: String,
    /// The node namespaces, in order.
    pub nodes: Vec<String>,
    /// The nodes' underlay addresses.
    pub addrs: Vec<String>,
    dir: tempfile::TempDir,
}

impl Underlay {
    /// An underlay with `n` node namespaces on 10.<a>.<b>.0/24 (addresses .11, .12, ...).
    pub fn new(n: usize) -> Underlay {
        let id = uniq();
        let ns = format!("bsw{id}u");
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &ns, "link", "set", "br0", "up"]);
        let mut b = [0u8; 2];
        getrandom::fill(&mut b).unwrap();
        let net = format!("10.{}.{}", 100 + b[0] % 100, b[1]);
        let mut u = Underlay { id: id.clone(), ns: ns.clone(), nodes: Vec::new(), addrs: Vec::new(), dir: tempfile::tempdir().unwrap() };
        for i in 1..=n {
            let nns = format!("bsw{id}n{i}");
            ip(&["netns", "add", &nns]);
            u.nodes.push(nns.clone());
            let host_end = format!("bsw{id}v{i}");
            ip(&["link", "add", &host_end, "netns", &ns, "type", "veth", "peer", "name", "eth0", "netns", &nns]);
            ip(&["-n", &ns, "link", "set", &host_end, "master", "br0", "up"]);
            let addr = format!("{net}.{}", 10 + i);
            ip(&["-n", &nns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            ip(&["-n", &nns, "link", "set", "eth0", "up"]);
            ip(&["-n", &nns, "link", "set", "lo", "up"]);
            ip(&["-n", &nns, "route", "add", "default", "dev", "eth0"]);
            u.addrs.push(addr);
        }
        let w = u.dir.path().join("netns-run");
        std::fs::write(
            &w,
            r#"#!/bin/sh
# netns-run NETNS HOSTNAME CMD...: CMD in the node's namespaces (see e2e/src/netns.rs)
ns=$1; host=$2; shift 2
exec nsenter --net=/run/netns/$ns unshare --mount --uts --propagation private sh -c '
  hostname "$0" || exit 1
  tmp=$(mktemp -d /run/bsw-cg.XXXXXX) || exit 1
  mount --rbind /sys/fs/cgroup "$tmp" || exit 1
  mount -t sysfs sysfs /sys || exit 1
  mount --move "$tmp" /sys/fs/cgroup || exit 1
  rmdir "$tmp"
  exec "$@"' "$host" "$@"
"#,
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).unwrap();
        u
    }

    /// The command prefix that runs a program as node `i` (0-based).
    pub fn wrapper(&self, i: usize) -> Vec<String> {
        vec![self.dir.path().join("netns-run").display().to_string(), self.nodes[i].clone(), format!("bsw{}-{}", self.id, i + 1)]
    }

    /// Start `berth up` as node `i`.
    pub fn start_node(&self, i: usize, mut opts: NodeOpts) -> Node {
        opts.wrap = Some(self.wrapper(i));
        Node::start_opts(opts)
    }

    /// Run a command inside node `i`'s network namespace.
    pub fn exec(&self, i: usize, args: &[&str]) -> std::process::Output {
        Command::new("nsenter").arg(format!("--net=/run/netns/{}", self.nodes[i])).args(args).output().expect("nsenter")
    }
}

impl Underlay {
    /// SIGKILL node `i` whole: every process in its network namespace (`berth up`, its
    /// services, its nats-servers, the shims) and its containers (by its cgroup parent).
    pub fn kill_node(&self, i: usize, node: &mut Node) {
        let ino = std::fs::metadata(format!("/run/netns/{}", self.nodes[i])).map(|m| std::os::linux::fs::MetadataExt::st_ino(&m)).ok();
        for p in pids_in_netns(ino) {
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        node.kill();
        crate::kill_cgroup(&format!("berth-e2e-{}", node.name));
    }
}

impl Underlay {
    /// SIGKILL every process in namespace `i` (one run there that is no [`Node`], e.g.
    /// a reference dockerd and its containerd and shims).
    pub fn kill_processes(&self, i: usize) {
        let ino = std::fs::metadata(format!("/run/netns/{}", self.nodes[i])).map(|m| std::os::linux::fs::MetadataExt::st_ino(&m)).ok();
        for p in pids_in_netns(ino) {
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}

fn pids_in_netns(ino: Option<u64>) -> Vec<i32> {
    let Some(ino) = ino else { return Vec::new() };
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let link = std::fs::read_link(Path::new("/proc").join(pid.to_string()).join("ns/net"));
            if let Ok(l) = link {
                // "net:[INODE]"
                let s = l.to_string_lossy().to_string();
                if s.trim_start_matches("net:[").trim_end_matches(']').parse::<u64>().ok() == Some(ino) {
                    v.push(pid);
                }
            }
        }
    }
    v
}

impl Drop for Underlay {
    fn drop(&mut self) {
        for n in self.nodes.iter().chain([&self.ns]) {
            let ino = std::fs::metadata(format!("/run/netns/{n}")).map(|m| std::os::linux::fs::MetadataExt::st_ino(&m)).ok();
            for p in pids_in_netns(ino) {
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Where a test keeps files it made (for images loaded into nodes).
/// Move this thread into the network namespace `ns` (network namespaces are per thread).
pub fn enter(ns: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns {ns}");
}

pub fn path(u: &Underlay, name: &str) -> PathBuf {
    u.dir.path().join(name)
}
