//! One conformance suite for every storage driver (containerd's snapshotter testsuite
//! shape): overlay2 and vfs in a temp dir, btrfs on a loop-mounted btrfs image file.
//! Needs root (mounts); fails otherwise (BERTH_SKIP_ROOT_TESTS=1 skips).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_storage::driver::{self, CommitOpts, DiffSource, Driver, DriverError, Kind};


/// Unmounts its target when dropped, so a failed assertion leaves no mount behind.
struct Mounted(PathBuf);
impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = driver::unmount(&self.0);
    }
}

fn mount(d: &dyn Driver, key: &str, target: &Path) -> Mounted {
    std::fs::create_dir_all(target).unwrap();
    driver::mount_all(&d.mounts(key).unwrap(), target).unwrap();
    Mounted(target.to_path_buf())
}

fn suite(d: &dyn Driver, scratch: &Path) {
    // An empty active snapshot: write through its upper dir, commit.
    d.prepare("a", None).unwrap();
    assert_eq!(d.stat("a").unwrap().kind, Kind::Active);
    let up = d.upper_dir("a").unwrap();
    std::fs::create_dir(up.join("etc")).unwrap();
    std::fs::write(up.join("etc/base"), b"base").unwrap();
    std::fs::write(up.join("gone"), b"to delete").unwrap();
    assert!(matches!(
        d.prepare("a", None),
        Err(DriverError::AlreadyExists(_))
    ));
    d.commit("A", "a", CommitOpts::default()).unwrap();
    assert!(matches!(d.stat("a"), Err(DriverError::NotFound(_))));
    let a = d.stat("A").unwrap();
    assert_eq!((a.kind, a.parent.as_deref()), (Kind::Committed, None));
    assert!(d.mounts("A").is_err(), "a committed snapshot has no mounts");
    assert!(matches!(
        d.commit("X", "A", CommitOpts::default()),
        Err(DriverError::Invalid(_))
    ));

    // Missing and uncommitted parents are refused.
    assert!(matches!(
        d.prepare("p", Some("nope")),
        Err(DriverError::NotFound(_))
    ));
    d.prepare("act", None).unwrap();
    assert!(d.prepare("p", Some("act")).is_err());
    d.remove("act").unwrap();

    // A child sees its parent through its mounts and changes it.
    d.prepare("b", Some("A")).unwrap();
    {
        let t = scratch.join("mnt-b");
        let _m = mount(d, "b", &t);
        assert_eq!(std::fs::read(t.join("etc/base")).unwrap(), b"base");
        std::fs::write(t.join("etc/child"), b"child").unwrap();
        std::fs::remove_file(t.join("gone")).unwrap();
    }
    d.commit("B", "b", CommitOpts::default()).unwrap();
    assert_eq!(d.stat("B").unwrap().parent.as_deref(), Some("A"));

    // The diff source of B shows its own change and the deletion.
    match d.diff_source("B").unwrap() {
        DiffSource::Native { upper, lowers } => {
            assert_eq!(lowers.len(), 1);
            assert!(upper.join("etc/child").exists());
            let m = std::fs::symlink_metadata(upper.join("gone")).unwrap();
            assert_eq!(m.rdev(), 0, "a whiteout");
        }
        DiffSource::Naive { dir, parent } => {
            assert!(dir.join("etc/child").exists() && !dir.join("gone").exists());
            assert!(parent.unwrap().join("gone").exists());
        }
    }

    // A read-only view of B.
    d.view("v", "B").unwrap();
    assert_eq!(d.stat("v").unwrap().kind, Kind::View);
    {
        let t = scratch.join("mnt-v");
        let _m = mount(d, "v", &t);
        assert_eq!(std::fs::read(t.join("etc/child")).unwrap(), b"child");
        assert!(!t.join("gone").exists());
        let e = std::fs::write(t.join("new"), b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    }

    // Usage counts the snapshot's own data; walk lists everything.
    assert!(d.usage("A").unwrap().inodes >= 3);
    let mut names = vec![];
    d.walk(&mut |i| names.push(i.name.clone())).unwrap();
    names.sort();
    assert_eq!(names, vec!["A", "B", "v"]);

    // Parents with children cannot go; leaves can.
    assert!(matches!(d.remove("A"), Err(DriverError::InUse(_))));
    assert!(matches!(d.remove("B"), Err(DriverError::InUse(_))));
    d.remove("v").unwrap();
    d.remove("B").unwrap();
    d.remove("A").unwrap();
    assert!(matches!(d.remove("A"), Err(DriverError::NotFound(_))));
    let mut n = 0;
    d.walk(&mut |_| n += 1).unwrap();
    assert_eq!(n, 0);
}

/// A deep chain: 100 layers make a lower list longer than one page for overlay2.
fn deep_chain(d: &dyn Driver, scratch: &Path) {
    let mut parent: Option<String> = None;
    for i in 0..100 {
        let key = format!("deep-{i}-active");
        d.prepare(&key, parent.as_deref()).unwrap();
        std::fs::write(
            d.upper_dir(&key).unwrap().join(format!("f{i}")),
            i.to_string(),
        )
        .unwrap();
        let name = format!("deep-{i}");
        d.commit(&name, &key, CommitOpts::default()).unwrap();
        parent = Some(name);
    }
    d.prepare("deep-top", parent.as_deref()).unwrap();
    {
        let t = scratch.join("mnt-deep");
        let _m = mount(d, "deep-top", &t);
        for i in [0, 50, 99] {
            assert_eq!(
                std::fs::read_to_string(t.join(format!("f{i}"))).unwrap(),
                i.to_string()
            );
        }
    }
    d.remove("deep-top").unwrap();
    for i in (0..100).rev() {
        d.remove(&format!("deep-{i}")).unwrap();
    }
}

/// Records survive reopening the driver; leftovers of an interrupted prepare go.
fn persistence(name: &str, storage: &Path) {
    {
        let d = driver::open(name, storage, &[]).unwrap();
        d.prepare("keep", None).unwrap();
        d.commit("kept", "keep", CommitOpts::default()).unwrap();
        d.prepare("active", Some("kept")).unwrap();
    }
    let d = driver::open(name, storage, &[]).unwrap();
    assert_eq!(d.stat("kept").unwrap().kind, Kind::Committed);
    assert_eq!(d.stat("active").unwrap().parent.as_deref(), Some("kept"));
    d.remove("active").unwrap();
    d.remove("kept").unwrap();
}

fn run(name: &str, storage: &Path) {
    let scratch = tempfile::tempdir().unwrap();
    {
        let d = driver::open(name, storage, &[]).unwrap();
        assert_eq!(d.name(), name);
        suite(&*d, scratch.path());
        deep_chain(&*d, scratch.path());
    }
    persistence(name, storage);
}

#[test]
fn conformance_overlay2() {
    berth_test_support::require_root!();
    let root = tempfile::tempdir_in("/var/tmp").unwrap();
    run("overlay2", root.path());
    let d = driver::open("overlay2", root.path(), &[]).unwrap();
    let st = d.status();
    assert_eq!(st[0][0], "Backing Filesystem");
    assert_eq!(
        st.iter().map(|s| s[0].as_str()).collect::<Vec<_>>()[1..],
        [
            "Supports d_type",
            "Using metacopy",
            "Native Overlay Diff",
            "userxattr"
        ]
    );
}

#[test]
fn conformance_vfs() {
    berth_test_support::require_root!();
    let root = tempfile::tempdir_in("/var/tmp").unwrap();
    run("vfs", root.path());
}

/// A loop-mounted btrfs image, unmounted and detached on drop.
struct BtrfsLoop {
    dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl BtrfsLoop {
    fn new() -> Option<BtrfsLoop> {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let img = dir.path().join("btrfs.img");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(512 << 20).unwrap();
        drop(f);
        let ok = Command::new("mkfs.btrfs")
            .arg("-q")
            .arg(&img)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("skipped: mkfs.btrfs unavailable");
            return None;
        }
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let st = Command::new("mount")
            .arg("-o")
            .arg("loop")
            .arg(&img)
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(st.success(), "mount -o loop failed");
        Some(BtrfsLoop { dir, mnt })
    }
}

impl Drop for BtrfsLoop {
    fn drop(&mut self) {
        // umount of a loop mount made with `mount -o loop` detaches the loop device.
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = self.dir.path();
    }
}

#[test]
fn conformance_btrfs() {
    berth_test_support::require_root!();
    let Some(lp) = BtrfsLoop::new() else { return };
    let storage = lp.mnt.join("storage");
    run("btrfs", &storage);
}

#[test]
fn btrfs_refuses_other_filesystems() {
    let root = tempfile::tempdir_in("/var/tmp").unwrap();
    if berth_storage::util::backing_fs(root.path()) == "btrfs" {
        return;
    }
    let e = driver::open("btrfs", root.path(), &[]).err().unwrap();
    assert!(
        e.to_string()
            .contains("prerequisites for driver not satisfied"),
        "{e}"
    );
}

#[test]
fn unsupported_drivers_are_refused_clearly() {
    let root = tempfile::tempdir().unwrap();
    for n in ["aufs", "devicemapper", "zfs"] {
        let e = driver::open(n, root.path(), &[]).err().unwrap();
        assert_eq!(
            e.to_string(),
            format!("storage driver \"{n}\" is not supported by this engine or kernel; use one of: overlay2, btrfs, vfs")
        );
    }
    let e = driver::open("overlay2", root.path(), &["overlay2.bogus=1".into()])
        .err()
        .unwrap();
    assert_eq!(e.to_string(), "overlay2: unknown option bogus");
}
