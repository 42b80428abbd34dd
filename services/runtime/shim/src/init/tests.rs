//! The set-up's sequencing over the recording double: no root, nothing changed on
//! the host (the rootfs is a temporary directory; mounts, pivot_root, caps, seccomp
//! and exec are only recorded).

use super::syscall::test::{Call, TestSyscall};
use super::*;
use crate::oci::Spec;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

const SH: &str = "/bin/sh";

struct Bundle {
    dir: tempfile::TempDir,
    spec: Spec,
}

impl Bundle {
    /// A spec over a temporary rootfs; `linux` and `process` merged into a default.
    fn new(extra: serde_json::Value) -> Bundle {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        std::fs::create_dir(dir.path().join("vol")).unwrap();
        let mut v = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": dir.path().join("rootfs")},
            "hostname": "box",
            "process": {
                "args": [SH, "-c", "true"],
                "env": ["PATH=/bin"],
                "cwd": "/",
                "user": {"uid": 1000, "gid": 1000, "additionalGids": [10, 20]},
                "capabilities": {
                    "bounding": ["CAP_CHOWN", "CAP_KILL"],
                    "effective": ["CAP_CHOWN"],
                    "permitted": ["CAP_CHOWN"],
                    "inheritable": [],
                    "ambient": []
                },
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 2048, "soft": 1024}]
            },
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/data", "type": "bind", "source": dir.path().join("vol"), "options": ["rbind", "ro"]}
            ],
            "linux": {
                "namespaces": [{"type": "mount"}, {"type": "uts"}, {"type": "ipc"}, {"type": "pid"}],
                "maskedPaths": ["/proc/version", "/proc/sys/kernel", "/proc/no-such-berth-path"],
                "readonlyPaths": ["/proc/sys"]
            }
        });
        merge(&mut v, extra);
        let spec = serde_json::from_value(v).unwrap();
        Bundle { dir, spec }
    }

    fn rootfs(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path().join("rootfs")).unwrap()
    }

    /// Runs the init's set-up over `sc`: it always returns (the double's execve fails).
    fn run(&self, sc: &TestSyscall, seccomp: Option<(&[SockFilter], u32)>) -> ChildError {
        let null = || -> OwnedFd { std::fs::File::open("/dev/null").unwrap().into() };
        let r = init(
            sc,
            InitCtx {
                spec: &self.spec,
                cgroup: None,
                v2_joined: false,
                stdio: Stdio::Fds([null(), null(), null()]),
                sync: -1,
                seccomp,
                host_bounding: u64::MAX,
            },
        );
        match r {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

const FILTER: [SockFilter; 1] = [SockFilter {
    code: 6,
    jt: 0,
    jf: 0,
    k: 0x7fff_0000,
}];

/// The index of the first call `f` matches (panics with the calls when none does).
fn pos(calls: &[Call], what: &str, f: impl Fn(&Call) -> bool) -> usize {
    calls
        .iter()
        .position(f)
        .unwrap_or_else(|| panic!("no {what} in {calls:#?}"))
}

fn is_mount_on(c: &Call, p: &Path) -> bool {
    matches!(c, Call::Mount { target, .. } if target == p)
}

fn mounts(calls: &[Call]) -> Vec<&Call> {
    calls
        .iter()
        .filter(|c| matches!(c, Call::Mount { .. }))
        .collect()
}

#[test]
fn the_set_up_runs_in_order() {
    let b = Bundle::new(serde_json::json!({"root": {"readonly": true}}));
    let rootfs = b.rootfs();
    let sc = TestSyscall::new();
    let e = b.run(&sc, Some((&FILTER, 0)));
    assert_eq!(e.message, format!("exec {SH}: exec format error"));
    let c = sc.calls();

    let unshare = pos(&c, "unshare", |c| {
        *c == Call::Unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC)
    });
    let private = pos(
        &c,
        "/ private",
        |c| matches!(c, Call::Mount { target, source: None, flags, .. } if target == Path::new("/") && *flags == libc::MS_PRIVATE | libc::MS_REC),
    );
    let bind_root = pos(
        &c,
        "rootfs bind",
        |c| matches!(c, Call::Mount { source: Some(s), target, flags, .. } if s == &rootfs && target == &rootfs && *flags == libc::MS_BIND | libc::MS_REC),
    );
    let proc_ = pos(
        &c,
        "proc mount",
        |c| matches!(c, Call::Mount { fstype: Some(t), target, .. } if t == "proc" && target == &rootfs.join("proc")),
    );
    let data = pos(
        &c,
        "volume bind",
        |c| matches!(c, Call::Mount { target, flags, .. } if target == &rootfs.join("data") && *flags == libc::MS_BIND | libc::MS_REC),
    );
    let data_ro = pos(
        &c,
        "volume read-only remount",
        |c| matches!(c, Call::Mount { target, flags, .. } if target == &rootfs.join("data") && flags & (libc::MS_REMOUNT | libc::MS_RDONLY) == libc::MS_REMOUNT | libc::MS_RDONLY),
    );
    let pivot = pos(&c, "pivot_root", |c| matches!(c, Call::PivotRoot { .. }));
    let masked_dir = pos(
        &c,
        "masked dir",
        |c| matches!(c, Call::Mount { fstype: Some(t), target, flags, .. } if t == "tmpfs" && target == Path::new("/proc/sys/kernel") && *flags == libc::MS_RDONLY),
    );
    let masked_file = pos(
        &c,
        "masked file",
        |c| matches!(c, Call::Mount { source: Some(s), target, .. } if s == Path::new("/dev/null") && target == Path::new("/proc/version")),
    );
    let ro_path = pos(
        &c,
        "read-only path",
        |c| matches!(c, Call::Mount { target, flags, .. } if target == Path::new("/proc/sys") && flags & libc::MS_RDONLY != 0),
    );
    let ro_root = pos(
        &c,
        "read-only rootfs",
        |c| matches!(c, Call::Mount { target, flags, .. } if target == Path::new("/") && flags & (libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY) == libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY),
    );
    let host = pos(&c, "sethostname", |c| *c == Call::Sethostname("box".into()));
    let setsid = pos(&c, "setsid", |c| *c == Call::Setsid);
    let stdio = pos(&c, "dup2 to 2", |c| matches!(c, Call::Dup2 { to: 2, .. }));
    let rlimit = pos(&c, "setrlimit", |c| {
        *c == Call::Setrlimit {
            resource: libc::RLIMIT_NOFILE,
            soft: 1024,
            hard: 2048,
        }
    });
    let seccomp = pos(&c, "seccomp", |c| *c == Call::Seccomp { len: 1, flags: 0 });
    let keepcaps = pos(&c, "keepcaps", |c| *c == Call::SetKeepcaps(true));
    let groups = pos(&c, "setgroups", |c| *c == Call::Setgroups(vec![10, 20]));
    let gid = pos(&c, "setresgid", |c| *c == Call::Setresgid(1000));
    let uid = pos(&c, "setresuid", |c| *c == Call::Setresuid(1000));
    let capset = pos(&c, "capset", |c| {
        *c == Call::Capset {
            effective: 1,
            permitted: 1,
            inheritable: 0,
        }
    });
    let umask = pos(&c, "umask", |c| *c == Call::Umask(0o022));
    let signals = pos(&c, "reset signals", |c| *c == Call::ResetSignals);
    let exec = pos(&c, "execve", |c| matches!(c, Call::Execve { .. }));

    assert_eq!(c[0], Call::Umask(0), "the set-up starts with a zero umask");
    let order = [
        ("unshare", unshare),
        ("/ private", private),
        ("rootfs bind", bind_root),
        ("proc", proc_),
        ("volume bind", data),
        ("volume ro", data_ro),
        ("pivot_root", pivot),
        ("masked file", masked_file),
        ("masked dir", masked_dir),
        ("read-only path", ro_path),
        ("read-only rootfs", ro_root),
        ("hostname", host),
        ("setsid", setsid),
        ("stdio", stdio),
        ("rlimit", rlimit),
        ("seccomp", seccomp),
        ("keepcaps", keepcaps),
        ("setgroups", groups),
        ("setresgid", gid),
        ("setresuid", uid),
        ("capset", capset),
        ("umask", umask),
        ("signals", signals),
        ("exec", exec),
    ];
    for w in order.windows(2) {
        assert!(w[0].1 < w[1].1, "{} before {}: {c:#?}", w[0].0, w[1].0);
    }
    assert_eq!(exec, c.len() - 1, "exec is the last call");
    assert_eq!(
        c[exec],
        Call::Execve {
            path: SH.into(),
            args: vec![SH.into(), "-c".into(), "true".into()],
            env: vec!["PATH=/bin".into()],
        }
    );
    assert!(
        !c.contains(&Call::SetNoNewPrivs),
        "no_new_privs only when asked"
    );
    // the masked path that does not exist is skipped
    assert!(!c
        .iter()
        .any(|c| is_mount_on(c, Path::new("/proc/no-such-berth-path"))));
    // the bounding set: everything but CAP_CHOWN (0) and CAP_KILL (5) dropped, up to
    // the kernel's last capability, before the user switch
    let drops: Vec<u64> = c
        .iter()
        .filter_map(|c| match c {
            Call::DropBoundingCap(n) => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(drops, (1..=40).filter(|n| *n != 5).collect::<Vec<_>>());
    let last_drop = c
        .iter()
        .rposition(|c| matches!(c, Call::DropBoundingCap(_)))
        .unwrap();
    assert!(keepcaps < last_drop && last_drop < groups);
}

#[test]
fn pivot_root_moves_into_the_rootfs_and_detaches_the_old_root() {
    let b = Bundle::new(serde_json::json!({}));
    let rootfs = b.rootfs();
    let sc = TestSyscall::new();
    b.run(&sc, None);
    let c = sc.calls();
    let at = pos(&c, "chdir rootfs", |c| *c == Call::Fchdir(rootfs.clone()));
    let dot = PathBuf::from(".");
    assert_eq!(
        c[at..at + 6],
        [
            Call::Fchdir(rootfs.clone()),
            Call::PivotRoot {
                new_root: dot.clone(),
                put_old: dot.clone()
            },
            Call::Fchdir("/".into()),
            Call::Mount {
                source: None,
                target: dot.clone(),
                fstype: None,
                flags: libc::MS_SLAVE | libc::MS_REC,
                data: None
            },
            Call::Umount2 {
                target: dot,
                flags: libc::MNT_DETACH
            },
            Call::Chdir("/".into()),
        ]
    );
}

#[test]
fn no_new_privs_puts_seccomp_last_before_exec() {
    let b = Bundle::new(serde_json::json!({"process": {"noNewPrivileges": true}}));
    let sc = TestSyscall::new();
    b.run(&sc, Some((&FILTER, 1)));
    let c = sc.calls();
    let capset = pos(&c, "capset", |c| matches!(c, Call::Capset { .. }));
    let nnp = pos(&c, "no_new_privs", |c| *c == Call::SetNoNewPrivs);
    let seccomp = pos(&c, "seccomp", |c| *c == Call::Seccomp { len: 1, flags: 1 });
    assert_eq!(
        c.iter()
            .filter(|c| matches!(c, Call::Seccomp { .. }))
            .count(),
        1
    );
    assert!(capset < nnp && nnp < seccomp, "{c:#?}");
    assert_eq!(
        &c[seccomp + 1..],
        &[Call::ResetSignals, c[c.len() - 1].clone()]
    );
    assert!(matches!(c[c.len() - 1], Call::Execve { .. }));
}

#[test]
fn a_failing_mount_stops_the_set_up_with_its_error() {
    let b = Bundle::new(serde_json::json!({}));
    let sc = TestSyscall::new();
    sc.fail_when(
        |c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "proc"),
        libc::EPERM,
    );
    let e = b.run(&sc, None);
    assert_eq!(
        e.message,
        "error mounting \"proc\" to rootfs at \"/proc\": mount proc: operation not permitted"
    );
    let c = sc.calls();
    assert!(
        matches!(c.last(), Some(Call::Mount { fstype: Some(t), .. }) if t == "proc"),
        "{c:#?}"
    );
    assert!(!c.iter().any(|c| matches!(
        c,
        Call::PivotRoot { .. } | Call::Execve { .. } | Call::Capset { .. }
    )));
}

#[test]
fn a_failing_pivot_root_and_a_failing_setuid_are_surfaced() {
    let b = Bundle::new(serde_json::json!({}));
    let sc = TestSyscall::new();
    sc.fail_when(|c| matches!(c, Call::PivotRoot { .. }), libc::EINVAL);
    assert_eq!(b.run(&sc, None).message, "pivot_root: invalid argument");
    assert!(matches!(sc.calls().last(), Some(Call::PivotRoot { .. })));

    let sc = TestSyscall::new();
    sc.fail_when(|c| matches!(c, Call::Setresuid(_)), libc::EPERM);
    assert_eq!(
        b.run(&sc, None).message,
        "setuid 1000: operation not permitted"
    );
    assert!(!sc
        .calls()
        .iter()
        .any(|c| matches!(c, Call::Capset { .. } | Call::Execve { .. })));
}

#[test]
fn the_hostname_is_set_only_with_a_uts_namespace() {
    let with = Bundle::new(serde_json::json!({"domainname": "example.org"}));
    let sc = TestSyscall::new();
    with.run(&sc, None);
    let c = sc.calls();
    assert!(c.contains(&Call::Sethostname("box".into())));
    assert!(c.contains(&Call::Setdomainname("example.org".into())));

    let without = Bundle::new(serde_json::json!({
        "domainname": "example.org",
        "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}]}
    }));
    let sc = TestSyscall::new();
    without.run(&sc, None);
    let c = sc.calls();
    assert!(c.contains(&Call::Unshare(libc::CLONE_NEWNS)));
    assert!(
        !c.iter()
            .any(|c| matches!(c, Call::Sethostname(_) | Call::Setdomainname(_))),
        "{c:#?}"
    );
}

#[test]
fn without_a_mount_namespace_nothing_is_mounted() {
    let b = Bundle::new(serde_json::json!({"linux": {"namespaces": [{"type": "uts"}]}}));
    let sc = TestSyscall::new();
    b.run(&sc, None);
    let c = sc.calls();
    assert!(mounts(&c).is_empty(), "{c:#?}");
    assert!(!c.iter().any(|c| matches!(c, Call::PivotRoot { .. })));
    assert!(c.contains(&Call::Sethostname("box".into())));
    assert!(matches!(c.last(), Some(Call::Execve { .. })));
}

#[test]
fn a_writable_rootfs_is_not_remounted() {
    let b = Bundle::new(serde_json::json!({}));
    let sc = TestSyscall::new();
    b.run(&sc, None);
    let c = sc.calls();
    let pivot = pos(&c, "pivot_root", |c| matches!(c, Call::PivotRoot { .. }));
    assert!(!c[pivot..].iter().any(|c| matches!(c, Call::Mount { target, flags, .. } if target == Path::new("/") && flags & libc::MS_RDONLY != 0)), "{c:#?}");
}

#[test]
fn namespaces_given_by_path_are_joined_the_others_created() {
    let b = Bundle::new(serde_json::json!({"linux": {"namespaces": [
        {"type": "mount"}, {"type": "network", "path": "/proc/self/ns/net"}, {"type": "ipc"}, {"type": "cgroup"}
    ]}}));
    let sc = TestSyscall::new();
    b.run(&sc, None);
    let c = sc.calls();
    let net = std::fs::read_link("/proc/self/ns/net").unwrap();
    let join = pos(&c, "setns", |c| {
        *c == Call::Setns {
            path: net.clone(),
            nstype: libc::CLONE_NEWNET,
        }
    });
    let new = pos(&c, "unshare", |c| {
        *c == Call::Unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC)
    });
    // the cgroup namespace after (the cgroup joined in between), then the mounts
    let cgroupns = pos(&c, "unshare cgroup", |c| {
        *c == Call::Unshare(libc::CLONE_NEWCGROUP)
    });
    let first_mount = pos(&c, "a mount", |c| matches!(c, Call::Mount { .. }));
    assert!(
        join < new && new < cgroupns && cgroupns < first_mount,
        "{c:#?}"
    );
}

#[test]
fn devices_are_made_on_a_tmpfs_dev() {
    let b = Bundle::new(serde_json::json!({
        "mounts": [{"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}],
        "linux": {"devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o600, "uid": 0, "gid": 0}]}
    }));
    let rootfs = b.rootfs();
    let sc = TestSyscall::new();
    b.run(&sc, None);
    let c = sc.calls();
    let tmpfs = pos(
        &c,
        "/dev tmpfs",
        |c| matches!(c, Call::Mount { fstype: Some(t), target, data: Some(d), .. } if t == "tmpfs" && target == &rootfs.join("dev") && d == "mode=755"),
    );
    let null = pos(&c, "mknod /dev/null", |c| {
        *c == Call::Mknod {
            path: rootfs.join("dev/null"),
            mode: libc::S_IFCHR | 0o666,
            dev: libc::makedev(1, 3),
        }
    });
    let fuse = pos(&c, "mknod /dev/fuse", |c| {
        *c == Call::Mknod {
            path: rootfs.join("dev/fuse"),
            mode: libc::S_IFCHR | 0o600,
            dev: libc::makedev(10, 229),
        }
    });
    let pivot = pos(&c, "pivot_root", |c| matches!(c, Call::PivotRoot { .. }));
    assert!(tmpfs < null && null < fuse && fuse < pivot, "{c:#?}");
    assert_eq!(
        c[null + 1],
        Call::Chown {
            path: rootfs.join("dev/null"),
            uid: 0,
            gid: 0
        }
    );
    assert_eq!(
        std::fs::read_link(rootfs.join("dev/ptmx")).unwrap(),
        Path::new("pts/ptmx")
    );
}

#[test]
fn sysctls_are_written_after_the_root_is_ready() {
    let b = Bundle::new(serde_json::json!({"linux": {"sysctl": {"net.ipv4.ip_forward": "1"}}}));
    let sc = TestSyscall::new();
    b.run(&sc, None);
    let c = sc.calls();
    let pivot = pos(&c, "pivot_root", |c| matches!(c, Call::PivotRoot { .. }));
    let w = pos(&c, "sysctl", |c| {
        *c == Call::WriteProc {
            path: "/proc/sys/net/ipv4/ip_forward".into(),
            value: "1".into(),
        }
    });
    assert!(pivot < w);
}

#[test]
fn ambient_capabilities_are_raised_after_capset() {
    let b = Bundle::new(serde_json::json!({"process": {"capabilities": {
        "bounding": ["CAP_NET_BIND_SERVICE"], "effective": ["CAP_NET_BIND_SERVICE"],
        "permitted": ["CAP_NET_BIND_SERVICE"], "inheritable": ["CAP_NET_BIND_SERVICE"], "ambient": ["CAP_NET_BIND_SERVICE"]
    }}}));
    let sc = TestSyscall::new();
    b.run(&sc, None);
    let c = sc.calls();
    let bit = 1u64 << 10;
    let capset = pos(&c, "capset", |c| {
        *c == Call::Capset {
            effective: bit,
            permitted: bit,
            inheritable: bit,
        }
    });
    assert_eq!(
        c[capset + 1..capset + 4],
        [
            Call::ClearAmbientCaps,
            Call::RaiseAmbientCap(10),
            Call::SetKeepcaps(false)
        ]
    );
}

#[test]
fn an_exec_that_fails_is_worded_as_docker_words_it() {
    let b = Bundle::new(serde_json::json!({}));
    let sc = TestSyscall::new();
    sc.fail_when(|c| matches!(c, Call::Execve { .. }), libc::EACCES);
    let e = b.run(&sc, None);
    assert_eq!(e.kind, crate::proto::StartErrorKind::PermissionDenied);
    assert_eq!(e.message, format!("exec: \"{SH}\": permission denied"));

    // not found in PATH: looked up before the process's own settings, nothing exec'd
    let b = Bundle::new(serde_json::json!({"process": {"args": ["no-such-berth-command"]}}));
    let sc = TestSyscall::new();
    let e = b.run(&sc, None);
    assert_eq!(e.kind, crate::proto::StartErrorKind::NotFound);
    assert_eq!(
        e.message,
        "exec: \"no-such-berth-command\": executable file not found in $PATH"
    );
    assert!(sc.calls().iter().all(|c| !matches!(
        c,
        Call::Execve { .. } | Call::Setrlimit { .. } | Call::Setresuid(_)
    )));
}

#[test]
fn an_exec_joins_the_namespaces_then_finishes_as_the_init() {
    let p: crate::oci::Process = serde_json::from_value(serde_json::json!({
        "args": [SH], "env": [], "cwd": "/", "user": {"uid": 0, "gid": 0}
    }))
    .unwrap();
    let ns: OwnedFd = std::fs::File::open("/proc/self/ns/uts").unwrap().into();
    let uts = std::fs::read_link("/proc/self/ns/uts").unwrap();
    let null = || -> OwnedFd { std::fs::File::open("/dev/null").unwrap().into() };
    let sc = TestSyscall::new();
    let r = exec_child(
        &sc,
        &p,
        None,
        &[(ns, libc::CLONE_NEWUTS)],
        Some([null(), null(), null()]),
        -1,
        None,
        u64::MAX,
    );
    assert!(r.is_err());
    let c = sc.calls();
    assert_eq!(
        c[0],
        Call::Setns {
            path: uts,
            nstype: libc::CLONE_NEWUTS
        }
    );
    assert_eq!(c[1], Call::Chdir("/".into()));
    assert_eq!(c[2], Call::Setsid);
    assert!(matches!(c[3], Call::DupAbove { min: 10, .. }));
    assert_eq!(
        c[6..9],
        [
            Call::Dup2 { from: 100, to: 0 },
            Call::Dup2 { from: 101, to: 1 },
            Call::Dup2 { from: 102, to: 2 }
        ]
    );
    assert!(mounts(&c).is_empty());
    assert!(matches!(c.last(), Some(Call::Execve { .. })));
}
