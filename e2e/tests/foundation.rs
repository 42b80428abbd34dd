//! Issue 2: the foundation, through the real docker CLI against `berth up`.

use berth_e2e::{Node, NodeOpts};
use std::time::{Duration, Instant};

#[test]
fn docker_version_and_info() {
    let node = Node::start();
    let v = node.docker_ok(&["version", "--format", "{{.Server.Version}} {{.Server.APIVersion}} {{.Server.Os}}/{{.Server.Arch}}"]);
    let parts: Vec<&str> = v.split_whitespace().collect();
    assert_eq!(parts.len(), 3, "{v}");
    assert!(!parts[0].is_empty());
    let api: Vec<u32> = parts[1].split('.').map(|x| x.parse().unwrap()).collect();
    assert!(api[0] == 1 && api[1] >= 45, "API version {}", parts[1]);
    assert_eq!(parts[2], "linux/amd64");
    // the CLI negotiated without downgrading below its own maximum
    let neg = node.docker_ok(&["version", "--format", "{{.Client.APIVersion}}"]);
    assert!(neg.trim().starts_with("1.5"), "negotiated {neg}");

    let info = node.docker_ok(&["info", "--format", "{{json .}}"]);
    let j: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(j["OSType"], "linux");
    assert_eq!(j["Driver"], "overlay2");
    assert!(j["NCPU"].as_i64().unwrap() >= 1);
    assert!(j["MemTotal"].as_i64().unwrap() > 0);
    assert_eq!(j["DockerRootDir"], node.root.display().to_string());
    assert!(!j["ID"].as_str().unwrap().is_empty());
    assert!(j["Warnings"].as_array().map(|w| w.is_empty()).unwrap_or(true), "{}", j["Warnings"]);
    // the plain `docker info` and `docker system info` render
    node.docker_ok(&["info"]);
    node.docker_ok(&["system", "info"]);
}

#[test]
fn api_errors_and_versions() {
    let node = Node::start();
    // unknown route: 404 with a JSON message; too old a version: 400
    let o = curl(&node, "/v1.45/no/such/route");
    assert!(o.starts_with("HTTP/1.1 404"), "{o}");
    assert!(o.contains(r#"{"message":"page not found"}"#), "{o}");
    let o = curl(&node, "/v1.12/version");
    assert!(o.starts_with("HTTP/1.1 400"), "{o}");
    assert!(o.contains("Minimum supported API version is 1.24"), "{o}");
    let o = curl(&node, "/_ping");
    assert!(o.starts_with("HTTP/1.1 200"), "{o}");
    assert!(o.to_ascii_lowercase().contains("api-version: 1.5"), "{o}");
    assert!(o.ends_with("OK"), "{o}");
    // socket is 0660
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&node.sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
}

fn curl(node: &Node, path: &str) -> String {
    let o = std::process::Command::new("curl")
        .args(["-s", "-i", "--unix-socket"])
        .arg(&node.sock)
        .arg(format!("http://localhost{path}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).replace("\r\n", "\n")
}

#[test]
fn bus_refuses_clients_without_credentials() {
    let node = Node::start();
    let url = node.state()["nats_url"].as_str().unwrap().to_string();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let r = async_nats::ConnectOptions::new()
            .max_reconnects(Some(0))
            .connection_timeout(Duration::from_secs(3))
            .connect(&url)
            .await;
        let e = r.err().expect("an anonymous client must be refused");
        let msg = e.to_string().to_lowercase();
        assert!(msg.contains("authorization") || msg.contains("auth"), "{msg}");
        // a service's credentials cannot reach another service's subjects
        let creds = berth_bus::Creds::load(&node.root.join("bus/creds/network")).unwrap();
        let c = async_nats::ConnectOptions::with_user_and_password(creds.user, creds.password)
            .connect(&url)
            .await
            .unwrap();
        let mut errs = Vec::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        drop(c);
        let creds = berth_bus::Creds::load(&node.root.join("bus/creds/network")).unwrap();
        let c = async_nats::ConnectOptions::with_user_and_password(creds.user, creds.password)
            .event_callback(move |ev| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(ev.to_string());
                }
            })
            .connect(&url)
            .await
            .unwrap();
        let _sub = c.subscribe("berth.v1.images.>").await.unwrap();
        c.publish("berth.v1.events.container.start", "x".into()).await.unwrap();
        c.flush().await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            errs.push(ev);
            if errs.len() >= 2 {
                break;
            }
        }
        let all = errs.join(" | ").to_lowercase();
        assert!(all.contains("permissions violation"), "expected permission errors, got: {all}");
    });
}

#[test]
fn killed_services_come_back() {
    berth_e2e::require_root!();
    let node = Node::start_opts(NodeOpts::default());
    for svc in ["storage", "images", "network", "runtime", "builder", "swarm", "gateway"] {
        let pid = node.service_pid(svc).unwrap_or_else(|| panic!("no pid for {svc}"));
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let t = Instant::now();
        loop {
            let o = node.docker(&["info", "--format", "{{json .Warnings}}"]);
            let back = node.service_pid(svc).is_some_and(|p| p != pid);
            if o.status.success() && back {
                let w = String::from_utf8_lossy(&o.stdout).to_string();
                if !w.contains(&format!("the {svc} service")) {
                    break;
                }
            }
            assert!(t.elapsed() < Duration::from_secs(10), "{svc} did not come back:\n{}", node.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{svc}: docker info answered again {:?} after SIGKILL", t.elapsed());
    }
}

#[test]
fn node_stops_on_sigterm() {
    let mut node = Node::start();
    let pids: Vec<i32> = ["storage", "gateway"].iter().filter_map(|s| node.service_pid(s)).collect();
    let t = Instant::now();
    let st = node.shutdown().expect("exit status");
    assert!(st.success(), "{st}");
    assert!(t.elapsed() < Duration::from_secs(15));
    for p in pids {
        assert!(unsafe { libc::kill(p, 0) } != 0, "pid {p} still alive");
    }
    assert!(!node.sock.exists(), "socket left behind");
}
