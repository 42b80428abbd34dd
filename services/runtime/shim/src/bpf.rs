//! Compiles an OCI seccomp profile (`linux.seccomp`) to a classic-BPF filter for
//! x86_64, without libseccomp.
//!
//! The syscall number is dispatched through a balanced binary search over ranges of
//! numbers that share an outcome (Docker's default profile becomes ~7 comparisons
//! deep), so a container pays a few instructions per syscall, not a linear scan. Rules
//! with argument conditions get their own block; rules of one syscall are tried in
//! order (all conditions of a rule must hold), then the default action. Compiling
//! Docker's profile takes a few tens of microseconds, so the shim compiles it at each
//! start instead of caching.

use crate::oci::{Seccomp, SyscallArg};
use crate::syscalls;
use std::collections::BTreeMap;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockFilter {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JMP_JA: u16 = 0x05;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGT_K: u16 = 0x25;
const BPF_JGE_K: u16 = 0x35;
const BPF_ALU_AND_K: u16 = 0x54;
const BPF_RET_K: u16 = 0x06;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

pub const RET_KILL_PROCESS: u32 = 0x8000_0000;
pub const RET_KILL_THREAD: u32 = 0x0000_0000;
pub const RET_TRAP: u32 = 0x0003_0000;
pub const RET_ERRNO: u32 = 0x0005_0000;
pub const RET_TRACE: u32 = 0x7ff0_0000;
pub const RET_LOG: u32 = 0x7ffc_0000;
pub const RET_ALLOW: u32 = 0x7fff_0000;

// seccomp_data offsets
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

#[derive(Debug)]
pub enum BpfError {
    UnknownAction(String),
    UnknownOp(String),
    BadArg(u32),
}

impl std::error::Error for BpfError {}

impl std::fmt::Display for BpfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BpfError::UnknownAction(a) => write!(f, "seccomp: unsupported action {a:?}"),
            BpfError::UnknownOp(o) => write!(f, "seccomp: unsupported operator {o:?}"),
            BpfError::BadArg(i) => write!(f, "seccomp: argument index {i} out of range"),
        }
    }
}

/// The return value of an action name (`SCMP_ACT_ERRNO` uses `errno`).
pub fn action(name: &str, errno: Option<u32>, default_errno: u32) -> Result<u32, BpfError> {
    let e = errno.unwrap_or(default_errno) & 0xffff;
    Ok(match name {
        "SCMP_ACT_ALLOW" => RET_ALLOW,
        "SCMP_ACT_ERRNO" => RET_ERRNO | e,
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => RET_KILL_THREAD,
        "SCMP_ACT_KILL_PROCESS" => RET_KILL_PROCESS,
        "SCMP_ACT_TRAP" => RET_TRAP,
        "SCMP_ACT_TRACE" => RET_TRACE | e,
        "SCMP_ACT_LOG" => RET_LOG,
        other => return Err(BpfError::UnknownAction(other.to_string())),
    })
}

/// Filter flags for seccomp(2) from the profile's `flags`.
pub fn flags(profile: &Seccomp) -> u32 {
    let mut f = 0;
    for fl in &profile.flags {
        f |= match fl.as_str() {
            "SECCOMP_FILTER_FLAG_TSYNC" => 1,
            "SECCOMP_FILTER_FLAG_LOG" => 2,
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => 4,
            _ => 0,
        };
    }
    f
}

struct Rule {
    ret: u32,
    args: Vec<SyscallArg>,
}

/// Builds a program backwards, so every jump goes to an instruction already placed
/// and its distance is known; a distance over 255 goes through a `ja` trampoline.
struct Builder {
    /// rev[i] is the i-th instruction counted from the end.
    rev: Vec<SockFilter>,
    rets: BTreeMap<u32, usize>,
}

type Label = usize;

impl Builder {
    fn push(&mut self, code: u16, jt: u8, jf: u8, k: u32) -> Label {
        self.rev.push(SockFilter { code, jt, jf, k });
        self.rev.len() - 1
    }
    /// Distance from the next instruction to be placed to `l`.
    fn dist(&self, l: Label) -> usize {
        self.rev.len() - 1 - l
    }
    fn ret(&mut self, v: u32) -> Label {
        if let Some(l) = self.rets.get(&v) {
            return *l;
        }
        let l = self.push(BPF_RET_K, 0, 0, v);
        self.rets.insert(v, l);
        l
    }
    fn ja(&mut self, l: Label) -> Label {
        if self.rev.len() - 1 == l {
            return l;
        }
        let d = self.dist(l) as u32;
        self.push(BPF_JMP_JA, 0, 0, d)
    }
    fn near(&mut self, l: Label) -> Label {
        // Reserve room for the jump itself: it goes at rev.len() (+1 per trampoline).
        if self.rev.len() - l > 255 {
            self.ja(l)
        } else {
            l
        }
    }
    fn jump(&mut self, code: u16, k: u32, t: Label, f: Label) -> Label {
        let t = self.near(t);
        let f = self.near(f);
        let (jt, jf) = (self.dist(t), self.dist(f));
        debug_assert!(jt <= 255 && jf <= 255);
        self.push(code, jt as u8, jf as u8, k)
    }
    fn load(&mut self, off: u32) -> Label {
        self.push(BPF_LD_W_ABS, 0, 0, off)
    }
}

/// The conditions of one argument test, jumping to `ok` or `fail`.
fn emit_arg(b: &mut Builder, a: &SyscallArg, ok: Label, fail: Label) -> Result<Label, BpfError> {
    if a.index > 5 {
        return Err(BpfError::BadArg(a.index));
    }
    let lo_off = OFF_ARGS + 8 * a.index;
    let hi_off = lo_off + 4;
    let (vlo, vhi) = (a.value as u32, (a.value >> 32) as u32);
    // `gt`: strictly greater (64-bit) when `strict`, else greater-or-equal.
    let cmp = |b: &mut Builder, strict: bool, ok: Label, fail: Label| -> Label {
        b.jump(if strict { BPF_JGT_K } else { BPF_JGE_K }, vlo, ok, fail);
        let lo = b.load(lo_off);
        let hi_eq = b.jump(BPF_JEQ_K, vhi, lo, fail);
        b.jump(BPF_JGT_K, vhi, ok, hi_eq);
        b.load(hi_off)
    };
    Ok(match a.op.as_str() {
        "SCMP_CMP_EQ" | "SCMP_CMP_NE" => {
            let (ok, fail) = if a.op == "SCMP_CMP_EQ" {
                (ok, fail)
            } else {
                (fail, ok)
            };
            b.jump(BPF_JEQ_K, vlo, ok, fail);
            let lo = b.load(lo_off);
            b.jump(BPF_JEQ_K, vhi, lo, fail);
            b.load(hi_off)
        }
        "SCMP_CMP_MASKED_EQ" => {
            let want = a.value_two.unwrap_or(0);
            let (mlo, mhi) = (vlo, vhi);
            b.jump(BPF_JEQ_K, want as u32, ok, fail);
            b.push(BPF_ALU_AND_K, 0, 0, mlo);
            let lo = b.load(lo_off);
            b.jump(BPF_JEQ_K, (want >> 32) as u32, lo, fail);
            b.push(BPF_ALU_AND_K, 0, 0, mhi);
            b.load(hi_off)
        }
        "SCMP_CMP_GT" => cmp(b, true, ok, fail),
        "SCMP_CMP_GE" => cmp(b, false, ok, fail),
        "SCMP_CMP_LE" => cmp(b, true, fail, ok),
        "SCMP_CMP_LT" => cmp(b, false, fail, ok),
        other => return Err(BpfError::UnknownOp(other.to_string())),
    })
}

/// Compiles a profile. Names unknown on x86_64 are skipped, as libseccomp does.
pub fn compile(profile: &Seccomp) -> Result<Vec<SockFilter>, BpfError> {
    let default_errno = profile.default_errno_ret.unwrap_or(libc::EPERM as u32);
    let default = action(
        &profile.default_action,
        profile.default_errno_ret,
        default_errno,
    )?;
    // Syscalls of another ABI (i386, x32) are not described by an x86_64 profile: they
    // get the default action, or are killed when the default would let them through.
    let bad_arch = if default == RET_ALLOW || default == RET_LOG {
        RET_KILL_PROCESS
    } else {
        default
    };

    let mut by_nr: BTreeMap<i64, Vec<Rule>> = BTreeMap::new();
    for r in &profile.syscalls {
        let ret = action(&r.action, r.errno_ret, default_errno)?;
        for n in &r.names {
            if let Some(nr) = syscalls::number(n) {
                by_nr.entry(nr).or_default().push(Rule {
                    ret,
                    args: r.args.clone(),
                });
            }
        }
    }

    let mut b = Builder {
        rev: Vec::new(),
        rets: BTreeMap::new(),
    };
    let l_default = b.ret(default);
    let l_bad_arch = b.ret(bad_arch);

    // Per-syscall outcome: a plain return, or a block of conditional rules.
    let mut outcome: BTreeMap<i64, Label> = BTreeMap::new();
    for (nr, rules) in &by_nr {
        // Conditional rules first (in order), then the first unconditional one.
        let uncond = rules.iter().find(|r| r.args.is_empty()).map(|r| r.ret);
        let conds: Vec<&Rule> = rules
            .iter()
            .filter(|r| !r.args.is_empty() && Some(r.ret) != uncond)
            .collect();
        let fallback = match uncond {
            Some(v) => b.ret(v),
            None => l_default,
        };
        if conds.is_empty() {
            outcome.insert(*nr, fallback);
            continue;
        }
        let mut next = fallback;
        for rule in conds.iter().rev() {
            let mut ok = b.ret(rule.ret);
            for a in rule.args.iter().rev() {
                ok = emit_arg(&mut b, a, ok, next)?;
            }
            next = ok;
        }
        outcome.insert(*nr, next);
    }

    // Ranges of syscall numbers with one outcome, covering 0..=u32::MAX, as
    // (first number, outcome); neighbours with the same outcome merged.
    let mut ranges: Vec<(u32, Label)> = Vec::new();
    let mut push = |start: u32, l: Label| match ranges.last() {
        Some(last) if last.1 == l => {}
        _ => ranges.push((start, l)),
    };
    let mut next = 0u32;
    for (nr, l) in &outcome {
        let nr = *nr as u32;
        if nr > next {
            push(next, l_default);
        }
        push(nr, *l);
        next = nr + 1;
    }
    push(next, l_default);
    let merged = ranges;

    fn tree(b: &mut Builder, rs: &[(u32, Label)]) -> Label {
        if rs.len() == 1 {
            return rs[0].1;
        }
        let mid = rs.len() / 2;
        let right = tree(b, &rs[mid..]);
        let left = tree(b, &rs[..mid]);
        b.jump(BPF_JGE_K, rs[mid].0, right, left)
    }
    let dispatch = tree(&mut b, &merged);
    b.jump(BPF_JGE_K, X32_SYSCALL_BIT, l_bad_arch, dispatch);
    let nr = b.load(OFF_NR);
    b.jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, nr, l_bad_arch);
    b.load(OFF_ARCH);

    b.rev.reverse();
    Ok(b.rev)
}

/// Installs a filter on the calling thread (needs no_new_privs or CAP_SYS_ADMIN).
pub fn install(prog: &[SockFilter], flags: u32) -> std::io::Result<()> {
    #[repr(C)]
    struct SockFprog {
        len: u16,
        filter: *const SockFilter,
    }
    let fprog = SockFprog {
        len: prog.len() as u16,
        filter: prog.as_ptr(),
    };
    const SECCOMP_SET_MODE_FILTER: libc::c_long = 1;
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            flags as libc::c_long,
            &fprog as *const SockFprog,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A tiny classic-BPF interpreter, enough to test what `compile` emits.
pub fn run(prog: &[SockFilter], arch: u32, nr: i32, args: [u64; 6]) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_le_bytes());
    data[4..8].copy_from_slice(&arch.to_le_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    let mut a: u32 = 0;
    let mut pc = 0usize;
    loop {
        let i = prog[pc];
        pc += 1;
        match i.code {
            BPF_LD_W_ABS => {
                let o = i.k as usize;
                a = u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
            }
            BPF_ALU_AND_K => a &= i.k,
            BPF_JMP_JA => pc += i.k as usize,
            BPF_JEQ_K | BPF_JGT_K | BPF_JGE_K => {
                let c = match i.code {
                    BPF_JEQ_K => a == i.k,
                    BPF_JGT_K => a > i.k,
                    _ => a >= i.k,
                };
                pc += if c { i.jt } else { i.jf } as usize;
            }
            BPF_RET_K => return i.k,
            c => panic!("unexpected opcode {c:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::SyscallRule;

    fn arg(index: u32, value: u64, value_two: Option<u64>, op: &str) -> SyscallArg {
        SyscallArg {
            index,
            value,
            value_two,
            op: op.into(),
        }
    }

    fn nr(n: &str) -> i32 {
        syscalls::number(n).unwrap() as i32
    }

    fn profile() -> Seccomp {
        Seccomp {
            default_action: "SCMP_ACT_ERRNO".into(),
            default_errno_ret: Some(1),
            syscalls: vec![
                SyscallRule {
                    names: vec![
                        "read".into(),
                        "write".into(),
                        "exit".into(),
                        "nope_not_a_syscall".into(),
                    ],
                    action: "SCMP_ACT_ALLOW".into(),
                    ..Default::default()
                },
                SyscallRule {
                    names: vec!["personality".into()],
                    action: "SCMP_ACT_ALLOW".into(),
                    args: vec![arg(0, 0, None, "SCMP_CMP_EQ")],
                    ..Default::default()
                },
                SyscallRule {
                    names: vec!["personality".into()],
                    action: "SCMP_ACT_ALLOW".into(),
                    args: vec![arg(0, 0xffffffff, None, "SCMP_CMP_EQ")],
                    ..Default::default()
                },
                SyscallRule {
                    names: vec!["clone".into()],
                    action: "SCMP_ACT_ALLOW".into(),
                    args: vec![arg(0, 0x7e020000, Some(0), "SCMP_CMP_MASKED_EQ")],
                    ..Default::default()
                },
                SyscallRule {
                    names: vec!["socket".into()],
                    action: "SCMP_ACT_ALLOW".into(),
                    args: vec![arg(0, 40, None, "SCMP_CMP_NE")],
                    ..Default::default()
                },
                SyscallRule {
                    names: vec!["clone3".into()],
                    action: "SCMP_ACT_ERRNO".into(),
                    errno_ret: Some(38),
                    ..Default::default()
                },
                SyscallRule {
                    names: vec!["mmap".into()],
                    action: "SCMP_ACT_ALLOW".into(),
                    args: vec![
                        arg(1, 1 << 33, None, "SCMP_CMP_LE"),
                        arg(2, 5, None, "SCMP_CMP_GT"),
                    ],
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn dispatch_and_conditions() {
        let p = compile(&profile()).unwrap();
        let eperm = RET_ERRNO | 1;
        let run0 = |n: &str, args: [u64; 6]| run(&p, AUDIT_ARCH_X86_64, nr(n), args);
        assert_eq!(run0("read", [0; 6]), RET_ALLOW);
        assert_eq!(run0("write", [0; 6]), RET_ALLOW);
        assert_eq!(run0("exit", [0; 6]), RET_ALLOW);
        assert_eq!(run0("open", [0; 6]), eperm);
        assert_eq!(run0("mount", [0; 6]), eperm);
        assert_eq!(run0("personality", [0, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(run0("personality", [0xffffffff, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(run0("personality", [8, 0, 0, 0, 0, 0]), eperm);
        assert_eq!(run0("personality", [0x1_ffffffff, 0, 0, 0, 0, 0]), eperm);
        assert_eq!(run0("clone", [0x11, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(run0("clone", [0x10000000 | 0x11, 0, 0, 0, 0, 0]), eperm); // CLONE_NEWUSER
        assert_eq!(run0("socket", [2, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(run0("socket", [40, 0, 0, 0, 0, 0]), eperm);
        assert_eq!(run0("clone3", [0; 6]), RET_ERRNO | 38);
        assert_eq!(run0("mmap", [0, 1 << 33, 6, 0, 0, 0]), RET_ALLOW);
        assert_eq!(run0("mmap", [0, (1 << 33) + 1, 6, 0, 0, 0]), eperm);
        assert_eq!(run0("mmap", [0, 5, 5, 0, 0, 0]), eperm);
        assert_eq!(
            run(&p, AUDIT_ARCH_X86_64, 0x4000_0000 | nr("read"), [0; 6]),
            eperm
        );
        assert_eq!(run(&p, 0x4000_0003 /* i386 */, 3, [0; 6]), eperm);
        assert_eq!(run(&p, AUDIT_ARCH_X86_64, 100_000, [0; 6]), eperm);
    }

    #[test]
    fn every_number_gets_its_rule() {
        // Allow every other syscall: many ranges, a deep tree, long jumps.
        let names: Vec<String> = syscalls::X86_64
            .iter()
            .step_by(2)
            .map(|(n, _)| n.to_string())
            .collect();
        let p = Seccomp {
            default_action: "SCMP_ACT_ERRNO".into(),
            syscalls: vec![SyscallRule {
                names: names.clone(),
                action: "SCMP_ACT_ALLOW".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let prog = compile(&p).unwrap();
        for (i, (n, v)) in syscalls::X86_64.iter().enumerate() {
            let want = if i % 2 == 0 { RET_ALLOW } else { RET_ERRNO | 1 };
            assert_eq!(
                run(&prog, AUDIT_ARCH_X86_64, *v as i32, [0; 6]),
                want,
                "{n}"
            );
        }
    }

    #[test]
    fn allow_by_default_kills_other_abis() {
        let p = Seccomp {
            default_action: "SCMP_ACT_ALLOW".into(),
            syscalls: vec![SyscallRule {
                names: vec!["mount".into()],
                action: "SCMP_ACT_ERRNO".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let prog = compile(&p).unwrap();
        assert_eq!(
            run(&prog, AUDIT_ARCH_X86_64, nr("mount"), [0; 6]),
            RET_ERRNO | 1
        );
        assert_eq!(run(&prog, AUDIT_ARCH_X86_64, nr("read"), [0; 6]), RET_ALLOW);
        assert_eq!(run(&prog, 0x4000_0003, 3, [0; 6]), RET_KILL_PROCESS);
    }

    #[test]
    fn bad_profiles() {
        let mut p = profile();
        p.default_action = "SCMP_ACT_NOTIFY".into();
        assert!(compile(&p).is_err());
        let mut p = profile();
        p.syscalls[1].args[0].op = "SCMP_CMP_XX".into();
        assert!(compile(&p).is_err());
    }
}
