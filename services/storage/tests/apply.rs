//! Layer apply: what a well-formed diff does in both whiteout modes, and tar-split
//! reproducing the stream byte for byte.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use berth_storage::apply::{apply_tar, ApplyOpts};
use berth_storage::driver::Whiteouts;


fn hdr(typ: tar::EntryType, mode: u32, uid: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(typ);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_mtime(mtime);
    h.set_size(0);
    h
}

fn base_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = hdr(tar::EntryType::Directory, 0o755, 0, 1_600_000_000);
    b.append_data(&mut h, "etc/", &[][..]).unwrap();
    let mut h = hdr(tar::EntryType::Regular, 0o644, 0, 1_600_000_001);
    h.set_size(6);
    b.append_data(&mut h, "etc/passwd", &b"root:x"[..]).unwrap();
    let mut h = hdr(tar::EntryType::Regular, 0o4755, 1000, 1_600_000_002);
    h.set_size(3);
    b.append_data(&mut h, "bin/suid", &b"elf"[..]).unwrap();
    let mut h = hdr(tar::EntryType::Link, 0o755, 0, 1_600_000_002);
    b.append_link(&mut h, "bin/suid-link", "bin/suid").unwrap();
    let mut h = hdr(tar::EntryType::Symlink, 0o777, 0, 1_600_000_003);
    b.append_link(&mut h, "bin/sh", "/bin/suid").unwrap();
    let mut h = hdr(tar::EntryType::Directory, 0o700, 0, 1_600_000_004);
    b.append_data(&mut h, "opaque/", &[][..]).unwrap();
    let mut h = hdr(tar::EntryType::Regular, 0o600, 0, 1_600_000_005);
    h.set_size(3);
    b.append_data(&mut h, "opaque/old", &b"old"[..]).unwrap();
    let mut h = hdr(tar::EntryType::Fifo, 0o644, 0, 1_600_000_005);
    b.append_data(&mut h, "run/fifo", &[][..]).unwrap();
    // An xattr through PAX.
    b.append_pax_extensions([("SCHILY.xattr.user.berth", &b"yes"[..])])
        .unwrap();
    let mut h = hdr(tar::EntryType::Regular, 0o644, 0, 1_600_000_006);
    h.set_size(1);
    b.append_data(&mut h, "xattr-file", &b"x"[..]).unwrap();
    b.into_inner().unwrap()
}

fn child_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = hdr(tar::EntryType::Regular, 0o644, 0, 1_600_000_010);
    b.append_data(&mut h, "etc/.wh.passwd", &[][..]).unwrap();
    let mut h = hdr(tar::EntryType::Directory, 0o755, 0, 1_600_000_011);
    b.append_data(&mut h, "opaque/", &[][..]).unwrap();
    let mut h = hdr(tar::EntryType::Regular, 0o644, 0, 1_600_000_011);
    b.append_data(&mut h, "opaque/.wh..wh..opq", &[][..])
        .unwrap();
    let mut h = hdr(tar::EntryType::Regular, 0o644, 0, 1_600_000_012);
    h.set_size(3);
    b.append_data(&mut h, "opaque/new", &b"new"[..]).unwrap();
    let mut h = hdr(tar::EntryType::Regular, 0o640, 0, 1_600_000_013);
    h.set_size(4);
    b.append_data(&mut h, "etc/shadow", &b"hash"[..]).unwrap();
    b.into_inner().unwrap()
}

fn apply(tar: &[u8], dir: &Path, mode: Whiteouts) -> berth_storage::apply::Applied {
    apply_tar(
        tar,
        dir,
        &ApplyOpts {
            whiteouts: mode,
            devices: true,
            split: true,
        },
    )
    .unwrap()
    .0
}

#[test]
fn base_layer_keeps_everything() {
    let d = tempfile::tempdir().unwrap();
    let out = apply(&base_layer(), d.path(), Whiteouts::Overlay);
    assert_eq!(out.size, 6 + 3 + 3 + 1);
    let m = std::fs::metadata(d.path().join("bin/suid")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o4755, "set-uid kept after chown");
    assert_eq!((m.uid(), m.gid()), (1000, 1000));
    assert_eq!(m.mtime(), 1_600_000_002);
    assert_eq!(m.nlink(), 2, "hardlink");
    assert_eq!(
        std::fs::read_link(d.path().join("bin/sh")).unwrap(),
        Path::new("/bin/suid")
    );
    assert!(std::fs::symlink_metadata(d.path().join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(
        std::fs::metadata(d.path().join("etc")).unwrap().mtime(),
        1_600_000_000,
        "dir times set last"
    );
    assert_eq!(
        std::fs::metadata(d.path().join("opaque")).unwrap().mode() & 0o777,
        0o700
    );
    let v = xattr(d.path(), "xattr-file", "user.berth");
    assert_eq!(v.as_deref(), Some(&b"yes"[..]));
}

#[test]
fn overlay_whiteouts_are_devices_and_xattrs() {
    berth_test_support::require_root!();
    let d = tempfile::tempdir_in("/var/tmp").unwrap();
    apply(&child_layer(), d.path(), Whiteouts::Overlay);
    let m = std::fs::symlink_metadata(d.path().join("etc/passwd")).unwrap();
    assert!(
        m.file_type().is_char_device() && m.rdev() == 0,
        "0/0 whiteout"
    );
    let v = xattr(d.path(), "opaque", "trusted.overlay.opaque");
    assert_eq!(v.as_deref(), Some(&b"y"[..]));
    assert_eq!(std::fs::read(d.path().join("opaque/new")).unwrap(), b"new");
}

#[test]
fn applied_whiteouts_delete_from_the_parent_copy() {
    let d = tempfile::tempdir().unwrap();
    apply(&base_layer(), d.path(), Whiteouts::Apply);
    apply(&child_layer(), d.path(), Whiteouts::Apply);
    assert!(!d.path().join("etc/passwd").exists());
    assert!(!d.path().join("opaque/old").exists(), "opaque dir cleared");
    assert_eq!(std::fs::read(d.path().join("opaque/new")).unwrap(), b"new");
    assert_eq!(std::fs::read(d.path().join("etc/shadow")).unwrap(), b"hash");
    assert!(d.path().join("bin/suid").exists());
}

#[test]
fn tar_split_reproduces_the_stream() {
    let d = tempfile::tempdir().unwrap();
    // Odd sizes, a long name, trailing junk after the archive: all must come back.
    let mut b = tar::Builder::new(Vec::new());
    let long = format!("{}/file", "deep".repeat(40));
    let mut h = hdr(tar::EntryType::Regular, 0o644, 0, 1);
    h.set_size(1000);
    b.append_data(&mut h, &long, &vec![9u8; 1000][..]).unwrap();
    let mut h = hdr(tar::EntryType::Regular, 0o644, 0, 1);
    h.set_size(0);
    b.append_data(&mut h, "empty", &[][..]).unwrap();
    let mut data = b.into_inner().unwrap();
    data.extend_from_slice(&base_layer());
    data.extend_from_slice(&[0u8; 2048]);
    let out = apply(&data, d.path(), Whiteouts::Overlay);
    let mut back = Vec::new();
    berth_storage::split::replay(&out.split.unwrap()[..], d.path(), 4096, &mut |c| {
        back.extend_from_slice(&c);
        Ok(())
    })
    .unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "replayed stream differs");
}

/// The extended attribute `attr` of `dir/name` (not following a link).
fn xattr(dir: &std::path::Path, name: &str, attr: &str) -> Option<Vec<u8>> {
    use std::os::fd::AsFd;
    let d = std::fs::File::open(dir).unwrap();
    berth_fsutil::at::lgetxattr(d.as_fd(), std::ffi::OsStr::new(name), attr).unwrap()
}
