//! `berth doctor` (issue 17): this host passes (the e2e suite needs what it checks),
//! and each problem it can be shown here is named with its fix: a daemon.json key
//! berth refuses, another engine on the API socket, a stale socket file, a storage
//! driver the data root cannot hold. `berth --version` and the completions too.

use std::io::{Read, Write};
use std::process::Command;

fn berth(args: &[&str]) -> (bool, String) {
    let o = Command::new(berth_e2e::bin_dir().join("berth")).args(args).output().unwrap();
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

/// The line of `check` and the fix printed under it.
fn check<'a>(out: &'a str, status: &str, name: &str) -> (&'a str, &'a str) {
    let mut lines = out.lines();
    while let Some(l) = lines.next() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 2 && f[0] == status && f[1] == name {
            let fix = lines.next().filter(|n| n.trim_start().starts_with("fix:")).unwrap_or("");
            return (l, fix);
        }
    }
    panic!("no {status} {name} in:\n{out}");
}

#[test]
fn doctor_passes_here_and_names_each_problem_with_its_fix() {
    berth_e2e::require_root!();
    let dir = tempfile::Builder::new().prefix("berth-e2e-").tempdir_in(berth_e2e::tmp_base()).unwrap();
    let d = dir.path();
    let root = d.join("root").display().to_string();
    let cfg = d.join("daemon.json");
    let sock = d.join("d.sock");
    let host = format!("unix://{}", sock.display());
    std::fs::write(&cfg, "{}").unwrap();
    let (ok, out) = berth(&["doctor", "--root", &root, "--config", cfg.to_str().unwrap(), "-H", &host]);
    assert!(ok, "{out}");
    for name in ["user", "daemon.json", "kernel", "cgroups", "storage", "nats-server", "nftables", "binaries", "api"] {
        check(&out, "ok", name);
    }
    assert!(check(&out, "ok", "api").0.ends_with(": free"), "{out}");

    // problems: refused daemon.json key, another engine on the socket
    std::fs::write(&cfg, r#"{"userns-remap":"default"}"#).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let engine = std::thread::spawn(move || {
        // answers /_ping as an engine does, until the stale-socket step drops it
        for c in listener.incoming().take(1) {
            let mut c = c.unwrap();
            let mut buf = [0u8; 512];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nApi-Version: 1.41\r\n\r\nOK");
        }
    });
    let (ok, out) = berth(&["doctor", "--root", &root, "--config", cfg.to_str().unwrap(), "-H", &host]);
    engine.join().unwrap();
    assert!(!ok && out.contains("problem(s) found"), "{out}");
    let (l, fix) = check(&out, "FAIL", "daemon.json");
    assert!(l.contains("userns-remap: user namespace remapping is not supported") && fix.contains(&format!("edit {}", cfg.display())), "{out}");
    let (l, fix) = check(&out, "FAIL", "api");
    assert!(l.contains("another engine answers on it") && fix.contains("-H unix:///run/berth/docker.sock"), "{out}");

    // a stale socket file: a warning only; btrfs on a data root that is not btrfs
    std::fs::write(&cfg, r#"{"storage-driver":"btrfs"}"#).unwrap();
    let (ok, out) = berth(&["doctor", "--root", &root, "--config", cfg.to_str().unwrap(), "-H", &host]);
    assert!(check(&out, "warn", "api").0.contains("a stale socket file"), "{out}");
    if !check_fs_is_btrfs(d) {
        assert!(!ok, "{out}");
        let (l, fix) = check(&out, "FAIL", "storage");
        assert!(l.contains("is not on a btrfs file system") && fix.contains("mkfs.btrfs"), "{out}");
    }

    // --version and the completions
    let (ok, v) = berth(&["--version"]);
    assert!(ok && v.starts_with("berth ") && v.trim().len() > "berth ".len(), "{v}");
    let (ok, bash) = berth(&["completion", "bash"]);
    assert!(ok && bash.contains("complete -F _berth") && bash.contains("doctor"), "{bash}");
}

fn check_fs_is_btrfs(p: &std::path::Path) -> bool {
    Command::new("stat").args(["-f", "-c", "%T"]).arg(p).output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "btrfs")
}
