//! Managed plugins (`/plugins`): `docker plugin create/ls/inspect/set/enable/disable/rm`
//! through the real docker CLI, and the same requests over raw HTTP compared with
//! Moby 20.10's answers, recorded once from a dockerd 20.10.24 on its own socket
//! (`e2e/clients/plugins-moby-20.10.json`; `BERTH_PLUGINS_RECORD=<moby socket>`
//! records it again, dev only). The plugin is docker-py's dummy plugin
//! (tests/integration/testdata/dummy-plugin: a config.json and an empty-file rootfs).
//!
//! Moby cannot enable the dummy plugin (its `/dummy` is a directory), neither can
//! berth. A plugin that runs is berth's test volume plugin
//! (e2e/src/bin/berth-test-volume-plugin.rs, with its libraries in its rootfs):
//! enabled, it serves volumes through the plugin protocol.

use std::path::{Path, PathBuf};

use berth_e2e::{http_raw, Node};
use serde_json::{json, Value};

/// docker-py's dummy plugin config, as in its testdata.
const DUMMY_CONFIG: &str = r#"{
    "description": "Dummy test plugin for docker python SDK",
    "documentation": "https://github.com/docker/docker-py",
    "entrypoint": ["/dummy"],
    "network": {
        "type": "host"
    },
    "interface" : {
        "types": ["docker.volumedriver/1.0"],
        "socket": "dummy.sock"
    },
    "env": [
        {
        "name":"DEBUG",
        "settable":["value"],
        "value":"0"
        }
    ]
}
"#;

const RECORDING: &str = "clients/plugins-moby-20.10.json";

/// A plugin data dir: `config.json` (if any) and `rootfs/dummy/file.txt` (if asked).
fn plugin_dir(base: &Path, name: &str, config: Option<&str>, rootfs: bool) -> PathBuf {
    let d = base.join(name);
    std::fs::create_dir_all(&d).unwrap();
    if let Some(c) = config {
        std::fs::write(d.join("config.json"), c).unwrap();
    }
    if rootfs {
        std::fs::create_dir_all(d.join("rootfs/dummy")).unwrap();
        std::fs::write(d.join("rootfs/dummy/file.txt"), "").unwrap();
    }
    d
}

/// The tar `docker plugin create` sends: the dir's entries, names relative to it.
fn tar_of(dir: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    if dir.join("config.json").exists() {
        b.append_path_with_name(dir.join("config.json"), "config.json").unwrap();
    }
    if dir.join("rootfs").exists() {
        b.append_dir_all("rootfs", dir.join("rootfs")).unwrap();
    }
    b.into_inner().unwrap()
}

/// What differs by engine and run: the ID, the engine's version, the rootfs digest
/// (Moby digests its own gzip of the rootfs; berth the layer's tar).
fn normalize(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if o.contains_key("Id") && o.contains_key("Config") {
                o.insert("Id".into(), json!("<id>"));
            }
            if o.contains_key("DockerVersion") {
                o.insert("DockerVersion".into(), json!("<version>"));
            }
            if o.contains_key("diff_ids") {
                o.insert("diff_ids".into(), json!(["<diff id>"]));
            }
            o.values_mut().for_each(normalize);
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        _ => {}
    }
}

/// The requests, in order (they build on each other), and each answer as
/// `{"req", "status", "body"}` (the body as JSON when it is JSON, else as text).
fn exchange(sock: &Path, dirs: &Path) -> Vec<Value> {
    let dummy = tar_of(&plugin_dir(dirs, "dummy", Some(DUMMY_CONFIG), true));
    let no_config = tar_of(&plugin_dir(dirs, "noconfig", None, true));
    let no_rootfs = tar_of(&plugin_dir(dirs, "norootfs", Some(DUMMY_CONFIG), false));
    let bad_config = tar_of(&plugin_dir(dirs, "badconfig", Some("{bad"), true));
    let digest = format!("x@sha256:{}", "0".repeat(64));
    let filters = |f: &str| format!("/v1.41/plugins?filters={}", f.replace('{', "%7B").replace('}', "%7D").replace('"', "%22").replace('[', "%5B").replace(']', "%5D").replace(':', "%3A"));
    let tar = |b: &[u8]| Some((b.to_vec(), "application/x-tar"));
    let js = |s: &str| Some((s.as_bytes().to_vec(), "application/json"));
    let steps: Vec<(&str, &str, String, Option<(Vec<u8>, &str)>)> = vec![
        ("list, none", "GET", "/v1.41/plugins".into(), None),
        ("create", "POST", "/v1.41/plugins/create?name=docker-sdk-py/dummy".into(), tar(&dummy)),
        ("create again", "POST", "/v1.41/plugins/create?name=docker-sdk-py/dummy:latest".into(), tar(&dummy)),
        ("create without a name", "POST", "/v1.41/plugins/create".into(), tar(&dummy)),
        ("create with an upper-case name", "POST", "/v1.41/plugins/create?name=Bad/Name".into(), tar(&dummy)),
        ("create with a digest", "POST", format!("/v1.41/plugins/create?name={digest}"), tar(&dummy)),
        ("create without config", "POST", "/v1.41/plugins/create?name=other".into(), tar(&no_config)),
        ("create without rootfs", "POST", "/v1.41/plugins/create?name=other".into(), tar(&no_rootfs)),
        ("create with bad config", "POST", "/v1.41/plugins/create?name=other".into(), tar(&bad_config)),
        ("create from nothing", "POST", "/v1.41/plugins/create?name=other".into(), tar(b"")),
        ("inspect", "GET", "/v1.41/plugins/docker-sdk-py/dummy/json".into(), None),
        ("inspect with tag", "GET", "/v1.41/plugins/docker-sdk-py/dummy:latest/json".into(), None),
        ("list", "GET", "/v1.41/plugins".into(), None),
        ("list disabled", "GET", filters(r#"{"enabled":["false"]}"#), None),
        ("list enabled", "GET", filters(r#"{"enabled":["true"]}"#), None),
        ("list by capability", "GET", filters(r#"{"capability":["volumedriver"]}"#), None),
        ("list by another capability", "GET", filters(r#"{"capability":["logdriver"]}"#), None),
        ("list with an unknown filter", "GET", filters(r#"{"foo":["x"]}"#), None),
        ("inspect unknown", "GET", "/v1.41/plugins/nope/json".into(), None),
        ("inspect other tag", "GET", "/v1.41/plugins/docker-sdk-py/dummy:v2/json".into(), None),
        ("enable unknown", "POST", "/v1.41/plugins/nope/enable?timeout=0".into(), None),
        ("enable without timeout", "POST", "/v1.41/plugins/nope/enable".into(), None),
        ("enable with a bad timeout", "POST", "/v1.41/plugins/docker-sdk-py/dummy/enable?timeout=abc".into(), None),
        ("disable unknown", "POST", "/v1.41/plugins/nope/disable".into(), None),
        ("disable a disabled plugin", "POST", "/v1.41/plugins/docker-sdk-py/dummy/disable".into(), None),
        ("remove unknown", "DELETE", "/v1.41/plugins/nope".into(), None),
        ("set unknown plugin", "POST", "/v1.41/plugins/nope/set".into(), js(r#"["DEBUG=1"]"#)),
        ("set", "POST", "/v1.41/plugins/docker-sdk-py/dummy/set".into(), js(r#"["DEBUG=1"]"#)),
        ("inspect after set", "GET", "/v1.41/plugins/docker-sdk-py/dummy/json".into(), None),
        ("set without value", "POST", "/v1.41/plugins/docker-sdk-py/dummy/set".into(), js(r#"["DEBUG"]"#)),
        ("inspect after set without value", "GET", "/v1.41/plugins/docker-sdk-py/dummy/json".into(), None),
        ("set unknown key", "POST", "/v1.41/plugins/docker-sdk-py/dummy/set".into(), js(r#"["NOPE=1"]"#)),
        ("set without name", "POST", "/v1.41/plugins/docker-sdk-py/dummy/set".into(), js(r#"["=1"]"#)),
        ("set unknown mount", "POST", "/v1.41/plugins/docker-sdk-py/dummy/set".into(), js(r#"["mnt.source=/x"]"#)),
        ("set an object", "POST", "/v1.41/plugins/docker-sdk-py/dummy/set".into(), js(r#"{"a":1}"#)),
        ("set nothing", "POST", "/v1.41/plugins/docker-sdk-py/dummy/set".into(), js("")),
        ("set garbage", "POST", "/v1.41/plugins/docker-sdk-py/dummy/set".into(), js("garbage")),
        ("set null", "POST", "/v1.41/plugins/docker-sdk-py/dummy/set".into(), js("null")),
        ("remove", "DELETE", "/v1.41/plugins/docker-sdk-py/dummy".into(), None),
        ("list after remove", "GET", "/v1.41/plugins".into(), None),
        ("create by full name", "POST", "/v1.41/plugins/create?name=docker.io/library/c".into(), tar(&dummy)),
        ("inspect by short name", "GET", "/v1.41/plugins/c/json".into(), None),
        ("remove by full name", "DELETE", "/v1.41/plugins/docker.io/library/c:latest".into(), None),
    ];
    steps
        .into_iter()
        .map(|(label, method, path, body)| {
            let a = http_raw(sock, method, &path, &[], body.as_ref().map(|(b, ct)| (&b[..], *ct)));
            let text = a.text();
            let body = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
            json!({"req": label, "status": a.status, "body": body})
        })
        .collect()
}

#[test]
fn plugins_as_moby_over_http() {
    berth_e2e::require_root!();
    let dirs = tempfile::tempdir().unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(RECORDING);
    if let Some(moby) = std::env::var_os("BERTH_PLUGINS_RECORD") {
        let mut got = exchange(Path::new(&moby), dirs.path());
        got.iter_mut().for_each(normalize);
        std::fs::write(&path, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
        return;
    }
    let want: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let node = Node::start();
    let mut got = exchange(&node.sock, dirs.path());
    got.iter_mut().for_each(normalize);
    assert_eq!(got.len(), want.len());
    let mut diffs = Vec::new();
    for (g, w) in got.iter().zip(&want) {
        let label = w["req"].as_str().unwrap();
        assert_eq!(g["req"], w["req"]);
        if g != w {
            diffs.push(format!("{label}:\n  berth: {g}\n  moby:  {w}"));
        }
    }
    assert!(diffs.is_empty(), "answers that differ from Moby 20.10's:\n{}\n{}", diffs.join("\n"), node.logs());
}

fn fails_with(node: &Node, args: &[&str], msg: &str) {
    let o = node.docker(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains(msg), "docker {args:?}: {}\nstderr: {err}", o.status);
}

#[test]
fn docker_plugin_commands() {
    berth_e2e::require_root!();
    let dirs = tempfile::tempdir().unwrap();
    let dir = plugin_dir(dirs.path(), "dummy", Some(DUMMY_CONFIG), true);
    let mut node = Node::start();
    let p = "docker-sdk-py/dummy";
    assert_eq!(node.docker_ok(&["plugin", "create", p, dir.to_str().unwrap()]).trim(), p);
    fails_with(&node, &["plugin", "create", p, dir.to_str().unwrap()], "plugin docker-sdk-py/dummy:latest already exists");
    let ls = |node: &Node| node.docker_ok(&["plugin", "ls", "--format", "{{.Name}} {{.Enabled}} {{.Description}}"]);
    assert_eq!(ls(&node).trim(), "docker-sdk-py/dummy:latest false Dummy test plugin for docker python SDK");
    let inspect = |node: &Node, f: &str| node.docker_ok(&["plugin", "inspect", "-f", f, p]).trim().to_string();
    assert_eq!(inspect(&node, "{{.Config.Entrypoint}} {{.Settings.Env}} {{.Config.Interface.Socket}}"), "[/dummy] [DEBUG=0] dummy.sock");
    let id = inspect(&node, "{{.Id}}");
    assert_eq!(id.len(), 64, "{id}");
    // by ID prefix, as Moby resolves it
    assert_eq!(node.docker_ok(&["plugin", "inspect", "-f", "{{.Name}}", &id[..12]]).trim(), "docker-sdk-py/dummy:latest");

    node.docker_ok(&["plugin", "set", p, "DEBUG=1"]);
    assert_eq!(inspect(&node, "{{.Settings.Env}}"), "[DEBUG=1]");
    fails_with(&node, &["plugin", "set", p, "NOPE=1"], "setting \"NOPE\" not found in the plugin configuration");

    // docker-py's dummy plugin cannot run (its entrypoint is a directory): Moby
    // fails to enable it too; it stays disabled
    let o = node.docker(&["plugin", "enable", p]);
    assert!(!o.status.success(), "enabling the dummy plugin: {o:?}");
    assert_eq!(inspect(&node, "{{.Enabled}}"), "false");
    fails_with(&node, &["plugin", "disable", p], "plugin is already disabled: plugin docker-sdk-py/dummy:latest found but disabled");

    // stored: a restarted node has it, with its settings
    node.shutdown();
    node.boot();
    assert_eq!(ls(&node).trim(), "docker-sdk-py/dummy:latest false Dummy test plugin for docker python SDK");
    assert_eq!(inspect(&node, "{{.Id}} {{.Settings.Env}}"), format!("{id} [DEBUG=1]"));

    assert_eq!(node.docker_ok(&["plugin", "rm", p]).trim(), p);
    assert_eq!(node.docker_ok(&["plugin", "ls", "-q"]).trim(), "");
    fails_with(&node, &["plugin", "inspect", p], "not found");
    // the name is free again
    node.docker_ok(&["plugin", "create", p, dir.to_str().unwrap()]);
    node.docker_ok(&["plugin", "rm", p]);
}

/// A test plugin binary as a plugin rootfs: the binary at `/<name>` with the
/// libraries `ldd` lists, at their paths, and the directories `dirs`.
fn plugin_rootfs(rootfs: &Path, bin_name: &str, name: &str, dirs: &[&str]) {
    for sub in dirs {
        std::fs::create_dir_all(rootfs.join(sub)).unwrap();
    }
    let bin = berth_e2e::bin_dir().join(bin_name);
    assert!(bin.is_file(), "{} (cargo build --release --workspace --bins)", bin.display());
    std::fs::copy(&bin, rootfs.join(name)).unwrap();
    let ldd = berth_e2e::fixtures::run(std::process::Command::new("ldd").arg(&bin));
    for line in ldd.lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, `/lib64/ld-linux-x86-64.so.2 (0x...)`
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else { continue };
        let dst = rootfs.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(path, &dst).unwrap();
    }
}

/// The test volume plugin (e2e/src/bin/berth-test-volume-plugin.rs) as a plugin
/// data dir: the binary with the libraries `ldd` lists, at their paths, in rootfs/.
fn volume_plugin_dir(base: &Path) -> PathBuf {
    let d = base.join("berthvol");
    plugin_rootfs(&d.join("rootfs"), "berth-test-volume-plugin", "berthvol", &["data", "run/docker/plugins", "tmp"]);
    std::fs::write(
        d.join("config.json"),
        r#"{
    "description": "berth's test volume plugin",
    "documentation": "e2e/src/bin/berth-test-volume-plugin.rs",
    "entrypoint": ["/berthvol"],
    "network": {"type": "none"},
    "interface": {"types": ["docker.volumedriver/1.0"], "socket": "berthvol.sock"},
    "linux": {"capabilities": ["CAP_SYS_ADMIN"]},
    "env": [{"name": "VOLUME_ROOT", "settable": ["value"], "value": "/data"}]
}
"#,
    )
    .unwrap();
    d
}

/// The plugin's process on this node (its binary is `/berthvol` in its rootfs; its
/// cgroup under the node's cgroup parent).
fn plugin_pid(node: &Node) -> Option<i32> {
    let parent = format!("berth-e2e-{}", node.name);
    std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
        let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        let cg = std::fs::read_to_string(e.path().join("cgroup")).ok()?;
        (comm.trim() == "berthvol" && cg.contains(&parent)).then_some(pid)
    })
}

fn until(what: &str, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !f() {
        assert!(std::time::Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A volume-driver plugin run by `docker plugin enable`, and its volumes through the
/// real CLI: create, ls, inspect (the plugin's Get), run -v (Mount at start,
/// Unmount at stop), rm (Remove); in use: no volume rm, no plugin disable; a node
/// restart runs it again; its process killed: restarted; disabled: volume calls
/// answer Moby's error at once.
#[test]
fn volume_plugin_runs_and_serves_volumes() {
    berth_e2e::require_root!();
    let dirs = tempfile::tempdir().unwrap();
    let dir = volume_plugin_dir(dirs.path());
    let (mut node, _reg, img) = berth_e2e::fixtures::node_with_busybox();
    let p = "berthvol";
    node.docker_ok(&["plugin", "create", p, dir.to_str().unwrap()]);
    fails_with(&node, &["volume", "create", "-d", p, "early"], "error looking up volume plugin berthvol: plugin berthvol found but disabled");
    node.docker_ok(&["plugin", "enable", p]);
    assert_eq!(node.docker_ok(&["plugin", "inspect", "-f", "{{.Enabled}}", p]).trim(), "true");
    assert!(plugin_pid(&node).is_some(), "the plugin's process runs");
    // its container is not the user's
    assert_eq!(node.docker_ok(&["ps", "-aq"]).trim(), "");
    // nor reachable through the container API, by the plugin's ID (its container's),
    // a prefix of it or its container's name: Moby keeps plugins out of that API
    let full = node.docker_ok(&["plugin", "inspect", "-f", "{{.Id}}", p]).trim().to_string();
    let by_name = format!("plugin-{full}");
    for args in [
        vec!["inspect", "--type", "container", full.as_str()],
        vec!["stop", &full[..12]],
        vec!["inspect", "--type", "container", by_name.as_str()],
    ] {
        fails_with(&node, &args, "No such container");
    }
    // (the CLI's `rm -f` exits 0 on a container that is not there)
    let o = node.docker(&["rm", "-f", full.as_str()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("No such container"), "{o:?}");
    // `docker inspect ID` finds the plugin instead, as on Moby
    assert_eq!(node.docker_ok(&["inspect", "-f", "{{.Name}}", &full]).trim(), "berthvol:latest");
    assert!(plugin_pid(&node).is_some(), "the plugin still runs");

    assert_eq!(node.docker_ok(&["volume", "create", "-d", p, "pv"]).trim(), "pv");
    assert!(node.docker_ok(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"]).lines().any(|l| l == "berthvol:latest pv"));
    // inspect: the plugin's Get, shown as Moby 20.10 shows it (the plugin's own
    // path, Go's zero time when the plugin gives none)
    assert_eq!(
        node.docker_ok(&["volume", "inspect", "-f", "{{.Driver}} {{.Mountpoint}} {{.CreatedAt}} {{.Scope}}", "pv"]).trim(),
        "berthvol:latest /data/pv 0001-01-01T00:00:00Z local"
    );
    // ls: the host path, under the plugin's rootfs
    let got = node.docker_ok(&["volume", "ls", "-f", "name=pv", "--format", "{{.Mountpoint}}"]).trim().to_string();
    let mountpoint = PathBuf::from(&got);
    assert!(mountpoint.ends_with("data/pv") && mountpoint.is_dir(), "{got}");
    // the plugin's log of Mount and Unmount calls, in its rootfs
    let calls_log = mountpoint.parent().unwrap().parent().unwrap().join("calls.log");
    let calls = || std::fs::read_to_string(&calls_log).unwrap_or_default().lines().map(|l| l.rsplit_once(' ').unwrap().0.to_string()).collect::<Vec<_>>();

    // run -v: Mount at start, Unmount at the exit; the data is in the plugin's dir
    node.docker_ok(&["run", "--rm", "-v", "pv:/vol", &img, "sh", "-c", "echo hi > /vol/f"]);
    assert_eq!(std::fs::read_to_string(mountpoint.join("f")).unwrap(), "hi\n");
    assert_eq!(calls(), ["Mount pv", "Unmount pv"]);
    let id = node.docker_ok(&["run", "-d", "--name", "user", "-v", "pv:/vol", &img, "sleep", "60"]).trim().to_string();
    assert_eq!(calls(), ["Mount pv", "Unmount pv", "Mount pv"]);
    assert!(std::fs::read_to_string(&calls_log).unwrap().ends_with(&format!("Mount pv {id}\n")), "the container's ID");
    fails_with(&node, &["volume", "rm", "pv"], "volume is in use");
    fails_with(&node, &["plugin", "disable", p], "plugin berthvol:latest is in use");
    node.docker_ok(&["stop", "-t", "0", "user"]);
    assert_eq!(calls(), ["Mount pv", "Unmount pv", "Mount pv", "Unmount pv"], "Unmount at stop");
    node.docker_ok(&["rm", "user"]);
    assert_eq!(calls().len(), 4, "no second Unmount at rm");

    // the plugin's errors, as its words
    fails_with(&node, &["volume", "create", "-d", p, "-o", "fail=disk on fire", "bad"], "disk on fire");
    assert!(!node.docker_ok(&["volume", "ls", "-q"]).lines().any(|l| l == "bad"));

    // ls asks the plugin's List: a volume the plugin has that berth never made is
    // listed (and recorded) as Moby's store does
    std::fs::create_dir(mountpoint.parent().unwrap().join("outside")).unwrap();
    assert!(node.docker_ok(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"]).lines().any(|l| l == "berthvol:latest outside"));
    assert_eq!(node.docker_ok(&["volume", "inspect", "-f", "{{.Driver}}", "outside"]).trim(), "berthvol:latest");
    node.docker_ok(&["volume", "rm", "outside"]);
    // --volume-driver makes the -v volumes (named and anonymous) through the plugin;
    // --mount names its own volume-driver=
    node.docker_ok(&["run", "--rm", "--volume-driver", p, "-v", "vd:/vol", &img, "sh", "-c", "echo vd > /vol/f"]);
    assert_eq!(node.docker_ok(&["volume", "inspect", "-f", "{{.Driver}}", "vd"]).trim(), "berthvol:latest");
    assert_eq!(std::fs::read_to_string(mountpoint.parent().unwrap().join("vd/f")).unwrap(), "vd\n");
    node.docker_ok(&["run", "--rm", "--mount", &format!("type=volume,src=vm,dst=/vol,volume-driver={p}"), &img, "true"]);
    assert_eq!(node.docker_ok(&["volume", "inspect", "-f", "{{.Driver}}", "vm"]).trim(), "berthvol:latest");
    let anon = node.docker_ok(&["run", "-d", "--volume-driver", p, "-v", "/anon", &img, "true"]).trim().to_string();
    let anon_vol = node.docker_ok(&["inspect", "-f", "{{range .Mounts}}{{.Name}} {{.Driver}}{{end}}", &anon]).trim().to_string();
    assert!(anon_vol.ends_with(" berthvol:latest"), "{anon_vol}");
    node.docker_ok(&["rm", "-f", "-v", &anon]);
    node.docker_ok(&["volume", "rm", "vd", "vm"]);

    node.docker_ok(&["volume", "rm", "pv"]);
    assert!(!mountpoint.exists(), "the plugin removed its directory");
    fails_with(&node, &["volume", "inspect", "pv"], "no such volume");

    // a node restart runs the plugin again, its rootfs (the volumes) kept
    node.docker_ok(&["volume", "create", "-d", p, "pv2"]);
    node.docker_ok(&["run", "--rm", "-v", "pv2:/vol", &img, "sh", "-c", "echo kept > /vol/f"]);
    node.shutdown();
    node.boot();
    until("the plugin to run again", || node.docker(&["volume", "inspect", "pv2"]).status.success());
    assert_eq!(node.docker_ok(&["run", "--rm", "-v", "pv2:/vol", &img, "cat", "/vol/f"]).trim(), "kept");

    // bad day: the plugin's process killed: restarted as Moby restarts it (a call in
    // between answers a connect error at once: berth_pluginproto's unit tests)
    let pid = plugin_pid(&node).expect("the plugin's process");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    until("the plugin to run again", || plugin_pid(&node).is_some_and(|p| p != pid));
    until("the plugin to serve again", || node.docker(&["volume", "inspect", "pv2"]).status.success());
    assert_eq!(node.docker_ok(&["run", "--rm", "-v", "pv2:/vol", &img, "cat", "/vol/f"]).trim(), "kept");
    // disabled (forced: its volume exists): volume calls answer Moby's error at once
    node.docker_ok(&["plugin", "disable", "-f", p]);
    assert!(plugin_pid(&node).is_none(), "disabled: not restarted");
    fails_with(&node, &["volume", "inspect", "pv2"], "error looking up volume plugin berthvol:latest: plugin berthvol:latest found but disabled");
    fails_with(&node, &["run", "--rm", "-v", "pv2:/vol", &img, "true"], "found but disabled");
    // Moby 20.10 lists only what enabled plugins report
    assert!(!node.docker_ok(&["volume", "ls", "-q"]).lines().any(|l| l == "pv2"), "a disabled plugin's volume is not listed");
    node.docker_ok(&["plugin", "enable", p]);
    assert_eq!(node.docker_ok(&["run", "--rm", "-v", "pv2:/vol", &img, "cat", "/vol/f"]).trim(), "kept");

    node.docker_ok(&["volume", "rm", "pv2"]);
    fails_with(&node, &["plugin", "rm", p], "plugin berthvol:latest is enabled");
    node.docker_ok(&["plugin", "disable", p]);
    node.docker_ok(&["plugin", "rm", p]);
    assert!(plugin_pid(&node).is_none());
    assert_eq!(node.docker_ok(&["plugin", "ls", "-q"]).trim(), "");
}

/// The test volume plugin's privileges, as Moby 20.10 derives them from its config
/// (network `none` is one; only "", "null" and "bridge" are not).
const VOLUME_PLUGIN_PRIVILEGES: &str = r#"[{"Name":"network","Description":"permissions to access a network","Value":["none"]},{"Name":"capabilities","Description":"list of additional capabilities required","Value":["CAP_SYS_ADMIN"]}]"#;

/// GET `path` of the registry on 127.0.0.1:`port` (plain HTTP/1.0), with `accept`.
fn registry_get(port: u16, path: &str, accept: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: {accept}\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (head.split(' ').nth(1).unwrap().parse().unwrap(), body.to_string())
}

/// Plugins distributed through a registry, with the real docker CLI: `plugin
/// create` + `plugin push` (a manifest with the plugin config media type and a gzip
/// rootfs layer, as Moby pushes it), the privileges as Moby answers them, `plugin
/// install --grant-all-permissions --alias` (pull, then the CLI enables the plugin
/// it was named in Docker-Plugin-Name): the plugin runs and serves volumes;
/// privileges that do not match are refused; `plugin upgrade` of a disabled plugin
/// keeps its ID and settings.
#[test]
fn plugins_from_a_registry() {
    berth_e2e::require_root!();
    let dirs = tempfile::tempdir().unwrap();
    let dir = volume_plugin_dir(dirs.path());
    let (node, reg, img) = berth_e2e::fixtures::node_with_busybox();
    let host = format!("localhost:{}", reg.port);
    let remote = format!("{host}/berth/vol:v1");

    node.docker_ok(&["plugin", "create", &remote, dir.to_str().unwrap()]);
    let out = node.docker_ok(&["plugin", "push", &remote]);
    assert!(out.contains(&format!("The push refers to repository [{host}/berth/vol]")), "{out}");
    assert!(out.contains("Upload complete"), "{out}");
    // what the registry holds: Moby's plugin manifest
    let (status, body) = registry_get(reg.port, "/v2/berth/vol/manifests/v1", "application/vnd.docker.distribution.manifest.v2+json");
    assert_eq!(status, 200, "{body}");
    let m: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(m["mediaType"], "application/vnd.docker.distribution.manifest.v2+json");
    assert_eq!(m["config"]["mediaType"], "application/vnd.docker.plugin.v1+json");
    assert_eq!(m["layers"].as_array().unwrap().len(), 1);
    assert_eq!(m["layers"][0]["mediaType"], "application/vnd.docker.image.rootfs.diff.tar.gzip");
    let config_digest = m["config"]["digest"].as_str().unwrap();
    let (_, config) = registry_get(reg.port, &format!("/v2/berth/vol/blobs/{config_digest}"), "*/*");
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["Entrypoint"], json!(["/berthvol"]));
    node.docker_ok(&["plugin", "rm", &remote]);

    // privileges: Moby's list, in Moby's order; a remote that is not there: `[]`
    let privs = http_raw(&node.sock, "GET", &format!("/v1.41/plugins/privileges?remote={remote}"), &[], None);
    assert_eq!(privs.status, 200);
    assert_eq!(privs.json(), serde_json::from_str::<Value>(VOLUME_PLUGIN_PRIVILEGES).unwrap());
    let none = http_raw(&node.sock, "GET", &format!("/v1.41/plugins/privileges?remote={host}/berth/nope"), &[], None);
    assert_eq!((none.status, none.text().trim()), (200, "[]"));
    let bad = http_raw(&node.sock, "GET", "/v1.41/plugins/privileges?remote=Bad/Ref", &[], None);
    assert_eq!((bad.status, bad.json()["message"].as_str().unwrap()), (500, "invalid reference format: repository name must be lowercase"));

    // privileges that are not the config's: refused in the stream, nothing kept
    let pull = |privs: &str, name: &str| {
        http_raw(&node.sock, "POST", &format!("/v1.41/plugins/pull?remote={remote}&name={name}"), &[], Some((privs.as_bytes(), "application/json")))
    };
    let refused = pull("[]", "vol");
    assert_eq!(refused.status, 200);
    let last: Value = serde_json::from_str(refused.text().trim_end().lines().last().unwrap()).unwrap();
    assert_eq!(last["error"], "incorrect privileges", "{}", refused.text());
    assert!(refused.text().contains(&format!(r#""status":"Pulling from {host}/berth/vol""#)), "{}", refused.text());
    let other = VOLUME_PLUGIN_PRIVILEGES.replace(r#"["none"]"#, r#"["host"]"#);
    assert!(pull(&other, "vol").text().contains("incorrect privileges"));
    let bad_body = pull("{}", "vol");
    assert_eq!(bad_body.status, 500);
    assert_eq!(bad_body.json()["message"], "failed to parse privileges: json: cannot unmarshal object into Go value of type types.PluginPrivileges");
    assert_eq!(node.docker_ok(&["plugin", "ls", "-q"]).trim(), "");

    // install: pulled, then enabled by the CLI; it runs and serves volumes
    let since = now_stamp();
    let out = node.docker_ok(&["plugin", "install", "--grant-all-permissions", "--alias", "vol", &remote]);
    assert!(out.contains("Installed plugin"), "{out}");
    // Moby's events: pull (the remote as the Actor ID, the plugin's name), then the
    // CLI's enable by the name the daemon answered
    let until = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 1).to_string();
    let evs = node.docker_ok(&["events", "--since", &since, "--until", &until, "--filter", "type=plugin", "--format", "{{.Action}} {{.Actor.Attributes.name}}"]);
    assert_eq!(evs.lines().collect::<Vec<_>>(), ["pull vol:latest", "enable vol:latest"], "{evs}");
    let evs = node.docker_ok(&["events", "--since", &since, "--until", &until, "--filter", "event=pull", "--format", "{{.Actor.ID}}"]);
    assert_eq!(evs.trim(), remote);
    let inspect = |f: &str| node.docker_ok(&["plugin", "inspect", "-f", f, "vol"]).trim().to_string();
    assert_eq!(inspect("{{.Name}} {{.Enabled}} {{.PluginReference}}"), format!("vol:latest true {remote}"));
    assert!(plugin_pid(&node).is_some(), "the installed plugin runs");
    assert_eq!(node.docker_ok(&["volume", "create", "-d", "vol", "pv"]).trim(), "pv");
    node.docker_ok(&["run", "--rm", "-v", "pv:/vol", &img, "sh", "-c", "echo hi > /vol/f"]);
    assert_eq!(node.docker_ok(&["run", "--rm", "-v", "pv:/vol", &img, "cat", "/vol/f"]).trim(), "hi");
    fails_with(&node, &["plugin", "install", "--grant-all-permissions", "--alias", "vol", &remote], "plugin vol:latest already exists");
    fails_with(&node, &["plugin", "install", "--grant-all-permissions", &format!("{host}/berth/nope")], "error resolving plugin reference");
    // the same remote installed under its own name, disabled
    node.docker_ok(&["plugin", "install", "--grant-all-permissions", "--disable", &remote]);
    assert_eq!(node.docker_ok(&["plugin", "inspect", "-f", "{{.Enabled}}", &remote]).trim(), "false");
    node.docker_ok(&["plugin", "rm", &remote]);

    // upgrade: only a disabled plugin; the new config and rootfs, the ID and the
    // settings kept
    let v2 = format!("{host}/berth/vol:v2");
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(dir.join("config.json"), cfg.replace("berth's test volume plugin", "berth's test volume plugin v2")).unwrap();
    node.docker_ok(&["plugin", "create", &v2, dir.to_str().unwrap()]);
    node.docker_ok(&["plugin", "push", &v2]);
    node.docker_ok(&["plugin", "rm", &v2]);
    fails_with(&node, &["plugin", "upgrade", "--grant-all-permissions", "--skip-remote-check", "vol", &v2], "plugin must be disabled before upgrading");
    let id = inspect("{{.Id}}");
    node.docker_ok(&["volume", "rm", "pv"]);
    node.docker_ok(&["plugin", "disable", "vol"]);
    node.docker_ok(&["plugin", "set", "vol", "VOLUME_ROOT=/data2"]);
    let up = http_raw(&node.sock, "POST", &format!("/v1.41/plugins/vol/upgrade?remote={v2}"), &[], Some((b"[]", "application/json")));
    assert!(up.text().contains("incorrect privileges"), "{}", up.text());
    assert_eq!(inspect("{{.Config.Description}}"), "berth's test volume plugin");
    node.docker_ok(&["plugin", "upgrade", "--grant-all-permissions", "--skip-remote-check", "vol", &v2]);
    assert_eq!(
        inspect("{{.Id}} {{.Enabled}} {{.Config.Description}} {{.PluginReference}} {{.Settings.Env}}"),
        format!("{id} false berth's test volume plugin v2 {v2} [VOLUME_ROOT=/data2]")
    );
    node.docker_ok(&["plugin", "enable", "vol"]);
    node.docker_ok(&["volume", "create", "-d", "vol", "pv2"]);
    assert_eq!(node.docker_ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", "pv2"]).trim(), "/data2/pv2");
    node.docker_ok(&["volume", "rm", "pv2"]);
    node.docker_ok(&["plugin", "disable", "vol"]);
    node.docker_ok(&["plugin", "rm", "vol"]);
    assert!(plugin_pid(&node).is_none());
    assert_eq!(node.docker_ok(&["plugin", "ls", "-q"]).trim(), "");
}

/// The test log plugin (e2e/src/bin/berth-test-log-plugin.rs) as a plugin data
/// dir; it writes what it gets under `logs` (a host directory bound at /logs).
fn log_plugin_dir(base: &Path, logs: &Path) -> PathBuf {
    let d = base.join("berthlog");
    plugin_rootfs(&d.join("rootfs"), "berth-test-log-plugin", "berthlog", &["logs", "run/docker/plugins", "tmp"]);
    let config = json!({
        "description": "berth's test log plugin",
        "documentation": "e2e/src/bin/berth-test-log-plugin.rs",
        "entrypoint": ["/berthlog"],
        "network": {"type": "none"},
        "interface": {"types": ["docker.logdriver/1.0"], "socket": "berthlog.sock"},
        "mounts": [{"name": "logs", "source": logs.to_str().unwrap(), "destination": "/logs", "type": "bind", "options": ["rbind"]}],
        "env": [{"name": "READ_LOGS", "settable": ["value"], "value": "0"}]
    });
    std::fs::write(d.join("config.json"), config.to_string()).unwrap();
    d
}

/// A log-driver plugin: `docker run --log-driver <plugin>` sends the container's
/// output to the plugin through its FIFO (StartLogging with Moby's Info, LogEntry
/// frames, StopLogging at the exit), `docker logs` still reads the local copy (dual
/// logging), a plugin in use is not disabled, and unknown or disabled drivers are
/// refused with Moby's words.
#[test]
fn log_plugin_gets_the_output() {
    berth_e2e::require_root!();
    let dirs = tempfile::tempdir().unwrap();
    let logs = dirs.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let dir = log_plugin_dir(dirs.path(), &logs);
    let (node, _reg, img) = berth_e2e::fixtures::node_with_busybox();
    let p = "berthlog";
    fails_with(&node, &["run", "--rm", "--log-driver", "nosuch", &img, "true"], "error looking up logging plugin nosuch: plugin \"nosuch\" not found");
    node.docker_ok(&["plugin", "create", p, dir.to_str().unwrap()]);
    fails_with(&node, &["run", "--rm", "--log-driver", p, &img, "true"], "error looking up logging plugin berthlog: plugin berthlog found but disabled");
    node.docker_ok(&["plugin", "enable", p]);
    // docker info lists the built-in drivers berth serves, in Moby's order; an
    // enabled log plugin is not listed (Moby lists registered drivers only)
    assert_eq!(node.docker_ok(&["info", "-f", "{{json .Plugins.Log}}"]).trim(), r#"["json-file","local"]"#);
    // Moby's ValidateLogOpts, for plugins too
    fails_with(&node, &["run", "--rm", "--log-driver", p, "--log-opt", "mode=fast", &img, "true"], "logger: logging mode not supported: fast");
    fails_with(&node, &["run", "--rm", "--log-driver", p, "--log-opt", "max-buffer-size=1m", &img, "true"], "logger: max-buffer-size option is only supported with 'mode=non-blocking'");

    let out = node.docker_ok(&["run", "--name", "lp", "--log-driver", p, "--log-opt", "tag=x", &img, "sh", "-c", "echo hello; echo oops >&2; printf tail"]);
    assert_eq!(out, "hello\ntail", "docker run attached still gets the output");
    let id = node.docker_ok(&["inspect", "-f", "{{.Id}}", "lp"]).trim().to_string();
    let calls = || std::fs::read_to_string(logs.join("calls.log")).unwrap_or_default();
    until("StopLogging", || calls().contains(&format!("StopLogging {id} ")));
    let lines: Vec<String> = calls().lines().map(String::from).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let file = lines[0].strip_prefix(&format!("StartLogging {id} ")).expect("StartLogging first").to_string();
    assert!(file.starts_with("/run/docker/logging/") && file.len() == "/run/docker/logging/".len() + 64, "{file}");
    assert_eq!(lines[1], format!("StopLogging {id} {file}"));

    // Moby's Info
    let info: Value = serde_json::from_str(&std::fs::read_to_string(logs.join(format!("{id}.info.json"))).unwrap()).unwrap();
    assert_eq!(info["ContainerID"], id.as_str());
    assert_eq!(info["ContainerName"], "/lp");
    assert_eq!(info["Config"], json!({"tag": "x"}));
    assert_eq!(info["ContainerEntrypoint"], "sh");
    assert_eq!(info["ContainerArgs"], json!(["-c", "echo hello; echo oops >&2; printf tail"]));
    assert_eq!(info["ContainerImageName"], img.as_str());
    assert!(info["ContainerImageID"].as_str().unwrap().starts_with("sha256:"), "{info}");
    assert_eq!(info["DaemonName"], "docker");
    assert_eq!(info["LogPath"], "");
    let keys: Vec<&str> = info.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    for k in ["ContainerCreated", "ContainerEnv", "ContainerLabels"] {
        assert!(keys.contains(&k), "{k} in {info}");
    }

    // the entries: lines without their newline, the unterminated tail partial
    let entries: Vec<Value> = std::fs::read_to_string(logs.join(format!("{id}.entries")))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut got: Vec<(String, String, bool)> = entries
        .iter()
        .map(|e| (e["source"].as_str().unwrap().to_string(), e["line"].as_str().unwrap().to_string(), e["partial"].as_bool().unwrap()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [("stderr", "oops", false), ("stdout", "hello", false), ("stdout", "tail", true)].map(|(s, l, p)| (s.to_string(), l.to_string(), p)),
        "{entries:?}"
    );
    assert!(entries.iter().all(|e| e["time_nano"].as_i64().unwrap() > 0), "{entries:?}");
    let tail = entries.iter().find(|e| e["line"] == "tail").unwrap();
    assert_eq!(tail["partial_log_metadata"]["ordinal"], 1);
    assert_eq!(tail["partial_log_metadata"]["last"], false);
    assert_eq!(tail["partial_log_metadata"]["id"].as_str().unwrap().len(), 64);

    // Moby shows no LogPath for a plugin's container
    assert_eq!(node.docker_ok(&["inspect", "-f", "{{.LogPath}}", "lp"]).trim(), "");
    // dual logging: `docker logs` reads the local copy (the plugin does not read),
    // through a new logger as Moby makes one for a stopped container
    let o = node.docker(&["logs", "lp"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hello\ntail");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "oops\n");
    until("the logger's StopLogging", || calls().lines().filter(|l| l.starts_with(&format!("StopLogging {id} "))).count() == 2);
    node.docker_ok(&["rm", "lp"]);

    // in use while a container logs to it; free once it stopped
    node.docker_ok(&["run", "-d", "--name", "long", "--log-driver", p, &img, "sh", "-c", "echo started; exec sleep 60"]);
    let long = node.docker_ok(&["inspect", "-f", "{{.Id}}", "long"]).trim().to_string();
    until("the first line", || std::fs::read_to_string(logs.join(format!("{long}.entries"))).is_ok_and(|s| s.contains("started")));
    fails_with(&node, &["plugin", "disable", p], "plugin berthlog:latest is in use");
    node.docker_ok(&["stop", "-t", "0", "long"]);
    until("StopLogging", || calls().contains(&format!("StopLogging {long} ")));
    node.docker_ok(&["plugin", "disable", p]);
    // a stopped container naming a disabled plugin cannot start
    fails_with(&node, &["start", "long"], "failed to initialize logging driver: failed to get logging factory: logger: no log driver named 'berthlog' is registered: error looking up logging plugin berthlog: plugin berthlog found but disabled");
    node.docker_ok(&["rm", "long"]);
    node.docker_ok(&["plugin", "rm", p]);
    // the FIFOs are gone with the calls
    assert!(!calls().lines().any(|l| l.starts_with("StartLogging") && !calls().contains(&l.replacen("StartLogging", "StopLogging", 1))));
}

/// The plugin's `ReadLogs` calls for the container `id`: their Config.
fn read_logs_calls(logs: &Path, id: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(logs.join("calls.log")).unwrap_or_default();
    text.lines().filter_map(|l| l.strip_prefix(&format!("ReadLogs {id} "))).map(|c| serde_json::from_str(c).unwrap()).collect()
}

/// A node with busybox and the test log plugin `berthlog` created in `dirs`, set with
/// `settings`, enabled: the node, its registry, the image, the plugin's log directory.
fn log_plugin_node(dirs: &Path, settings: &[&str]) -> (Node, berth_e2e::fixtures::Registry, String, PathBuf) {
    let logs = dirs.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let dir = log_plugin_dir(dirs, &logs);
    let (node, reg, img) = berth_e2e::fixtures::node_with_busybox();
    node.docker_ok(&["plugin", "create", "berthlog", dir.to_str().unwrap()]);
    if !settings.is_empty() {
        node.docker_ok(&[&["plugin", "set", "berthlog"], settings].concat());
    }
    node.docker_ok(&["plugin", "enable", "berthlog"]);
    (node, reg, img, logs)
}

/// A log plugin whose Capabilities answer `ReadLogs` (the test plugin with
/// READ_LOGS=1) is what `docker logs` reads, as Moby 20.10 asks it
/// (`/LogDriver.ReadLogs` {Info, Config}, LogEntry frames back): the lines come
/// marked by the plugin, with Moby's Config (Tail, Since, Until, Follow), `-t`
/// and since/until applied to the plugin's answer, `-f` following a running
/// container until the plugin ends the stream.
#[test]
fn log_plugin_reads_logs_back() {
    berth_e2e::require_root!();
    let dirs = tempfile::tempdir().unwrap();
    let (node, _reg, img, logs) = log_plugin_node(dirs.path(), &["READ_LOGS=1"]);
    let p = "berthlog";
    let calls = || std::fs::read_to_string(logs.join("calls.log")).unwrap_or_default();

    node.docker_ok(&["run", "--name", "rl", "--log-driver", p, &img, "sh", "-c", "echo one; echo two; echo three >&2"]);
    let id = node.docker_ok(&["inspect", "-f", "{{.Id}}", "rl"]).trim().to_string();
    until("StopLogging", || calls().contains(&format!("StopLogging {id} ")));
    let logs_of = |args: &[&str]| {
        let o = node.docker(&[&["logs"][..], args, &["rl"][..]].concat());
        assert!(o.status.success(), "docker logs {args:?}: {o:?}");
        (String::from_utf8_lossy(&o.stdout).to_string(), String::from_utf8_lossy(&o.stderr).to_string())
    };
    assert_eq!(logs_of(&[]), ("[berthlog] one\n[berthlog] two\n".to_string(), "[berthlog] three\n".to_string()), "the plugin's answer");
    let zero = "0001-01-01T00:00:00Z";
    assert_eq!(read_logs_calls(&logs, &id), [json!({"Since": zero, "Until": zero, "Tail": -1, "Follow": false})]);
    // the container stopped: Moby makes a new logger around ReadLogs (StartLogging
    // on a new FIFO, ReadLogs, StopLogging; this plugin reads only then)
    let kinds = || -> Vec<(String, String)> {
        calls()
            .lines()
            .filter_map(|l| {
                let mut w = l.split(' ');
                let (k, i, f) = (w.next()?, w.next()?, w.next().unwrap_or(""));
                (i == id).then(|| (k.to_string(), f.to_string()))
            })
            .collect()
    };
    until("the logger's StopLogging", || kinds().len() == 5);
    let k = kinds();
    assert_eq!(k.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["StartLogging", "StopLogging", "StartLogging", "ReadLogs", "StopLogging"], "{k:?}");
    assert!(k[2].1 != k[0].1 && k[4].1 == k[2].1, "a new FIFO: {k:?}");

    // the tail is the plugin's: one line of the three
    let (out, err) = logs_of(&["--tail", "1"]);
    assert_eq!(format!("{out}{err}").lines().count(), 1, "{out:?} {err:?}");
    assert_eq!(read_logs_calls(&logs, &id)[1]["Tail"], 1);

    // since/until go to the plugin as Go times; this plugin does not filter, the
    // engine does (as Moby's adapter checks again), and -t prefixes the plugin's times
    let (out, _) = logs_of(&["-t", "--since", "2000-01-01T00:00:00Z", "--until", "2100-01-01T00:00:00Z"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (l, want) in lines.iter().zip(["[berthlog] one", "[berthlog] two"]) {
        let (ts, rest) = l.split_once(' ').unwrap();
        assert!(ts.len() == 30 && ts.ends_with('Z') && ts.starts_with("20"), "{l}");
        assert_eq!(rest, want);
    }
    let c = &read_logs_calls(&logs, &id)[2];
    assert_eq!((c["Since"].as_str(), c["Until"].as_str()), (Some("2000-01-01T00:00:00Z"), Some("2100-01-01T00:00:00Z")), "{c}");
    assert_eq!(logs_of(&["--until", "2000-01-01T00:00:00Z"]), (String::new(), String::new()), "until filters the plugin's answer");
    // disabled, the plugin makes no logger: Moby's error, no local copy instead
    until("the loggers' StopLogging", || calls().matches(&format!("StopLogging {id} ")).count() == 5);
    node.docker_ok(&["plugin", "disable", p]);
    let disabled = "failed to get logging factory: logger: no log driver named 'berthlog' is registered: error looking up logging plugin berthlog: plugin berthlog found but disabled";
    fails_with(&node, &["logs", "rl"], disabled);
    node.docker_ok(&["plugin", "enable", p]);
    node.docker_ok(&["rm", "rl"]);

    // -f on a running container: the plugin follows, until StopLogging
    node.docker_ok(&["run", "-d", "--name", "fl", "--log-driver", p, &img, "sh", "-c", "echo a; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo b"]);
    let fid = node.docker_ok(&["inspect", "-f", "{{.Id}}", "fl"]).trim().to_string();
    let mut cmd = node.cmd();
    cmd.args(["logs", "-f", "fl"]).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let followed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        until("ReadLogs with Follow", || read_logs_calls(&logs, &fid).first().is_some_and(|c| c["Follow"] == true));
        node.docker_ok(&["exec", "fl", "touch", "/tmp/go"]);
        until("the container's exit", || node.docker_ok(&["inspect", "-f", "{{.State.Running}}", "fl"]).trim() == "false");
        until("docker logs -f to end", || child.try_wait().unwrap().is_some());
    }));
    if followed.is_err() {
        let _ = child.kill();
    }
    let o = child.wait_with_output().unwrap();
    followed.unwrap();
    assert!(o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "[berthlog] a\n[berthlog] b\n");
    node.docker_ok(&["rm", "fl"]);

    // without the capability, the local copy answers again
    node.docker_ok(&["plugin", "disable", p]);
    node.docker_ok(&["plugin", "set", p, "READ_LOGS=0"]);
    node.docker_ok(&["plugin", "enable", p]);
    node.docker_ok(&["run", "--name", "local", "--log-driver", p, &img, "echo", "plain"]);
    assert_eq!(node.docker_ok(&["logs", "local"]), "plain\n");
    // a plugin that does not read, disabled or gone: no logger, Moby's error
    let lid = node.docker_ok(&["inspect", "-f", "{{.Id}}", "local"]).trim().to_string();
    until("the loggers' StopLogging", || calls().matches(&format!("StopLogging {lid} ")).count() == 2);
    node.docker_ok(&["plugin", "disable", p]);
    fails_with(&node, &["logs", "local"], disabled);
    node.docker_ok(&["plugin", "rm", p]);
    fails_with(&node, &["logs", "local"], "failed to get logging factory: logger: no log driver named 'berthlog' is registered: error looking up logging plugin berthlog: plugin \"berthlog\" not found");
    node.docker_ok(&["rm", "local"]);
}

/// `--log-opt mode` with a plugin that stalls (the test plugin reads nothing while
/// `stall` is in its log directory): in blocking mode, Moby's default, the
/// container's writes wait for the plugin and no line is lost; in non-blocking
/// mode with a small `max-buffer-size` the container runs to its end while the
/// plugin stalls, and what did not fit is dropped (the local copy has it all).
#[test]
fn log_plugin_modes_with_a_slow_plugin() {
    berth_e2e::require_root!();
    let dirs = tempfile::tempdir().unwrap();
    let (node, _reg, img, logs) = log_plugin_node(dirs.path(), &[]);
    let p = "berthlog";
    let stall = logs.join("stall");
    let calls = || std::fs::read_to_string(logs.join("calls.log")).unwrap_or_default();
    // 5000 lines of ~110 bytes: far more than the pipes between hold
    const N: usize = 5000;
    let script = format!("i=0; while [ $i -lt {N} ]; do echo \"line $i {}\"; i=$((i+1)); done", "x".repeat(100));
    let entries = |id: &str| -> Vec<String> {
        std::fs::read_to_string(logs.join(format!("{id}.entries")))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["line"].as_str().unwrap().to_string())
            .collect()
    };
    let local_lines = |name: &str| node.docker_ok(&["logs", name]).lines().count();
    let want: Vec<String> = (0..N).map(|i| format!("line {i} {}", "x".repeat(100))).collect();

    // blocking (the default): the container waits while the plugin stalls
    std::fs::write(&stall, "").unwrap();
    node.docker_ok(&["run", "-d", "--name", "blk", "--log-driver", p, &img, "sh", "-c", &script]);
    let bid = node.docker_ok(&["inspect", "-f", "{{.Id}}", "blk"]).trim().to_string();
    until("the first lines", || local_lines("blk") > 0);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let held = node.docker_ok(&["inspect", "-f", "{{.State.Running}}", "blk"]).trim() == "true" && local_lines("blk") < N;
    std::fs::remove_file(&stall).unwrap();
    assert!(held, "a stalled plugin holds a blocking container's output back");
    until("blk's StopLogging", || calls().contains(&format!("StopLogging {bid} ")));
    until("the plugin to read it all", || entries(&bid).len() >= N);
    assert_eq!(entries(&bid), want, "blocking: every line reached the plugin");
    assert_eq!(local_lines("blk"), N);
    node.docker_ok(&["rm", "blk"]);

    // non-blocking with a small buffer: the container ends while the plugin stalls
    std::fs::write(&stall, "").unwrap();
    let run = node.docker(&[
        "run", "-d", "--name", "nb", "--log-driver", p, "--log-opt", "mode=non-blocking", "--log-opt", "max-buffer-size=4k", &img, "sh", "-c", &script,
    ]);
    let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert!(run.status.success(), "{run:?}");
        until("nb's exit with the plugin stalled", || node.docker_ok(&["inspect", "-f", "{{.State.Running}}", "nb"]).trim() == "false");
        assert!(stall.exists());
    }));
    let _ = std::fs::remove_file(&stall);
    ended.unwrap();
    let nid = node.docker_ok(&["inspect", "-f", "{{.Id}}", "nb"]).trim().to_string();
    until("nb's StopLogging", || calls().contains(&format!("StopLogging {nid} ")));
    until("the plugin to read what the pipe kept", || !entries(&nid).is_empty());
    let got = entries(&nid);
    assert!(!got.is_empty() && got.len() < N, "non-blocking: what did not fit was dropped ({} of {N})", got.len());
    assert!(got.iter().all(|l| want.contains(l)), "whole lines only");
    assert_eq!(local_lines("nb"), N, "the local copy has every line");
    node.docker_ok(&["rm", "nb"]);
    node.docker_ok(&["plugin", "disable", p]);
    node.docker_ok(&["plugin", "rm", p]);
}

/// Now, as `docker events --since` takes it (seconds.nanoseconds).
fn now_stamp() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// A plugin's PropagatedMount (Moby: its host side a shared mount, bound rshared
/// into the plugin): what the plugin mounts there (sshfs/nfs-style volume plugins;
/// here the test plugin's `tmpfs=1` volumes get a tmpfs at Mount) reaches the host
/// and the containers using its volumes; the volume's host path is under the
/// propagated mount (Moby's ScopedPath); disabling unmounts it all.
#[test]
fn propagated_mount_reaches_the_host_and_containers() {
    berth_e2e::require_root!();
    let dirs = tempfile::tempdir().unwrap();
    let dir = volume_plugin_dir(dirs.path());
    std::fs::create_dir_all(dir.join("rootfs/pm")).unwrap();
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let cfg = cfg.replace(r#""value": "/data""#, r#""value": "/pm""#).replace(r#""entrypoint""#, r#""propagatedMount": "/pm", "entrypoint""#);
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let (node, _reg, img) = berth_e2e::fixtures::node_with_busybox();
    let p = "berthpm";
    let since = now_stamp();
    node.docker_ok(&["plugin", "create", p, dir.to_str().unwrap()]);
    assert_eq!(node.docker_ok(&["plugin", "inspect", "-f", "{{.Config.PropagatedMount}}", p]).trim(), "/pm");
    node.docker_ok(&["plugin", "enable", p]);
    node.docker_ok(&["volume", "create", "-d", p, "-o", "tmpfs=1", "tv"]);
    let mountpoint = PathBuf::from(node.docker_ok(&["volume", "ls", "-f", "name=tv", "--format", "{{.Mountpoint}}"]).trim());
    assert!(mountpoint.ends_with("propagated-mount/tv"), "{}", mountpoint.display());
    assert_eq!(node.docker_ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", "tv"]).trim(), "/pm/tv", "inspect: the plugin's own path");

    // the container sees the file the plugin wrote inside the tmpfs it mounted
    assert_eq!(node.docker_ok(&["run", "--rm", "-v", "tv:/vol", &img, "cat", "/vol/inside"]).trim(), "written inside the tmpfs of tv");
    // and so does the host while the volume is mounted; the container's writes land there
    node.docker_ok(&["run", "-d", "--name", "user", "-v", "tv:/vol", &img, "sh", "-c", "echo from-container > /vol/c; exec sleep 60"]);
    until("the container's write", || std::fs::read_to_string(mountpoint.join("c")).is_ok_and(|s| s == "from-container\n"));
    assert_eq!(std::fs::read_to_string(mountpoint.join("inside")).unwrap(), "written inside the tmpfs of tv\n");
    node.docker_ok(&["rm", "-f", "user"]);
    // the last Unmount: the plugin unmounted its tmpfs, the host sees that too
    until("the tmpfs to go", || !mountpoint.join("inside").exists());

    node.docker_ok(&["volume", "rm", "tv"]);
    let mounts = |node: &Node| node.leftovers().into_iter().filter(|m| m.contains("propagated-mount")).collect::<Vec<_>>();
    assert!(!mounts(&node).is_empty(), "the propagated mount is a mount on the host");
    node.docker_ok(&["plugin", "disable", p]);
    assert_eq!(mounts(&node), Vec::<String>::new(), "disabled: unmounted");
    node.docker_ok(&["plugin", "rm", p]);

    // plugin events as Moby 20.10 logs them (checked on a dockerd 20.10.24): the
    // plugin's ID, `name` normalised at create, as given to enable/disable/rm
    let until = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 1).to_string();
    let evs = node.docker_ok(&["events", "--since", &since, "--until", &until, "--filter", "type=plugin", "--format", "{{.Type}} {{.Action}} {{.Actor.ID}} {{.Actor.Attributes.name}}"]);
    let id_len = evs.lines().map(|l| l.split(' ').nth(2).unwrap_or("").len()).collect::<Vec<_>>();
    let evs: Vec<String> = evs.lines().map(|l| l.split(' ').enumerate().filter(|(i, _)| *i != 2).map(|(_, w)| w).collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(evs, ["plugin create berthpm:latest", "plugin enable berthpm", "plugin disable berthpm", "plugin remove berthpm"]);
    assert!(id_len.iter().all(|n| *n == 64), "the plugin's ID: {id_len:?}");
}
