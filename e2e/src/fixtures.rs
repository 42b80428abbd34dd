//! Test images made by third-party tools from Debian parts, served by Debian's
//! docker-registry on loopback. Nothing here is written by berth's own code.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A docker-registry on 127.0.0.1:<free port> with a temp root; killed on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        Self::start_with("")
    }

    /// `extra` is appended to the registry's YAML config (e.g. an `auth:` section).
    pub fn start_with(extra: &str) -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Self::start_full(port, extra)
    }

    /// On a given port (the acceptance scenarios expect 127.0.0.1:5000).
    pub fn start_on(port: u16) -> Registry {
        Self::start_full(port, "")
    }

    fn start_full(port: u16, extra: &str) -> Registry {
        let dir = tempfile::Builder::new().prefix("berth-reg-").tempdir().unwrap();
        let conf = dir.path().join("config.yml");
        std::fs::write(
            &conf,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (apt-get install docker-registry)");
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(15), "registry did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Registry { child, port, dir }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Copy an OCI layout image into this registry with skopeo.
    pub fn push_oci(&self, layout: &Path, tag: &str, repo_tag: &str) {
        run(Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("oci:{}:{tag}", layout.display()),
            &format!("docker://{}/{repo_tag}", self.addr()),
        ]));
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn cache_dir() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target").join("e2e-fixtures");
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Fill `rootfs` with busybox-static and its applet links, /etc/passwd and a page.
pub fn busybox_rootfs(rootfs: &Path) {
    for d in ["bin", "etc", "tmp", "root", "proc", "sys", "dev", "var/www", "usr/bin", "sbin"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static (apt-get install busybox-static)");
    let list = run(Command::new("/bin/busybox").arg("--list"));
    for a in list.lines() {
        if a != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a));
        }
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n").unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    std::fs::write(rootfs.join("var/www/index.html"), "hello from the page\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
}

/// An OCI layout with image `busybox:latest` (one layer, CMD sh), built once per
/// target dir with umoci. Returns the layout path.
pub fn busybox_layout() -> PathBuf {
    let layout = cache_dir().join("busybox-oci");
    let lock = cache_dir().join("busybox.lock");
    let _g = FileLock::new(&lock);
    if layout.join("index.json").exists() {
        return layout;
    }
    let tmp = tempfile::tempdir_in(cache_dir()).unwrap();
    let l = tmp.path().join("layout");
    let b = tmp.path().join("bundle");
    run(Command::new("umoci").args(["init", "--layout"]).arg(&l));
    run(Command::new("umoci").args(["new", "--image"]).arg(format!("{}:latest", l.display())));
    run(Command::new("umoci").args(["unpack", "--image"]).arg(format!("{}:latest", l.display())).arg(&b));
    busybox_rootfs(&b.join("rootfs"));
    run(Command::new("umoci").args(["repack", "--image"]).arg(format!("{}:latest", l.display())).arg(&b));
    run(Command::new("umoci")
        .args(["config", "--image"])
        .arg(format!("{}:latest", l.display()))
        .args(["--config.cmd", "sh", "--config.env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]));
    run(Command::new("umoci").args(["gc", "--layout"]).arg(&l));
    std::fs::rename(&l, &layout).unwrap();
    layout
}

/// Serialises fixture building between test processes.
struct FileLock(std::fs::File);
impl FileLock {
    fn new(p: &Path) -> FileLock {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(p).unwrap();
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        FileLock(f)
    }
}
impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// An OCI layout image made with umoci from `fill` (which fills the rootfs), with
/// `config` flags for `umoci config` (e.g. `--config.cmd sh`). Built once per name.
pub fn umoci_image(name: &str, fill: impl FnOnce(&Path), config: &[&str]) -> PathBuf {
    let layout = cache_dir().join(format!("{name}-oci"));
    let lock = cache_dir().join(format!("{name}.lock"));
    let _g = FileLock::new(&lock);
    if layout.join("index.json").exists() {
        return layout;
    }
    let tmp = tempfile::tempdir_in(cache_dir()).unwrap();
    let l = tmp.path().join("layout");
    let b = tmp.path().join("bundle");
    let img = format!("{}:latest", l.display());
    run(Command::new("umoci").args(["init", "--layout"]).arg(&l));
    run(Command::new("umoci").args(["new", "--image", &img]));
    run(Command::new("umoci").args(["unpack", "--image", &img]).arg(&b));
    fill(&b.join("rootfs"));
    run(Command::new("umoci").args(["repack", "--image", &img]).arg(&b));
    run(Command::new("umoci").args(["config", "--image", &img]).args(config));
    run(Command::new("umoci").args(["gc", "--layout"]).arg(&l));
    std::fs::rename(&l, &layout).unwrap();
    layout
}

/// Docker's hello-world made from a static C program (gcc -static), as the
/// acceptance fixtures make it.
pub fn hello_layout() -> PathBuf {
    umoci_image(
        "hello",
        |rootfs| {
            let src = rootfs.join("../hello.c");
            std::fs::write(
                &src,
                "#include <unistd.h>\nstatic const char m[] = \"\\nHello from Docker!\\nThis message shows that your installation appears to be working correctly.\\n\\n\";\nint main(void) { return write(1, m, sizeof m - 1) == (ssize_t)(sizeof m - 1) ? 0 : 1; }\n",
            )
            .unwrap();
            run(Command::new("gcc").args(["-static", "-Os", "-o"]).arg(rootfs.join("hello")).arg(&src));
            let _ = std::fs::remove_file(&src);
        },
        &["--config.cmd", "/hello"],
    )
}

/// A local registry and a node started with `opts` that trusts it.
pub fn node_with_registry_opts(mut opts: crate::NodeOpts) -> (crate::Node, Registry) {
    let reg = Registry::start();
    opts.config.insert("insecure-registries".into(), serde_json::json!([reg.addr()]));
    (crate::Node::start_opts(opts), reg)
}

pub fn node_with_registry() -> (crate::Node, Registry) {
    node_with_registry_opts(crate::NodeOpts::default())
}

/// The busybox fixture pushed to `reg` and pulled by `node`: its reference.
pub fn pull_busybox(node: &crate::Node, reg: &Registry) -> String {
    reg.push_oci(&busybox_layout(), "latest", "busybox:latest");
    let img = format!("{}/busybox:latest", reg.addr());
    node.docker_ok(&["pull", "-q", &img]);
    img
}

/// A registry, a node (started with `opts`) that trusts it, and the busybox fixture
/// pulled: (node, registry, image reference).
pub fn node_with_busybox_opts(opts: crate::NodeOpts) -> (crate::Node, Registry, String) {
    let (node, reg) = node_with_registry_opts(opts);
    let img = pull_busybox(&node, &reg);
    (node, reg, img)
}

pub fn node_with_busybox() -> (crate::Node, Registry, String) {
    node_with_busybox_opts(crate::NodeOpts::default())
}

/// alpine's /etc/passwd and /etc/group (alpine 3.10): docker-py's suite runs
/// `whoami` as `postgres` in its `alpine:3.10`.
const ALPINE_PASSWD: &str = "root:x:0:0:root:/root:/bin/ash\nbin:x:1:1:bin:/bin:/sbin/nologin\ndaemon:x:2:2:daemon:/sbin:/sbin/nologin\nadm:x:3:4:adm:/var/adm:/sbin/nologin\nlp:x:4:7:lp:/var/spool/lpd:/sbin/nologin\nsync:x:5:0:sync:/sbin:/bin/sync\nshutdown:x:6:0:shutdown:/sbin:/sbin/shutdown\nhalt:x:7:0:halt:/sbin:/sbin/halt\nmail:x:8:12:mail:/var/spool/mail:/sbin/nologin\nnews:x:9:13:news:/usr/lib/news:/sbin/nologin\noperator:x:11:0:operator:/root:/sbin/nologin\nftp:x:21:21::/var/lib/ftp:/sbin/nologin\nsshd:x:22:22:sshd:/dev/null:/sbin/nologin\ngames:x:35:35:games:/usr/games:/sbin/nologin\npostgres:x:70:70::/var/lib/postgresql:/bin/sh\nntp:x:123:123:NTP:/var/empty:/sbin/nologin\nguest:x:405:100:guest:/dev/null:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n";
const ALPINE_GROUP: &str = "root:x:0:root\nbin:x:1:root,bin,daemon\ndaemon:x:2:root,bin,daemon\nsys:x:3:root,bin,adm\nadm:x:4:root,adm,daemon\ntty:x:5:\ndisk:x:6:root,adm\nlp:x:7:lp\nmail:x:12:mail\nnews:x:13:news\nwheel:x:10:root\nftp:x:21:\nsshd:x:22:\ngames:x:35:\npostgres:x:70:\nntp:x:123:\nusers:x:100:games\nnogroup:x:65533:\nnobody:x:65534:\n";

/// An `alpine:<release>` stand-in: busybox with alpine's users, groups and
/// directories, and its release file (so each release's image ID differs from
/// busybox's and from the other's, as the real images' do: Moby's `image prune -a`
/// untags an image used by a container when another tag still names it).
pub fn alpine_layout(release: &str) -> PathBuf {
    let rel = release.to_string();
    umoci_image(
        &format!("alpine-{release}"),
        move |rootfs| {
            busybox_rootfs(rootfs);
            std::fs::write(rootfs.join("etc/passwd"), ALPINE_PASSWD).unwrap();
            std::fs::write(rootfs.join("etc/group"), ALPINE_GROUP).unwrap();
            std::fs::write(rootfs.join("etc/alpine-release"), format!("{rel}\n")).unwrap();
            for d in ["var/opt", "var/lib/postgresql", "home", "mnt", "opt", "srv", "usr/local/bin", "usr/sbin", "lib"] {
                std::fs::create_dir_all(rootfs.join(d)).unwrap();
            }
        },
        &["--config.cmd", "/bin/sh", "--config.env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    )
}

/// A registry holding what clients' own test suites pull from Docker Hub:
/// `library/busybox:latest`, `library/alpine:{3.10,latest}`, `library/hello-world:latest`.
/// A node whose daemon.json names it in `registry-mirrors` pulls them by their Hub names.
pub fn hub_mirror() -> Registry {
    let reg = Registry::start();
    reg.push_oci(&busybox_layout(), "latest", "library/busybox:latest");
    reg.push_oci(&alpine_layout("3.10.9"), "latest", "library/alpine:3.10");
    reg.push_oci(&alpine_layout("3.22.0"), "latest", "library/alpine:latest");
    reg.push_oci(&hello_layout(), "latest", "library/hello-world:latest");
    reg
}

/// daemon.json keys that make `reg` the node's docker.io mirror.
pub fn mirror_config(reg: &Registry) -> serde_json::Map<String, serde_json::Value> {
    let mut cfg = serde_json::Map::new();
    cfg.insert("registry-mirrors".into(), serde_json::json!([format!("http://{}", reg.addr())]));
    cfg.insert("insecure-registries".into(), serde_json::json!([reg.addr()]));
    cfg
}
