//! What strict clients (docker-py, compose, testcontainers, dockerode) see that the
//! docker CLI forgives: exact key names, Docker's order of operations, Docker's
//! messages. Each test drives a node started by `berth up` over raw HTTP on its
//! socket (as a strict client parses it) or through the docker CLI.

use berth_e2e::fixtures::node_with_busybox;
use berth_e2e::{demux, http};

/// `POST /containers/{id}/exec` answers `{"Id"}`; the exec start is hijacked before
/// the process starts, so a command that cannot start is reported on the stream's
/// stdout (`OCI runtime exec failed...\r\n`) with exit code 127, as Moby does; a
/// start without `Upgrade` gets the output as a 200 body; the output is framed
/// unless the start request asks for a TTY.
#[test]
fn exec_answers_and_streams_as_docker() {
    berth_e2e::require_root!();
    let (node, _reg, img) = node_with_busybox();
    let cid = node.docker_ok(&["run", "-d", &img, "sleep", "300"]).trim().to_string();
    let sock = &node.sock;
    let create = |cmd: &str, tty: bool| {
        let a = http(sock, "POST", &format!("/v1.51/containers/{cid}/exec"), &[], Some(&format!(r#"{{"Cmd":{cmd},"AttachStdout":true,"AttachStderr":true,"Tty":{tty}}}"#)));
        assert_eq!(a.status, 201, "{}", a.text());
        let j = a.json();
        assert!(j.get("id").is_none(), "Docker's key is Id: {j}");
        j["Id"].as_str().expect("Id").to_string()
    };
    let upgrade = [("Connection", "Upgrade"), ("Upgrade", "tcp")];

    // a missing command: 101, then the error on stdout, then exit code 127
    let id = create(r#"["non-existent"]"#, false);
    let a = http(sock, "POST", &format!("/v1.51/exec/{id}/start"), &upgrade, Some(r#"{"Detach":false,"Tty":false}"#));
    assert_eq!(a.status, 101);
    assert_eq!(a.header("Content-Type"), Some("application/vnd.docker.multiplexed-stream"));
    let frames = demux(&a.body);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].0, 1);
    let msg = String::from_utf8_lossy(&frames[0].1).to_string();
    assert!(msg.starts_with("OCI runtime exec failed: exec failed: unable to start container process: ") && msg.ends_with("\r\n"), "{msg:?}");
    let j = http(sock, "GET", &format!("/exec/{id}/json"), &[], None).json();
    assert_eq!(j["ExitCode"], 127, "{j}");
    assert_eq!(j["Running"], false);

    // an exec made with a TTY, started without one: Moby frames by the start request
    let id = create(r#"["printf","hi"]"#, true);
    let a = http(sock, "POST", &format!("/v1.51/exec/{id}/start"), &upgrade, Some(r#"{"Detach":false,"Tty":false}"#));
    assert_eq!(demux(&a.body), vec![(1u8, b"hi".to_vec())]);

    // no Upgrade header: 200 with the raw-stream type and the output as the body
    let id = create(r#"["sh","-c","echo out; echo err >&2"]"#, false);
    let a = http(sock, "POST", &format!("/v1.51/exec/{id}/start"), &[], Some(r#"{"Detach":false,"Tty":false}"#));
    assert_eq!(a.status, 200);
    assert_eq!(a.header("Content-Type"), Some("application/vnd.docker.raw-stream"));
    let mut frames = demux(&a.body);
    frames.sort();
    assert_eq!(frames, vec![(1u8, b"out\n".to_vec()), (2u8, b"err\n".to_vec())]);

    // an unknown exec is an error before any hijack
    let a = http(sock, "POST", "/v1.51/exec/nope/start", &upgrade, Some(r#"{"Detach":false,"Tty":false}"#));
    assert_eq!((a.status, a.json()["message"].as_str()), (404, Some("No such exec instance: nope")));
}

/// A client that reads the 101 late and through a buffered reader, as docker-py does
/// (it then reads the raw socket: whatever came with the 101 is lost, docker-py issue
/// 1799), still gets the whole output: the exec's process starts once the client has
/// read the 101. Without that, `echo hello` answers in the same read as the 101.
#[test]
fn exec_starts_after_the_client_read_the_101() {
    use std::io::{Read, Write};
    berth_e2e::require_root!();
    let (node, _reg, img) = node_with_busybox();
    let cid = node.docker_ok(&["run", "-d", &img, "sleep", "300"]).trim().to_string();
    let sock = &node.sock;
    for tty in [false, true] {
        let a = http(sock, "POST", &format!("/v1.51/containers/{cid}/exec"), &[], Some(&format!(r#"{{"Cmd":["echo","hello"],"AttachStdout":true,"AttachStderr":true,"Tty":{tty}}}"#)));
        let id = a.json()["Id"].as_str().expect("Id").to_string();
        let body = format!(r#"{{"Detach":false,"Tty":{tty}}}"#);
        let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
        write!(s, "POST /v1.51/exec/{id}/start HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        // the engine answers meanwhile; a loaded client reads this late
        std::thread::sleep(std::time::Duration::from_millis(400));
        s.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
        let mut buf = vec![0u8; 8192];
        let n = s.read(&mut buf).unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(head.starts_with("HTTP/1.1 101") && head.ends_with("\r\n\r\n"), "tty {tty}: the output came with the 101: {head:?}");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        if tty {
            assert_eq!(String::from_utf8_lossy(&rest), "hello\r\n");
        } else {
            assert_eq!(demux(&rest), vec![(1u8, b"hello\n".to_vec())]);
        }
    }
}

/// Bodies are decoded as Go decodes them for Moby: a key names a field
/// case-insensitively (docker-py sends exec create's `detachKeys`), a map's keys stay
/// as sent; a container's endpoints have all of Go's keys (docker-py reads
/// `Aliases`); a network's `IPAM.Options` is `null` unless the create gave options
/// (docker-py gives none, the CLI gives `{}`).
#[test]
fn bodies_decode_as_go_and_ipam_options_as_given() {
    berth_e2e::require_root!();
    let (node, _reg, img) = node_with_busybox();
    let sock = &node.sock;
    let cid = node.docker_ok(&["run", "-d", &img, "sleep", "300"]).trim().to_string();
    let a = http(sock, "POST", &format!("/v1.51/containers/{cid}/exec"), &[], Some(r#"{"Cmd":["cat"],"attachStdin":true,"detachKeys":"ctrl-p","Tty":true}"#));
    assert_eq!(a.status, 201, "{}", a.text());
    let id = a.json()["Id"].as_str().unwrap().to_string();
    let j = http(sock, "GET", &format!("/v1.51/exec/{id}/json"), &[], None).json();
    assert_eq!(j["DetachKeys"], "ctrl-p", "{j}");
    assert_eq!(j["OpenStdin"], true, "{j}");
    // an endpoint has every key of Go's EndpointSettings, unset ones null or zero
    let j = http(sock, "GET", &format!("/v1.51/containers/{cid}/json"), &[], None).json();
    let ep = j["NetworkSettings"]["Networks"]["bridge"].as_object().expect("bridge endpoint").clone();
    for k in ["IPAMConfig", "Links", "Aliases", "MacAddress", "DriverOpts", "NetworkID", "EndpointID", "Gateway", "IPAddress", "IPPrefixLen", "DNSNames"] {
        assert!(ep.contains_key(k), "no {k} in {ep:?}");
    }
    assert_eq!(ep["DriverOpts"], serde_json::Value::Null);

    let a = http(sock, "POST", "/v1.51/networks/create", &[], Some(r#"{"Name":"ipam-none","IPAM":{"Driver":"default","Config":[]},"labels":{"lower":"kept"}}"#));
    assert_eq!(a.status, 201, "{}", a.text());
    let j = http(sock, "GET", "/v1.51/networks/ipam-none", &[], None).json();
    assert_eq!(j["IPAM"]["Options"], serde_json::Value::Null, "{j}");
    assert_eq!(j["Labels"], serde_json::json!({"lower": "kept"}), "{j}");
    node.docker_ok(&["network", "create", "ipam-cli"]);
    let j = http(sock, "GET", "/v1.51/networks/ipam-cli", &[], None).json();
    assert_eq!(j["IPAM"]["Options"], serde_json::json!({}), "{j}");
    let j = http(sock, "GET", "/v1.51/networks/bridge", &[], None).json();
    assert_eq!(j["IPAM"]["Options"], serde_json::Value::Null, "{j}");
}

/// The process's supplementary groups are Moby's (20.10.18 and later): the primary
/// group first, then the user's groups from the image's /etc/group (when no group is
/// given), then `--group-add`; for `run` and for `exec`.
#[test]
fn supplementary_groups_as_docker() {
    berth_e2e::require_root!();
    let (node, _reg, img) = node_with_busybox();
    let id = |args: &[&str]| node.docker_ok(args).trim().to_string();
    assert_eq!(id(&["run", "--rm", "-u", "1234:5678", &img, "id"]), "uid=1234 gid=5678 groups=5678");
    assert_eq!(id(&["run", "--rm", "-u", "1234", &img, "id"]), "uid=1234 gid=0(root) groups=0(root)");
    assert_eq!(id(&["run", "--rm", "-u", "nobody", "--group-add", "777", &img, "id"]), "uid=65534(nobody) gid=65534(nogroup) groups=777,65534(nogroup)");
    let cid = id(&["run", "-d", "-u", "1234:5678", &img, "sleep", "300"]);
    assert_eq!(id(&["exec", &cid, "id"]), "uid=1234 gid=5678 groups=5678");
    assert_eq!(id(&["exec", "-u", "0", &cid, "id"]), "uid=0(root) gid=0(root) groups=0(root)");
}

/// `kill` (SIGKILL) answers once the container is dead, so a `remove` right after is
/// not refused "container is running"; `commit` with `pause=true` of a stopped
/// container commits it; `--runtime runc` is kept as asked and an unknown runtime is
/// refused with Moby's message; `Config.Env` lists the user's variables before the
/// image's (Docker's merge order); a log driver Docker does not have is a plugin to
/// Docker, and refused as one.
#[test]
fn lifecycle_answers_as_docker() {
    berth_e2e::require_root!();
    let (node, _reg, img) = node_with_busybox();
    let sock = &node.sock;
    for _ in 0..5 {
        let cid = node.docker_ok(&["run", "-d", &img, "sleep", "300"]).trim().to_string();
        let a = http(sock, "POST", &format!("/v1.51/containers/{cid}/kill"), &[], None);
        assert_eq!(a.status, 204, "{}", a.text());
        let a = http(sock, "DELETE", &format!("/v1.51/containers/{cid}"), &[], None);
        assert_eq!(a.status, 204, "remove right after kill: {}", a.text());
    }

    let cid = node.docker_ok(&["run", "-d", &img, "touch", "/committed"]).trim().to_string();
    node.docker_ok(&["wait", &cid]);
    let a = http(sock, "POST", &format!("/v1.51/commit?container={cid}&pause=1&repo=committed"), &[], Some("{}"));
    assert_eq!(a.status, 201, "{}", a.text());
    assert!(a.json()["Id"].as_str().is_some_and(|i| i.starts_with("sha256:")), "{}", a.text());
    node.docker_ok(&["run", "--rm", "committed", "ls", "/committed"]);
    // docker-py's order: start, then commit while the command may be exiting
    for _ in 0..10 {
        let a = http(sock, "POST", "/v1.51/containers/create", &[], Some(&format!(r#"{{"Image":"{img}","Cmd":["touch","/x"]}}"#)));
        let id = a.json()["Id"].as_str().unwrap().to_string();
        assert_eq!(http(sock, "POST", &format!("/v1.51/containers/{id}/start"), &[], None).status, 204);
        let a = http(sock, "POST", &format!("/v1.51/commit?container={id}"), &[], Some("{}"));
        assert_eq!(a.status, 201, "commit of a container exiting: {}", a.text());
    }

    let body = format!(r#"{{"Image":"{img}","HostConfig":{{"Runtime":"runc"}}}}"#);
    let a = http(sock, "POST", "/v1.51/containers/create", &[], Some(&body));
    assert_eq!(a.status, 201, "{}", a.text());
    let id = a.json()["Id"].as_str().unwrap().to_string();
    let j = http(sock, "GET", &format!("/v1.51/containers/{id}/json"), &[], None).json();
    assert_eq!(j["HostConfig"]["Runtime"], "runc");
    let a = http(sock, "POST", "/v1.51/containers/create", &[], Some(&format!(r#"{{"Image":"{img}"}}"#)));
    let id = a.json()["Id"].as_str().unwrap().to_string();
    let j = http(sock, "GET", &format!("/v1.51/containers/{id}/json"), &[], None).json();
    assert_eq!(j["HostConfig"]["Runtime"], "runc", "the default runtime is Docker's name");
    let o = node.docker(&["create", "--runtime", "nvidia", &img]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("Unknown runtime specified nvidia"), "{}", String::from_utf8_lossy(&o.stderr));
    // Config.Env: the user's variables in the order sent, then the image's
    let a = http(sock, "POST", "/v1.51/containers/create", &[], Some(&format!(r#"{{"Image":"{img}","Env":["A=1","PATH=/bin","B=2"]}}"#)));
    let id = a.json()["Id"].as_str().unwrap().to_string();
    let j = http(sock, "GET", &format!("/v1.51/containers/{id}/json"), &[], None).json();
    assert_eq!(j["Config"]["Env"], serde_json::json!(["A=1", "PATH=/bin", "B=2"]));
    let cid = node.docker_ok(&["create", "-e", "A=1", &img]).trim().to_string();
    let env = node.docker_ok(&["inspect", "-f", "{{json .Config.Env}}", &cid]);
    assert_eq!(env.trim(), r#"["A=1","PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]"#);
    let o = node.docker(&["create", "--log-driver", "asdf", &img]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("error looking up logging plugin asdf: plugin \"asdf\" not found"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Docker's routes berth does not serve answer as Moby does with the feature off
/// (swarm inactive); headers are written in Go's canonical case.
#[test]
fn unserved_routes_answer_as_moby_with_the_feature_off() {
    berth_e2e::require_root!();
    let node = berth_e2e::Node::start();
    let sock = &node.sock;
    let not_manager = "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.";
    // a create with a body: Moby decodes it first (an empty body is its 400 "got EOF
    // while reading request body"), then answers that the swarm is off
    for (m, p, body) in [("GET", "/v1.41/swarm", None), ("GET", "/services", None), ("GET", "/v1.51/nodes/x", None), ("POST", "/secrets/create", Some("{}")), ("DELETE", "/configs/x", None)] {
        let a = http(sock, m, p, &[], body);
        assert_eq!((a.status, a.json()["message"].as_str()), (503, Some(not_manager)), "{m} {p}");
    }
    // a body that is not JSON: Moby 20.10's answers (gateway util::json_body, config_body)
    for (p, body, want) in [
        ("/v1.41/secrets/create", "", (400, "got EOF while reading request body")),
        ("/v1.41/networks/create", " ", (400, "got EOF while reading request body")),
        ("/v1.41/volumes/create", "{invalid json", (400, "invalid character 'i' looking for beginning of object key string")),
        ("/v1.41/containers/create", "", (500, "EOF")),
    ] {
        let a = http(sock, "POST", p, &[], Some(body));
        assert_eq!((a.status, a.json()["message"].as_str()), (want.0, Some(want.1)), "POST {p} {body:?}");
    }
    // Moby's CheckForJSON: another Content-Type, or none with a body, is refused on the
    // routes that check it (dockerd 20.10.24's answers); others do not look at it
    for (p, ct) in [("/v1.41/volumes/create", "text/plain"), ("/v1.41/containers/create", "application/x-www-form-urlencoded"), ("/v1.41/networks/create", "application/json;;bad"), ("/v1.41/exec/x/start", "")] {
        let a = berth_e2e::http_raw(sock, "POST", p, &[], Some((b"{}", ct)));
        assert_eq!((a.status, a.json()["message"].as_str()), (400, Some(format!("Content-Type specified ({ct}) must be 'application/json'").as_str())), "POST {p} {ct}");
    }
    let a = berth_e2e::http_raw(sock, "POST", "/v1.41/volumes/create", &[], Some((br#"{"Name":"ct-ok"}"#, "APPLICATION/JSON; charset=utf-8")));
    assert_eq!(a.status, 201);
    let a = http(sock, "POST", "/v1.51/swarm/leave?force=1", &[], None);
    assert_eq!((a.status, a.json()["message"].as_str()), (503, Some("This node is not part of a swarm")));
    let a = http(sock, "GET", "/v1.51/tasks/x/logs", &[], None);
    assert_eq!((a.status, a.json()["message"].as_str()), (500, Some("Bad parameters: you must choose at least one stream")));
    let a = http(sock, "GET", "/v1.51/nope", &[], None);
    assert_eq!((a.status, a.json()["message"].as_str()), (404, Some("page not found")));
    let a = http(sock, "GET", "/v1.51/swarm/leave", &[], None);
    assert_eq!(a.status, 404, "another method is Moby's 404");
    let a = http(sock, "GET", "/_ping", &[], None);
    let names: Vec<&str> = a.headers.iter().map(|(k, _)| k.as_str()).collect();
    for h in ["Api-Version", "Docker-Experimental", "Ostype", "Server", "Content-Type"] {
        assert!(names.contains(&h), "{h} in {names:?}");
    }
}

/// Whether a process's cgroup is frozen: its v1 freezer cgroup says FROZEN, or (no v1
/// freezer on the host) its unified cgroup's `cgroup.freeze` is 1.
fn frozen(pid: &str) -> bool {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    if let Some(p) = cg.lines().find_map(|l| l.split_once(":freezer:").map(|(_, p)| p.to_string())) {
        let s = std::fs::read_to_string(format!("/sys/fs/cgroup/freezer{p}/freezer.state")).unwrap();
        return s.trim() == "FROZEN";
    }
    let p = cg.lines().find_map(|l| l.strip_prefix("0::")).expect("a v1 freezer or a unified cgroup");
    let unified = if std::path::Path::new("/sys/fs/cgroup/unified").is_dir() { "/sys/fs/cgroup/unified" } else { "/sys/fs/cgroup" };
    std::fs::read_to_string(format!("{unified}{p}/cgroup.freeze")).unwrap().trim() == "1"
}

/// `pause` freezes the container's cgroup and `unpause` thaws it; `stop` and `rm -f`
/// of a paused container thaw it first; and what `pause`, `unpause`, `exec`, `start`,
/// `rm`, `kill` and `top` answer by the container's status (paused, running,
/// exited), in the words the runtime's status guards give.
#[test]
fn pause_unpause_and_the_status_guards() {
    berth_e2e::require_root!();
    let (node, _reg, img) = node_with_busybox();
    let fails = |args: &[&str], want: &str| {
        let o = node.docker(args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err:?} lacks {want:?}");
    };
    let status = |c: &str| node.docker_ok(&["inspect", "-f", "{{.State.Status}}", c]).trim().to_string();
    let cid = node.docker_ok(&["run", "-d", "--name", "pz", &img, "sleep", "300"]).trim().to_string();
    let pid = node.docker_ok(&["inspect", "-f", "{{.State.Pid}}", &cid]).trim().to_string();
    assert!(!frozen(&pid));
    fails(&["unpause", "pz"], &format!("container {cid} is not paused"));

    node.docker_ok(&["pause", "pz"]);
    assert_eq!(status("pz"), "paused");
    assert!(frozen(&pid), "pause freezes the cgroup");
    fails(&["pause", "pz"], &format!("Container {cid} is already paused"));
    fails(&["exec", "pz", "true"], &format!("Container {cid} is paused, unpause the container before exec"));
    fails(&["start", "pz"], "cannot start a paused container, try unpause instead");
    fails(&["rm", "pz"], "cannot remove container \"/pz\": container is paused: stop the container before removing or force remove");
    node.docker_ok(&["top", "pz"]);
    node.docker_ok(&["unpause", "pz"]);
    assert_eq!(status("pz"), "running");
    assert!(!frozen(&pid), "unpause thaws the cgroup");
    node.docker_ok(&["exec", "pz", "true"]);
    fails(&["rm", "pz"], "cannot remove container \"/pz\": container is running: stop the container before removing or force remove");

    // stop of a paused container thaws it, then signals it
    node.docker_ok(&["pause", "pz"]);
    node.docker_ok(&["stop", "-t", "1", "pz"]);
    assert_eq!(status("pz"), "exited");
    fails(&["pause", "pz"], &format!("container {cid} is not running"));
    fails(&["unpause", "pz"], &format!("container {cid} is not paused"));
    fails(&["kill", "pz"], &format!("Cannot kill container: pz: Container {cid} is not running"));
    fails(&["exec", "pz", "true"], &format!("container {cid} is not running"));
    fails(&["top", "pz"], &format!("container {cid} is not running"));
    node.docker_ok(&["rm", "pz"]);

    // rm -f of a paused container: thawed, killed, removed
    let cid = node.docker_ok(&["run", "-d", &img, "sleep", "300"]).trim().to_string();
    node.docker_ok(&["pause", &cid]);
    node.docker_ok(&["rm", "-f", &cid]);
    assert!(!node.docker(&["inspect", &cid]).status.success(), "removed");
}
