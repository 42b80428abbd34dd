//! berth-init: the tiny init that `docker run --init` puts at /sbin/docker-init.
//!
//! It runs inside arbitrary images, so it is a static binary with no libc: raw
//! syscalls only (x86_64). It behaves like tini, Docker's init: `docker-init -- cmd
//! args...` runs `cmd` as its child in its own process group (the terminal's
//! foreground group when stdin is a tty), forwards every catchable signal to it,
//! reaps every zombie, and exits with the child's status (128+N when killed by
//! signal N).
//!
//! Built by the shim crate's build.rs with `-C panic=abort` (the workspace profiles
//! unwind, which a `no_std` binary cannot do).

#![no_std]
#![no_main]

use core::arch::{asm, global_asm};

const SYS_WRITE: usize = 1;
const SYS_RT_SIGPROCMASK: usize = 14;
const SYS_IOCTL: usize = 16;
const SYS_GETPID: usize = 39;
const SYS_FORK: usize = 57;
const SYS_EXECVE: usize = 59;
const SYS_EXIT_GROUP: usize = 231;
const SYS_WAIT4: usize = 61;
const SYS_KILL: usize = 62;
const SYS_SETPGID: usize = 109;
const SYS_GETPGRP: usize = 111;
const SYS_RT_SIGTIMEDWAIT: usize = 128;
const SYS_PRCTL: usize = 157;
const SYS_RT_SIGACTION: usize = 13;

const SIG_SETMASK: usize = 2;
const SIGCHLD: usize = 17;
const SIGTTIN: usize = 21;
const SIGTTOU: usize = 22;
const SIGKILL: usize = 9;
const SIGSTOP: usize = 19;
const TIOCSPGRP: usize = 0x5410;
const PR_SET_CHILD_SUBREAPER: usize = 36;
const WNOHANG: usize = 1;
const ENOENT: isize = 2;
const EACCES: isize = 13;
const EINTR: isize = 4;
const ECHILD: isize = 10;

global_asm!(
    ".globl _start",
    "_start:",
    "xor rbp, rbp",
    "mov rdi, rsp",
    "and rsp, -16",
    "call init_main",
    "ud2",
);

#[inline(always)]
unsafe fn syscall4(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a, in("rsi") b, in("rdx") c,
         in("r10") d, lateout("rcx") _, lateout("r11") _, options(nostack));
    ret
}

unsafe fn syscall3(n: usize, a: usize, b: usize, c: usize) -> isize {
    syscall4(n, a, b, c, 0)
}

fn exit(code: i32) -> ! {
    unsafe {
        syscall3(SYS_EXIT_GROUP, code as usize, 0, 0);
    }
    loop {}
}

fn write_err(parts: &[&[u8]]) {
    for p in parts {
        unsafe {
            syscall3(SYS_WRITE, 2, p.as_ptr() as usize, p.len());
        }
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    exit(1)
}

unsafe fn cstr_len(p: *const u8) -> usize {
    let mut n = 0;
    while *p.add(n) != 0 {
        n += 1;
    }
    n
}

unsafe fn cstr<'a>(p: *const u8) -> &'a [u8] {
    core::slice::from_raw_parts(p, cstr_len(p))
}

/// Every signal but SIGKILL/SIGSTOP (which cannot be blocked anyway).
const ALL_SIGNALS: u64 = !((1u64 << (SIGKILL - 1)) | (1u64 << (SIGSTOP - 1)));

#[no_mangle]
unsafe extern "C" fn init_main(sp: *const usize) -> ! {
    let argc = *sp;
    let argv = sp.add(1) as *const *const u8;
    let envp = argv.add(argc + 1);

    // Skip our own name and an optional "--".
    let mut first = 1;
    if first < argc && cstr(*argv.add(first)) == b"--" {
        first += 1;
    }
    if first >= argc {
        write_err(&[b"[berth-init] usage: docker-init [--] command [args...]\n"]);
        exit(1);
    }
    let child_argv = argv.add(first);

    if syscall3(SYS_GETPID, 0, 0, 0) != 1 {
        syscall3(SYS_PRCTL, PR_SET_CHILD_SUBREAPER, 1, 0);
    }

    let mut old_mask: u64 = 0;
    let all: u64 = ALL_SIGNALS;
    syscall4(SYS_RT_SIGPROCMASK, SIG_SETMASK, &all as *const u64 as usize, &mut old_mask as *mut u64 as usize, 8);

    let pid = syscall3(SYS_FORK, 0, 0, 0);
    if pid < 0 {
        write_err(&[b"[berth-init] fork failed\n"]);
        exit(1);
    }
    if pid == 0 {
        // The child: its own process group, in the terminal's foreground when there is one.
        syscall3(SYS_SETPGID, 0, 0, 0);
        let pgrp = syscall3(SYS_GETPGRP, 0, 0, 0) as i32;
        // Setting the foreground group from a background group raises SIGTTOU: ignore it.
        let ign: [usize; 4] = [1 /* SIG_IGN */, 0, 0, 0];
        let mut oldact: [usize; 4] = [0; 4];
        syscall4(SYS_RT_SIGACTION, SIGTTOU, ign.as_ptr() as usize, oldact.as_mut_ptr() as usize, 8);
        syscall3(SYS_IOCTL, 0, TIOCSPGRP, &pgrp as *const i32 as usize);
        syscall4(SYS_RT_SIGACTION, SIGTTOU, oldact.as_ptr() as usize, 0, 8);
        syscall4(SYS_RT_SIGPROCMASK, SIG_SETMASK, &old_mask as *const u64 as usize, 0, 8);
        exec(child_argv, envp);
    }
    let child = pid as i32;

    // Ignore job-control stops of ourselves.
    let ign: [usize; 4] = [1, 0, 0, 0];
    syscall4(SYS_RT_SIGACTION, SIGTTIN, ign.as_ptr() as usize, 0, 8);
    syscall4(SYS_RT_SIGACTION, SIGTTOU, ign.as_ptr() as usize, 0, 8);

    let mut child_status: Option<i32> = None;
    loop {
        // siginfo_t is 128 bytes.
        let mut info = [0u8; 128];
        let sig = syscall4(SYS_RT_SIGTIMEDWAIT, &all as *const u64 as usize, info.as_mut_ptr() as usize, 0, 8);
        if sig == -EINTR {
            continue;
        }
        if sig < 0 {
            exit(1);
        }
        if sig as usize != SIGCHLD {
            syscall3(SYS_KILL, child as usize, sig as usize, 0);
            continue;
        }
        // Reap everything that has exited.
        loop {
            let mut status: i32 = 0;
            let r = syscall4(SYS_WAIT4, usize::MAX /* -1 */, &mut status as *mut i32 as usize, WNOHANG, 0);
            if r == -EINTR {
                continue;
            }
            if r <= 0 {
                if r == -ECHILD && child_status.is_none() {
                    exit(1);
                }
                break;
            }
            if r as i32 == child {
                let termsig = status & 0x7f;
                child_status = Some(if termsig == 0 { (status >> 8) & 0xff } else { 128 + termsig });
            }
        }
        if let Some(code) = child_status {
            exit(code);
        }
    }
}

unsafe fn exec(argv: *const *const u8, envp: *const *const u8) -> ! {
    let file = cstr(*argv);
    if file.contains(&b'/') {
        let r = syscall3(SYS_EXECVE, *argv as usize, argv as usize, envp as usize);
        exec_failed(file, r);
    }
    // Search PATH from our environment, as execvp does.
    let mut path: &[u8] = b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    let mut e = envp;
    while !(*e).is_null() {
        let kv = cstr(*e);
        if kv.len() >= 5 && &kv[..5] == b"PATH=" {
            path = &kv[5..];
            break;
        }
        e = e.add(1);
    }
    let mut buf = [0u8; 4096];
    let mut err: isize = -ENOENT;
    for dir in path.split(|&c| c == b':') {
        let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
        if dir.len() + 1 + file.len() + 1 > buf.len() {
            continue;
        }
        buf[..dir.len()].copy_from_slice(dir);
        buf[dir.len()] = b'/';
        buf[dir.len() + 1..dir.len() + 1 + file.len()].copy_from_slice(file);
        buf[dir.len() + 1 + file.len()] = 0;
        let r = syscall3(SYS_EXECVE, buf.as_ptr() as usize, argv as usize, envp as usize);
        if r == -EACCES {
            err = r;
        }
    }
    exec_failed(file, err)
}

fn exec_failed(file: &[u8], err: isize) -> ! {
    if err == -ENOENT {
        write_err(&[b"[berth-init] exec ", file, b" failed: No such file or directory\n"]);
        exit(127)
    }
    if err == -EACCES {
        write_err(&[b"[berth-init] exec ", file, b" failed: Permission denied\n"]);
        exit(126)
    }
    write_err(&[b"[berth-init] exec ", file, b" failed\n"]);
    exit(126)
}

// core's slice copies may call these; there is no libc to provide them.
#[no_mangle]
unsafe extern "C" fn memcpy(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    let mut i = 0;
    while i < n {
        core::ptr::write_volatile(d.add(i), *s.add(i));
        i += 1;
    }
    d
}

#[no_mangle]
unsafe extern "C" fn memmove(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    if (d as usize) < (s as usize) {
        memcpy(d, s, n)
    } else {
        let mut i = n;
        while i > 0 {
            i -= 1;
            core::ptr::write_volatile(d.add(i), *s.add(i));
        }
        d
    }
}

#[no_mangle]
unsafe extern "C" fn memset(d: *mut u8, c: i32, n: usize) -> *mut u8 {
    let mut i = 0;
    while i < n {
        core::ptr::write_volatile(d.add(i), c as u8);
        i += 1;
    }
    d
}

#[no_mangle]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        let (x, y) = (*a.add(i), *b.add(i));
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

#[no_mangle]
unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    memcmp(a, b, n)
}

#[no_mangle]
unsafe extern "C" fn strlen(p: *const u8) -> usize {
    let mut n = 0;
    while core::ptr::read_volatile(p.add(n)) != 0 {
        n += 1;
    }
    n
}

/// The precompiled libcore refers to it; with panic=abort nothing ever calls it.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
