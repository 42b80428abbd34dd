//! Docker's default seccomp profile, as data: an allowlist (everything else fails with
//! EPERM), a few argument-filtered rules, and syscalls allowed only when the container
//! holds a capability. `default_profile(caps)` resolves it for one container's
//! capabilities into the OCI form the shim compiles.
//!
//! Written from Docker's documented default behaviour (x86_64 names; names of other
//! architectures are harmless, the compiler skips names it does not know).

use berth_shim::oci::{Seccomp, SyscallArg, SyscallRule};

/// Allowed for every container.
const ALLOW: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "modify_ldt",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "ptrace",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Syscalls a capability unlocks.
const BY_CAP: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
];

/// Namespace flags `clone` may not use without CAP_SYS_ADMIN (NEWNS|NEWCGROUP|NEWUTS|
/// NEWIPC|NEWUSER|NEWPID|NEWNET = 0x7E020000).
const CLONE_NS_MASK: u64 = 0x7E02_0000;
const AF_VSOCK: u64 = 40;
const ENOSYS: u32 = 38;

fn allow(names: &[&str]) -> SyscallRule {
    SyscallRule {
        names: names.iter().map(|s| s.to_string()).collect(),
        action: "SCMP_ACT_ALLOW".into(),
        ..Default::default()
    }
}

fn allow_if(name: &str, args: Vec<SyscallArg>) -> SyscallRule {
    SyscallRule {
        names: vec![name.into()],
        action: "SCMP_ACT_ALLOW".into(),
        args,
        ..Default::default()
    }
}

fn arg(index: u32, value: u64, value_two: Option<u64>, op: &str) -> SyscallArg {
    SyscallArg {
        index,
        value,
        value_two,
        op: op.into(),
    }
}

/// Docker's default profile for a container holding `caps` (CAP_ names).
pub fn default_profile(caps: &[String]) -> Seccomp {
    let has = |c: &str| caps.iter().any(|x| x == c);
    let mut rules = vec![allow(ALLOW)];
    // personality: only the harmless domains.
    for v in [0u64, 0x0008, 0x20000, 0x20008, 0xffff_ffff] {
        rules.push(allow_if(
            "personality",
            vec![arg(0, v, None, "SCMP_CMP_EQ")],
        ));
    }
    // socket: anything but AF_VSOCK.
    rules.push(allow_if(
        "socket",
        vec![arg(0, AF_VSOCK, None, "SCMP_CMP_NE")],
    ));
    for (cap, names) in BY_CAP {
        if has(cap) {
            rules.push(allow(names));
        }
    }
    if !has("CAP_SYS_ADMIN") {
        // clone without new namespaces; clone3 reports ENOSYS so libcs fall back to clone.
        rules.push(allow_if(
            "clone",
            vec![arg(0, CLONE_NS_MASK, Some(0), "SCMP_CMP_MASKED_EQ")],
        ));
        rules.push(SyscallRule {
            names: vec!["clone3".into()],
            action: "SCMP_ACT_ERRNO".into(),
            errno_ret: Some(ENOSYS),
            ..Default::default()
        });
    }
    Seccomp {
        default_action: "SCMP_ACT_ERRNO".into(),
        default_errno_ret: Some(1),
        architectures: vec![
            "SCMP_ARCH_X86_64".into(),
            "SCMP_ARCH_X86".into(),
            "SCMP_ARCH_X32".into(),
        ],
        flags: vec![],
        syscalls: rules,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_shim::bpf;
    use berth_shim::syscalls::number;

    fn ret(p: &[bpf::SockFilter], name: &str, a0: u64) -> u32 {
        bpf::run(
            p,
            0xc000_003e,
            number(name).unwrap() as i32,
            [a0, 0, 0, 0, 0, 0],
        )
    }

    #[test]
    fn default_profile_compiles_and_filters() {
        let caps: Vec<String> = ["CAP_CHOWN", "CAP_KILL"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = bpf::compile(&default_profile(&caps)).unwrap();
        let eperm = bpf::RET_ERRNO | 1;
        for ok in [
            "read",
            "write",
            "openat",
            "execve",
            "exit_group",
            "futex",
            "ptrace",
            "capset",
            "setresuid",
        ] {
            assert_eq!(ret(&p, ok, 0), bpf::RET_ALLOW, "{ok}");
        }
        for denied in [
            "mount",
            "unshare",
            "setns",
            "reboot",
            "init_module",
            "kexec_load",
            "open_by_handle_at",
            "io_uring_setup",
            "keyctl",
            "add_key",
        ] {
            assert_eq!(ret(&p, denied, 0), eperm, "{denied}");
        }
        assert_eq!(ret(&p, "clone", 0x11), bpf::RET_ALLOW);
        assert_eq!(ret(&p, "clone", 0x1000_0000), eperm);
        assert_eq!(ret(&p, "clone3", 0), bpf::RET_ERRNO | 38);
        assert_eq!(ret(&p, "socket", 2), bpf::RET_ALLOW);
        assert_eq!(ret(&p, "socket", 40), eperm);
        assert_eq!(ret(&p, "personality", 0xffff_ffff), bpf::RET_ALLOW);
        assert_eq!(ret(&p, "personality", 0x0040_0000), eperm);
        // A few hundred instructions, about ten per syscall on the path.
        assert!(p.len() < 600, "{}", p.len());
    }

    #[test]
    fn capabilities_unlock_syscalls() {
        let caps: Vec<String> = ["CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_SYS_TIME"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = bpf::compile(&default_profile(&caps)).unwrap();
        for ok in [
            "mount",
            "unshare",
            "setns",
            "clone3",
            "process_vm_readv",
            "settimeofday",
        ] {
            assert_eq!(ret(&p, ok, 0), bpf::RET_ALLOW, "{ok}");
        }
        assert_eq!(ret(&p, "clone", 0x1000_0000), bpf::RET_ALLOW);
        assert_eq!(ret(&p, "reboot", 0), bpf::RET_ERRNO | 1);
    }

    #[test]
    fn compiling_is_cheap() {
        let caps: Vec<String> = vec!["CAP_CHOWN".into()];
        let prof = default_profile(&caps);
        // Not a timing assertion: just exercise it repeatedly (see the bench for numbers).
        for _ in 0..10 {
            bpf::compile(&prof).unwrap();
        }
    }
}
