//! Strict clients other than the docker CLI, each installed from its package registry
//! and driven against a node started by `berth up` (issue 16): docker-compose 1.29
//! (Debian's), testcontainers-python (PyPI), dockerode (npm). Their programs live in
//! e2e/clients/; the venv and node_modules are made under target/ once and reused.
//! Each test fails (never skips) when its client cannot be installed: CI installs
//! them (deploy/install-deps.sh for docker-compose, node and npm).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use berth_e2e::fixtures::{node_with_busybox, run};
use berth_e2e::Node;

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

fn work_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/client-libs").join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Run with a deadline (a client that hangs fails the test instead of CI), the
/// node's logs in the panic when it fails.
fn run_client(node: &Node, what: &str, cmd: &mut Command) -> String {
    let mut c = Command::new("timeout");
    c.arg("--kill-after=10").arg("300").arg(cmd.get_program()).args(cmd.get_args());
    if let Some(d) = cmd.get_current_dir() {
        c.current_dir(d);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let o: Output = c.output().unwrap_or_else(|e| panic!("{what}: cannot run {:?}: {e}", cmd.get_program()));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() {
        panic!("{what} failed ({}):\nstdout: {out}\nstderr: {}\n{}", o.status, String::from_utf8_lossy(&o.stderr), node.logs());
    }
    out
}

fn need(tool: &str) {
    let ok = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success());
    assert!(ok, "{tool} is not installed: run deploy/install-deps.sh");
}

/// docker-compose 1.29: `up -d` of a two-service app with a user network, a named
/// volume and a build; `ps`, `logs`, `exec`; `down -v` leaves nothing.
#[test]
fn compose_up_ps_logs_exec_down() {
    berth_e2e::require_root!();
    need("docker-compose");
    let (node, _reg, img) = node_with_busybox();
    let app = node.dir.path().join("app");
    std::fs::create_dir_all(app.join("web")).unwrap();
    std::fs::write(
        app.join("web/Dockerfile"),
        format!("FROM {img}\nRUN mkdir -p /www && echo hello-from-web > /www/index.html\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"),
    )
    .unwrap();
    std::fs::write(
        app.join("docker-compose.yml"),
        format!(
            r#"version: "3.7"
services:
  web:
    build: ./web
    networks: [back]
    volumes: ["data:/data"]
  client:
    image: {img}
    command: ["sh", "-c", "echo client-started; while :; do wget -q -O - http://web:8080/ > /data/got 2>/dev/null && echo fetched; sleep 1; done"]
    networks: [back]
    volumes: ["data:/data"]
    depends_on: [web]
networks:
  back: {{}}
volumes:
  data: {{}}
"#
        ),
    )
    .unwrap();
    let compose = |args: &[&str]| {
        let mut c = Command::new("docker-compose");
        c.args(["-p", "bapp"]).args(args).current_dir(&app).env("DOCKER_HOST", node.host()).env("COMPOSE_INTERACTIVE_NO_CLI", "1");
        run_client(&node, &format!("docker-compose {}", args.join(" ")), &mut c)
    };
    compose(&["up", "-d"]);
    let ps = compose(&["ps"]);
    for name in ["bapp_web_1", "bapp_client_1"] {
        let line = ps.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} not in ps:\n{ps}"));
        assert!(line.contains(" Up"), "{line}");
    }
    // the client reaches web by its service name on the user network
    let t0 = Instant::now();
    let logs = loop {
        let logs = compose(&["logs", "--no-color", "client"]);
        if logs.contains("fetched") || t0.elapsed() > Duration::from_secs(60) {
            break logs;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(logs.contains("client_1  | client-started") && logs.contains("fetched"), "{logs}");
    // exec through compose (docker-py underneath), reading the shared volume
    assert_eq!(compose(&["exec", "-T", "client", "cat", "/data/got"]), "hello-from-web\n");
    let j: serde_json::Value = serde_json::from_str(&node.docker_ok(&["inspect", "bapp_web_1"])).unwrap();
    assert_eq!(j[0]["Config"]["Labels"]["com.docker.compose.service"], "web", "{j}");
    assert!(j[0]["NetworkSettings"]["Networks"]["bapp_back"]["Aliases"].as_array().unwrap().iter().any(|a| a == "web"), "{j}");
    compose(&["down", "-v"]);
    assert_eq!(node.docker_ok(&["ps", "-aq"]), "");
    assert_eq!(node.docker_ok(&["volume", "ls", "-q"]), "");
    assert!(!node.docker_ok(&["network", "ls"]).contains("bapp_back"));
    assert_eq!(node.leftovers_all(), Vec::<String>::new());
}

/// testcontainers-python: a container with an exposed port, waited for by a log line
/// and reached on its published port; removed when the block ends. Ryuk disabled
/// (its image is on Docker Hub only).
#[test]
fn testcontainers_python_exposed_port_and_log_wait() {
    berth_e2e::require_root!();
    let venv = work_dir("testcontainers-venv");
    if !venv.join("bin/python").exists() || Command::new(venv.join("bin/python")).args(["-c", "import testcontainers"]).output().map_or(true, |o| !o.status.success()) {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        run(Command::new(venv.join("bin/pip")).args(["install", "-q", "testcontainers==4.15.0"]));
    }
    let (node, _reg, img) = node_with_busybox();
    let mut c = Command::new(venv.join("bin/python"));
    c.arg(clients_dir().join("testcontainers/test.py"))
        .env("DOCKER_HOST", node.host())
        .env("IMAGE", &img)
        .env("TESTCONTAINERS_RYUK_DISABLED", "true");
    let out = run_client(&node, "testcontainers-python", &mut c);
    assert!(out.contains("testcontainers: ok"), "{out}");
    assert_eq!(node.docker_ok(&["ps", "-aq"]), "", "the container outlived the with block");
}

/// dockerode: create with stdin, attach (hijacked, demultiplexed), start, wait, logs,
/// inspect, exec with its exit code, list, remove, 404 on a removed container
/// (e2e/clients/dockerode/test.js).
#[test]
fn dockerode_create_attach_logs_exec_inspect() {
    berth_e2e::require_root!();
    need("node");
    need("npm");
    let dir = work_dir("dockerode");
    for f in ["package.json", "package-lock.json", "test.js"] {
        std::fs::copy(clients_dir().join("dockerode").join(f), dir.join(f)).unwrap();
    }
    if !dir.join("node_modules/dockerode").is_dir() {
        run(Command::new("npm").args(["ci", "--silent", "--no-audit", "--no-fund"]).current_dir(&dir));
    }
    let (node, _reg, img) = node_with_busybox();
    let mut c = Command::new("node");
    c.arg("test.js").current_dir(&dir).env("DOCKER_SOCK", &node.sock).env("IMAGE", &img);
    let out = run_client(&node, "dockerode", &mut c);
    assert!(out.contains("dockerode: ok"), "{out}");
    assert_eq!(node.docker_ok(&["ps", "-aq"]), "");
}
