//! The real docker CLI against the gateway and the images service (fake storage on
//! the bus): what users see of pull, images, inspect, history, tag, rmi, prune,
//! save/load, import, login and push. The same scenarios run end to end in
//! `e2e/tests/images.rs` once the storage service is there.

mod common;

use berth_bus::Bus;
use common::*;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

struct Stack {
    env: Env,
    dir: tempfile::TempDir,
    sock: PathBuf,
    _gw: tokio::task::JoinHandle<()>,
}

async fn stack(cfg: berth_config::DaemonConfig) -> Stack {
    let env = env(cfg.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("docker.sock");
    let bus = Bus::connect(&env.nats.url(), None, "n1", "gateway")
        .await
        .unwrap();
    let host = berth_gateway::host::HostFacts::detect("n1", env.root.path().to_path_buf(), &cfg);
    let app = berth_gateway::app(berth_gateway::backend::BusBackend::new(bus, host));
    let hosts = vec![berth_gateway::listen::Host::Unix(sock.clone())];
    let gw = tokio::spawn(async move {
        let _ = berth_gateway::listen::serve_all(hosts, None, app).await;
    });
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Stack {
        env,
        dir,
        sock,
        _gw: gw,
    }
}

impl Stack {
    fn cmd(&self) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_HOST", format!("unix://{}", self.sock.display()))
            .env("DOCKER_CLI_HINTS", "false")
            .env_remove("DOCKER_CONTEXT")
            .env("DOCKER_CONFIG", self.dir.path().join("cli"));
        c
    }

    async fn docker(&self, args: &[&str]) -> Output {
        self.docker_in(args, None).await
    }

    async fn docker_in(&self, args: &[&str], stdin: Option<Vec<u8>>) -> Output {
        let mut c = self.cmd();
        c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        c.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        tokio::task::spawn_blocking(move || {
            let mut child = c.spawn().expect("docker CLI");
            if let Some(data) = stdin {
                use std::io::Write;
                let mut i = child.stdin.take().unwrap();
                std::thread::spawn(move || {
                    let _ = i.write_all(&data);
                });
            }
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap()
    }

    async fn ok(&self, args: &[&str]) -> String {
        let o = self.docker(args).await;
        assert!(
            o.status.success(),
            "docker {args:?}: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    async fn fails(&self, args: &[&str]) -> String {
        let o = self.docker(args).await;
        assert!(
            !o.status.success(),
            "docker {args:?} should fail: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_images_inspect_history_tag_rmi() {
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let layout = umoci_image(work.path(), 2, "amd64", "cli");
    reg.push_oci(&layout, "t", "library/busybox:latest", &[]);
    let s = stack(berth_config::DaemonConfig {
        registry_mirrors: vec![format!("http://{}", reg.addr())],
        ..Default::default()
    })
    .await;

    let out = s.ok(&["pull", "busybox"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "Using default tag: latest", "{out}");
    assert_eq!(lines[1], "latest: Pulling from library/busybox", "{out}");
    assert!(out.contains(": Pull complete"), "{out}");
    assert!(
        lines[lines.len() - 3].starts_with("Digest: sha256:"),
        "{out}"
    );
    assert_eq!(
        lines[lines.len() - 2],
        "Status: Downloaded newer image for busybox:latest"
    );
    assert_eq!(lines[lines.len() - 1], "docker.io/library/busybox:latest");
    // the acceptance scenario 04-images
    assert_eq!(
        s.ok(&["pull", "-q", "busybox"]).await,
        "docker.io/library/busybox:latest\n"
    );
    assert_eq!(
        s.ok(&["images", "busybox", "--format", "{{.Repository}}:{{.Tag}}"])
            .await,
        "busybox:latest\n"
    );
    assert_eq!(
        s.ok(&[
            "image",
            "ls",
            "busybox",
            "--format",
            "{{.Repository}} {{.Tag}}"
        ])
        .await,
        "busybox latest\n"
    );
    assert_eq!(s.ok(&["images", "-q", "busybox"]).await.lines().count(), 1);
    let id = s
        .ok(&["image", "inspect", "--format", "{{.Id}}", "busybox"])
        .await
        .trim()
        .to_string();
    assert!(id.starts_with("sha256:"));
    assert_eq!(s.ok(&["images", "-q"]).await.trim(), &id[7..19]);
    assert_eq!(s.ok(&["images", "-q", "--no-trunc"]).await.trim(), id);
    let digests = s
        .ok(&["images", "--digests", "--format", "{{.Digest}}"])
        .await;
    assert!(digests.trim().starts_with("sha256:"), "{digests}");
    let table = s.ok(&["images"]).await;
    assert!(table.starts_with("REPOSITORY"), "{table}");
    assert!(table.contains("busybox"), "{table}");

    // tag, filters, history
    s.ok(&["tag", "busybox", "mine/app:v1"]).await;
    assert_eq!(
        s.ok(&[
            "images",
            "--filter",
            "reference=mine/*",
            "--format",
            "{{.Repository}}:{{.Tag}}"
        ])
        .await,
        "mine/app:v1\n"
    );
    assert_eq!(
        s.ok(&["images", "--filter", "label=salt=cli", "-q"])
            .await
            .lines()
            .count(),
        2 // one row per tag
    );
    assert_eq!(
        s.ok(&["images", "--filter", "dangling=true", "-q"]).await,
        ""
    );
    let h = s
        .ok(&["history", "--format", "{{.ID}} {{.CreatedBy}}", "busybox"])
        .await;
    assert!(h.lines().next().unwrap().starts_with(&id[7..19]), "{h}");
    let h = s.ok(&["history", "-q", "--no-trunc", "mine/app:v1"]).await;
    assert_eq!(h.lines().next().unwrap(), id);

    // errors
    let e = s.fails(&["image", "inspect", "nope"]).await;
    assert!(e.contains("No such image: nope"), "{e}");
    let e = s.fails(&["tag", "nope", "x"]).await;
    assert_eq!(
        e.trim(),
        "Error response from daemon: No such image: nope:latest"
    );
    let e = s
        .fails(&["pull", &format!("{}/r/none:1", reg.addr())])
        .await;
    assert!(
        e.contains(&format!(
            "manifest for {}/r/none:1 not found: manifest unknown: manifest unknown",
            reg.addr()
        )),
        "{e}"
    );
    let e = s.fails(&["pull", "BusyBox"]).await;
    assert!(e.contains("must be lowercase"), "{e}");

    // rmi: untag, then delete
    assert_eq!(
        s.ok(&["rmi", "mine/app:v1"]).await,
        "Untagged: mine/app:v1\n"
    );
    let out = s.ok(&["rmi", "busybox"]).await;
    assert!(
        out.starts_with("Untagged: busybox:latest\nUntagged: busybox@sha256:"),
        "{out}"
    );
    assert!(out.contains(&format!("Deleted: {id}")), "{out}");
    assert_eq!(s.ok(&["images", "-q"]).await, "");
    assert_eq!(s.env.storage.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_load_import_prune() {
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let layout = umoci_image(work.path(), 2, "amd64", "sl");
    reg.push_oci(&layout, "t", "r/sl:1", &[]);
    let s = stack(Default::default()).await;
    let name = format!("{}/r/sl:1", reg.addr());
    s.ok(&["pull", "-q", &name]).await;
    let id = s
        .ok(&["image", "inspect", "--format", "{{.Id}}", &name])
        .await;
    let tar = work.path().join("img.tar");
    s.ok(&["save", "-o", tar.to_str().unwrap(), &name]).await;
    s.ok(&["rmi", &name]).await;
    let out = s.ok(&["load", "-i", tar.to_str().unwrap()]).await;
    assert!(out.ends_with(&format!("Loaded image: {name}\n")), "{out}");
    assert_eq!(
        s.ok(&["image", "inspect", "--format", "{{.Id}}", &name])
            .await,
        id
    );
    // stdin and quiet
    s.ok(&["rmi", &name]).await;
    let o = s
        .docker_in(&["load", "-q"], Some(std::fs::read(&tar).unwrap()))
        .await;
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("Loaded image: {name}\n")
    );
    // docker save to stdout is a tar
    let o = s.docker(&["save", &name]).await;
    assert!(o.status.success());
    assert!(o.stdout.len() > 1024 && o.stdout.len() % 512 == 0);
    let e = s
        .fails(&[
            "save",
            "-o",
            work.path().join("x.tar").to_str().unwrap(),
            "nope",
        ])
        .await;
    assert!(e.contains("No such image: nope"), "{e}");

    // import with changes, from a file and from stdin
    let rootfs = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "etc/x", &b"abc"[..]).unwrap();
        b.into_inner().unwrap()
    };
    let f = work.path().join("rootfs.tar");
    std::fs::write(&f, &rootfs).unwrap();
    let out = s
        .ok(&[
            "import",
            "-c",
            "CMD [\"sh\"]",
            "-c",
            "ENV A=b",
            "-m",
            "hand made",
            f.to_str().unwrap(),
            "made:1",
        ])
        .await;
    assert!(out.trim().starts_with("sha256:"), "{out}");
    assert_eq!(
        s.ok(&[
            "image",
            "inspect",
            "--format",
            "{{json .Config.Cmd}} {{.Comment}}",
            "made:1"
        ])
        .await,
        "[\"sh\"] hand made\n"
    );
    let o = s.docker_in(&["import", "-", "made:2"], Some(rootfs)).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        s.ok(&["history", "--format", "{{.Comment}}", "made:2"])
            .await,
        "Imported from -\n"
    );

    // prune: untagged images go
    s.ok(&["rmi", "made:1"]).await;
    s.ok(&["tag", "made:2", "keep:1"]).await;
    s.ok(&["rmi", "made:2"]).await;
    let d = format!(
        "{}/r/sl@{}",
        reg.addr(),
        remote_digest(
            &reg,
            "r/sl",
            "1",
            "application/vnd.oci.image.manifest.v1+json"
        )
        .await
        .0
    );
    s.ok(&["rmi", &name]).await;
    s.ok(&["pull", "-q", &d]).await;
    assert_eq!(
        s.ok(&["images", "--filter", "dangling=true", "-q"])
            .await
            .lines()
            .count(),
        1
    );
    let out = s.ok(&["image", "prune", "-f"]).await;
    assert!(out.contains("Deleted Images:"), "{out}");
    assert!(out.contains("Total reclaimed space:"), "{out}");
    assert_eq!(
        s.ok(&["images", "--format", "{{.Repository}}"]).await,
        "keep\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_push_and_pull_by_digest() {
    let work = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("secret", 5).unwrap();
    let htpasswd = work.path().join("htpasswd");
    std::fs::write(&htpasswd, format!("alice:{hash}\n")).unwrap();
    let reg = Registry::start_with(&format!(
        "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
        htpasswd.display()
    ));
    let layout = umoci_image(work.path(), 2, "amd64", "lp");
    reg.push_oci(&layout, "t", "r/src:1", &["--dest-creds", "alice:secret"]);
    let s = stack(Default::default()).await;
    let a = reg.addr();
    let e = s.fails(&["pull", &format!("{a}/r/src:1")]).await;
    assert!(e.contains("pull access denied"), "{e}");
    let o = s
        .docker_in(
            &["login", "-u", "alice", "--password-stdin", &a],
            Some(b"wrong\n".to_vec()),
        )
        .await;
    assert!(!o.status.success());
    let o = s
        .docker_in(
            &["login", "-u", "alice", "--password-stdin", &a],
            Some(b"secret\n".to_vec()),
        )
        .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("Login Succeeded"));
    s.ok(&["pull", &format!("{a}/r/src:1")]).await;
    s.ok(&["tag", &format!("{a}/r/src:1"), &format!("{a}/r/dst:2")])
        .await;
    let out = s.ok(&["push", &format!("{a}/r/dst:2")]).await;
    assert!(
        out.starts_with(&format!("The push refers to repository [{a}/r/dst]")),
        "{out}"
    );
    assert!(out.contains("Mounted from r/src"), "{out}");
    let last = out.lines().last().unwrap();
    assert!(
        last.starts_with("2: digest: sha256:") && last.contains(" size: "),
        "{out}"
    );
    let digest = last.split_whitespace().nth(2).unwrap().to_string();
    assert_eq!(
        s.ok(&["push", "-q", &format!("{a}/r/dst:2")]).await,
        format!("{a}/r/dst:2\n")
    );
    let repo_digest = s
        .ok(&[
            "image",
            "inspect",
            "--format",
            "{{range .RepoDigests}}{{println .}}{{end}}",
            &format!("{a}/r/dst:2"),
        ])
        .await;
    assert!(
        repo_digest.contains(&format!("{a}/r/dst@{digest}")),
        "{repo_digest}"
    );
    s.ok(&["rmi", &format!("{a}/r/dst:2"), &format!("{a}/r/src:1")])
        .await;
    assert_eq!(s.ok(&["images", "-q"]).await, "");
    let out = s.ok(&["pull", &format!("{a}/r/dst@{digest}")]).await;
    assert!(
        out.contains(&format!(
            "Status: Downloaded newer image for {a}/r/dst@{digest}"
        )),
        "{out}"
    );
    s.ok(&["logout", &a]).await;
}
