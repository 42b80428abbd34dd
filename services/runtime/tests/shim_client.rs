//! spec.rs + shim_client.rs + logs.rs against the real berth-shim (root): Docker's
//! defaults including the default seccomp profile, exec, attach, reconnect.

use berth_runtime::logs::{read_log, LogOptions};
use berth_runtime::shim_client::{
    install_init, read_exit, ExecSpec, Shim, ShimOptions, StartError,
};
use berth_runtime::spec::{self, ExecInput, SpecInput};
use bus_schema::docker::{ContainerConfig, ExecConfig, HostConfig};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The shim binary: beside this test's deps dir, built on demand.
fn shim_bin() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        if let Some(p) = std::env::var_os("BERTH_SHIM") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let bin = dir.join("berth-shim");
        // The shim e2e/test.sh builds with every binary first. Not built from here: a
        // cargo build inside `cargo test` runs in the test's environment, which reruns
        // build scripts and rebuilds crates that the next build of the binaries rebuilds
        // back (42 s of CI's unit phase, then again in the e2e phase).
        assert!(bin.exists(), "{} is missing: build the binaries first (cargo build --release --workspace --bins) or set BERTH_SHIM", bin.display());
        bin
    })
    .clone()
}

fn rootfs() -> PathBuf {
    static R: OnceLock<PathBuf> = OnceLock::new();
    R.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("runtime-busybox-rootfs");
        if !dir.join("bin/sh").exists() {
            let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("runtime-busybox-rootfs.{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            for d in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
                std::fs::create_dir_all(tmp.join(d)).unwrap();
            }
            std::fs::copy("/bin/busybox", tmp.join("bin/busybox")).unwrap();
            let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
            for app in String::from_utf8_lossy(&list.stdout).lines() {
                if app != "busybox" {
                    let _ = std::os::unix::fs::symlink("busybox", tmp.join("bin").join(app));
                }
            }
            std::fs::write(
                tmp.join("etc/passwd"),
                "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/:/bin/sh\n",
            )
            .unwrap();
            std::fs::write(tmp.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
            if std::fs::rename(&tmp, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
        }
        dir
    })
    .clone()
}

const CG: &str = "berth-runtime-shimtest";

struct Ctr {
    id: String,
    dir: tempfile::TempDir,
}

impl Drop for Ctr {
    fn drop(&mut self) {
        if let Ok(cg) = berth_runtime::cgroups::open(&format!("{CG}/{}", self.id)) {
            let _ = cg.kill_all(libc::SIGKILL);
            let _ = cg.remove();
        }
        if let Ok(cg) = berth_runtime::cgroups::open(CG) {
            let _ = cg.remove_if_empty();
        }
    }
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "c{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn prepare(config: &ContainerConfig, hc: &HostConfig) -> Ctr {
    let id = unique();
    let dir = tempfile::tempdir().unwrap();
    for (f, c) in [
        ("hosts", "127.0.0.1 localhost\n"),
        ("hostname", "box\n"),
        ("resolv.conf", "nameserver 127.0.0.1\n"),
    ] {
        std::fs::write(dir.path().join(f), c).unwrap();
    }
    let init = install_init(dir.path()).unwrap();
    let rootfs = rootfs();
    let cg = format!("{CG}/{id}");
    let input = SpecInput {
        id: &id,
        rootfs: &rootfs,
        config,
        host_config: hc,
        netns: None,
        etc_hosts: &dir.path().join("hosts"),
        etc_hostname: &dir.path().join("hostname"),
        etc_resolv: &dir.path().join("resolv.conf"),
        mounts: &[],
        cgroup_path: &cg,
        init_binary: Some(&init),
        ipc_ns: None,
        pid_ns: None,
        no_new_privileges: false,
        linked_env: &[],
    };
    let s = spec::build(&input).unwrap();
    std::fs::write(dir.path().join("config.json"), serde_json::to_vec(&s).unwrap()).unwrap();
    Ctr { id, dir }
}

fn opts(c: &Ctr, config: &ContainerConfig) -> ShimOptions {
    ShimOptions {
        id: c.id.clone(),
        bundle: c.dir.path().to_path_buf(),
        log_path: Some(c.dir.path().join("json.log")),
        log_max_size: None,
        log_max_file: 1,
        log_fifo: None,
        log_max_buffer: None,
        stdin: config.open_stdin == Some(true),
        stdin_once: false,
        tty: config.tty == Some(true),
        attach_stdout: false,
        attach_stderr: false,
    }
}

fn cfg(cmd: &[&str]) -> ContainerConfig {
    ContainerConfig {
        cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
        hostname: Some("box".into()),
        ..Default::default()
    }
}

async fn logs(c: &Ctr) -> String {
    let (tx, mut rx) = tokio::sync::mpsc::channel(100);
    read_log(
        &c.dir.path().join("json.log"),
        LogOptions::default(),
        async {},
        tx,
    )
    .await
    .unwrap();
    let mut s = String::new();
    while let Some((_, d)) = rx.recv().await {
        s.push_str(&String::from_utf8_lossy(&d));
    }
    s
}

#[tokio::test]
async fn docker_defaults_under_the_default_seccomp_profile() {
    let config = cfg(&["sh", "-c", "grep CapEff /proc/self/status; hostname; cat /etc/hostname; unshare -u true 2>&1 || echo unshare-denied; exit 3"]);
    let hc = HostConfig::default();
    let c = prepare(&config, &hc);
    let (shim, pid) = Shim::start(&shim_bin(), &opts(&c, &config)).await.unwrap();
    assert!(pid > 0);
    let st = shim.wait().await.unwrap();
    assert_eq!(st.code, 3);
    let out = logs(&c).await;
    assert!(out.contains("CapEff:\t00000000a80425fb"), "{out}");
    assert!(out.contains("box\nbox\n"), "{out}");
    assert!(out.contains("unshare-denied"), "{out}");
    assert_eq!(read_exit(c.dir.path()).unwrap().code, 3);
}

#[tokio::test]
async fn start_errors_map_to_exit_codes() {
    let config = cfg(&["nope"]);
    let c = prepare(&config, &HostConfig::default());
    match Shim::start(&shim_bin(), &opts(&c, &config)).await {
        Err(StartError::NotFound(m)) => {
            assert_eq!(m, "exec: \"nope\": executable file not found in $PATH")
        }
        r => panic!("{:?}", r.err()),
    }
    let config = cfg(&["/etc/passwd"]);
    let c = prepare(&config, &HostConfig::default());
    assert!(matches!(
        Shim::start(&shim_bin(), &opts(&c, &config)).await,
        Err(StartError::PermissionDenied(_))
    ));
}

#[tokio::test]
async fn exec_attach_kill_and_reconnect() {
    let config = ContainerConfig {
        open_stdin: Some(true),
        ..cfg(&["sh", "-c", "while read l; do echo got $l; done; exit 5"])
    };
    let hc = HostConfig {
        init: Some(true),
        ..Default::default()
    };
    let c = prepare(&config, &hc);
    let (shim, _) = Shim::start(&shim_bin(), &opts(&c, &config)).await.unwrap();
    let mut out = shim.attach(true, true).await.unwrap();
    shim.write_stdin(b"one\n").await.unwrap();
    let (s, d) = out.recv().await.unwrap();
    assert_eq!((s, d.as_slice()), (1, &b"got one\n"[..]));

    // exec
    let e = ExecConfig {
        cmd: Some(vec![
            "sh".into(),
            "-c".into(),
            "ps -o pid,comm | head -3; exit 2".into(),
        ]),
        ..Default::default()
    };
    let process = spec::exec_process(&ExecInput {
        rootfs: &rootfs(),
        config: &config,
        host_config: &hc,
        exec: &e,
        no_new_privileges: false,
        linked_env: &[],
    })
    .unwrap();
    let ex = shim
        .exec(ExecSpec {
            exec_id: "e1".into(),
            process,
            stdin: false,
            detach: false,
        })
        .await
        .unwrap();
    let mut eo = ex.take_output().unwrap();
    let mut text = String::new();
    while let Some((_, d)) = eo.recv().await {
        text.push_str(&String::from_utf8_lossy(&d));
    }
    assert_eq!(ex.wait().await.unwrap(), 2);
    // --init: docker-init is pid 1.
    assert!(text.contains("1 docker-init"), "{text}");

    // A second client (a restarted runtime) finds the shim.
    let again = Shim::connect(c.dir.path()).await.unwrap();
    assert_eq!(again.pid(), shim.pid());
    again.write_stdin(b"two\n").await.unwrap();
    again.close_stdin().await.unwrap();
    let st = again.wait().await.unwrap();
    assert_eq!(st.code, 5);
    assert_eq!(shim.wait().await.unwrap().code, 5);
    assert_eq!(logs(&c).await, "got one\ngot two\n");
    assert!(Shim::connect(c.dir.path()).await.is_err());
    assert_eq!(read_exit(c.dir.path()).unwrap().code, 5);
}

#[tokio::test]
async fn follow_logs_until_exit() {
    let config = cfg(&["sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.05; done"]);
    let c = prepare(&config, &HostConfig::default());
    let (shim, _) = Shim::start(&shim_bin(), &opts(&c, &config)).await.unwrap();
    let shim = std::sync::Arc::new(shim);
    let s2 = shim.clone();
    let (tx, mut rx) = tokio::sync::mpsc::channel(100);
    let path = c.dir.path().join("json.log");
    let reader = tokio::spawn(async move {
        read_log(
            &path,
            LogOptions {
                follow: true,
                ..Default::default()
            },
            async move {
                let _ = s2.wait().await;
            },
            tx,
        )
        .await
    });
    let mut got = String::new();
    while let Some((_, d)) = rx.recv().await {
        got.push_str(&String::from_utf8_lossy(&d));
    }
    reader.await.unwrap().unwrap();
    assert_eq!(got, "1\n2\n3\n");
    assert_eq!(shim.wait().await.unwrap().code, 0);
}
