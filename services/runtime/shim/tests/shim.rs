//! The shim against real namespaces, mounts and cgroups (root).

mod common;

use berth_shim::proto::{Event, ExecRequest, Request, StartErrorKind};
use common::*;
use serde_json::json;

#[test]
fn output_goes_to_the_log_and_exit_code_is_recorded() {
    let (_, st, b) = run(&["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(st.code, 3);
    assert_eq!(st.signal, None);
    assert!(!st.oom_killed);
    assert_eq!(b.log_text("stdout"), "out\n");
    assert_eq!(b.log_text("stderr"), "err\n");
    let ex = b.exit().unwrap();
    assert_eq!(ex["code"], 3);
    assert!(!b.path().join("shim.sock").exists());
}

#[test]
fn a_start_given_up_before_go_leaves_nothing() {
    // the runtime spawns the shim before the bundle is complete; when the start is
    // given up instead (layer or network failed) it closes the socket
    let id = unique("nogo");
    let b = Bundle::new(&id, &spec(&id, &rootfs(), &["true"]), json!({}));
    let (mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut child = std::process::Command::new(SHIM)
        .arg(b.path())
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .spawn()
        .unwrap();
    drop(mine);
    assert!(child.wait().unwrap().success());
    assert!(!b.path().join("shim.sock").exists());
    assert!(b.exit().is_none());
    let layout = berth_shim::cgroups::Layout::detect().unwrap();
    assert!(!layout.with("pids").map(|h| h.mount.join(format!("{CG_PARENT}/{id}")).exists()).unwrap_or(false));
}

#[test]
fn true_exits_zero() {
    let (text, st, _b) = run(&["true"]);
    assert_eq!(st.code, 0);
    assert_eq!(text, "");
}

#[test]
fn not_found_and_permission_denied() {
    let id = unique("nf");
    let b = Bundle::new(&id, &spec(&id, &rootfs(), &["nope"]), json!({}));
    let e = spawn(&b).err().unwrap();
    assert_eq!(e.0, StartErrorKind::NotFound);
    assert_eq!(e.1, "exec: \"nope\": executable file not found in $PATH");

    let id = unique("nf");
    let b = Bundle::new(&id, &spec(&id, &rootfs(), &["/no/such"]), json!({}));
    let e = spawn(&b).err().unwrap();
    assert_eq!(e.0, StartErrorKind::NotFound);
    assert!(
        e.1.contains("stat /no/such: no such file or directory"),
        "{}",
        e.1
    );

    let id = unique("pd");
    let b = Bundle::new(&id, &spec(&id, &rootfs(), &["/etc/passwd"]), json!({}));
    let e = spawn(&b).err().unwrap();
    assert_eq!(e.0, StartErrorKind::PermissionDenied);
    assert!(e.1.contains("permission denied"), "{}", e.1);
    // Nothing left behind by a failed start.
    let layout = berth_shim::cgroups::Layout::detect().unwrap();
    assert!(layout
        .cgroup(&format!("{CG_PARENT}/{id}"))
        .procs()
        .unwrap()
        .is_empty());
    assert!(!layout
        .with("memory")
        .unwrap()
        .mount
        .join(CG_PARENT)
        .join(&id)
        .exists());
}

#[test]
fn namespaces_mounts_and_hostname() {
    let (text, st, _b) = run(&[
        "sh",
        "-c",
        "echo pid=$$; hostname; ls /dev; cat /proc/self/mountinfo | grep -c ' / ' ; test -c /dev/null && echo null-ok; \
         grep -q ' /sys ro' /proc/self/mountinfo && echo sys-ro; cat /proc/timer_list | wc -c; ls /sys/firmware | wc -l; \
         echo x > /proc/sys/kernel/hostname 2>/dev/null || echo procsys-ro; ls /sys/fs/cgroup | head -3; \
         df -k /dev/shm | tail -1 | awk '{print \"shm=\"$2}'",
    ]);
    assert_eq!(st.code, 0, "{text}");
    assert!(text.contains("pid=1\n"), "{text}");
    assert!(text.contains("shimtest\n"), "{text}");
    for d in [
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "mqueue", "fd",
        "stdin",
    ] {
        assert!(text.lines().any(|l| l == d), "missing /dev/{d}: {text}");
    }
    assert!(text.contains("null-ok"), "{text}");
    assert!(text.contains("sys-ro"), "{text}");
    assert!(
        text.contains("\n0\n0\n"),
        "masked paths should be empty: {text}"
    );
    assert!(text.contains("procsys-ro"), "{text}");
    assert!(text.contains("shm=65536"), "{text}");
}

#[test]
fn default_capabilities() {
    let (text, st, _b) = run(&["sh", "-c", "grep Cap /proc/self/status"]);
    assert_eq!(st.code, 0);
    // Docker's 14 default capabilities.
    assert!(text.contains("CapEff:\t00000000a80425fb"), "{text}");
    assert!(text.contains("CapBnd:\t00000000a80425fb"), "{text}");
}

#[test]
fn cap_drop_and_no_new_privs_and_user() {
    let (text, st, _b) = run_with(
        &[
            "sh",
            "-c",
            "grep -E 'Cap(Eff|Bnd)|NoNewPrivs|^Uid|^Gid|^Groups' /proc/self/status; id -u",
        ],
        |s| {
            s["process"]["capabilities"] = json!({"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"], "permitted": ["CAP_CHOWN"]});
            s["process"]["noNewPrivileges"] = json!(true);
            s["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [2000]});
        },
    );
    assert_eq!(st.code, 0, "{text}");
    // A non-root user keeps no effective capabilities across exec (as in Docker).
    assert!(text.contains("CapEff:\t0000000000000000"), "{text}");
    assert!(text.contains("CapBnd:\t0000000000000001"), "{text}");
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    assert!(text.contains("Uid:\t1000\t1000\t1000\t1000"), "{text}");
    assert!(text.contains("Groups:\t2000"), "{text}");
}

#[test]
fn privileged_caps_are_limited_to_the_host() {
    let all: Vec<String> = berth_shim::caps::NAMES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (text, st, _b) = run_with(&["sh", "-c", "grep CapEff /proc/self/status"], |s| {
        s["process"]["capabilities"] = json!({"bounding": all, "effective": all, "permitted": all});
    });
    assert_eq!(st.code, 0, "{text}");
    let host = berth_shim::caps::host_bounding();
    assert!(text.contains(&format!("CapEff:\t{host:016x}")), "{text}");
}

#[test]
fn read_only_rootfs_and_workdir() {
    let (text, st, _b) = run_with(
        &[
            "sh",
            "-c",
            "pwd; touch /x 2>/dev/null || echo ro; touch /tmp/y 2>/dev/null || echo tmp-ro",
        ],
        |s| {
            s["root"]["readonly"] = json!(true);
            s["process"]["cwd"] = json!("/made/by/shim");
        },
    );
    assert_eq!(st.code, 0, "{text}");
    assert!(text.contains("/made/by/shim\n"), "{text}");
    assert!(text.contains("ro\n"), "{text}");
}

#[test]
fn seccomp_blocks_denied_syscalls() {
    let (text, st, _b) = run_with(
        &[
            "sh",
            "-c",
            "unshare -m true 2>&1; echo rc=$?; mount -t tmpfs t /tmp 2>&1; echo rc=$?",
        ],
        |s| {
            // Add CAP_SYS_ADMIN so only seccomp can refuse.
            let caps = json!(["CAP_SYS_ADMIN", "CAP_SETUID", "CAP_SETGID"]);
            s["process"]["capabilities"] =
                json!({"bounding": caps, "effective": caps, "permitted": caps});
            s["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["unshare", "mount"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
            });
        },
    );
    assert_eq!(st.code, 0, "{text}");
    assert!(text.contains("Operation not permitted"), "{text}");
    assert!(!text.contains("rc=0"), "{text}");
}

#[test]
fn killed_by_signal() {
    let id = unique("kill");
    let b = Bundle::new(&id, &spec(&id, &rootfs(), &["sleep", "100"]), json!({}));
    let mut r = spawn(&b).unwrap();
    let mut c = connect(&b);
    assert_eq!(
        request(
            &mut c,
            Request::Kill {
                signal: 9,
                all: false
            }
        ),
        Event::Ok
    );
    let (_, st) = r.wait_exit();
    assert_eq!(st.code, 137);
    assert_eq!(st.signal, Some(9));
}

#[test]
fn sigterm_to_a_shell_with_a_trap() {
    let id = unique("term");
    let b = Bundle::new(
        &id,
        &spec(
            &id,
            &rootfs(),
            &[
                "sh",
                "-c",
                "trap 'echo got-term; exit 7' TERM; echo ready; while true; do sleep 0.05; done",
            ],
        ),
        json!({"attach_stdout": true}),
    );
    let mut r = spawn(&b).unwrap();
    // Wait until the trap is installed.
    loop {
        match berth_shim::proto::read_event(&mut r.conn).unwrap() {
            Event::Output { data, .. } if String::from_utf8_lossy(&data).contains("ready") => break,
            Event::Output { .. } => {}
            e => panic!("{e:?}"),
        }
    }
    let mut c = connect(&b);
    assert_eq!(
        request(
            &mut c,
            Request::Kill {
                signal: 15,
                all: false
            }
        ),
        Event::Ok
    );
    let (out, st) = r.wait_exit();
    assert_eq!(st.code, 7);
    let text: String = out
        .iter()
        .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
        .collect();
    assert!(text.contains("got-term"), "{text}");
}

#[test]
fn stdin_is_echoed() {
    let id = unique("stdin");
    let b = Bundle::new(
        &id,
        &spec(&id, &rootfs(), &["cat"]),
        json!({"stdin": true, "attach_stdout": true}),
    );
    let mut r = spawn(&b).unwrap();
    let mut c = connect(&b);
    send(&mut c, Request::Stdin(b"hello\n".to_vec()));
    send(&mut c, Request::Stdin(b"world".to_vec()));
    assert_eq!(request(&mut c, Request::CloseStdin), Event::Ok);
    let (out, st) = r.wait_exit();
    assert_eq!(st.code, 0);
    let text: Vec<u8> = out.into_iter().flat_map(|(_, d)| d).collect();
    assert_eq!(text, b"hello\nworld");
    assert_eq!(b.log_text("stdout"), "hello\nworld");
}

#[test]
fn tty_output_and_resize() {
    let id = unique("tty");
    let mut s = spec(
        &id,
        &rootfs(),
        &["sh", "-c", "tty; stty size; read x; stty size; echo got $x"],
    );
    s["process"]["terminal"] = json!(true);
    s["process"]["consoleSize"] = json!({"height": 30, "width": 100});
    let b = Bundle::new(
        &id,
        &s,
        json!({"tty": true, "stdin": true, "attach_stdout": true}),
    );
    let mut r = spawn(&b).unwrap();
    let mut c = connect(&b);
    // Resize before answering `read`.
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        request(
            &mut c,
            Request::Resize {
                height: 40,
                width: 120
            }
        ),
        Event::Ok
    );
    send(&mut c, Request::Stdin(b"abc\n".to_vec()));
    let (out, st) = r.wait_exit();
    assert_eq!(st.code, 0);
    let text: String = out
        .iter()
        .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
        .collect();
    assert!(text.contains("/dev/pts/0\r\n"), "{text:?}");
    assert!(text.contains("30 100\r\n"), "{text:?}");
    assert!(text.contains("40 120\r\n"), "{text:?}");
    assert!(text.contains("got abc\r\n"), "{text:?}");
    assert!(out.iter().all(|(s, _)| *s == 1));
    assert!(b.log_text("stdout").contains("got abc"));
}

fn exec_req(args: &[&str], tty: bool, stdin: bool) -> Request {
    Request::Exec(Box::new(ExecRequest {
        exec_id: "e".into(),
        process: json!({
            "terminal": tty,
            "args": args,
            "env": ["PATH=/bin"],
            "cwd": "/",
            "user": {"uid": 0, "gid": 0},
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
        }),
        stdin,
        detach: false,
    }))
}

fn exec_output(c: &mut std::os::unix::net::UnixStream) -> (String, String, i32) {
    let (mut o, mut e) = (String::new(), String::new());
    loop {
        match berth_shim::proto::read_event(c).unwrap() {
            Event::Output { stream: 1, data } => o.push_str(&String::from_utf8_lossy(&data)),
            Event::Output { data, .. } => e.push_str(&String::from_utf8_lossy(&data)),
            Event::ExecExited(st) => return (o, e, st.code),
            ev => panic!("{ev:?}"),
        }
    }
}

#[test]
fn exec_runs_in_the_container() {
    let id = unique("exec");
    let b = Bundle::new(&id, &spec(&id, &rootfs(), &["sleep", "100"]), json!({}));
    let mut r = spawn(&b).unwrap();
    let mut c = connect(&b);
    match request(&mut c, exec_req(&["sh", "-c", "hostname; echo $$ >/dev/null; cat /proc/1/cmdline | tr '\\0' ' '; grep CapEff /proc/self/status; echo oops >&2; exit 5"], false, false)) {
        Event::ExecStarted { pid } => assert!(pid > 0),
        e => panic!("{e:?}"),
    }
    let (o, e, code) = exec_output(&mut c);
    assert_eq!(code, 5);
    assert!(o.contains("shimtest\n"), "{o}");
    assert!(o.contains("sleep 100"), "{o}");
    assert!(o.contains("CapEff:\t0000000000000020"), "{o}");
    assert_eq!(e, "oops\n");
    // Not found.
    let mut c2 = connect(&b);
    match request(&mut c2, exec_req(&["nope"], false, false)) {
        Event::StartFailed { kind, message } => {
            assert_eq!(kind, StartErrorKind::NotFound);
            assert_eq!(
                message,
                "exec: \"nope\": executable file not found in $PATH"
            );
        }
        e => panic!("{e:?}"),
    }
    // stdin
    let mut c3 = connect(&b);
    assert!(matches!(
        request(&mut c3, exec_req(&["cat"], false, true)),
        Event::ExecStarted { .. }
    ));
    send(&mut c3, Request::Stdin(b"piped".to_vec()));
    // cat may echo before the close is answered: output up to the Ok is kept
    send(&mut c3, Request::CloseStdin);
    let mut early = String::new();
    loop {
        match berth_shim::proto::read_event(&mut c3).unwrap() {
            Event::Ok => break,
            Event::Output { stream: 1, data } => early.push_str(&String::from_utf8_lossy(&data)),
            ev => panic!("{ev:?}"),
        }
    }
    let (o, _, code) = exec_output(&mut c3);
    assert_eq!((format!("{early}{o}").as_str(), code), ("piped", 0));
    // tty
    let mut c4 = connect(&b);
    assert!(matches!(
        request(&mut c4, exec_req(&["tty"], true, false)),
        Event::ExecStarted { .. }
    ));
    let (o, _, code) = exec_output(&mut c4);
    assert_eq!(code, 0);
    assert!(o.starts_with("/dev/pts/"), "{o:?}");
    // kill an exec
    let mut c5 = connect(&b);
    assert!(matches!(
        request(&mut c5, exec_req(&["sleep", "100"], false, false)),
        Event::ExecStarted { .. }
    ));
    assert_eq!(
        request(
            &mut c5,
            Request::Kill {
                signal: 9,
                all: false
            }
        ),
        Event::Ok
    );
    let (_, _, code) = exec_output(&mut c5);
    assert_eq!(code, 137);

    assert_eq!(
        request(
            &mut c,
            Request::Kill {
                signal: 9,
                all: true
            }
        ),
        Event::Ok
    );
    let (_, st) = r.wait_exit();
    assert_eq!(st.code, 137);
}

#[test]
fn memory_limit_oom_is_recorded() {
    let (_, st, _b) = run_with(&["sh", "-c", "x=a; while true; do x=$x$x$x$x; done"], |s| {
        s["linux"]["resources"]["memory"] = json!({"limit": 16 << 20, "swap": 16 << 20});
    });
    assert_eq!(st.code, 137);
    assert!(st.oom_killed);
}

#[test]
fn pids_limit() {
    let (text, _st, _b) = run_with(
        &[
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8; do sleep 1 & done 2>&1; echo done",
        ],
        |s| {
            s["linux"]["resources"]["pids"] = json!({"limit": 4});
        },
    );
    assert!(
        text.contains("can't fork") || text.contains("Resource temporarily unavailable"),
        "{text}"
    );
}

#[test]
fn shim_survives_its_spawner_and_a_new_client_reconnects() {
    let id = unique("survive");
    let b = Bundle::new(
        &id,
        &spec(&id, &rootfs(), &["sh", "-c", "read x; echo bye $x; exit 4"]),
        json!({"stdin": true}),
    );
    // Spawn through an intermediate process that dies: the shim must not care.
    let r = spawn(&b).unwrap();
    let shim_pid = r.child.id();
    drop(r.conn);
    // The spawner's connection is gone; a new client finds the shim.
    let mut c = connect(&b);
    match request(&mut c, Request::State) {
        Event::State(s) => {
            assert!(s.running);
            assert_eq!(s.pid, r.pid);
        }
        e => panic!("{e:?}"),
    }
    let mut w = connect(&b);
    send(&mut w, Request::Wait);
    send(&mut c, Request::Stdin(b"now\n".to_vec()));
    match berth_shim::proto::read_event(&mut w).unwrap() {
        Event::Exited(st) => assert_eq!(st.code, 4),
        e => panic!("{e:?}"),
    }
    let mut child = r.child;
    let _ = child.wait();
    assert_eq!(b.log_text("stdout"), "bye now\n");
    assert_eq!(b.exit().unwrap()["code"], 4);
    assert!(unsafe { libc::kill(shim_pid as i32, 0) } != 0);
}

#[test]
fn slow_reader_loses_nothing() {
    let id = unique("flood");
    // 4 MiB of numbered lines while the attached client sleeps.
    let b = Bundle::new(
        &id,
        &spec(&id, &rootfs(), &["sh", "-c", "seq 1 500000"]),
        json!({"attach_stdout": true}),
    );
    let mut r = spawn(&b).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (out, st) = r.wait_exit();
    assert_eq!(st.code, 0);
    let text: Vec<u8> = out.into_iter().flat_map(|(_, d)| d).collect();
    let want: String = (1..=500000).map(|i| format!("{i}\n")).collect();
    assert!(
        text == want.as_bytes(),
        "attached output differs ({} bytes)",
        text.len()
    );
    assert_eq!(b.log_text("stdout"), want);
}

#[test]
fn log_rotation() {
    let id = unique("rot");
    let b = Bundle::new(
        &id,
        &spec(&id, &rootfs(), &["sh", "-c", "seq 1 2000"]),
        json!({"log_max_size": 10000, "log_max_file": 3}),
    );
    let mut r = spawn(&b).unwrap();
    let (_, st) = r.wait_exit();
    assert_eq!(st.code, 0);
    let p = b.path().join("log.json");
    assert!(berth_shim::jsonlog::rotated(&p, 2).exists());
    assert!(!berth_shim::jsonlog::rotated(&p, 3).exists());
    let last = b.log();
    assert_eq!(last.last().unwrap()["log"], "2000\n");
}

#[test]
fn init_binary_runs_as_docker_init() {
    let id = unique("init");
    let init_dir = tempfile::tempdir().unwrap();
    let init = init_dir.path().join("berth-init");
    std::fs::write(&init, berth_shim::INIT_BINARY).unwrap();
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut s = spec(
        &id,
        &rootfs(),
        &[
            "/sbin/docker-init",
            "--",
            "sh",
            "-c",
            "echo pid=$$ ppid=$PPID; exit 9",
        ],
    );
    s["mounts"].as_array_mut().unwrap().push(json!({"destination": "/sbin/docker-init", "type": "bind", "source": init, "options": ["rbind", "ro"]}));
    let b = Bundle::new(&id, &s, json!({}));
    let mut r = spawn(&b).unwrap();
    let (_, st) = r.wait_exit();
    assert_eq!(st.code, 9);
    assert!(
        b.log_text("stdout").contains("ppid=1"),
        "{}",
        b.log_text("stdout")
    );
}

#[test]
fn cycles_leave_nothing_behind() {
    let n: usize = std::env::var("BERTH_SHIM_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut ids = Vec::new();
    for i in 0..n {
        let id = unique("cycle");
        ids.push(id.clone());
        let args: &[&str] = if i % 2 == 0 {
            &["true"]
        } else {
            &["sh", "-c", "sleep 100 & exec sleep 100"]
        };
        let b = Bundle::new(&id, &spec(&id, &rootfs(), args), json!({}));
        ids.push(b.dir.path().display().to_string());
        let mut r = spawn(&b).unwrap();
        if i % 2 == 1 {
            let mut c = connect(&b);
            // pid 1 ignores SIGTERM without a handler (as in Docker): SIGKILL; the
            // background sleep goes with the pid namespace.
            assert_eq!(
                request(
                    &mut c,
                    Request::Kill {
                        signal: 9,
                        all: false
                    }
                ),
                Event::Ok
            );
        }
        let (_, st) = r.wait_exit();
        assert_eq!(st.code, if i % 2 == 0 { 0 } else { 137 });
        let layout = berth_shim::cgroups::Layout::detect().unwrap();
        for h in &layout.hierarchies {
            assert!(
                !h.mount.join(CG_PARENT).join(&id).exists(),
                "cgroup left in {}",
                h.mount.display()
            );
        }
    }
    // No mount of any cycle is left. Only ours are counted: other tests of this binary
    // (and anything else on the host) mount and unmount meanwhile, so comparing the
    // host's total before and after failed now and then under load.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<&str> = mountinfo.lines().filter(|l| ids.iter().any(|id| l.contains(id.as_str()))).collect();
    assert!(left.is_empty(), "mounts left behind: {left:?}");
    // Other tests may run shims concurrently; ours are all reaped (wait_exit above).
}
