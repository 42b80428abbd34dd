//! Swarm mode through the real docker CLI against `berth up` (issue 18). One node per
//! test where one is enough; every step checks what Docker shows (answers recorded
//! from Moby 20.10 are in e2e/tests/data/swarm/).

use berth_e2e::{fixtures, require_root, Node};
use std::time::{Duration, Instant};

/// Three consecutive free ports on loopback (the swarm server's client, leaf and route
/// ports follow `--listen-addr`).
fn free_ports() -> u16 {
    for _ in 0..200 {
        let mut b = [0u8; 2];
        getrandom::fill(&mut b).unwrap();
        let p = 20000 + (u16::from_le_bytes(b) % 30000);
        if (0..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            return p;
        }
    }
    panic!("no free ports");
}

fn out(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Poll `f` until it returns Some, for up to `secs`.
fn wait_for<T>(secs: u64, what: &str, node: &Node, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if t.elapsed() > Duration::from_secs(secs) {
            panic!("timed out waiting for {what}\n{}", node.logs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Processes whose command line names this node's swarm server config (the swarm
/// nats-server).
fn swarm_servers(node: &Node) -> usize {
    let conf = node.root.join("swarm/server").to_string_lossy().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).contains(&conf)
        })
        .count()
}

/// Resident memory of the node's swarm service, in KiB (printed, never asserted).
fn swarm_rss(node: &Node) -> u64 {
    let pid = node.service_pid("swarm").expect("swarm service pid");
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    st.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok()).unwrap_or(0)
}

fn lines(s: &str) -> Vec<String> {
    s.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
}

#[test]
fn single_node_swarm() {
    require_root!();
    let (mut node, _reg, img) = fixtures::node_with_busybox();
    // A node that never runs swarm pays no second nats-server.
    assert_eq!(swarm_servers(&node), 0);
    eprintln!("swarm service RSS at idle, never in a swarm: {} KiB", swarm_rss(&node));

    // Not in a swarm: Docker's 503 and message.
    let o = node.docker(&["node", "ls"]);
    assert!(!o.status.success());
    assert!(
        out(&o).contains("This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again."),
        "{}",
        out(&o)
    );
    let info = node.docker_ok(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
    assert_eq!(info.trim(), "inactive");

    // init
    let port = free_ports();
    let listen = format!("127.0.0.1:{port}");
    let init = node.docker_ok(&["swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", &listen]);
    assert!(init.starts_with("Swarm initialized: current node ("), "{init}");
    assert!(init.contains(&format!("docker swarm join --token SWMTKN-1-")), "{init}");
    assert!(init.contains(&format!(" {listen}\n")), "{init}");
    assert_eq!(swarm_servers(&node), 1);
    let again = node.docker(&["swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", &listen]);
    assert!(out(&again).contains("This node is already part of a swarm. Use \"docker swarm leave\" to leave this swarm and join another one."), "{}", out(&again));
    let token = node.docker_ok(&["swarm", "join-token", "-q", "worker"]);
    assert!(token.trim().starts_with("SWMTKN-1-") && token.trim().len() == 85, "{token}");

    // docker info's Swarm section
    let info = node.docker_ok(&["info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}} {{.Swarm.Nodes}} {{.Swarm.Managers}} {{.Swarm.NodeAddr}}"]);
    assert_eq!(info.trim(), "active true 1 1 127.0.0.1");

    // node ls / inspect
    let ls = node.docker_ok(&["node", "ls", "--format", "{{.Self}} {{.Status}} {{.Availability}} {{.ManagerStatus}}"]);
    assert_eq!(lines(&ls), vec!["true Ready Active Leader"], "{ls}");
    let role = node.docker_ok(&["node", "inspect", "self", "--format", "{{.Spec.Role}} {{.Status.State}} {{.ManagerStatus.Addr}}"]);
    assert_eq!(role.trim(), format!("manager ready 127.0.0.1:{port}"));

    // service create: 3 replicas, converged as the CLI checks it
    let created = node.docker_ok(&["service", "create", "--replicas", "3", "--name", "web", &img, "sleep", "1d"]);
    assert!(created.contains("verify: Service web converged") || created.contains("converged"), "{created}");
    let ls = node.docker_ok(&["service", "ls", "--format", "{{.Name}} {{.Mode}} {{.Replicas}}"]);
    assert_eq!(lines(&ls), vec!["web replicated 3/3"], "{ls}");
    let ps = node.docker_ok(&["service", "ps", "web", "--format", "{{.Name}} {{.DesiredState}} {{.CurrentState}}"]);
    let ps = lines(&ps);
    assert_eq!(ps.len(), 3, "{ps:?}");
    for (i, l) in ps.iter().enumerate() {
        assert!(l.starts_with(&format!("web.{} Running Running", i + 1)), "{ps:?}");
    }
    // The containers are the node's own, named and labelled as Docker names them.
    let names = node.docker_ok(&["ps", "--filter", "label=com.docker.swarm.service.name=web", "--format", "{{.Names}}"]);
    let names = lines(&names);
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("web.") && n.len() == "web.1.".len() + 25), "{names:?}");

    // inspect: Docker's defaults inserted, Moby's shape
    let spec = node.docker_ok(&["service", "inspect", "web", "--format", "{{json .Spec}}"]);
    let spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    assert_eq!(spec["Mode"]["Replicated"]["Replicas"], 3);
    assert_eq!(spec["TaskTemplate"]["ContainerSpec"]["Isolation"], "default");
    assert_eq!(spec["TaskTemplate"]["Runtime"], "container");
    assert_eq!(spec["UpdateConfig"]["Order"], "stop-first");
    assert_eq!(spec["TaskTemplate"]["RestartPolicy"]["Condition"], "any");

    // scale
    node.docker_ok(&["service", "scale", "web=5"]);
    let ls = node.docker_ok(&["service", "ls", "--format", "{{.Replicas}}"]);
    assert_eq!(ls.trim(), "5/5");
    node.docker_ok(&["service", "scale", "-d", "web=2"]);
    wait_for(30, "scale down to 2", &node, || {
        let n = lines(&node.docker_ok(&["ps", "-q", "--filter", "label=com.docker.swarm.service.name=web"])).len();
        (n == 2).then_some(())
    });

    // rolling update: every task replaced, the old ones kept as history
    node.docker_ok(&["service", "update", "--env-add", "FOO=bar", "web"]);
    let ps = node.docker_ok(&["service", "ps", "web", "--format", "{{.Name}}|{{.DesiredState}}|{{.CurrentState}}"]);
    let running: Vec<String> = lines(&ps).into_iter().filter(|l| l.contains("|Running|Running")).collect();
    assert_eq!(running.len(), 2, "{ps}");
    assert!(lines(&ps).iter().any(|l| l.starts_with("web.1|Shutdown|Shutdown")), "{ps}");
    let cid = lines(&node.docker_ok(&["ps", "-q", "--filter", "label=com.docker.swarm.service.name=web"]))[0].clone();
    let env = node.docker_ok(&["exec", &cid, "sh", "-c", "echo $FOO"]);
    assert_eq!(env.trim(), "bar");

    // errors as Docker words them
    let o = node.docker(&["service", "create", "-d", "--name", "web", &img, "true"]);
    assert!(out(&o).contains("rpc error: code = AlreadyExists desc = name conflicts with an existing object: service web already exists"), "{}", out(&o));
    let o = node.docker(&["service", "rm", "nosuch"]);
    assert!(out(&o).contains("service nosuch not found"), "{}", out(&o));

    // events of the cluster, scope swarm
    let ev = node.docker_ok(&["events", "--since", "0", "--until", "+1s", "--filter", "type=service", "--format", "{{.Action}} {{.Actor.Attributes.name}} {{.Scope}}"]);
    let ev = lines(&ev);
    assert!(ev.contains(&"create web swarm".to_string()), "{ev:?}");

    // restart policy: on-failure with at most 2 restarts runs the task 3 times, then the
    // slot stays empty (0/1), as swarmkit leaves a dead slot until the service changes
    node.docker_ok(&["service", "create", "-d", "--name", "crash", "--restart-condition", "on-failure", "--restart-max-attempts", "2", "--restart-delay", "200ms", &img, "sh", "-c", "exit 3"]);
    let ps_crash = || lines(&node.docker_ok(&["service", "ps", "crash", "--format", "{{.DesiredState}}|{{.CurrentState}}|{{.Error}}"]));
    let mut ps = Vec::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        ps = ps_crash();
        if ps.len() >= 3 && ps.iter().all(|l| l.starts_with("Shutdown|Failed") && l.ends_with("|\"task: non-zero exit (3)\"")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(ps.len(), 3, "{ps:?}");
    assert!(ps.iter().all(|l| l.starts_with("Shutdown|Failed") && l.ends_with("|\"task: non-zero exit (3)\"")), "{ps:?}");
    // well past the restart delay: no fourth run
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(ps_crash().len(), 3, "{:?}", ps_crash());
    let ls = node.docker_ok(&["service", "ls", "--filter", "name=crash", "--format", "{{.Replicas}}"]);
    assert_eq!(ls.trim(), "0/1");
    node.docker_ok(&["service", "rm", "crash"]);

    // secrets and configs through the CLI, mounted in a task: the secret read-only on
    // a tmpfs at /run/secrets/NAME, the config at its target
    let sf = node.dir.path().join("s1.txt");
    std::fs::write(&sf, "top-secret\n").unwrap();
    let sid = node.docker_ok(&["secret", "create", "s1", sf.to_str().unwrap()]);
    let cf = node.dir.path().join("c1.txt");
    std::fs::write(&cf, "k=v\n").unwrap();
    node.docker_ok(&["config", "create", "c1", cf.to_str().unwrap()]);
    assert_eq!(node.docker_ok(&["secret", "ls", "--format", "{{.ID}} {{.Name}}"]).trim(), format!("{} s1", sid.trim()));
    assert_eq!(node.docker_ok(&["secret", "inspect", "s1", "--format", "{{.Spec.Name}} {{.Spec.Data}}"]).trim(), "s1 []", "a secret's data never comes back");
    assert_eq!(node.docker_ok(&["config", "inspect", "c1", "--format", "{{printf \"%s\" .Spec.Data}}"]).trim(), "k=v");
    node.docker_ok(&["service", "create", "--name", "sec", "--secret", "s1", "--config", "source=c1,target=/etc/c1.conf", &img, "sleep", "1d"]);
    let cid = lines(&node.docker_ok(&["ps", "-q", "--filter", "label=com.docker.swarm.service.name=sec"]))[0].clone();
    assert_eq!(node.docker_ok(&["exec", &cid, "cat", "/run/secrets/s1", "/etc/c1.conf"]), "top-secret\nk=v\n");
    let mounts = node.docker_ok(&["exec", &cid, "cat", "/proc/mounts"]);
    let m = mounts.lines().find(|l| l.split(' ').nth(1) == Some("/run/secrets/s1")).unwrap_or_else(|| panic!("{mounts}"));
    assert!(m.contains(" tmpfs ") && m.contains("ro,"), "{m}");
    assert!(!node.docker(&["exec", &cid, "sh", "-c", "echo x > /run/secrets/s1"]).status.success(), "the secret is writable");
    // The swarm service SIGKILLed: the task files of a task gone from the store (a
    // tmpfs it could not release, stood for by one mounted here) are swept when `berth
    // up` restarts it; the live task keeps its own and its secret.
    let files = node.root.join("run/swarm-files");
    let live_dir = std::fs::read_dir(&files).unwrap().flatten().next().expect("the task's files").path();
    let stray = files.join("0leftoverofakilledservice");
    std::fs::create_dir(&stray).unwrap();
    let st = std::ffi::CString::new(stray.to_str().unwrap()).unwrap();
    let rc = unsafe { libc::mount(c"tmpfs".as_ptr(), st.as_ptr(), c"tmpfs".as_ptr(), 0, c"size=64k".as_ptr() as *const libc::c_void) };
    assert_eq!(rc, 0, "mount the stray tmpfs: {}", std::io::Error::last_os_error());
    let mounted = |p: &std::path::Path| {
        let p = p.to_string_lossy().to_string();
        std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().any(|l| l.split(' ').nth(4) == Some(p.as_str()))
    };
    assert!(mounted(&stray) && mounted(&live_dir));
    let old = node.service_pid("swarm").expect("swarm service pid");
    unsafe { libc::kill(old, libc::SIGKILL) };
    wait_for(30, "the swarm service restarted, the stray tmpfs swept", &node, || {
        let back = node.service_pid("swarm").is_some_and(|p| p != old) && node.docker(&["service", "ls"]).status.success();
        (back && !mounted(&stray) && !stray.exists()).then_some(())
    });
    assert!(mounted(&live_dir), "the live task's files were swept");
    wait_for(30, "the node Ready again after the restart", &node, || {
        let ls = node.docker(&["node", "ls", "--format", "{{.Status}} {{.ManagerStatus}}"]);
        (out(&ls).trim() == "Ready Leader").then_some(())
    });
    assert_eq!(node.docker_ok(&["exec", &cid, "cat", "/run/secrets/s1"]), "top-secret\n");
    let o = node.docker(&["secret", "rm", "s1"]);
    assert!(out(&o).contains("secret 's1' is in use by the following service: sec"), "{}", out(&o));
    node.docker_ok(&["service", "rm", "sec"]);
    wait_for(30, "the task files released", &node, || {
        let left = std::fs::read_dir(node.root.join("run/swarm-files")).map(|d| d.count()).unwrap_or(0);
        let ctrs = lines(&node.docker_ok(&["ps", "-aq", "--filter", "label=com.docker.swarm.service.name=sec"])).len();
        (left == 0 && ctrs == 0).then_some(())
    });
    node.docker_ok(&["secret", "rm", "s1"]);
    node.docker_ok(&["config", "rm", "c1"]);
    assert_eq!(node.docker_ok(&["secret", "ls", "-q"]).trim(), "");

    // rm: the tasks' containers go
    node.docker_ok(&["service", "rm", "web"]);
    wait_for(30, "task containers removed", &node, || {
        let n = lines(&node.docker_ok(&["ps", "-aq", "--filter", "label=com.docker.swarm.task"])).len();
        (n == 0).then_some(())
    });
    let ev = node.docker_ok(&["events", "--since", "0", "--until", "+1s", "--filter", "type=service", "--filter", "event=remove", "--format", "{{.Actor.Attributes.name}}"]);
    assert_eq!(lines(&ev), vec!["crash", "sec", "web"], "{ev}");

    // leave: the last manager needs --force, then the node is out of the swarm
    let o = node.docker(&["swarm", "leave"]);
    assert!(out(&o).contains("Removing the last manager erases all current state of the swarm."), "{}\n{}\n{}", out(&o), out(&node.docker(&["node", "ls"])), node.logs());
    node.docker_ok(&["swarm", "leave", "--force"]);
    let info = node.docker_ok(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
    assert_eq!(info.trim(), "inactive");
    assert!(!node.root.join("swarm").exists());
    assert_eq!(swarm_servers(&node), 0, "leave stops the swarm server");
    eprintln!("swarm service RSS after leave: {} KiB", swarm_rss(&node));

    // berth down with a swarm: nothing of it runs after; berth up rejoins from the
    // store (the watched copies start from what the buckets hold)
    node.docker_ok(&["swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", &listen]);
    node.shutdown();
    assert_eq!(swarm_servers(&node), 0, "berth down stops the swarm server");
    node.boot();
    let mut last = String::new();
    let t = Instant::now();
    while last.trim() != "Ready Leader" && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(300));
        last = out(&node.docker(&["node", "ls", "--format", "{{.Status}} {{.ManagerStatus}}"]));
    }
    assert_eq!(last.trim(), "Ready Leader", "{}", node.logs());
    node.docker_ok(&["swarm", "leave", "--force"]);
    assert_eq!(swarm_servers(&node), 0);
}

/// Job modes (API 1.41): tasks run to completion, at most MaxConcurrent at once, and are
/// not run again, also after the swarm service restarts; a forced update runs the job
/// again (a new JobIteration); a global job runs once per node.
#[test]
fn jobs_run_to_completion() {
    require_root!();
    let (node, _reg, img) = fixtures::node_with_busybox();
    let port = free_ports();
    let listen = format!("127.0.0.1:{port}");
    node.docker_ok(&["swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", &listen]);
    // The CLI sends an empty pool: Moby 20.10 then shows none, with /24 subnets.
    let pool = node.docker_ok(&["info", "--format", "{{json .Swarm.Cluster.DefaultAddrPool}} {{.Swarm.Cluster.SubnetSize}}"]);
    assert_eq!(pool.trim(), "null 24");

    // The CLI waits for the job as it waits for a service to converge.
    let o = node.docker(&["service", "create", "--mode", "replicated-job", "--replicas", "3", "--max-concurrent", "2", "--name", "job", &img, "sh", "-c", "sleep 1"]);
    assert!(o.status.success(), "{}\n{}", out(&o), node.logs());
    let completed = |node: &Node, name: &str| -> Vec<String> {
        let ps = node.docker_ok(&["service", "ps", name, "--format", "{{.Name}} {{.DesiredState}} {{.CurrentState}}"]);
        lines(&ps)
    };
    let ps = completed(&node, "job");
    assert_eq!(ps.len(), 3, "{ps:?}");
    assert!(ps.iter().all(|l| l.contains(" Complete Complete")), "{ps:?}");
    let ls = node.docker_ok(&["service", "ls", "--format", "{{.Name}} {{.Mode}} {{.Replicas}}"]);
    assert!(ls.contains("job replicated job") && ls.contains("(3/3 completed)"), "{ls}");
    let spec = node.docker_ok(&["service", "inspect", "job", "--format", "{{json .Spec.Mode}} {{.JobStatus.JobIteration.Index}}"]);
    assert!(spec.starts_with(r#"{"ReplicatedJob":{"MaxConcurrent":2,"TotalCompletions":3}} "#), "{spec}");
    let iteration: u64 = spec.split_whitespace().last().unwrap().parse().unwrap();
    let ids = node.docker_ok(&["service", "ps", "job", "-q"]);
    for id in lines(&ids) {
        let it = node.docker_ok(&["inspect", "--type", "task", "--format", "{{.JobIteration.Index}}", &id]);
        assert_eq!(it.trim(), iteration.to_string());
    }

    // The swarm service SIGKILLed: a completed job is not run again.
    let old = node.service_pid("swarm").expect("swarm service pid");
    unsafe { libc::kill(old, libc::SIGKILL) };
    wait_for(30, "the swarm service back", &node, || (node.service_pid("swarm").is_some_and(|p| p != old) && node.docker(&["service", "ls"]).status.success()).then_some(()));
    std::thread::sleep(Duration::from_secs(3));
    let ps = completed(&node, "job");
    assert_eq!(ps.len(), 3, "a completed job ran again after a restart: {ps:?}");

    // A forced update is a new execution: three more completions, a higher iteration.
    let o = node.docker(&["service", "update", "--force", "job"]);
    assert!(o.status.success(), "{}", out(&o));
    wait_for(60, "the second execution", &node, || {
        let ps = completed(&node, "job");
        (ps.iter().filter(|l| l.contains(" Complete Complete")).count() == 6).then_some(())
    });
    let again: u64 = node.docker_ok(&["service", "inspect", "job", "--format", "{{.JobStatus.JobIteration.Index}}"]).trim().parse().unwrap();
    assert!(again > iteration, "{again} after {iteration}");

    // A global job: one task on the (only) node, complete.
    let o = node.docker(&["service", "create", "--mode", "global-job", "--name", "gjob", &img, "true"]);
    assert!(o.status.success(), "{}\n{}", out(&o), node.logs());
    let ps = completed(&node, "gjob");
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert!(ps[0].contains(" Complete Complete"), "{ps:?}");
    let ls = node.docker_ok(&["service", "ls", "--filter", "mode=global-job", "--format", "{{.Name}}"]);
    assert_eq!(lines(&ls), vec!["gjob"]);

    node.docker_ok(&["service", "rm", "job", "gjob"]);
    node.docker_ok(&["swarm", "leave", "--force"]);
}
