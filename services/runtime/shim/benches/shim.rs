//! Shim numbers (root): spawn-to-exit of `true` in a Docker-like container, exec
//! latency in a running one, the shim's PSS, seccomp compile time, and `runc run` of
//! the same rootfs for comparison when runc is installed.
//!
//! `cargo bench -p berth-shim` (release). BENCH_N sets the iterations (default 50).

#[path = "../tests/common/mod.rs"]
mod common;

use berth_shim::proto::{Event, ExecRequest, Request};
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

fn stats(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mean = v.iter().map(|d| ms(*d)).sum::<f64>() / v.len() as f64;
    println!(
        "{name:<34} n={:<4} mean {:>7.2} ms  p50 {:>7.2} ms  p90 {:>7.2} ms  min {:>7.2} ms",
        v.len(),
        mean,
        ms(v[v.len() / 2]),
        ms(v[v.len() * 9 / 10]),
        ms(v[0])
    );
}

/// PSS and private memory of a process, in KiB (smaps_rollup).
fn pss(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("Pss:"), get("Private_Clean:") + get("Private_Dirty:"))
}

fn with_seccomp(s: &mut serde_json::Value) {
    // BENCH_VARIANT: drop parts of the setup to see what they cost.
    match std::env::var("BENCH_VARIANT").as_deref() {
        Ok("hostnet") => s["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "network"),
        Ok("nocgroupfs") => s["mounts"]
            .as_array_mut()
            .unwrap()
            .retain(|m| m["type"] != "cgroup"),
        Ok("minimal") => {
            s["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .retain(|n| n["type"] != "network");
            s["mounts"]
                .as_array_mut()
                .unwrap()
                .retain(|m| m["type"] != "cgroup");
        }
        _ => {}
    }
    // A Docker-sized allowlist (every syscall but a few), so the compile cost is real.
    let names: Vec<&str> = berth_shim::syscalls::X86_64
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !["mount", "unshare", "reboot", "kexec_load"].contains(n))
        .collect();
    s["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "syscalls": [{"names": names, "action": "SCMP_ACT_ALLOW"}]});
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the shim bench needs root");
        return;
    }
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let rootfs = rootfs();

    // seccomp compile
    let mut s = spec("x", &rootfs, &["true"]);
    with_seccomp(&mut s);
    let prof: berth_shim::oci::Seccomp =
        serde_json::from_value(s["linux"]["seccomp"].clone()).unwrap();
    let t = Instant::now();
    for _ in 0..1000 {
        std::hint::black_box(berth_shim::bpf::compile(&prof).unwrap());
    }
    println!(
        "{:<34} {:>7.1} us ({} instructions)",
        "seccomp compile",
        t.elapsed().as_secs_f64() * 1e6 / 1000.0,
        berth_shim::bpf::compile(&prof).unwrap().len()
    );

    // spawn to exit of `true`
    let mut v = Vec::new();
    let mut started = Vec::new();
    for _ in 0..n {
        let id = unique("bench");
        let mut s = spec(&id, &rootfs, &["true"]);
        with_seccomp(&mut s);
        let b = Bundle::new(&id, &s, json!({}));
        let t = Instant::now();
        let mut r = spawn(&b).unwrap();
        started.push(t.elapsed());
        if std::env::var_os("BERTH_SHIM_TRACE").is_some() {
            print!(
                "{}",
                std::fs::read_to_string(b.path().join("shim.log")).unwrap_or_default()
            );
        }
        let (_, st) = r.wait_exit();
        v.push(t.elapsed());
        if std::env::var_os("BERTH_SHIM_TRACE").is_some() {
            print!("{}", b.log_text("stderr"));
        }
        assert_eq!(st.code, 0);
    }
    stats("shim: spawn to exec'd (Started)", started);
    stats("shim: spawn to exit of `true`", v);

    // exec latency and PSS in a running container
    let id = unique("bench");
    let mut s = spec(&id, &rootfs, &["sleep", "1000"]);
    with_seccomp(&mut s);
    let b = Bundle::new(&id, &s, json!({}));
    let mut r = spawn(&b).unwrap();
    let shim_pid = r.child.id();
    let mut v = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        let mut c = connect(&b);
        let req = Request::Exec(Box::new(ExecRequest {
            exec_id: format!("e{i}"),
            process: json!({"args": ["true"], "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}}),
            stdin: false,
            detach: false,
        }));
        assert!(matches!(request(&mut c, req), Event::ExecStarted { .. }));
        loop {
            match berth_shim::proto::read_event(&mut c).unwrap() {
                Event::ExecExited(st) => {
                    assert_eq!(st.code, 0);
                    break;
                }
                Event::Output { .. } => {}
                e => panic!("{e:?}"),
            }
        }
        v.push(t.elapsed());
    }
    stats("shim: exec `true`", v);
    let (p, private) = pss(shim_pid);
    println!(
        "{:<34} PSS {} KiB, private {} KiB (one shim alone)",
        "shim memory", p, private
    );

    // Several shims share their text: PSS per shim with 10 running.
    let mut many = Vec::new();
    for _ in 0..9 {
        let id = unique("bench");
        let b2 = Bundle::new(&id, &spec(&id, &rootfs, &["sleep", "1000"]), json!({}));
        let r2 = spawn(&b2).unwrap();
        many.push((b2, r2));
    }
    let mut tot = (0, 0);
    let pids: Vec<u32> = std::iter::once(shim_pid)
        .chain(many.iter().map(|(_, r)| r.child.id()))
        .collect();
    for p in &pids {
        let (a, b) = pss(*p);
        tot.0 += a;
        tot.1 += b;
    }
    println!(
        "{:<34} PSS {} KiB, private {} KiB (mean of {})",
        "shim memory, 10 running",
        tot.0 / pids.len() as u64,
        tot.1 / pids.len() as u64,
        pids.len()
    );
    for (b2, mut r2) in many {
        let mut c = connect(&b2);
        request(
            &mut c,
            Request::Kill {
                signal: 9,
                all: false,
            },
        );
        r2.wait_exit();
    }
    let mut c = connect(&b);
    request(
        &mut c,
        Request::Kill {
            signal: 9,
            all: false,
        },
    );
    r.wait_exit();

    // runc, for scale.
    if std::path::Path::new("/usr/sbin/runc").exists() {
        let mut v = Vec::new();
        for _ in 0..n.min(20) {
            let id = unique("runc");
            let mut s = spec(&id, &rootfs, &["true"]);
            with_seccomp(&mut s);
            s["linux"]["cgroupsPath"] = json!(format!("/{CG_PARENT}/{id}"));
            let b = Bundle::new(&id, &s, json!({}));
            let t = Instant::now();
            let st = std::process::Command::new("/usr/sbin/runc")
                .args(["--root", "/run/berth-bench-runc", "run", "--bundle"])
                .arg(b.path())
                .arg(&id)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            v.push(t.elapsed());
            assert!(st.success());
        }
        stats("runc run `true` (same spec)", v);
    }
}
