//! A corpus of crafted hostile tars. Each must be refused with a clear error naming
//! the problem, and nothing may appear or change outside the target directory.
//! Tars are built from raw header bytes, since well-behaved writers refuse to make them.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use berth_storage::apply::{apply_tar, ApplyOpts};
use berth_storage::driver::Whiteouts;

/// A raw ustar header with a correct checksum (unless `bad_sum`).
fn header(name: &[u8], typ: u8, size_field: &[u8], link: &[u8], bad_sum: bool) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..124 + size_field.len()].copy_from_slice(size_field);
    h[136..148].copy_from_slice(b"14572335521\0");
    h[156] = typ;
    h[157..157 + link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let mut sum: u64 = h.iter().map(|b| *b as u64).sum();
    if bad_sum {
        sum += 1;
    }
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn size_field(n: u64) -> Vec<u8> {
    format!("{n:011o}\0").into_bytes()
}

#[derive(Default)]
struct T(Vec<u8>);

impl T {
    fn raw(mut self, h: [u8; 512]) -> Self {
        self.0.extend_from_slice(&h);
        self
    }
    fn file(self, name: &str, data: &[u8]) -> Self {
        self.file_b(name.as_bytes(), data)
    }
    fn file_b(mut self, name: &[u8], data: &[u8]) -> Self {
        self.0.extend_from_slice(&header(
            name,
            b'0',
            &size_field(data.len() as u64),
            b"",
            false,
        ));
        self.data(data)
    }
    fn data(mut self, data: &[u8]) -> Self {
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        self
    }
    fn dir(mut self, name: &str) -> Self {
        self.0
            .extend_from_slice(&header(name.as_bytes(), b'5', &size_field(0), b"", false));
        self
    }
    fn symlink(mut self, name: &str, target: &str) -> Self {
        self.0.extend_from_slice(&header(
            name.as_bytes(),
            b'2',
            &size_field(0),
            target.as_bytes(),
            false,
        ));
        self
    }
    fn hardlink(mut self, name: &str, target: &str) -> Self {
        self.0.extend_from_slice(&header(
            name.as_bytes(),
            b'1',
            &size_field(0),
            target.as_bytes(),
            false,
        ));
        self
    }
    fn typed(mut self, name: &str, typ: u8) -> Self {
        self.0
            .extend_from_slice(&header(name.as_bytes(), typ, &size_field(0), b"", false));
        self
    }
    fn pax(self, records: &[(&str, &[u8])]) -> Self {
        let mut body = Vec::new();
        for (k, v) in records {
            let base = k.len() + v.len() + 3;
            let mut len = base + 1;
            while base + len.to_string().len() != len {
                len = base + len.to_string().len();
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        self.pax_raw(&body)
    }
    fn pax_raw(mut self, body: &[u8]) -> Self {
        self.0.extend_from_slice(&header(
            b"././@PaxHeader",
            b'x',
            &size_field(body.len() as u64),
            b"",
            false,
        ));
        self.data(body)
    }
    fn end(mut self) -> Vec<u8> {
        self.0.extend(std::iter::repeat_n(0u8, 1024));
        self.0
    }
}

/// Every path under `dir` with (size, mode, mtime) and, for files, content.
fn snapshot(dir: &Path) -> BTreeMap<String, (u64, u32, i64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let content = if m.is_file() {
            std::fs::read(&p).unwrap()
        } else {
            vec![]
        };
        out.insert(
            p.display().to_string(),
            (m.size(), m.mode(), m.mtime(), content),
        );
        if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out
}

/// Apply `tar` into `<tmp>/target` beside `<tmp>/outside` (which holds a sentinel), in
/// both whiteout modes; answers the error messages. Asserts nothing outside changed.
fn refuse(tar: &[u8], devices: bool) -> Vec<String> {
    let mut errs = Vec::new();
    for mode in [Whiteouts::Overlay, Whiteouts::Apply] {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&target).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"sentinel").unwrap();
        std::fs::create_dir(outside.join("sub")).unwrap();
        // Outside is named by absolute path in some tars: substitute it.
        let tar = replace(tar, b"@OUT@", outside.to_string_lossy().as_bytes());
        let before = snapshot(tmp.path());
        let before_outside = snapshot(&outside);
        let res = apply_tar(
            &tar[..],
            &target,
            &ApplyOpts {
                whiteouts: mode,
                devices,
                split: true,
            },
        );
        let err = match res {
            Ok(_) => panic!("hostile tar was applied in {mode:?} mode"),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            snapshot(&outside),
            before_outside,
            "outside changed ({mode:?}): {err}"
        );
        let top: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            top.len(),
            2,
            "something appeared beside the target: {top:?} ({err})"
        );
        let _ = before;
        errs.push(err);
    }
    errs
}

fn replace(hay: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    // Only inside headers' name/link fields, which our builder pads with NULs; the
    // checksum is recomputed for any header block we touch.
    let mut out = hay.to_vec();
    let mut i = 0;
    while i + 512 <= out.len() {
        let block = &out[i..i + 512];
        if let Some(pos) = find(block, needle) {
            let mut h = [0u8; 512];
            h.copy_from_slice(block);
            let field_start = if pos >= 157 { 157 } else { 0 };
            let field_len = 100;
            let mut field = h[field_start..field_start + field_len].to_vec();
            let end = field.iter().position(|b| *b == 0).unwrap_or(field_len);
            field.truncate(end);
            let f2 = replace_all(&field, needle, with);
            assert!(f2.len() < 100, "temp path too long for a ustar field");
            h[field_start..field_start + field_len].fill(0);
            h[field_start..field_start + f2.len()].copy_from_slice(&f2);
            h[148..156].copy_from_slice(b"        ");
            let sum: u64 = h.iter().map(|b| *b as u64).sum();
            h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            out[i..i + 512].copy_from_slice(&h);
        }
        i += 512;
    }
    out
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn replace_all(h: &[u8], n: &[u8], w: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < h.len() {
        if h[i..].starts_with(n) {
            out.extend_from_slice(w);
            i += n.len();
        } else {
            out.push(h[i]);
            i += 1;
        }
    }
    out
}

fn assert_all(errs: &[String], want: &str) {
    for e in errs {
        assert!(e.contains(want), "error {e:?} does not say {want:?}");
    }
}

#[test]
fn h01_dotdot_name() {
    let t = T::default().file("../escape", b"x").end();
    assert_all(
        &refuse(&t, true),
        r#"refusing to apply layer: entry "../escape" escapes the layer"#,
    );
}

#[test]
fn h02_dotdot_in_the_middle() {
    let t = T::default().dir("a").file("a/../../escape", b"x").end();
    assert_all(&refuse(&t, true), "escapes the layer");
}

#[test]
fn h03_absolute_name() {
    let t = T::default().file("@OUT@/pwned", b"x").end();
    assert_all(&refuse(&t, true), "has an absolute path");
}

#[test]
fn h04_write_through_absolute_symlink() {
    let t = T::default()
        .symlink("evil", "@OUT@")
        .file("evil/pwned", b"x")
        .end();
    assert_all(
        &refuse(&t, true),
        r#"entry "evil/pwned" has a symlinked parent "evil""#,
    );
}

#[test]
fn h05_relative_symlink_climbing_out() {
    let t = T::default()
        .symlink("up", "../../../../../../outside")
        .end();
    assert_all(
        &refuse(&t, true),
        r#"symlink "up" -> "../../../../../../outside" points outside the layer"#,
    );
}

#[test]
fn h06_symlink_to_self_then_nested_write() {
    let t = T::default()
        .symlink("loop", ".")
        .file("loop/loop/x", b"x")
        .end();
    assert_all(&refuse(&t, true), "has a symlinked parent");
}

#[test]
fn h07_hardlink_with_dotdot() {
    let t = T::default().hardlink("h", "../outside/secret").end();
    assert_all(
        &refuse(&t, true),
        r#"hardlink "h" -> "../outside/secret" points outside the layer"#,
    );
}

#[test]
fn h08_hardlink_absolute() {
    let t = T::default().hardlink("h", "@OUT@/secret").end();
    assert_all(&refuse(&t, true), "points outside the layer");
}

#[test]
fn h09_hardlink_through_symlinked_parent() {
    let t = T::default()
        .symlink("s", "@OUT@")
        .hardlink("h", "s/secret")
        .end();
    assert_all(&refuse(&t, true), "points outside the layer");
}

#[test]
fn h10_device_where_not_allowed() {
    let mut h = header(b"dev/sda", b'4', &size_field(0), b"", false);
    h[329..337].copy_from_slice(b"0000010\0");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| *b as u64).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let t = T::default().raw(h).end();
    assert_all(
        &refuse(&t, false),
        r#"entry "dev/sda" is a device node, which is not allowed here"#,
    );
}

#[test]
fn h11_forged_overlay_whiteout_device() {
    let t = T::default().typed("fake-whiteout", b'3').end();
    let errs = refuse_mode(&t, Whiteouts::Overlay, true);
    assert!(errs.contains("reserved for whiteouts"), "{errs}");
}

#[test]
fn h12_size_beyond_the_stream() {
    let mut t = T::default()
        .raw(header(b"big", b'0', &size_field(1 << 30), b"", false))
        .0;
    t.extend_from_slice(&[7u8; 100]);
    assert_all(
        &refuse(&t, true),
        "invalid layer data: unexpected end of layer data",
    );
}

#[test]
fn h13_pax_path_longer_than_path_max() {
    let long = "a/".repeat(2100) + "f";
    let t = T::default()
        .pax(&[("path", long.as_bytes())])
        .file("short", b"x")
        .end();
    assert_all(&refuse(&t, true), "longer than PATH_MAX");
}

#[test]
fn h14_gnu_long_name_too_long() {
    let name = vec![b'n'; 5000];
    let t = T::default()
        .raw(header(
            b"././@LongLink",
            b'L',
            &size_field(name.len() as u64),
            b"",
            false,
        ))
        .data(&name)
        .file("x", b"")
        .end();
    assert_all(
        &refuse(&t, true),
        "GNU long name of 5000 bytes is larger than",
    );
}

#[test]
fn h15_gigantic_pax_record() {
    // The header claims 8 GiB of PAX data; it must be refused before anything is read.
    let t = T::default()
        .raw(header(
            b"././@PaxHeader",
            b'x',
            &size_field((1 << 33) - 1),
            b"",
            false,
        ))
        .end();
    assert_all(
        &refuse(&t, true),
        "PAX extended header of 8589934591 bytes is larger than",
    );
}

#[test]
fn h16_bad_checksum() {
    let t = T::default()
        .raw(header(b"f", b'0', &size_field(0), b"", true))
        .end();
    assert_all(&refuse(&t, true), "checksum mismatch");
}

#[test]
fn h17_sparse_file() {
    let t = T::default().typed("sparse", b'S').end();
    assert_all(&refuse(&t, true), "sparse files");
}

#[test]
fn h18_unknown_entry_type() {
    let t = T::default().typed("weird", b'Z').end();
    assert_all(&refuse(&t, true), "unsupported tar entry type 'Z'");
}

#[test]
fn h19_non_octal_size() {
    let t = T::default()
        .raw(header(b"f", b'0', b"99999999999\0", b"", false))
        .end();
    assert_all(&refuse(&t, true), "invalid size");
}

#[test]
fn h20_negative_base256_size() {
    let mut f = vec![0xffu8; 12];
    f[0] = 0xff;
    let t = T::default().raw(header(b"f", b'0', &f, b"", false)).end();
    assert_all(&refuse(&t, true), "negative size");
}

#[test]
fn h21_malformed_pax() {
    let t = T::default().pax_raw(b"999 path=x\n").file("f", b"").end();
    assert_all(&refuse(&t, true), "malformed PAX record");
}

#[test]
fn h22_pax_path_override_with_dotdot() {
    let t = T::default()
        .pax(&[("path", b"../../pax-escape")])
        .file("innocent", b"x")
        .end();
    assert_all(
        &refuse(&t, true),
        r#"entry "../../pax-escape" escapes the layer"#,
    );
}

#[test]
fn h23_whiteout_of_dotdot() {
    let t = T::default().file(".wh...", b"").end();
    assert_all(&refuse(&t, true), "names no file in its directory");
}

#[test]
fn h24_reserved_overlay_xattr() {
    let t = T::default()
        .pax(&[("SCHILY.xattr.trusted.overlay.redirect", b"/etc")])
        .dir("d")
        .end();
    assert_all(
        &refuse(&t, true),
        "sets the reserved xattr trusted.overlay.redirect",
    );
}

#[test]
fn h25_directory_replaced_by_symlink_then_written_through() {
    let t = T::default()
        .dir("d")
        .symlink("d", "@OUT@")
        .file("d/pwned", b"x")
        .end();
    assert_all(&refuse(&t, true), "has a symlinked parent");
}

#[test]
fn h26_name_component_too_long() {
    let name = format!("{}/f", "x".repeat(300));
    let t = T::default()
        .pax(&[("path", name.as_bytes())])
        .file("f", b"")
        .end();
    assert_all(&refuse(&t, true), "longer than 255 bytes");
}

#[test]
fn h27_hardlink_to_directory() {
    let t = T::default().dir("d").hardlink("h", "d").end();
    assert_all(&refuse(&t, true), "points to a directory");
}

#[test]
fn h28_whiteout_through_symlinked_parent() {
    let t = T::default()
        .symlink("s", "@OUT@")
        .file("s/.wh.secret", b"")
        .end();
    assert_all(&refuse(&t, true), "has a symlinked parent");
}

#[test]
fn h29_opaque_marker_through_symlink() {
    let t = T::default()
        .symlink("s", "@OUT@")
        .file("s/.wh..wh..opq", b"")
        .end();
    assert_all(&refuse(&t, true), "has a symlinked parent");
}

#[test]
fn h30_truncated_header() {
    let mut t = T::default().file("ok", b"fine").0;
    t.extend_from_slice(&header(b"next", b'0', &size_field(0), b"", false)[..200]);
    assert_all(&refuse(&t, true), "truncated tar");
}

fn refuse_mode(tar: &[u8], mode: Whiteouts, devices: bool) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("target");
    std::fs::create_dir(&target).unwrap();
    match apply_tar(
        tar,
        &target,
        &ApplyOpts {
            whiteouts: mode,
            devices,
            split: false,
        },
    ) {
        Ok(_) => panic!("applied"),
        Err(e) => e.to_string(),
    }
}
