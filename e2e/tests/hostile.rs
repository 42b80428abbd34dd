//! A hostile container against the engine's file access (issue 14 items 1 and 8):
//! `docker cp` both ways, `-L`, and the archive API's PUT with `noOverwriteDirNonDir`,
//! while the container swaps a directory for a symlink to `/` in a loop
//! (CVE-2018-15664's shape). Nothing of the host may be read or written. Also:
//! `docker cp` of /etc/hostname, /etc/hosts, /etc/resolv.conf gives what the container
//! sees (Moby's answer), and device rules hold on the cgroup v2 hierarchy.

use berth_e2e::fixtures::node_with_busybox;
use berth_e2e::{is_root, uniq, Node};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

/// Run `f` `n` times over two threads (the docker CLI's start-up dominates each try);
/// answers the sum of what `f` counts.
fn spread(n: usize, f: impl Fn() -> (usize, usize, String) + Sync) -> (usize, usize, String) {
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|k| {
                let f = &f;
                s.spawn(move || {
                    let mut acc = (0, 0, String::new());
                    for _ in 0..(n / 2 + (k == 0) as usize * (n % 2)) {
                        let (e, o, err) = f();
                        acc.0 += e;
                        acc.1 += o;
                        if acc.2.is_empty() {
                            acc.2 = err;
                        }
                    }
                    acc
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).fold((0, 0, String::new()), |a, b| (a.0 + b.0, a.1 + b.1, if a.2.is_empty() { b.2 } else { a.2 }))
    })
}

/// Tries of each kind (≥ 1,000 as the issue asks); `BERTH_HOSTILE_TRIES` overrides.
fn tries() -> usize {
    std::env::var("BERTH_HOSTILE_TRIES").ok().and_then(|s| s.parse().ok()).unwrap_or(1000)
}

/// Files of a tar stream: name -> content.
fn tar_files(b: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut ar = tar::Archive::new(b);
    if let Ok(es) = ar.entries() {
        for e in es.flatten() {
            let mut e = e;
            let name = e.path().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
            let mut v = Vec::new();
            let _ = e.read_to_end(&mut v);
            out.push((name, v));
        }
    }
    out
}

/// A raw API request over the node's socket: (status, body).
fn api(node: &Node, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = std::os::unix::net::UnixStream::connect(&node.sock).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: berth\r\nContent-Type: application/x-tar\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // the engine may answer (an error) before it has read the whole body and close
    // its side, as Go's server does past its drain limit: a failed write is not a
    // failed request, the answer is still there to read
    let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(body));
    let mut resp = Vec::new();
    // ECONNRESET after the answer (the engine closed with our body unread) keeps what was read
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = match resp.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => resp[i + 4..].to_vec(),
        None => vec![],
    };
    (status, body)
}

fn one_file_tar(name: &str, data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, name, data).unwrap();
    b.into_inner().unwrap()
}

/// Host files this test creates, removed even when it fails.
struct HostFiles(Vec<std::path::PathBuf>);
impl Drop for HostFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[test]
fn docker_cp_never_escapes_a_racing_container() {
    assert!(is_root(), "this test needs root");
    let (node, _reg, img) = node_with_busybox();
    let u = uniq();
    // a marker on the host's / that an escaping read would find, and the names an
    // escaping write would create there
    let marker = format!("berth-marker-{u}");
    let secret = format!("HOST-SECRET-{u}\n");
    let written = [format!("/berth-cp-{u}"), format!("/berth-put-{u}")];
    let _guard = HostFiles(vec![Path::new("/").join(&marker), written[0].clone().into(), written[1].clone().into()]);
    std::fs::write(Path::new("/").join(&marker), &secret).unwrap();
    let host_shadow = std::fs::read("/etc/shadow").unwrap_or_default();

    // /w is a directory with a harmless etc/shadow; the loop swaps it for a link to /
    // (`rm -rf`: an extraction that lands while /w is missing makes it again, as
    // Moby's does; the loop must not then move /wd into it)
    let racer = format!(
        "mkdir -p /w/etc && echo container > /w/etc/shadow && echo container > /w/{marker} && ln -s /w/{marker} /lnk && \
         while :; do mv /w /wd; ln -s / /w; rm -rf /w; mv /wd /w; done"
    );
    let id = node.docker_ok(&["run", "-d", "--name", "racer", &img, "sh", "-c", &racer]).trim().to_string();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let src_dir = node.dir.path().join("src");
    std::fs::create_dir_all(&src_dir).unwrap();
    let src = src_dir.join(written[0].trim_start_matches('/'));
    std::fs::write(&src, b"from the host\n").unwrap();
    let n = tries();
    let mut report = Vec::new();

    let err_of = |o: &std::process::Output| if o.status.success() { String::new() } else { String::from_utf8_lossy(&o.stderr).trim().to_string() };

    // 2. docker cp c:/w/etc/shadow - : never the host's shadow
    let t = Instant::now();
    let (esc_read, ok, err) = spread(n, || {
        let o = node.docker(&["cp", "racer:/w/etc/shadow", "-"]);
        let esc = tar_files(&o.stdout).iter().filter(|(_, d)| (!host_shadow.is_empty() && *d == host_shadow) || d != b"container\n").count();
        (esc, o.status.success() as usize, err_of(&o))
    });
    report.push(format!("cp c:/w/etc/shadow -: {esc_read} escapes in {n} tries ({ok} succeeded; a failure: {err}) in {:.1} s", t.elapsed().as_secs_f64()));

    // 3. docker cp -L c:/lnk - (the link points into /w): never the host's marker
    let t = Instant::now();
    let (esc_follow, ok, err) = spread(n, || {
        let o = node.docker(&["cp", "-L", "racer:/lnk", "-"]);
        let esc = tar_files(&o.stdout).iter().filter(|(_, d)| *d == secret.as_bytes()).count();
        (esc, o.status.success() as usize, err_of(&o))
    });
    report.push(format!("cp -L c:/lnk -: {esc_follow} escapes in {n} tries ({ok} succeeded; a failure: {err}) in {:.1} s", t.elapsed().as_secs_f64()));

    // 1. (after the reads: an extraction that lands while /w is missing makes /w again and
    // the loop then nests /wd in it) docker cp FILE c:/w/ (lands in /w, or in the container's / through the link)
    let t = Instant::now();
    let (esc_write, ok, err) = spread(n, || {
        let o = node.docker(&["cp", src.to_str().unwrap(), "racer:/w/"]);
        // an escape made the file at the host's /; whoever removes it counts it
        let esc = std::fs::remove_file(&written[0]).is_ok() as usize;
        (esc, o.status.success() as usize, err_of(&o))
    });
    report.push(format!("cp FILE c:/w/: {esc_write} escapes in {n} tries ({ok} succeeded; a failure: {err}) in {:.1} s", t.elapsed().as_secs_f64()));

    // 4. PUT /containers/{id}/archive?path=/w&noOverwriteDirNonDir=true
    let t = Instant::now();
    let body = one_file_tar(written[1].trim_start_matches('/'), b"put\n");
    let path = format!("/v1.41/containers/{id}/archive?path=%2Fw&noOverwriteDirNonDir=true");
    let (esc_put, ok, err) = spread(n, || {
        let (status, body) = api(&node, "PUT", &path, &body);
        let esc = std::fs::remove_file(&written[1]).is_ok() as usize;
        (esc, (status == 200) as usize, if status == 200 { String::new() } else { format!("{status} {}", String::from_utf8_lossy(&body)) })
    });
    report.push(format!("PUT archive noOverwriteDirNonDir: {esc_put} escapes in {n} tries ({ok} succeeded; a failure: {err}) in {:.1} s", t.elapsed().as_secs_f64()));

    eprintln!("{}", report.join("\n"));
    // the container got what was written, in its own root
    node.docker_ok(&["exec", "racer", "sh", "-c", &format!("test -e /w/berth-cp-{u} || test -e /berth-cp-{u}")]);
    node.docker_ok(&["rm", "-f", "racer"]);
    assert_eq!((esc_write, esc_read, esc_follow, esc_put), (0, 0, 0, 0), "{}", report.join("\n"));
    assert!(ok > 0, "no PUT succeeded: the test proved nothing");
    assert!(report.iter().all(|l| !l.contains("(0 succeeded")), "a kind never succeeded: the race proved nothing\n{}", report.join("\n"));
}

/// `docker cp c:/etc/hostname|hosts|resolv.conf` gives what the container sees (Moby
/// answers with the engine's files bound there, not the image's empty ones).
#[test]
fn docker_cp_reads_the_network_files_the_container_sees() {
    assert!(is_root(), "this test needs root");
    let (node, _reg, img) = node_with_busybox();
    node.docker_ok(&["run", "-d", "--name", "netfiles", "--hostname", "berth-host", "--add-host", "extra.example:10.1.2.3", &img, "sleep", "1000"]);
    for f in ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"] {
        let seen = node.docker_ok(&["exec", "netfiles", "cat", f]);
        let o = node.docker(&["cp", &format!("netfiles:{f}"), "-"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let files = tar_files(&o.stdout);
        assert_eq!(files.len(), 1, "{f}: {files:?}");
        let name = Path::new(f).file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(files[0].0, name);
        assert_eq!(String::from_utf8_lossy(&files[0].1), seen, "{f}");
        assert!(!seen.is_empty(), "{f} is empty in the container");
        // and to a file on the host
        let dst = node.dir.path().join(format!("copied-{name}"));
        node.docker_ok(&["cp", &format!("netfiles:{f}"), dst.to_str().unwrap()]);
        assert_eq!(std::fs::read_to_string(&dst).unwrap(), seen);
    }
    assert_eq!(node.docker_ok(&["exec", "netfiles", "cat", "/etc/hostname"]), "berth-host\n");
    // a stopped container's files are still there (Moby keeps them too)
    node.docker_ok(&["stop", "-t", "0", "netfiles"]);
    let o = node.docker(&["cp", "netfiles:/etc/hostname", "-"]);
    assert_eq!(tar_files(&o.stdout).first().map(|f| f.1.clone()), Some(b"berth-host\n".to_vec()));
    node.docker_ok(&["rm", "netfiles"]);
}

/// Paths that cross into a volume give what the container sees there.
#[test]
fn docker_cp_crosses_into_volumes() {
    assert!(is_root(), "this test needs root");
    let (node, _reg, img) = node_with_busybox();
    let vol = format!("v{}", uniq());
    node.docker_ok(&["run", "-d", "--name", "withvol", "-v", &format!("{vol}:/data"), &img, "sh", "-c", "echo in-volume > /data/f; ln -s /data /via; sleep 1000"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    for p in ["/data/f", "/via/f"] {
        let o = node.docker(&["cp", &format!("withvol:{p}"), "-"]);
        let files = tar_files(&o.stdout);
        assert_eq!(files.first().map(|f| f.1.clone()), Some(b"in-volume\n".to_vec()), "{p}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let src = node.dir.path().join("put-me");
    std::fs::write(&src, b"copied in\n").unwrap();
    node.docker_ok(&["cp", src.to_str().unwrap(), "withvol:/via/"]);
    assert_eq!(node.docker_ok(&["exec", "withvol", "cat", "/data/put-me"]), "copied in\n");
    // a read-only volume refuses writes as Moby does
    node.docker_ok(&["run", "-d", "--name", "readonly", "-v", &format!("{vol}:/data:ro"), &img, "sleep", "1000"]);
    let o = node.docker(&["cp", src.to_str().unwrap(), "readonly:/data/"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("mounted volume is marked read-only"), "{}", String::from_utf8_lossy(&o.stderr));
    node.docker_ok(&["rm", "-f", "withvol", "readonly"]);
}

/// The host's root disk, as (path, "b"/"c", major, minor): a node that exists here.
fn a_host_block_device() -> (String, u32, u32) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for p in ["/dev/vda", "/dev/sda", "/dev/nvme0n1", "/dev/xvda", "/dev/zram0", "/dev/loop0"] {
        if let Ok(m) = std::fs::metadata(p) {
            // one the host itself may open (this VM refuses its root disk even to root)
            if m.file_type().is_block_device() && std::fs::File::open(p).is_ok() {
                return (p.to_string(), libc::major(m.rdev()), libc::minor(m.rdev()));
            }
        }
    }
    panic!("no block device on this host to test with");
}

/// Device rules: a default container may not mknod-and-read a host disk, `--device`
/// gives it that one, `--privileged` all; and the cgroup v2 program holds on its own
/// (with the v1 controller of this hybrid host opened wide, the read is still refused).
#[test]
fn device_rules_hold_on_cgroup_v2() {
    assert!(is_root(), "this test needs root");
    let (node, _reg, img) = node_with_busybox();
    let (dev, ma, mi) = a_host_block_device();
    let probe = format!("mknod /tmp/disk b {ma} {mi} && head -c1 /tmp/disk >/dev/null && echo read");
    // default: refused
    let o = node.docker(&["run", "--rm", &img, "sh", "-c", &probe]);
    assert!(!o.status.success(), "a default container read {dev}: {}", String::from_utf8_lossy(&o.stdout));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Operation not permitted"), "{}", String::from_utf8_lossy(&o.stderr));
    // --device: that device is allowed (as a node at the same path, and mknod'ed)
    let o = node.docker(&["run", "--rm", "--device", &dev, &img, "sh", "-c", &format!("head -c1 {dev} >/dev/null && {probe}")]);
    assert!(o.status.success(), "--device {dev}: {}", String::from_utf8_lossy(&o.stderr));
    // --device-cgroup-rule: allowed by the rule alone
    let rule = format!("b {ma}:{mi} rwm");
    let o = node.docker(&["run", "--rm", "--device-cgroup-rule", &rule, &img, "sh", "-c", &probe]);
    assert!(o.status.success(), "--device-cgroup-rule: {}", String::from_utf8_lossy(&o.stderr));
    // --privileged: everything
    let o = node.docker(&["run", "--rm", "--privileged", &img, "sh", "-c", &probe]);
    assert!(o.status.success(), "--privileged: {}", String::from_utf8_lossy(&o.stderr));

    // the v2 program alone: open the container's v1 devices cgroup to everything
    let v2 = Path::new("/sys/fs/cgroup/unified");
    assert!(v2.join("cgroup.procs").exists(), "no cgroup v2 hierarchy at {}", v2.display());
    let id = node.docker_ok(&["run", "-d", &img, "sleep", "1000"]).trim().to_string();
    let parent = format!("berth-e2e-{}", node.name);
    let v1 = Path::new("/sys/fs/cgroup/devices").join(&parent).join(&id);
    if v1.join("devices.allow").exists() {
        std::fs::write(v1.join("devices.allow"), "a *:* rwm").unwrap();
        assert_eq!(std::fs::read_to_string(v1.join("devices.list")).unwrap().trim(), "a *:* rwm");
    }
    assert!(v2.join(&parent).join(&id).is_dir(), "the container has no v2 cgroup");
    let o = node.docker(&["exec", &id, "sh", "-c", &probe]);
    assert!(!o.status.success(), "with v1 opened, the v2 program did not refuse: {}", String::from_utf8_lossy(&o.stdout));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Operation not permitted"), "{}", String::from_utf8_lossy(&o.stderr));
    // /dev/null is still fine
    node.docker_ok(&["exec", &id, "sh", "-c", "echo x > /dev/null && head -c1 /dev/zero >/dev/null"]);
    node.docker_ok(&["rm", "-f", &id]);
}
