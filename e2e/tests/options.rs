//! Issue 17, "nothing is silently ignored": every option berth does not implement is
//! refused with a message naming it (daemon.json: `berth up` refuses to start; a
//! container option: the API's 400, in dockerd's words where dockerd has some), and
//! the cheap ones work (daemon.json `no-new-privileges`, `default-shm-size`,
//! `default-runtime`, `shutdown-timeout`).

use berth_e2e::fixtures::node_with_busybox_opts;
use berth_e2e::{require_root, Node, NodeOpts};
use serde_json::json;

#[test]
fn daemon_json_options_berth_does_not_implement_stop_the_start_naming_them() {
    for (key, value) in [
        ("default-runtime", json!("nvidia")),
        ("default-shm-size", json!("lots")),
        ("userland-proxy", json!(true)),
        ("userland-proxy-path", json!("/usr/bin/docker-proxy")),
        ("userns-remap", json!("default")),
        ("seccomp-profile", json!("/etc/docker/seccomp.json")),
        ("exec-opts", json!(["native.cgroupdriver=systemd"])),
        ("ipv6", json!(true)),
        ("features", json!({"buildkit": true})),
        ("exec-root", json!("/run/elsewhere")),
    ] {
        let mut o = NodeOpts::default();
        o.config.insert(key.into(), value.clone());
        let err = Node::start_failing(o).unwrap_or_else(|e| panic!("{key}: {value} was accepted: {e}"));
        assert!(err.contains("unable to configure the berth daemon with file ") && err.contains(&format!(": {key}: ")), "{key}: {err}");
    }
}

#[test]
fn daemon_json_defaults_work_and_container_options_berth_lacks_are_refused() {
    require_root!();
    let mut o = NodeOpts::default();
    for (k, v) in [
        ("no-new-privileges", json!(true)),
        ("default-shm-size", json!("96m")),
        ("default-runtime", json!("runc")),
        ("shutdown-timeout", json!(6)),
        ("userland-proxy", json!(false)),
        ("exec-opts", json!(["native.cgroupdriver=cgroupfs"])),
        ("ipv6", json!(false)),
    ] {
        o.config.insert(k.into(), v);
    }
    let pidfile = std::env::temp_dir().join(format!("berth-e2e-{}.pid", berth_e2e::uniq()));
    o.config.insert("pidfile".into(), json!(pidfile));
    let (mut node, _reg, img) = node_with_busybox_opts(o);
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), node.up_pid().unwrap().to_string());
    let run = |args: &[&str]| node.docker(&[&["run", "--rm"][..], args].concat());
    let out = |o: std::process::Output| (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned());

    // no-new-privileges: the default; the container's own option still wins
    let (ok, so, se) = out(run(&[&img, "grep", "NoNewPrivs", "/proc/self/status"]));
    assert!(ok && so.split_whitespace().eq(["NoNewPrivs:", "1"]), "{so}{se}");
    let (ok, so, se) = out(run(&["--security-opt", "no-new-privileges=false", &img, "grep", "NoNewPrivs", "/proc/self/status"]));
    assert!(ok && so.split_whitespace().eq(["NoNewPrivs:", "0"]), "{so}{se}");
    // default-shm-size: /dev/shm's size and inspect's ShmSize; default-runtime: Runtime
    let (ok, so, se) = out(run(&[&img, "df", "-k", "/dev/shm"]));
    assert!(ok && so.lines().nth(1).is_some_and(|l| l.split_whitespace().nth(1) == Some("98304")), "{so}{se}");
    node.docker_ok(&["create", "--name", "probe", &img, "true"]);
    assert_eq!(node.docker_ok(&["inspect", "-f", "{{.HostConfig.ShmSize}} {{.HostConfig.Runtime}}", "probe"]).trim(), "100663296 runc");

    // refused, naming what was asked
    for (args, msg) in [
        (&["--gpus", "all"][..], r#"could not select device driver "" with capabilities: [[gpu]]"#),
        (&["--security-opt", "apparmor=docker-default"], r#"AppArmor profile "docker-default" cannot be applied: AppArmor is not enabled on this host"#),
        (&["--security-opt", "label=type:svirt_apache_t"], r#"SELinux label "type:svirt_apache_t" cannot be applied: SELinux is not enabled on this host"#),
        (&["--security-opt", "foo=bar"], r#"invalid --security-opt 2: "foo=bar""#),
        (&["--runtime", "nvidia"], "Unknown runtime specified nvidia"),
    ] {
        let (ok, so, se) = out(run(&[args, &[img.as_str(), "true"]].concat()));
        assert!(!ok && se.contains(&format!("Error response from daemon: {msg}")), "{args:?}: {so}{se}");
    }
    // what is accepted because berth does it anyway
    for args in [&["--security-opt", "apparmor=unconfined"][..], &["--security-opt", "label=disable"]] {
        let (ok, so, se) = out(run(&[args, &[img.as_str(), "true"]].concat()));
        assert!(ok, "{args:?}: {so}{se}");
    }

    // shutdown-timeout 6: an orderly stop gives a container that takes 4 s to stop
    // its time (berth's own default allows 3 s)
    let out_dir = node.dir.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    node.docker_ok(&[
        "run", "-d", "--name", "slow", "-v", &format!("{}:/out", out_dir.display()), &img,
        "sh", "-c", "trap 'sleep 4; echo clean > /out/done; exit 0' TERM; echo up > /out/up; while true; do sleep 0.1; done",
    ]);
    let t = std::time::Instant::now();
    while !out_dir.join("up").exists() {
        assert!(t.elapsed() < std::time::Duration::from_secs(10));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let st = node.shutdown().unwrap();
    assert!(st.success(), "{st}\n{}", node.logs());
    assert!(!pidfile.exists(), "the pidfile stays after an orderly stop");
    assert_eq!(std::fs::read_to_string(out_dir.join("done")).unwrap_or_default(), "clean\n", "the container was killed before shutdown-timeout");
}
