//! Device rules on cgroup v2: a `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the
//! container's v2 cgroup. The kernel runs it on every open and mknod of a device node
//! by a process of the cgroup, on a v2-only host and (as here) on a hybrid one, where
//! it applies beside the v1 devices controller.
//!
//! The program is a handful of eBPF instructions, hand-assembled as runc's and crun's
//! are (no crate does just this: aya and libbpf-rs bring a loader, BTF and an ELF
//! toolchain for what is a linear list of compares). The rules are first reduced with
//! the v1 controller's semantics (a rule for all devices resets the list; later rules
//! win), then emitted last rule first, so the first match decides; the default closes.
//! A rule matches a request when the type, major and minor match (or are wildcards)
//! and every access bit asked for is in the rule.

use crate::oci::DeviceCgroup;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// One eBPF instruction.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// dst register in the low nibble, src in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_AND_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const ALU32_RSH_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const ALU64_MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const JMP_JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JMP_JSET_K: u8 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const JMP_EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

// struct bpf_cgroup_dev_ctx { u32 access_type /* access << 16 | type */; u32 major; u32 minor; }
const DEV_BLOCK: i32 = 1; // BPF_DEVCG_DEV_BLOCK
const DEV_CHAR: i32 = 2; // BPF_DEVCG_DEV_CHAR
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

fn ins(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | dst, off, imm }
}

/// A rule after reduction: `None` fields are wildcards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    pub typ: Option<i32>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: i32,
}

fn access_bits(s: &str) -> i32 {
    s.chars().fold(0, |a, c| {
        a | match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => 0,
        }
    })
}

/// (allow by default, exceptions in order) with the v1 controller's semantics.
pub fn reduce(rules: &[DeviceCgroup]) -> (bool, Vec<Rule>) {
    let mut default_allow = false;
    let mut out: Vec<Rule> = Vec::new();
    for r in rules {
        let access = access_bits(r.access.as_deref().unwrap_or("rwm"));
        let typ = match r.typ.as_deref().unwrap_or("a") {
            "a" => None,
            "b" => Some(DEV_BLOCK),
            "c" | "u" => Some(DEV_CHAR),
            _ => continue,
        };
        let major = r.major.filter(|m| *m >= 0).map(|m| m as u32);
        let minor = r.minor.filter(|m| *m >= 0).map(|m| m as u32);
        if typ.is_none() && major.is_none() && minor.is_none() && access == access_bits("rwm") {
            default_allow = r.allow;
            out.clear();
            continue;
        }
        if access == 0 {
            continue;
        }
        out.push(Rule { allow: r.allow, typ, major, minor, access });
    }
    (default_allow, out)
}

/// The program for a reduced rule list.
pub fn program(default_allow: bool, rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        ins(LDX_MEM_W, 2, 1, 0, 0), // r2 = access_type
        ins(ALU32_AND_K, 2, 0, 0, 0xffff), // r2 = type
        ins(LDX_MEM_W, 3, 1, 0, 0),
        ins(ALU32_RSH_K, 3, 0, 0, 16), // r3 = access
        ins(LDX_MEM_W, 4, 1, 4, 0), // r4 = major
        ins(LDX_MEM_W, 5, 1, 8, 0), // r5 = minor
    ];
    for r in rules.iter().rev() {
        let mut checks: Vec<(u8, u8, i32)> = Vec::new();
        if let Some(t) = r.typ {
            checks.push((JMP_JNE_K, 2, t));
        }
        let all = ACC_READ | ACC_WRITE | ACC_MKNOD;
        if r.access != all {
            // any asked-for bit the rule lacks: not this rule
            checks.push((JMP_JSET_K, 3, !r.access & all));
        }
        if let Some(m) = r.major {
            checks.push((JMP_JNE_K, 4, m as i32));
        }
        if let Some(m) = r.minor {
            checks.push((JMP_JNE_K, 5, m as i32));
        }
        let n = checks.len();
        for (i, (code, reg, imm)) in checks.into_iter().enumerate() {
            // skip what is left of the checks, then the mov and the exit
            let skip = (n - i - 1) as i16 + 2;
            p.push(ins(code, reg, 0, skip, imm));
        }
        p.push(ins(ALU64_MOV_K, 0, 0, 0, r.allow as i32));
        p.push(ins(JMP_EXIT, 0, 0, 0, 0));
    }
    p.push(ins(ALU64_MOV_K, 0, 0, 0, default_allow as i32));
    p.push(ins(JMP_EXIT, 0, 0, 0, 0));
    p
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// Naturally aligned, 72 bytes, no padding.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// All u32: no padding the kernel would read as a newer field.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, std::mem::size_of::<T>()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// Load `insns` as a cgroup device program.
pub fn load(insns: &[Insn]) -> io::Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 4096];
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    attr.prog_name[..7].copy_from_slice(b"berthdv");
    let fd = match bpf(BPF_PROG_LOAD, &attr) {
        Ok(fd) => fd,
        Err(e) => {
            // again with the verifier's log, for the error
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let _ = bpf(BPF_PROG_LOAD, &attr);
            let end = log.iter().position(|b| *b == 0).unwrap_or(0);
            return Err(io::Error::new(e.kind(), format!("loading the device program: {e}: {}", String::from_utf8_lossy(&log[..end]))));
        }
    };
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attach the program for `rules` to the v2 cgroup directory `dir`. A rule list that
/// allows everything (`--privileged`) needs no program.
pub fn apply(dir: &Path, rules: &[DeviceCgroup]) -> io::Result<()> {
    let (default_allow, exceptions) = reduce(rules);
    if default_allow && exceptions.is_empty() {
        return Ok(());
    }
    let prog = load(&program(default_allow, &exceptions))?;
    let cg = std::fs::File::open(dir)?;
    let attr = ProgAttachAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    bpf(BPF_PROG_ATTACH, &attr).map_err(|e| io::Error::new(e.kind(), format!("attaching the device program to {}: {e}", dir.display())))?;
    // the attachment holds the program for as long as the cgroup lives
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(allow: bool, t: Option<&str>, ma: Option<i64>, mi: Option<i64>, acc: &str) -> DeviceCgroup {
        DeviceCgroup { allow, typ: t.map(str::to_string), major: ma, minor: mi, access: Some(acc.into()) }
    }

    #[test]
    fn reduces_like_v1() {
        let rules = vec![
            rule(true, Some("c"), Some(1), Some(3), "rwm"),
            rule(false, None, None, None, "rwm"),
            rule(true, Some("c"), None, None, "m"),
            rule(true, Some("b"), Some(8), Some(0), "rw"),
        ];
        let (def, ex) = reduce(&rules);
        assert!(!def);
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[1], Rule { allow: true, typ: Some(DEV_BLOCK), major: Some(8), minor: Some(0), access: ACC_READ | ACC_WRITE });
        assert_eq!(reduce(&[rule(true, None, None, None, "rwm")]), (true, vec![]));
    }

    #[test]
    fn jumps_land_on_the_next_rule() {
        let (def, ex) = reduce(&[rule(false, None, None, None, "rwm"), rule(true, Some("c"), Some(1), Some(3), "rw")]);
        let p = program(def, &ex);
        // prelude 6, then jne type, jset access, jne major, jne minor, mov, exit, mov, exit
        assert_eq!(p.len(), 6 + 6 + 2);
        assert_eq!(p[6], ins(JMP_JNE_K, 2, 0, 5, DEV_CHAR));
        assert_eq!(p[7], ins(JMP_JSET_K, 3, 0, 4, ACC_MKNOD));
        assert_eq!(p[9], ins(JMP_JNE_K, 5, 0, 2, 3));
        assert_eq!(p[10], ins(ALU64_MOV_K, 0, 0, 0, 1));
        assert_eq!(p[12], ins(ALU64_MOV_K, 0, 0, 0, 0));
    }

    /// The kernel's verifier accepts Docker's default rules (needs root: fails, never skips).
    #[test]
    fn the_kernel_loads_the_default_program() {
        assert!(unsafe { libc::geteuid() } == 0, "this test needs root");
        let mut rules = vec![rule(false, None, None, None, "rwm"), rule(true, Some("c"), None, None, "m"), rule(true, Some("b"), None, None, "m")];
        for (ma, mi) in [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2), (10, 200)] {
            rules.push(rule(true, Some("c"), Some(ma), Some(mi), "rwm"));
        }
        rules.push(rule(true, Some("c"), Some(136), None, "rwm"));
        let (def, ex) = reduce(&rules);
        load(&program(def, &ex)).unwrap();
    }

    /// A block device of this host: (path, major, minor).
    fn host_block_device() -> (String, i64, i64) {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        for p in ["/dev/vda", "/dev/sda", "/dev/nvme0n1", "/dev/xvda", "/dev/zram0", "/dev/loop0"] {
            if let Ok(m) = std::fs::metadata(p) {
                // one the host itself may open (this VM refuses its root disk even to root)
                if m.file_type().is_block_device() && std::fs::File::open(p).is_ok() {
                    return (p.into(), libc::major(m.rdev()) as i64, libc::minor(m.rdev()) as i64);
                }
            }
        }
        panic!("no block device to test with");
    }

    /// `head -c1 dev` run in the v2 cgroup `dir`: did it read?
    fn reads_in(dir: &Path, dev: &str) -> (bool, String) {
        use std::os::unix::process::CommandExt;
        let procs = std::ffi::CString::new(dir.join("cgroup.procs").to_string_lossy().as_bytes()).unwrap();
        let mut cmd = std::process::Command::new("head");
        cmd.args(["-c1", dev]).stdout(std::process::Stdio::null());
        // SAFETY: open/write/close only between fork and exec
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
        let o = cmd.output().unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
    }

    /// On this hybrid host the v1 devices controller is mounted too; a cgroup made only
    /// in the v2 hierarchy shows the program alone does the refusing (needs root:
    /// fails, never skips).
    #[test]
    fn the_kernel_applies_it_on_the_v2_hierarchy() {
        assert!(unsafe { libc::geteuid() } == 0, "this test needs root");
        let layout = crate::cgroups::Layout::detect().unwrap();
        let v2 = layout.hierarchies.iter().find(|h| h.v2).expect("a cgroup v2 hierarchy").mount.clone();
        let (dev, ma, mi) = host_block_device();
        struct Rm(Vec<std::path::PathBuf>);
        impl Drop for Rm {
            fn drop(&mut self) {
                for d in &self.0 {
                    let _ = std::fs::remove_dir(d);
                }
            }
        }
        let deny = v2.join(format!("berth-devtest-deny-{}", std::process::id()));
        let allow = v2.join(format!("berth-devtest-allow-{}", std::process::id()));
        let _rm = Rm(vec![deny.clone(), allow.clone()]);
        std::fs::create_dir(&deny).unwrap();
        std::fs::create_dir(&allow).unwrap();
        let mut rules = vec![rule(false, None, None, None, "rwm")];
        for (ma, mi) in [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9)] {
            rules.push(rule(true, Some("c"), Some(ma), Some(mi), "rwm"));
        }
        apply(&deny, &rules).unwrap();
        let (ok, err) = reads_in(&deny, &dev);
        assert!(!ok && err.contains("Operation not permitted"), "read {dev} in {}: {err}", deny.display());
        assert!(reads_in(&deny, "/dev/zero").0, "/dev/zero refused");
        rules.push(rule(true, Some("b"), Some(ma), Some(mi), "r"));
        apply(&allow, &rules).unwrap();
        let (ok, err) = reads_in(&allow, &dev);
        assert!(ok, "{dev} refused with a rule allowing it: {err}");
    }
}
