//! What the people who run berth see: `docker events` history and live stream for
//! a container's life, and a real Prometheus (Debian's `prometheus`) scraping the
//! node's `metrics-addr` and answering the container count through its query API.

use berth_e2e::fixtures::{node_with_busybox_opts, Registry};
use berth_e2e::{free_port, http_get, require_root, Node, NodeOpts};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn node_with_busybox(extra: serde_json::Map<String, serde_json::Value>) -> (Node, Registry, String) {
    node_with_busybox_opts(NodeOpts { config: extra, ..Default::default() })
}

fn now_unix() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn events_of_run_rm_in_order_and_live() {
    require_root!();
    let (node, _reg, img) = node_with_busybox(Default::default());
    let name = format!("ev-{}", berth_e2e::uniq());
    let since = format!("{:.3}", now_unix() - 1.0);
    node.docker_ok(&["run", "--rm", "--name", &name, &img, "true"]);
    let until = format!("{:.3}", now_unix() + 1.0);
    let out = node.docker_ok(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        &format!("container={name}"),
        "--format",
        "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}",
    ]);
    let actions: Vec<&str> = out.lines().collect();
    let want: Vec<String> =
        ["create", "attach", "start", "die", "destroy"].iter().map(|a| format!("container {a} {name}")).collect();
    assert_eq!(actions, want, "events of docker run --rm, as Moby sends them");
    // the die event carries the exit code
    let die = node.docker_ok(&[
        "events", "--since", &since, "--until", &until, "--filter", &format!("container={name}"),
        "--filter", "event=die", "--format", "{{.Actor.Attributes.exitCode}}",
    ]);
    assert_eq!(die.trim(), "0");

    // live: a stream opened now sees a container started afterwards
    let mut ev: Child = node
        .cmd()
        .args(["events", "--filter", "type=container", "--filter", "event=start", "--format", "{{.Action}} {{.Actor.Attributes.name}}"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(ev.stdout.take().unwrap()).lines();
    std::thread::sleep(Duration::from_millis(300));
    let live = format!("live-{}", berth_e2e::uniq());
    node.docker_ok(&["run", "-d", "--name", &live, &img, "sleep", "30"]);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Some(Ok(l)) = lines.next() {
            let _ = tx.send(l);
        }
    });
    let got = rx.recv_timeout(Duration::from_secs(10));
    let _ = ev.kill();
    let _ = ev.wait();
    assert_eq!(got.expect("a live start event"), format!("start {live}"));
    node.docker_ok(&["rm", "-f", &live]);
}

struct Prometheus(Child, tempfile::TempDir);
impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn prometheus_scrapes_the_container_count() {
    require_root!();
    if Command::new("prometheus").arg("--version").output().is_err() {
        panic!("prometheus is not installed (apt-get install prometheus; deploy/install-deps.sh does)");
    }
    let mport = free_port();
    let mut extra = serde_json::Map::new();
    extra.insert("metrics-addr".into(), format!("127.0.0.1:{mport}").into());
    let (node, _reg, img) = node_with_busybox(extra);
    for i in 0..3 {
        node.docker_ok(&["run", "-d", "--name", &format!("prom{i}-{}", node.name), &img, "sleep", "60"]);
    }
    node.docker_ok(&["create", "--name", &format!("promc-{}", node.name), &img, "true"]);

    // deploy/prometheus/prometheus.yml, pointed at this node and scraping every second
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus/prometheus.yml")).unwrap();
    let cfg = shipped.replace("127.0.0.1:9323", &format!("127.0.0.1:{mport}")).replace("scrape_interval: 15s", "scrape_interval: 1s");
    assert!(cfg.contains(&format!("127.0.0.1:{mport}")), "the shipped config scrapes 127.0.0.1:9323: {shipped}");
    std::fs::write(dir.path().join("prometheus.yml"), cfg).unwrap();
    let pport = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{pport}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .unwrap();
    let prom = Prometheus(child, dir);

    let q = |query: &str| -> Option<serde_json::Value> {
        let enc: String = query
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() || b == b'_' { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        let body = http_get(pport, &format!("/api/v1/query?query={enc}"))?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"].as_array().cloned().map(serde_json::Value::Array)
    };
    let value = |r: &serde_json::Value| r[0]["value"][1].as_str().map(str::to_string);
    let t = Instant::now();
    let mut last = None;
    loop {
        if let Some(r) = q("berth_containers{state=\"running\"}") {
            last = Some(r.clone());
            if value(&r).as_deref() == Some("3") {
                break;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "prometheus never saw 3 running containers: {last:?}\n{}",
            std::fs::read_to_string(prom.1.path().join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(q("sum(berth_containers)").and_then(|r| value(&r)).as_deref(), Some("4"), "3 running + 1 created");
    assert_eq!(q("berth_containers{state=\"created\"}").and_then(|r| value(&r)).as_deref(), Some("1"));
    // the API metrics carry routes and statuses; the images gauge counts the pulled image
    let api = q("berth_api_requests_total").unwrap();
    assert!(!api.as_array().unwrap().is_empty(), "{api}");
    assert_eq!(q("berth_images").and_then(|r| value(&r)).as_deref(), Some("1"));
    // the pull of the busybox image was counted
    let pulled: f64 = q("sum(berth_pull_bytes_total)").and_then(|r| value(&r)).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    assert!(pulled > 100_000.0, "pull bytes: {pulled}");
    assert_eq!(q("sum(berth_pull_duration_seconds_count)").and_then(|r| value(&r)).as_deref(), Some("1"));
    // a `docker run -d` leaves its `wait` when the CLI exits: the runtime streams no
    // answer to a client gone (it kept one per running container before)
    let t = Instant::now();
    loop {
        let w = q("berth_bus_stream_writers{service=\"runtime\"}").and_then(|r| value(&r));
        if w.as_deref() == Some("0") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "the runtime still streams to gone clients: {w:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // a removed container leaves the count on the next scrape
    node.docker_ok(&["rm", "-f", &format!("prom0-{}", node.name)]);
    let t = Instant::now();
    while q("berth_containers{state=\"running\"}").and_then(|r| value(&r)).as_deref() != Some("2") {
        assert!(t.elapsed() < Duration::from_secs(30), "prometheus kept the removed container");
        std::thread::sleep(Duration::from_millis(500));
    }
    for i in 1..3 {
        node.docker_ok(&["rm", "-f", &format!("prom{i}-{}", node.name)]);
    }
}
