//! Volumes and the storage driver through the real docker CLI against `berth up`:
//! create/ls --filter/inspect/rm/prune, Moby's errors and exit codes, persistence
//! across a node restart, `docker system df`, and the driver lines of `docker info`.

use berth_e2e::{require_root, Node};

fn lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
    v.sort();
    v
}

#[test]
fn volume_commands() {
    require_root!();
    let node = Node::start();
    assert_eq!(node.docker_ok(&["volume", "create", "--label", "team=a", "data1"]).trim(), "data1");
    assert_eq!(node.docker_ok(&["volume", "create", "data2"]).trim(), "data2");
    node.docker_ok(&["volume", "create", "-d", "local", "-o", "type=tmpfs", "-o", "device=tmpfs", "-o", "o=size=4m", "scratch"]);
    // An anonymous one (what `docker run -v /x` makes) and an unnamed one.
    let anon = node.docker_ok(&["volume", "create", "--label", "com.docker.volume.anonymous="]).trim().to_string();
    assert_eq!(anon.len(), 64, "{anon}");

    let all = node.docker_ok(&["volume", "ls", "-q"]);
    assert_eq!(lines(&all), lines(&format!("data1\ndata2\nscratch\n{anon}")));
    assert_eq!(node.docker_ok(&["volume", "ls", "-q", "--filter", "label=team=a"]).trim(), "data1");
    assert_eq!(node.docker_ok(&["volume", "ls", "-q", "--filter", "label=team"]).trim(), "data1");
    assert_eq!(lines(&node.docker_ok(&["volume", "ls", "-q", "--filter", "name=data"])), vec!["data1", "data2"]);
    assert_eq!(lines(&node.docker_ok(&["volume", "ls", "-q", "--filter", "driver=local"])).len(), 4);
    assert_eq!(lines(&node.docker_ok(&["volume", "ls", "-q", "--filter", "dangling=true"])).len(), 4);
    assert!(node.docker_ok(&["volume", "ls", "-q", "--filter", "dangling=false"]).trim().is_empty());
    let o = node.docker(&["volume", "ls", "--filter", "bogus=1"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("Invalid filter 'bogus'"), "{}", String::from_utf8_lossy(&o.stderr));
    // The table header as the CLI prints it.
    let table = node.docker_ok(&["volume", "ls"]);
    assert!(table.starts_with("DRIVER"), "{table}");

    // inspect
    let j: serde_json::Value = serde_json::from_str(&node.docker_ok(&["volume", "inspect", "data1"])).unwrap();
    let v = &j[0];
    assert_eq!(v["Name"], "data1");
    assert_eq!(v["Driver"], "local");
    assert_eq!(v["Scope"], "local");
    assert_eq!(v["Labels"]["team"], "a");
    assert_eq!(v["Options"], serde_json::Value::Null);
    let mp = v["Mountpoint"].as_str().unwrap();
    assert_eq!(mp, node.root.join("storage/volumes/data1/_data").display().to_string());
    assert!(std::path::Path::new(mp).is_dir());
    assert!(v["CreatedAt"].as_str().unwrap().ends_with('Z'));
    let opts = node.docker_ok(&["volume", "inspect", "-f", "{{json .Options}}", "scratch"]);
    let opts: serde_json::Value = serde_json::from_str(&opts).unwrap();
    assert_eq!(opts, serde_json::json!({"type": "tmpfs", "device": "tmpfs", "o": "size=4m"}));

    // Errors: Moby's words, exit code 1.
    let o = node.docker(&["volume", "inspect", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no such volume"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = node.docker(&["volume", "create", "-o", "bogus=1", "bad1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains(r#"create bad1: invalid option: "bogus""#), "{}", String::from_utf8_lossy(&o.stderr));
    let o = node.docker(&["volume", "create", "x"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("volume name is too short"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = node.docker(&["volume", "rm", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("get nope: no such volume"), "{}", String::from_utf8_lossy(&o.stderr));
    node.docker_ok(&["volume", "rm", "-f", "nope"]);

    // prune: anonymous volumes only, then everything with --all.
    let out = node.docker_ok(&["volume", "prune", "-f"]);
    assert!(out.contains(&anon), "{out}");
    assert!(!out.contains("data1"), "{out}");
    assert_eq!(lines(&node.docker_ok(&["volume", "ls", "-q"])), vec!["data1", "data2", "scratch"]);
    node.docker_ok(&["volume", "rm", "data2"]);
    // (not scratch: a volume with mount options, a tmpfs here, is not pruned, as
    // Moby 20.10 keeps it: checked side by side)
    let out = node.docker_ok(&["volume", "prune", "-af"]);
    assert!(out.contains("data1") && !out.contains("scratch"), "{out}");
    assert_eq!(node.docker_ok(&["volume", "ls", "-q"]).trim(), "scratch");
    node.docker_ok(&["volume", "rm", "scratch"]);
    assert!(node.docker_ok(&["volume", "ls", "-q"]).trim().is_empty());
}

#[test]
fn volumes_survive_a_node_restart() {
    require_root!();
    let mut node = Node::start();
    node.docker_ok(&["volume", "create", "--label", "keep=yes", "keeper"]);
    let mp = node.docker_ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", "keeper"]).trim().to_string();
    std::fs::write(std::path::Path::new(&mp).join("state.txt"), b"persisted").unwrap();
    node.shutdown();
    node.boot();
    assert_eq!(node.docker_ok(&["volume", "ls", "-q", "--filter", "label=keep=yes"]).trim(), "keeper");
    assert_eq!(std::fs::read(std::path::Path::new(&mp).join("state.txt")).unwrap(), b"persisted");
    node.docker_ok(&["volume", "rm", "keeper"]);
    assert!(!std::path::Path::new(&mp).exists());
}

#[test]
fn system_df_and_info_show_storage() {
    require_root!();
    let node = Node::start();
    node.docker_ok(&["volume", "create", "dfvol"]);
    let mp = node.docker_ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", "dfvol"]).trim().to_string();
    std::fs::write(std::path::Path::new(&mp).join("blob"), vec![7u8; 64 * 1024]).unwrap();
    let df = node.docker_ok(&["system", "df"]);
    assert!(df.contains("Local Volumes"), "{df}");
    let dfv = node.docker_ok(&["system", "df", "-v"]);
    assert!(dfv.contains("dfvol"), "{dfv}");
    let j = node.docker_ok(&["system", "df", "--format", "{{json .}}"]);
    assert!(j.contains("Local Volumes"), "{j}");

    let info = node.docker_ok(&["info", "--format", "{{json .DriverStatus}}"]);
    let st: Vec<Vec<String>> = serde_json::from_str(&info).unwrap();
    let keys: Vec<&str> = st.iter().map(|p| p[0].as_str()).collect();
    assert_eq!(keys, ["Backing Filesystem", "Supports d_type", "Using metacopy", "Native Overlay Diff", "userxattr"]);
    let plugins = node.docker_ok(&["info", "--format", "{{json .Plugins.Volume}}"]);
    assert_eq!(plugins.trim(), r#"["local"]"#);
    // Data lives under <root>/storage/<driver>/.
    assert!(node.root.join("storage/overlay2/l").is_dir());
}

#[test]
fn vfs_driver_is_chosen_in_daemon_json() {
    require_root!();
    let mut opts = berth_e2e::NodeOpts::default();
    opts.config.insert("storage-driver".into(), "vfs".into());
    let node = Node::start_opts(opts);
    assert_eq!(node.docker_ok(&["info", "--format", "{{.Driver}}"]).trim(), "vfs");
    assert!(node.root.join("storage/vfs/dir").is_dir());
}

/// A new (empty) volume mounted over a directory of the image starts with that
/// directory's content, as in Docker; a volume that has content, and `nocopy`, keep theirs.
#[test]
fn a_new_volume_starts_with_the_images_content() {
    require_root!();
    let (node, _reg, img) = berth_e2e::fixtures::node_with_busybox();
    // /var/www/index.html is in the fixture image
    let page = "hello from the page\n";
    assert_eq!(node.docker_ok(&["run", "--rm", "-v", "www:/var/www", &img, "cat", "/var/www/index.html"]), page);
    assert_eq!(node.docker_ok(&["run", "--rm", "-v", "/var/www", &img, "cat", "/var/www/index.html"]), page);
    // the named volume keeps what a container wrote; no second copy over it
    node.docker_ok(&["run", "--rm", "-v", "www:/var/www", &img, "sh", "-c", "echo changed > /var/www/index.html"]);
    assert_eq!(node.docker_ok(&["run", "--rm", "-v", "www:/var/www", &img, "cat", "/var/www/index.html"]), "changed\n");
    let o = node.docker(&["run", "--rm", "--mount", "type=volume,src=fresh,dst=/var/www,volume-nocopy", &img, "ls", "/var/www"]);
    assert!(o.status.success() && o.stdout.is_empty(), "nocopy: {o:?}");
}

/// `-v SRC:DST:rshared` (or `rslave`) asks for propagation the source's mount must
/// allow: Moby's ensureShared refuses a source on a private mount, in its words, and
/// the run works once the mount is shared.
#[test]
fn shared_propagation_needs_a_shared_source() {
    berth_e2e::require_root!();
    let (node, _reg, img) = berth_e2e::fixtures::node_with_busybox();
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mount = |args: &[&str]| {
        let o = std::process::Command::new("mount").args(args).output().unwrap();
        assert!(o.status.success(), "mount {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let s = src.to_str().unwrap();
    mount(&["-t", "tmpfs", "tmpfs", s]);
    let _u = Unmount(src.clone());
    mount(&["--make-private", s]);
    for (prop, what) in [("rshared", "a shared mount"), ("shared", "a shared mount"), ("rslave", "a shared or slave mount")] {
        let o = node.docker(&["run", "--rm", "-v", &format!("{s}:/x:{prop}"), &img, "true"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(&format!("path {s} is mounted on {s} but it is not {what}")), "{prop}: {err}");
    }
    // the default (rprivate) asks nothing of it
    node.docker_ok(&["run", "--rm", "-v", &format!("{s}:/x"), &img, "true"]);
    mount(&["--make-shared", s]);
    node.docker_ok(&["run", "--rm", "-v", &format!("{s}:/x:rshared"), &img, "true"]);
    node.docker_ok(&["run", "--rm", "-v", &format!("{s}:/x:rslave"), &img, "true"]);
    assert_eq!(node.docker_ok(&["ps", "-aq"]).trim(), "");
}
