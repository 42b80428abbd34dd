//! Images through the real docker CLI against `berth up`: pulls (direct, via a
//! mirror, by tag and digest, with basic auth after `docker login`, behind a Bearer
//! challenge), a tampered blob, push then pull by digest, save/rmi/load/run, a
//! skopeo tarball, images/tag/rmi/prune/history, import with changes, and the
//! offline hello-world. Images come from Debian's busybox-static via umoci and
//! skopeo, served by Debian's docker-registry on loopback.
//!
//! Tests that apply layers need the storage service (and `run` the runtime); they
//! are ignored until it lands: `cargo test -p berth-e2e --test images -- --ignored`.

use berth_e2e::fixtures::{self, run, Registry};
use berth_e2e::{Node, NodeOpts};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn node_with(cfg: serde_json::Value) -> Node {
    let mut opts = NodeOpts::default();
    if let serde_json::Value::Object(m) = cfg {
        opts.config = m;
    }
    Node::start_opts(opts)
}

fn fails(node: &Node, args: &[&str]) -> String {
    let o = node.docker(args);
    assert!(
        !o.status.success(),
        "docker {args:?} should fail: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn with_stdin(node: &Node, args: &[&str], input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut c = node.cmd();
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut i = child.stdin.take().unwrap();
    let data = input.to_vec();
    let w = std::thread::spawn(move || {
        let _ = i.write_all(&data);
    });
    let o = child.wait_with_output().unwrap();
    let _ = w.join();
    o
}

/// busybox plus a second layer with a file, as `name:t` in an OCI layout (umoci).
fn two_layer_layout(dir: &Path) -> PathBuf {
    let base = fixtures::busybox_layout();
    let l = dir.join("layout");
    run(Command::new("cp").arg("-a").arg(&base).arg(&l));
    let b = dir.join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:latest", l.display()))
        .arg(&b));
    std::fs::write(
        b.join("rootfs/second.txt"),
        "from the second layer\n".repeat(1000),
    )
    .unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image"])
        .arg(format!("{}:latest", l.display()))
        .arg(&b));
    run(Command::new("umoci").args(["gc", "--layout"]).arg(&l));
    l
}

fn manifest_digest(reg: &Registry, repo: &str, tag: &str) -> (String, serde_json::Value) {
    let out = run(Command::new("curl").args([
        "-s",
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        &format!("http://{}/v2/{repo}/manifests/{tag}", reg.addr()),
    ]));
    let d = run(Command::new("sh").arg("-c").arg(format!(
        "curl -s -H 'Accept: application/vnd.oci.image.manifest.v1+json' http://{}/v2/{repo}/manifests/{tag} | sha256sum",
        reg.addr()
    )));
    (
        format!("sha256:{}", d.split_whitespace().next().unwrap()),
        serde_json::from_str(&out).unwrap(),
    )
}

fn htpasswd_registry(dir: &Path) -> Registry {
    let hash = bcrypt::hash("secret", 5).unwrap();
    let f = dir.join("htpasswd");
    std::fs::write(&f, format!("alice:{hash}\n")).unwrap();
    Registry::start_with(&format!(
        "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
        f.display()
    ))
}

#[test]
fn pull_errors_and_login_read_like_docker() {
    let work = tempfile::tempdir().unwrap();
    let reg = htpasswd_registry(work.path());
    let open = Registry::start();
    let node = Node::start();
    let a = open.addr();
    let e = fails(&node, &["pull", &format!("{a}/r/none:1")]);
    assert!(
        e.contains(&format!(
            "manifest for {a}/r/none:1 not found: manifest unknown: manifest unknown"
        )),
        "{e}"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = fails(&node, &["pull", &format!("127.0.0.1:{port}/x")]);
    assert!(
        e.contains(&format!(
            "dial tcp 127.0.0.1:{port}: connect: connection refused"
        )),
        "{e}"
    );
    let e = fails(&node, &["pull", "BusyBox"]);
    assert!(e.contains("must be lowercase"), "{e}");
    let e = fails(&node, &["image", "inspect", "nope"]);
    assert!(e.contains("No such image: nope"), "{e}");
    assert_eq!(
        fails(&node, &["rmi", "nope"]).trim(),
        "Error response from daemon: No such image: nope:latest"
    );
    assert_eq!(
        fails(&node, &["tag", "nope", "x"]).trim(),
        "Error response from daemon: No such image: nope:latest"
    );
    assert_eq!(node.docker_ok(&["images", "-q"]), "");

    // docker login against a registry with basic auth
    let r = reg.addr();
    let e = fails(&node, &["pull", &format!("{r}/r/private:1")]);
    assert!(e.contains("pull access denied"), "{e}");
    let o = with_stdin(
        &node,
        &["login", "-u", "alice", "--password-stdin", &r],
        b"wrong\n",
    );
    assert!(!o.status.success());
    let o = with_stdin(
        &node,
        &["login", "-u", "alice", "--password-stdin", &r],
        b"secret\n",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("Login Succeeded"));
    node.docker_ok(&["logout", &r]);
    // docker info shows the registry configuration
    let info = node.docker_ok(&[
        "info",
        "--format",
        "{{json .RegistryConfig.InsecureRegistryCIDRs}} {{.IndexServerAddress}}",
    ]);
    assert_eq!(info.trim(), "[\"127.0.0.0/8\"] https://index.docker.io/v1/");
}

#[test]
fn pull_by_tag_and_digest_directly_and_via_mirror() {
    let reg = Registry::start();
    reg.push_oci(
        &fixtures::busybox_layout(),
        "latest",
        "library/busybox:latest",
    );
    reg.push_oci(&fixtures::busybox_layout(), "latest", "r/bb:1");
    let node =
        node_with(serde_json::json!({"registry-mirrors": [format!("http://{}", reg.addr())]}));
    let out = node.docker_ok(&["pull", "busybox"]);
    assert!(
        out.starts_with("Using default tag: latest\nlatest: Pulling from library/busybox\n"),
        "{out}"
    );
    assert!(
        out.ends_with(
            "Status: Downloaded newer image for busybox:latest\ndocker.io/library/busybox:latest\n"
        ),
        "{out}"
    );
    assert!(node
        .docker_ok(&["pull", "busybox"])
        .contains("Status: Image is up to date for busybox:latest"));
    assert_eq!(
        node.docker_ok(&["pull", "-q", "busybox"]),
        "docker.io/library/busybox:latest\n"
    );
    assert_eq!(
        node.docker_ok(&["images", "busybox", "--format", "{{.Repository}}:{{.Tag}}"]),
        "busybox:latest\n"
    );
    let a = reg.addr();
    node.docker_ok(&["pull", &format!("{a}/r/bb:1")]);
    let (d, _) = manifest_digest(&reg, "r/bb", "1");
    node.docker_ok(&["rmi", &format!("{a}/r/bb:1")]);
    let out = node.docker_ok(&["pull", &format!("{a}/r/bb@{d}")]);
    assert!(out.contains(&format!("Digest: {d}")), "{out}");
    assert_eq!(
        node.docker_ok(&["run", "--rm", &format!("{a}/r/bb@{d}"), "echo", "by-digest"]),
        "by-digest\n"
    );
}

#[test]
fn pull_with_basic_auth_after_login() {
    let work = tempfile::tempdir().unwrap();
    let reg = htpasswd_registry(work.path());
    let r = reg.addr();
    run(Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--dest-creds",
            "alice:secret",
        ])
        .arg(format!(
            "oci:{}:latest",
            fixtures::busybox_layout().display()
        ))
        .arg(format!("docker://{r}/r/private:1")));
    let node = Node::start();
    assert!(fails(&node, &["pull", &format!("{r}/r/private:1")]).contains("pull access denied"));
    let o = with_stdin(
        &node,
        &["login", "-u", "alice", "--password-stdin", &r],
        b"secret\n",
    );
    assert!(o.status.success());
    node.docker_ok(&["pull", &format!("{r}/r/private:1")]);
    assert_eq!(
        node.docker_ok(&[
            "run",
            "--rm",
            &format!("{r}/r/private:1"),
            "cat",
            "/var/www/index.html"
        ]),
        "hello from the page\n"
    );
}

/// A registry front answering with a Bearer challenge: `/token` gives a token for
/// Basic `bob:pw`; other requests need it and go to the registry behind.
struct TokenProxy {
    port: u16,
    rt: tokio::runtime::Runtime,
}

fn token_proxy(upstream: String) -> TokenProxy {
    use http_body_util::{combinators::BoxBody, BodyExt, Full};
    use hyper::body::Bytes;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else { break };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let upstream = upstream.clone();
                    async move {
                        type B = BoxBody<Bytes, hyper::Error>;
                        let full = |s: &'static str| -> B { Full::new(Bytes::from(s)).map_err(|e| match e {}).boxed() };
                        let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                        if req.uri().path() == "/token" {
                            // base64("bob:pw")
                            let (st, body) = if auth == "Basic Ym9iOnB3" {
                                (200, r#"{"token":"tok-9","expires_in":300}"#)
                            } else {
                                (401, r#"{"details":"incorrect username or password"}"#)
                            };
                            return Ok::<_, hyper::Error>(hyper::Response::builder().status(st).body(full(body)).unwrap());
                        }
                        if auth != "Bearer tok-9" {
                            return Ok(hyper::Response::builder()
                                .status(401)
                                .header("www-authenticate", format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="e2e""#))
                                .body(full(r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#))
                                .unwrap());
                        }
                        let stream = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
                        tokio::spawn(conn);
                        let (mut parts, body) = req.into_parts();
                        parts.headers.remove("authorization");
                        parts.headers.insert("host", upstream.parse().unwrap());
                        let resp = send.send_request(hyper::Request::from_parts(parts, body)).await?;
                        let (mut parts, body) = resp.into_parts();
                        if let Some(l) = parts.headers.get("location").and_then(|v| v.to_str().ok()) {
                            let l = l.replace(&upstream, &format!("127.0.0.1:{port}"));
                            parts.headers.insert("location", l.parse().unwrap());
                        }
                        Ok(hyper::Response::from_parts(parts, body.boxed()))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(sock), svc).await;
            });
        }
    });
    TokenProxy { port, rt }
}

#[test]
fn pull_behind_a_bearer_challenge() {
    let reg = Registry::start();
    reg.push_oci(&fixtures::busybox_layout(), "latest", "r/tok:1");
    let proxy = token_proxy(reg.addr());
    let p = format!("127.0.0.1:{}", proxy.port);
    let node = Node::start();
    assert!(fails(&node, &["pull", &format!("{p}/r/tok:1")]).contains("pull access denied"));
    let o = with_stdin(
        &node,
        &["login", "-u", "bob", "--password-stdin", &p],
        b"pw\n",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    node.docker_ok(&["pull", &format!("{p}/r/tok:1")]);
    assert_eq!(
        node.docker_ok(&["images", "-q", &format!("{p}/r/tok")])
            .lines()
            .count(),
        1
    );
    drop(proxy.rt);
}

#[test]
fn tampered_blob_fails_the_pull_and_leaves_nothing() {
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let layout = two_layer_layout(work.path());
    reg.push_oci(&layout, "latest", "r/bad:1");
    let (_, m) = manifest_digest(&reg, "r/bad", "1");
    let victim = m["layers"][1]["digest"].as_str().unwrap().to_string();
    let hex = victim.trim_start_matches("sha256:");
    let f = reg
        .dir
        .path()
        .join("data/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut b = std::fs::read(&f).unwrap();
    let n = b.len();
    b[n / 2] ^= 0xff;
    std::fs::write(&f, b).unwrap();
    let node = Node::start();
    let e = fails(&node, &["pull", &format!("{}/r/bad:1", reg.addr())]);
    assert!(
        e.contains(&format!(
            "filesystem layer verification failed for digest {victim}"
        )),
        "{e}"
    );
    assert_eq!(node.docker_ok(&["images", "-aq"]), "");
    let blobs = node.root.join("images/blobs/sha256");
    assert_eq!(
        std::fs::read_dir(&blobs).map(|d| d.count()).unwrap_or(0),
        0,
        "blobs left"
    );
    assert_eq!(
        std::fs::read_dir(node.root.join("images/ingest"))
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "ingest left"
    );
    let info = node.docker_ok(&["system", "df", "--format", "{{.Type}} {{.TotalCount}}"]);
    assert!(info.contains("Images 0"), "{info}");
}

#[test]
fn push_then_pull_back_by_digest() {
    let reg = Registry::start();
    reg.push_oci(
        &fixtures::busybox_layout(),
        "latest",
        "library/busybox:latest",
    );
    let node =
        node_with(serde_json::json!({"registry-mirrors": [format!("http://{}", reg.addr())]}));
    let a = reg.addr();
    node.docker_ok(&["pull", "-q", "busybox"]);
    node.docker_ok(&["tag", "busybox", &format!("{a}/n1/bb:1")]);
    assert_eq!(
        node.docker_ok(&["push", "-q", &format!("{a}/n1/bb:1")]),
        format!("{a}/n1/bb:1\n")
    );
    let d = node.docker_ok(&[
        "inspect",
        "--format",
        "{{index .RepoDigests 0}}",
        &format!("{a}/n1/bb:1"),
    ]);
    let d = d.trim().rsplit('@').next().unwrap().to_string();
    node.docker_ok(&["rmi", &format!("{a}/n1/bb:1")]);
    assert_eq!(
        node.docker_ok(&["pull", "-q", &format!("{a}/n1/bb@{d}")]),
        format!("{a}/n1/bb@{d}\n")
    );
    assert_eq!(
        node.docker_ok(&[
            "run",
            "--rm",
            &format!("{a}/n1/bb@{d}"),
            "echo",
            "by-digest"
        ]),
        "by-digest\n"
    );
    assert_eq!(
        node.docker(&["pull", &format!("{a}/n1/none:1")])
            .status
            .code(),
        Some(1)
    );
}

#[test]
fn save_rmi_load_run_and_a_skopeo_tarball() {
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    reg.push_oci(
        &fixtures::busybox_layout(),
        "latest",
        "library/busybox:latest",
    );
    let node =
        node_with(serde_json::json!({"registry-mirrors": [format!("http://{}", reg.addr())]}));
    node.docker_ok(&["pull", "-q", "busybox"]);
    let id = node.docker_ok(&["inspect", "--format", "{{.Id}}", "busybox"]);
    let tar = work.path().join("bb.tar");
    node.docker_ok(&["save", "-o", tar.to_str().unwrap(), "busybox"]);
    node.docker_ok(&["rmi", "busybox"]);
    let out = node.docker_ok(&["load", "-i", tar.to_str().unwrap()]);
    assert!(out.ends_with("Loaded image: busybox:latest\n"), "{out}");
    assert_eq!(
        node.docker_ok(&["inspect", "--format", "{{.Id}}", "busybox"]),
        id
    );
    assert_eq!(
        node.docker_ok(&["run", "--rm", "busybox", "echo", "round trip"]),
        "round trip\n"
    );
    // what skopeo writes loads too
    let sk = work.path().join("skopeo.tar");
    run(Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!(
            "oci:{}:latest",
            fixtures::busybox_layout().display()
        ))
        .arg(format!("docker-archive:{}:sk/busybox:1", sk.display())));
    let out = node.docker_ok(&["load", "-i", sk.to_str().unwrap()]);
    assert!(out.ends_with("Loaded image: sk/busybox:1\n"), "{out}");
    assert_eq!(
        node.docker_ok(&["run", "--rm", "sk/busybox:1", "cat", "/var/www/index.html"]),
        "hello from the page\n"
    );
    // and skopeo reads what berth saves
    let inspected = run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("docker-archive:{}", tar.display())));
    assert!(inspected.contains("amd64"), "{inspected}");
}

#[test]
fn images_tag_rmi_prune_history_import() {
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    reg.push_oci(
        &fixtures::busybox_layout(),
        "latest",
        "library/busybox:latest",
    );
    let node =
        node_with(serde_json::json!({"registry-mirrors": [format!("http://{}", reg.addr())]}));
    node.docker_ok(&["pull", "-q", "busybox"]);
    let id = node
        .docker_ok(&["inspect", "--format", "{{.Id}}", "busybox"])
        .trim()
        .to_string();
    node.docker_ok(&["tag", "busybox", "mine/app:v1"]);
    assert_eq!(
        node.docker_ok(&[
            "images",
            "--filter",
            "reference=mine/*",
            "--format",
            "{{.Repository}}:{{.Tag}}"
        ]),
        "mine/app:v1\n"
    );
    assert_eq!(
        node.docker_ok(&["images", "-q", "--no-trunc", "mine/app"])
            .trim(),
        id
    );
    assert!(node.docker_ok(&["images", "--digests"]).contains("sha256:"));
    assert_eq!(
        node.docker_ok(&["history", "-q", "--no-trunc", "busybox"])
            .lines()
            .next()
            .unwrap(),
        id
    );
    assert_eq!(
        node.docker_ok(&["rmi", "mine/app:v1"]),
        "Untagged: mine/app:v1\n"
    );
    // import with changes
    let rootfs = work.path().join("rootfs");
    fixtures::busybox_rootfs(&rootfs);
    let t = work.path().join("rootfs.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&t)
        .arg("."));
    let out = node.docker_ok(&[
        "import",
        "-c",
        "CMD [\"echo\", \"imported\"]",
        "-c",
        "ENV PATH=/bin",
        t.to_str().unwrap(),
        "imp:1",
    ]);
    assert!(out.starts_with("sha256:"), "{out}");
    assert_eq!(node.docker_ok(&["run", "--rm", "imp:1"]), "imported\n");
    // a running container keeps its image; prune takes dangling ones
    node.docker_ok(&["create", "--name", "keeper", "busybox", "true"]);
    let e = fails(&node, &["rmi", "busybox"]);
    assert!(
        e.contains("conflict: unable to remove repository reference \"busybox\" (must force)"),
        "{e}"
    );
    node.docker_ok(&["rm", "keeper"]);
    node.docker_ok(&["tag", "imp:1", "imp:2"]);
    node.docker_ok(&["rmi", "imp:1"]);
    assert_eq!(
        node.docker_ok(&["images", "--filter", "dangling=true", "-q"]),
        ""
    );
    let out = node.docker_ok(&["image", "prune", "-f"]);
    assert!(out.contains("Total reclaimed space:"), "{out}");
}

#[test]
fn hello_world_offline() {
    // Docker Hub cannot be reached from the test machine: the embedded image runs.
    let node = Node::start();
    let out = node.docker_ok(&["run", "--rm", "hello-world"]);
    assert!(out.contains("Hello from Docker!\nThis message shows that your installation appears to be working correctly."), "{out}");
}
