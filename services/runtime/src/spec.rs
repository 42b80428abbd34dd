//! Docker's container model to an OCI runtime spec, with Docker's defaults: the
//! namespaces, the default mounts, masked and read-only paths, the 14 default
//! capabilities and the default seccomp profile, and everything `docker run` flags
//! change. The spec is built with the shim's lean types, which the bundle's config.json
//! holds as the shim reads it (oci-spec, through which it went before, only converted:
//! the unit tests still check that it parses the spec).

use crate::seccomp;
use crate::user::{self, UserError};
use berth_shim::caps;
use berth_shim::oci::{
    self as lean, BlockIo, Capabilities, ConsoleSize, Cpu, DeviceCgroup, Linux, Memory, Mount,
    Namespace, Pids, Resources, Rlimit, Root,
};
use bus_schema::docker::{ContainerConfig, HostConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct SpecInput<'a> {
    pub id: &'a str,
    /// Merged rootfs, already mounted by storage.
    pub rootfs: &'a Path,
    /// Docker config after merging with the image (env, entrypoint+cmd, workdir, user,
    /// hostname, labels, stop signal, tty, open_stdin already final).
    pub config: &'a ContainerConfig,
    pub host_config: &'a HostConfig,
    /// Network namespace to join: Some(path), or None for the host's namespace.
    pub netns: Option<&'a str>,
    /// Files to bind at /etc/hosts, /etc/hostname, /etc/resolv.conf.
    pub etc_hosts: &'a Path,
    pub etc_hostname: &'a Path,
    pub etc_resolv: &'a Path,
    /// Volumes and binds, already resolved to host paths by the runtime.
    pub mounts: &'a [ResolvedMount],
    /// cgroup path relative to each hierarchy, e.g. "berth/<id>" (from cgroup-parent).
    pub cgroup_path: &'a str,
    /// Host path of the init binary to bind at /sbin/docker-init for --init.
    pub init_binary: Option<&'a Path>,
    /// `--ipc container:X` / `--pid container:X`: the other container's namespace
    /// paths (e.g. /proc/<pid>/ns/ipc). None: a new namespace, or the host's for "host".
    pub ipc_ns: Option<&'a str>,
    pub pid_ns: Option<&'a str>,
    /// daemon.json `no-new-privileges`: the default when the container's security
    /// options do not say.
    pub no_new_privileges: bool,
    /// The legacy links' variables (see [`container_env`]).
    pub linked_env: &'a [String],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedMount {
    pub source: String,
    pub destination: String,
    pub kind: MountKind,
    pub read_only: bool,
    /// rprivate (default), rshared, rslave, private, shared, slave.
    pub propagation: Option<String>,
    /// A directory inside `source` to mount instead (a volume's subpath).
    pub subpath: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    Bind,
    Tmpfs { options: Vec<String> },
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The user asked for something invalid (BusError::invalid).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    User(#[from] UserError),
    #[error("building the OCI spec: {0}")]
    Internal(String),
    /// No device driver for a DeviceRequest (`--gpus`): dockerd 20.10 answers it with a
    /// 500 at start.
    #[error("{0}")]
    NoDeviceDriver(String),
}

/// Docker's default capabilities.
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

pub const MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
pub const DEFAULT_SHM_SIZE: i64 = 64 << 20;

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn mount(dest: &str, typ: &str, src: &str, opts: &[&str]) -> Mount {
    Mount {
        destination: dest.into(),
        typ: Some(typ.into()),
        source: Some(src.into()),
        options: strs(opts),
    }
}

/// Normalizes a capability name as Docker does ("net_admin" -> "CAP_NET_ADMIN").
pub fn normalize_cap(c: &str) -> String {
    let up = c.to_ascii_uppercase();
    if up == "ALL" || up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    }
}

/// The capability set after --privileged / --cap-add / --cap-drop, limited to what
/// the host's bounding set allows (so --privileged works where a capability is missing).
pub fn capabilities(hc: &HostConfig, host_bounding: u64) -> Result<Vec<String>, SpecError> {
    let all: Vec<String> = caps::names(host_bounding);
    if hc.privileged == Some(true) {
        return Ok(all);
    }
    let adds: Vec<String> = hc
        .cap_add
        .iter()
        .flatten()
        .map(|c| normalize_cap(c))
        .collect();
    let drops: Vec<String> = hc
        .cap_drop
        .iter()
        .flatten()
        .map(|c| normalize_cap(c))
        .collect();
    for c in adds.iter().chain(drops.iter()) {
        if c != "ALL" && caps::number(c).is_none() {
            return Err(SpecError::Invalid(format!("unknown capability: \"{c}\"")));
        }
    }
    // Moby's TweakCapabilities.
    let mut set: Vec<String> = if adds.iter().any(|c| c == "ALL") {
        caps::names((1u64 << caps::NAMES.len()) - 1)
            .into_iter()
            .filter(|c| !drops.contains(c))
            .collect()
    } else if drops.iter().any(|c| c == "ALL") {
        adds.clone()
    } else {
        let mut v: Vec<String> = strs(&DEFAULT_CAPS)
            .into_iter()
            .filter(|c| !drops.contains(c))
            .collect();
        for c in &adds {
            if !v.contains(c) {
                v.push(c.clone());
            }
        }
        v
    };
    // Only what this host can grant.
    set.retain(|c| caps::number(c).is_some_and(|n| host_bounding & (1 << n) != 0));
    Ok(set)
}

/// Docker's daemon environment: PATH, HOSTNAME and TERM (with a tty), the legacy
/// links' variables, all overridden by the container's own.
pub fn container_env(config: &ContainerConfig, linked: &[String]) -> Vec<String> {
    let mut env = vec![DEFAULT_PATH_ENV.to_string()];
    if let Some(h) = config.hostname.as_deref().filter(|h| !h.is_empty()) {
        env.push(format!("HOSTNAME={h}"));
    }
    if config.tty == Some(true) {
        env.push("TERM=xterm".into());
    }
    env.extend(linked.iter().cloned());
    for kv in config.env.iter().flatten() {
        let key = kv.split('=').next().unwrap_or(kv);
        if let Some(i) = env.iter().position(|e| e.split('=').next() == Some(key)) {
            env[i] = kv.clone();
        } else {
            env.push(kv.clone());
        }
    }
    env
}

/// `--gpus` (DeviceRequests): berth has no device driver (dockerd's nvidia, amd, cdi),
/// so any request fails at start as dockerd fails it when no driver matches.
fn device_requests(hc: &HostConfig) -> Result<(), SpecError> {
    if let Some(r) = hc.device_requests.iter().flatten().next() {
        // Go's %v of [][]string
        let caps = r.capabilities.iter().flatten().map(|c| format!("[{}]", c.join(" "))).collect::<Vec<_>>().join(" ");
        return Err(SpecError::NoDeviceDriver(format!(
            "could not select device driver {:?} with capabilities: [{caps}]",
            r.driver.as_deref().unwrap_or("")
        )));
    }
    Ok(())
}

fn has_security_opt(hc: &HostConfig, name: &str) -> Option<String> {
    hc.security_opt.iter().flatten().find_map(|o| {
        let (k, v) = o.split_once(['=', ':']).unwrap_or((o.as_str(), ""));
        (k == name).then(|| v.to_string())
    })
}

fn ulimit_name(n: &str) -> Result<String, SpecError> {
    const KNOWN: &[&str] = &[
        "core",
        "cpu",
        "data",
        "fsize",
        "locks",
        "memlock",
        "msgqueue",
        "nice",
        "nofile",
        "nproc",
        "rss",
        "rtprio",
        "rttime",
        "sigpending",
        "stack",
        "as",
    ];
    let l = n.to_ascii_lowercase();
    if !KNOWN.contains(&l.as_str()) {
        return Err(SpecError::Invalid(format!("invalid ulimit type: {n}")));
    }
    Ok(format!("RLIMIT_{}", l.to_ascii_uppercase()))
}

/// Mount destinations sorted parents first (Docker sorts by path depth).
fn depth(p: &str) -> usize {
    Path::new(p).components().count()
}

fn tmpfs_mount(dest: &str, opts: &[String]) -> Mount {
    let mut o: Vec<String> = Vec::new();
    let user_has = |k: &str| opts.iter().any(|x| x == k);
    for (def, neg) in [("noexec", "exec"), ("nosuid", "suid"), ("nodev", "dev")] {
        if !user_has(neg) {
            o.push(def.into());
        }
    }
    for x in opts {
        if !o.contains(x) {
            o.push(x.clone());
        }
    }
    Mount {
        destination: dest.into(),
        typ: Some("tmpfs".into()),
        source: Some("tmpfs".into()),
        options: o,
    }
}

/// Builds the lean spec (what the shim reads).
pub fn build_lean(input: &SpecInput) -> Result<lean::Spec, SpecError> {
    build_lean_with(input, caps::host_bounding())
}

pub fn build_lean_with(input: &SpecInput, host_bounding: u64) -> Result<lean::Spec, SpecError> {
    let c = input.config;
    let hc = input.host_config;
    let privileged = hc.privileged == Some(true);
    let readonly = hc.readonly_rootfs == Some(true);
    let tty = c.tty == Some(true);

    // process
    let u = user::resolve(
        input.rootfs,
        c.user.as_deref().unwrap_or(""),
        hc.group_add.as_deref().unwrap_or(&[]),
    )?;
    device_requests(hc)?;
    let cap_set = capabilities(hc, host_bounding)?;
    let mut args: Vec<String> = c
        .entrypoint
        .iter()
        .flatten()
        .chain(c.cmd.iter().flatten())
        .cloned()
        .collect();
    if args.is_empty() {
        return Err(SpecError::Invalid("no command specified".into()));
    }
    let init = hc.init == Some(true);
    if init {
        if input.init_binary.is_none() {
            return Err(SpecError::Internal("no init binary for --init".into()));
        }
        let mut a = vec!["/sbin/docker-init".to_string(), "--".to_string()];
        a.append(&mut args);
        args = a;
    }
    let mut rlimits = Vec::new();
    for ul in hc.ulimits.iter().flatten() {
        let name = ul.name.as_deref().unwrap_or("");
        rlimits.push(Rlimit {
            typ: ulimit_name(name)?,
            soft: ul.soft.unwrap_or(0) as u64,
            hard: ul.hard.unwrap_or(0) as u64,
        });
    }
    let nnp = match has_security_opt(hc, "no-new-privileges") {
        // Go's strconv.ParseBool, as dockerd reads it (validate.rs refuses the rest)
        Some(v) => ["", "1", "t", "T", "true", "TRUE", "True"].contains(&v.as_str()),
        None => input.no_new_privileges,
    };
    let console_size = match (&hc.console_size, tty) {
        (Some(cs), true) if cs.len() == 2 && cs[0] > 0 && cs[1] > 0 => Some(ConsoleSize {
            height: cs[0] as u32,
            width: cs[1] as u32,
        }),
        _ => None,
    };
    let process = lean::Process {
        terminal: Some(tty),
        console_size,
        user: lean::User {
            uid: u.uid,
            gid: u.gid,
            umask: None,
            additional_gids: u.additional_gids,
        },
        args,
        env: container_env(c, input.linked_env),
        cwd: c
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into()),
        capabilities: Some(Capabilities {
            bounding: cap_set.clone(),
            effective: cap_set.clone(),
            inheritable: vec![],
            permitted: cap_set.clone(),
            ambient: vec![],
        }),
        rlimits,
        no_new_privileges: Some(nnp),
        oom_score_adj: Some(hc.oom_score_adj.unwrap_or(0) as i32),
    };
    if !process.cwd.starts_with('/') {
        return Err(SpecError::Invalid(format!(
            "the working directory '{}' is invalid, it needs to be an absolute path",
            process.cwd
        )));
    }

    // mounts
    let shm = hc.shm_size.filter(|s| *s > 0).unwrap_or(DEFAULT_SHM_SIZE);
    let sys_opts: &[&str] = if privileged {
        &["nosuid", "noexec", "nodev"]
    } else {
        &["nosuid", "noexec", "nodev", "ro"]
    };
    let cg_opts: &[&str] = if privileged {
        &["nosuid", "noexec", "nodev", "rw"]
    } else {
        &["ro", "nosuid", "noexec", "nodev"]
    };
    let shm_size = format!("size={shm}");
    let mut defaults = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount("/sys", "sysfs", "sysfs", sys_opts),
        mount("/sys/fs/cgroup", "cgroup", "cgroup", cg_opts),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", &shm_size],
        ),
    ];
    let etc_opts: Vec<&str> = if readonly {
        vec!["rbind", "rprivate", "ro"]
    } else {
        vec!["rbind", "rprivate"]
    };
    let mut user_mounts: Vec<Mount> = Vec::new();
    for (dest, src) in [
        ("/etc/resolv.conf", input.etc_resolv),
        ("/etc/hostname", input.etc_hostname),
        ("/etc/hosts", input.etc_hosts),
    ] {
        if src.as_os_str().is_empty() {
            continue;
        }
        user_mounts.push(Mount {
            destination: dest.into(),
            typ: Some("bind".into()),
            source: Some(src.display().to_string()),
            options: strs(&etc_opts),
        });
    }
    // a bind with shared propagation needs the container's root shared (Moby's
    // setMounts: RootfsPropagation "shared"), or its mounts never reach the host
    let shared_bind = input.mounts.iter().any(|m| matches!(m.kind, MountKind::Bind) && matches!(m.propagation.as_deref(), Some("shared" | "rshared")));
    // and one with slave propagation a slave root at least (Moby's: rslave unless shared)
    let slave_bind = input.mounts.iter().any(|m| matches!(m.kind, MountKind::Bind) && matches!(m.propagation.as_deref(), Some("slave" | "rslave")));
    for m in input.mounts {
        if !m.destination.starts_with('/') {
            return Err(SpecError::Invalid(format!(
                "invalid mount config: mount path must be absolute: {}",
                m.destination
            )));
        }
        match &m.kind {
            MountKind::Bind => {
                let mut o = vec![
                    "rbind".to_string(),
                    m.propagation.clone().unwrap_or_else(|| "rprivate".into()),
                ];
                if m.read_only {
                    o.push("ro".into());
                }
                if let Some(sp) = &m.subpath {
                    o.push(format!("{}{sp}", berth_shim::oci::SUBPATH_OPTION));
                }
                user_mounts.push(Mount {
                    destination: m.destination.clone(),
                    typ: Some("bind".into()),
                    source: Some(m.source.clone()),
                    options: o,
                });
            }
            MountKind::Tmpfs { options } => {
                let mut opts = options.clone();
                if m.read_only && !opts.iter().any(|o| o == "ro") {
                    opts.push("ro".into());
                }
                user_mounts.push(tmpfs_mount(&m.destination, &opts));
            }
        }
    }
    for (dest, opts) in hc.tmpfs.iter().flatten() {
        let opts: Vec<String> = opts
            .split(',')
            .filter(|o| !o.is_empty())
            .map(str::to_string)
            .collect();
        user_mounts.push(tmpfs_mount(dest, &opts));
    }
    if let (true, Some(init_bin)) = (init, input.init_binary) {
        user_mounts.push(Mount {
            destination: "/sbin/docker-init".into(),
            typ: Some("bind".into()),
            source: Some(init_bin.display().to_string()),
            options: strs(&["bind", "ro"]),
        });
    }
    // A user mount replaces a default at the same place (e.g. -v /x:/dev/shm).
    defaults.retain(|d| {
        !user_mounts
            .iter()
            .any(|u| u.destination.trim_end_matches('/') == d.destination)
    });
    if has_dev_shm_host(hc) {
        defaults.retain(|d| d.destination != "/dev/shm");
    }
    user_mounts.sort_by_key(|m| depth(&m.destination));
    let mut mounts = defaults;
    mounts.extend(user_mounts);

    // namespaces
    let mut namespaces = vec![Namespace {
        typ: "mount".into(),
        path: None,
    }];
    match input.netns {
        Some(p) => namespaces.push(Namespace {
            typ: "network".into(),
            path: Some(PathBuf::from(p)),
        }),
        None => {
            if hc.network_mode.as_deref() == Some("none") {
                namespaces.push(Namespace {
                    typ: "network".into(),
                    path: None,
                });
            }
        }
    }
    if hc.uts_mode.as_deref() != Some("host") {
        namespaces.push(Namespace {
            typ: "uts".into(),
            path: None,
        });
    }
    namespaces.extend(own_or_joined("pid", hc.pid_mode.as_deref(), input.pid_ns));
    namespaces.extend(own_or_joined("ipc", hc.ipc_mode.as_deref(), input.ipc_ns));
    let cgroupns_host = matches!(
        hc.cgroupns_mode,
        Some(bus_schema::docker::HostConfigCgroupnsModeEnum::HOST)
    );
    if !cgroupns_host {
        namespaces.push(Namespace {
            typ: "cgroup".into(),
            path: None,
        });
    }

    // resources
    let mut res = Resources::default();
    res.devices = if privileged {
        vec![DeviceCgroup {
            allow: true,
            typ: None,
            major: None,
            minor: None,
            access: Some("rwm".into()),
        }]
    } else {
        let mut rules = default_device_rules();
        for r in hc.device_cgroup_rules.iter().flatten() {
            rules.push(parse_device_cgroup_rule(r)?);
        }
        rules
    };
    let memory = hc.memory.unwrap_or(0);
    let mem = Memory {
        limit: (memory > 0).then_some(memory),
        reservation: hc.memory_reservation.filter(|r| *r > 0),
        swap: match hc.memory_swap {
            Some(s) if s != 0 => Some(s),
            _ if memory > 0 => Some(memory * 2),
            _ => None,
        },
        swappiness: hc.memory_swappiness.filter(|s| *s >= 0).map(|s| s as u64),
        disable_oom_killer: hc.oom_kill_disable.filter(|d| *d),
    };
    if mem != Memory::default() {
        if let (Some(l), Some(s)) = (mem.limit, mem.swap) {
            if s > 0 && s < l {
                return Err(SpecError::Invalid(
                    "Minimum memoryswap limit should be larger than memory limit, see usage".into(),
                ));
            }
        }
        if let Some(l) = mem.limit {
            if l < 6 << 20 {
                return Err(SpecError::Invalid(
                    "Minimum memory limit allowed is 6MB".into(),
                ));
            }
        }
        res.memory = Some(mem);
    }
    let mut cpu = Cpu {
        shares: hc.cpu_shares.filter(|s| *s > 0).map(|s| s as u64),
        quota: hc.cpu_quota.filter(|q| *q != 0),
        period: hc.cpu_period.filter(|p| *p > 0).map(|p| p as u64),
        realtime_runtime: hc.cpu_realtime_runtime.filter(|r| *r != 0),
        realtime_period: hc.cpu_realtime_period.filter(|p| *p > 0).map(|p| p as u64),
        cpus: hc.cpuset_cpus.clone().filter(|s| !s.is_empty()),
        mems: hc.cpuset_mems.clone().filter(|s| !s.is_empty()),
    };
    if let Some(n) = hc.nano_cpus.filter(|n| *n > 0) {
        if cpu.quota.is_some() || cpu.period.is_some() {
            return Err(SpecError::Invalid(
                "Conflicting options: Nano CPUs and CPU Period cannot both be set".into(),
            ));
        }
        let period = 100_000u64;
        cpu.period = Some(period);
        cpu.quota = Some((n as u64 * period / 1_000_000_000) as i64);
    }
    if cpu != Cpu::default() {
        res.cpu = Some(cpu);
    }
    if let Some(p) = hc.pids_limit.filter(|p| *p != 0) {
        res.pids = Some(Pids {
            limit: if p < 0 { -1 } else { p },
        });
    }
    if let Some(w) = hc.blkio_weight.filter(|w| *w > 0) {
        res.block_io = Some(BlockIo { weight: Some(w) });
    }

    let seccomp = match has_security_opt(hc, "seccomp").as_deref() {
        _ if privileged => None,
        Some("unconfined") => None,
        Some(json) if !json.is_empty() => {
            let s: lean::Seccomp = serde_json::from_str(json)
                .map_err(|e| SpecError::Invalid(format!("Decoding seccomp profile failed: {e}")))?;
            Some(s)
        }
        _ => Some(seccomp::default_profile(&cap_set)),
    };

    let mut devices = Vec::new();
    if privileged {
        devices = host_devices();
    } else {
        // --device: the node in the container and its cgroup rule
        for d in hc.devices.iter().flatten() {
            let (dev, rule) = device_mapping(d)?;
            res.devices.push(rule);
            devices.push(dev);
        }
    }
    let sysctl: BTreeMap<String, String> = hc
        .sysctls
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let linux = Linux {
        namespaces,
        devices,
        cgroups_path: Some(format!("/{}", input.cgroup_path.trim_matches('/'))),
        resources: Some(res),
        rootfs_propagation: if shared_bind {
            Some("shared".to_string())
        } else {
            slave_bind.then(|| "rslave".to_string())
        },
        seccomp,
        sysctl,
        masked_paths: if privileged {
            vec![]
        } else {
            hc.masked_paths
                .clone()
                .unwrap_or_else(|| strs(&MASKED_PATHS))
        },
        readonly_paths: if privileged {
            vec![]
        } else {
            hc.readonly_paths
                .clone()
                .unwrap_or_else(|| strs(&READONLY_PATHS))
        },
    };
    Ok(lean::Spec {
        oci_version: "1.2.0".into(),
        process: Some(process),
        root: Some(Root {
            path: input.rootfs.to_path_buf(),
            readonly: Some(readonly),
        }),
        hostname: c.hostname.clone().filter(|h| !h.is_empty()),
        domainname: c.domainname.clone().filter(|d| !d.is_empty()),
        mounts,
        linux: Some(linux),
        annotations: BTreeMap::new(),
    })
}

fn has_dev_shm_host(hc: &HostConfig) -> bool {
    hc.ipc_mode.as_deref() == Some("host")
}

/// Deny all, then what every container may use (runc's and Docker's defaults).
pub fn default_device_rules() -> Vec<DeviceCgroup> {
    let r = |t: &str, ma: Option<i64>, mi: Option<i64>, acc: &str| DeviceCgroup {
        allow: true,
        typ: Some(t.into()),
        major: ma,
        minor: mi,
        access: Some(acc.into()),
    };
    vec![
        DeviceCgroup {
            allow: false,
            typ: None,
            major: None,
            minor: None,
            access: Some("rwm".into()),
        },
        r("c", None, None, "m"),
        r("b", None, None, "m"),
        r("c", Some(1), Some(3), "rwm"),
        r("c", Some(1), Some(5), "rwm"),
        r("c", Some(1), Some(7), "rwm"),
        r("c", Some(1), Some(8), "rwm"),
        r("c", Some(1), Some(9), "rwm"),
        r("c", Some(5), Some(0), "rwm"),
        r("c", Some(5), Some(1), "rwm"),
        r("c", Some(5), Some(2), "rwm"),
        r("c", Some(136), None, "rwm"),
        r("c", Some(10), Some(200), "rwm"),
    ]
}

/// `--device-cgroup-rule 'c 1:3 rwm'` (Docker's format: type, major:minor with `*`
/// wildcards, access).
fn parse_device_cgroup_rule(r: &str) -> Result<DeviceCgroup, SpecError> {
    let bad = || SpecError::Invalid(format!("invalid device cgroup format '{r}'"));
    let f: Vec<&str> = r.split_whitespace().collect();
    let [t, nums, acc] = f.as_slice() else { return Err(bad()) };
    if !matches!(*t, "a" | "b" | "c") || acc.is_empty() || acc.len() > 3 || !acc.chars().all(|c| "rwm".contains(c)) {
        return Err(bad());
    }
    let (ma, mi) = nums.split_once(':').ok_or_else(bad)?;
    let num = |x: &str| -> Result<Option<i64>, SpecError> {
        if x == "*" {
            Ok(None)
        } else {
            x.parse::<i64>().map(Some).map_err(|_| bad())
        }
    };
    Ok(DeviceCgroup { allow: true, typ: Some(t.to_string()), major: num(ma)?, minor: num(mi)?, access: Some(acc.to_string()) })
}

/// `--device /dev/x[:/dev/y[:rwm]]`: the host node's type and numbers.
fn device_mapping(d: &bus_schema::docker::DeviceMapping) -> Result<(lean::Device, DeviceCgroup), SpecError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let host = d.path_on_host.clone().unwrap_or_default();
    let inside = d.path_in_container.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| host.clone());
    let m = std::fs::metadata(&host).map_err(|e| SpecError::Invalid(format!("error gathering device information while adding custom device \"{host}\": {e}")))?;
    let ft = m.file_type();
    let typ = if ft.is_char_device() {
        "c"
    } else if ft.is_block_device() {
        "b"
    } else {
        return Err(SpecError::Invalid(format!("error gathering device information while adding custom device \"{host}\": not a device node")));
    };
    let (ma, mi) = (libc::major(m.rdev()) as i64, libc::minor(m.rdev()) as i64);
    let perms = d.cgroup_permissions.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "rwm".into());
    Ok((
        lean::Device { path: inside, typ: typ.into(), major: ma, minor: mi, file_mode: Some(m.mode() & 0o7777), uid: Some(m.uid()), gid: Some(m.gid()) },
        DeviceCgroup { allow: true, typ: Some(typ.into()), major: Some(ma), minor: Some(mi), access: Some(perms) },
    ))
}

/// Every device node of the host, for --privileged.
fn host_devices() -> Vec<lean::Device> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from("/dev")];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let ft = m.file_type();
            if ft.is_dir() {
                let name = e.file_name();
                if !matches!(
                    name.to_str(),
                    Some("pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev")
                ) {
                    stack.push(p);
                }
                continue;
            }
            let typ = if ft.is_char_device() {
                "c"
            } else if ft.is_block_device() {
                "b"
            } else {
                continue;
            };
            if p == Path::new("/dev/console") {
                continue;
            }
            let rdev = m.rdev();
            out.push(lean::Device {
                path: p.display().to_string(),
                typ: typ.into(),
                major: libc::major(rdev) as i64,
                minor: libc::minor(rdev) as i64,
                file_mode: Some(m.mode() & 0o7777),
                uid: Some(m.uid()),
                gid: Some(m.gid()),
            });
        }
    }
    out
}

/// A pid or ipc namespace: another container's (`path`), none of its own with mode
/// `host`, else a new one.
fn own_or_joined(typ: &str, mode: Option<&str>, path: Option<&str>) -> Option<Namespace> {
    match (mode, path) {
        (_, Some(p)) => Some(Namespace {
            typ: typ.into(),
            path: Some(PathBuf::from(p)),
        }),
        (Some("host"), None) => None,
        _ => Some(Namespace {
            typ: typ.into(),
            path: None,
        }),
    }
}

/// Builds the OCI runtime spec for a container.
/// Moby's ensureShared and ensureSharedOrSlave: a bind with shared propagation needs
/// its source on a shared mount, one with slave propagation on a shared or slave mount
/// (else the propagation the user asked for could not happen). `mountinfo` reads
/// /proc/self/mountinfo: only when a bind asks for such propagation, not at every start.
pub fn check_propagation(mounts: &[ResolvedMount], mountinfo: impl FnOnce() -> String) -> Result<(), SpecError> {
    let mut mountinfo = Some(mountinfo);
    let mut text = String::new();
    for m in mounts.iter().filter(|m| matches!(m.kind, MountKind::Bind)) {
        let slave_ok = match m.propagation.as_deref() {
            Some("shared" | "rshared") => false,
            Some("slave" | "rslave") => true,
            _ => continue,
        };
        if let Some(read) = mountinfo.take() {
            text = read();
        }
        let src = std::fs::canonicalize(&m.source).unwrap_or_else(|_| PathBuf::from(&m.source));
        let Some((at, optional)) = berth_fsutil::mountinfo::source_mount(&text, &src) else { continue };
        let shared = optional.split(' ').any(|o| o.starts_with("shared:"));
        let slave = optional.split(' ').any(|o| o.starts_with("master:"));
        if !shared && !(slave_ok && slave) {
            let what = if slave_ok { "a shared or slave mount" } else { "a shared mount" };
            return Err(SpecError::Invalid(format!("path {} is mounted on {at} but it is not {what}", m.source)));
        }
    }
    Ok(())
}

pub fn build(input: &SpecInput) -> Result<lean::Spec, SpecError> {
    build_lean(input)
}

/// The process of a `docker exec`, from the container's spec and the exec's config.
pub struct ExecInput<'a> {
    pub rootfs: &'a Path,
    /// The container's config (env, working dir, user as the container runs).
    pub config: &'a ContainerConfig,
    pub host_config: &'a HostConfig,
    pub exec: &'a bus_schema::docker::ExecConfig,
    /// daemon.json `no-new-privileges` (see [`SpecInput::no_new_privileges`]).
    pub no_new_privileges: bool,
    /// The legacy links' variables (see [`container_env`]).
    pub linked_env: &'a [String],
}

pub fn exec_process(input: &ExecInput) -> Result<lean::Process, SpecError> {
    let e = input.exec;
    let hc = input.host_config;
    let c = input.config;
    let user_str = e
        .user
        .clone()
        .filter(|u| !u.is_empty())
        .or_else(|| c.user.clone())
        .unwrap_or_default();
    let u = user::resolve(
        input.rootfs,
        &user_str,
        hc.group_add.as_deref().unwrap_or(&[]),
    )?;
    let host = caps::host_bounding();
    let mut hc2 = hc.clone();
    if e.privileged == Some(true) {
        hc2.privileged = Some(true);
    }
    let cap_set = capabilities(&hc2, host)?;
    let args: Vec<String> = e.cmd.clone().unwrap_or_default();
    if args.is_empty() {
        return Err(SpecError::Invalid("No exec command specified".into()));
    }
    let mut env = container_env(c, input.linked_env);
    for kv in e.env.iter().flatten() {
        let key = kv.split('=').next().unwrap_or(kv);
        if let Some(i) = env.iter().position(|x| x.split('=').next() == Some(key)) {
            env[i] = kv.clone();
        } else {
            env.push(kv.clone());
        }
    }
    let tty = e.tty == Some(true);
    if tty && !env.iter().any(|x| x.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let console_size = match (&e.console_size, tty) {
        (Some(cs), true) if cs.len() == 2 && cs[0] > 0 && cs[1] > 0 => Some(ConsoleSize {
            height: cs[0] as u32,
            width: cs[1] as u32,
        }),
        _ => None,
    };
    let nnp = match has_security_opt(hc, "no-new-privileges").as_deref() {
        // Go's strconv.ParseBool, as dockerd reads it (validate.rs refuses the rest)
        Some(v) => ["", "1", "t", "T", "true", "TRUE", "True"].contains(&v),
        None => input.no_new_privileges,
    };
    let p = lean::Process {
        terminal: Some(tty),
        console_size,
        user: lean::User {
            uid: u.uid,
            gid: u.gid,
            umask: None,
            additional_gids: u.additional_gids,
        },
        args,
        env,
        cwd: e
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .or_else(|| c.working_dir.clone().filter(|w| !w.is_empty()))
            .unwrap_or_else(|| "/".into()),
        capabilities: Some(Capabilities {
            bounding: cap_set.clone(),
            effective: cap_set.clone(),
            inheritable: vec![],
            permitted: cap_set,
            ambient: vec![],
        }),
        rlimits: vec![],
        no_new_privileges: Some(nnp),
        oom_score_adj: None,
    };
    Ok(p)
}

#[cfg(test)]
mod tests {
    /// The lean spec as oci-spec's type: oci-spec's parser checks what the shim reads.
    fn to_oci(s: &lean::Spec) -> oci_spec::runtime::Spec {
        serde_json::from_value(serde_json::to_value(s).unwrap()).unwrap()
    }

    use super::*;

    #[test]
    fn shared_binds_need_a_shared_source() {
        let mi = "22 1 0:21 / / rw shared:1 - ext4 /dev/vda rw\n30 22 0:25 / /nonexistent-priv rw - tmpfs tmpfs rw\n31 22 0:26 / /nonexistent-slave rw master:4 - tmpfs tmpfs rw\n";
        let bind = |src: &str, p: &str| ResolvedMount { source: src.into(), destination: "/x".into(), kind: MountKind::Bind, read_only: false, propagation: Some(p.into()), subpath: None };
        let check = |src: &str, p: &str| check_propagation(&[bind(src, p)], || mi.to_string()).map_err(|e| e.to_string());
        assert_eq!(check("/nonexistent-a/b", "rshared"), Ok(()));
        assert_eq!(check("/nonexistent-priv/d", "rshared"), Err("path /nonexistent-priv/d is mounted on /nonexistent-priv but it is not a shared mount".into()));
        assert_eq!(check("/nonexistent-slave/d", "shared"), Err("path /nonexistent-slave/d is mounted on /nonexistent-slave but it is not a shared mount".into()));
        assert_eq!(check("/nonexistent-slave/d", "rslave"), Ok(()));
        assert_eq!(check("/nonexistent-priv/d", "slave"), Err("path /nonexistent-priv/d is mounted on /nonexistent-priv but it is not a shared or slave mount".into()));
        // rprivate (the default) and private ask nothing of the source, nor read it
        assert_eq!(check("/nonexistent-priv/d", "rprivate"), Ok(()));
        assert_eq!(check_propagation(&[bind("/nonexistent-priv/d", "rprivate")], || panic!("mountinfo read")).map_err(|e| e.to_string()), Ok(()));
    }
    use bus_schema::docker::ResourcesUlimits;

    struct Fx {
        _d: tempfile::TempDir,
        rootfs: PathBuf,
    }

    fn fx() -> Fx {
        let d = tempfile::tempdir().unwrap();
        let rootfs = d.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            rootfs.join("etc/group"),
            "root:x:0:\nuser:x:1000:\nwheel:x:10:user\n",
        )
        .unwrap();
        Fx { _d: d, rootfs }
    }

    fn cfg(cmd: &[&str]) -> ContainerConfig {
        ContainerConfig {
            cmd: Some(strs(cmd)),
            hostname: Some("abc123".into()),
            ..Default::default()
        }
    }

    fn build_with(
        f: &Fx,
        c: &ContainerConfig,
        hc: &HostConfig,
        mounts: &[ResolvedMount],
    ) -> Result<lean::Spec, SpecError> {
        let input = SpecInput {
            id: "abc123",
            rootfs: &f.rootfs,
            config: c,
            host_config: hc,
            netns: Some("/run/netns/x"),
            etc_hosts: Path::new("/c/hosts"),
            etc_hostname: Path::new("/c/hostname"),
            etc_resolv: Path::new("/c/resolv.conf"),
            mounts,
            cgroup_path: "berth/abc123",
            init_binary: Some(Path::new("/usr/lib/berth/berth-init")),
            ipc_ns: None,
            pid_ns: None,
            no_new_privileges: false,
            linked_env: &[],
        };
        // A host that lacks CAP_SYS_RESOURCE, like this one.
        build_lean_with(&input, 0x1fffeffffff)
    }

    #[test]
    fn gpus_are_refused_at_start_as_dockerd_refuses_them() {
        let f = fx();
        let hc = HostConfig {
            device_requests: Some(vec![bus_schema::docker::DeviceRequest {
                driver: Some(String::new()),
                count: Some(-1),
                capabilities: Some(vec![vec!["gpu".into()]]),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let e = build_with(&f, &cfg(&["sh"]), &hc, &[]).unwrap_err();
        assert_eq!(e.to_string(), "could not select device driver \"\" with capabilities: [[gpu]]");
    }

    fn dests(s: &lean::Spec) -> Vec<String> {
        s.mounts.iter().map(|m| m.destination.clone()).collect()
    }

    #[test]
    fn docker_defaults() {
        let f = fx();
        let s = build_with(&f, &cfg(&["sh"]), &HostConfig::default(), &[]).unwrap();
        let p = s.process.as_ref().unwrap();
        let caps = p.capabilities.as_ref().unwrap();
        assert_eq!(caps.effective.len(), 14);
        assert_eq!(caps.bounding, strs(&DEFAULT_CAPS));
        assert!(caps.inheritable.is_empty());
        assert_eq!(
            p.env,
            vec![DEFAULT_PATH_ENV.to_string(), "HOSTNAME=abc123".into()]
        );
        assert_eq!(p.cwd, "/");
        assert_eq!(p.no_new_privileges, Some(false));
        assert_eq!((p.user.uid, p.user.gid), (0, 0));
        let l = s.linux.as_ref().unwrap();
        assert_eq!(l.masked_paths, strs(&MASKED_PATHS));
        assert_eq!(l.readonly_paths, strs(&READONLY_PATHS));
        assert_eq!(l.cgroups_path.as_deref(), Some("/berth/abc123"));
        assert!(l.seccomp.is_some());
        let ns: Vec<&str> = l.namespaces.iter().map(|n| n.typ.as_str()).collect();
        assert_eq!(ns, vec!["mount", "network", "uts", "pid", "ipc", "cgroup"]);
        assert_eq!(
            l.namespaces[1].path.as_deref(),
            Some(Path::new("/run/netns/x"))
        );
        assert_eq!(
            dests(&s),
            vec![
                "/proc",
                "/dev",
                "/dev/pts",
                "/sys",
                "/sys/fs/cgroup",
                "/dev/mqueue",
                "/dev/shm",
                "/etc/resolv.conf",
                "/etc/hostname",
                "/etc/hosts"
            ]
        );
        let shm = s
            .mounts
            .iter()
            .find(|m| m.destination == "/dev/shm")
            .unwrap();
        assert!(shm.options.contains(&"size=67108864".to_string()));
        let sys = s.mounts.iter().find(|m| m.destination == "/sys").unwrap();
        assert!(sys.options.contains(&"ro".to_string()));
        assert_eq!(s.root.as_ref().unwrap().readonly, Some(false));
        assert_eq!(s.hostname.as_deref(), Some("abc123"));
        // And oci-spec accepts it.
        let oci = to_oci(&s);
        assert_eq!(
            oci.process().as_ref().unwrap().args().as_ref().unwrap(),
            &strs(&["sh"])
        );
    }

    #[test]
    fn privileged_gets_host_caps_and_no_confinement() {
        let f = fx();
        let hc = HostConfig {
            privileged: Some(true),
            ..Default::default()
        };
        let s = build_with(&f, &cfg(&["sh"]), &hc, &[]).unwrap();
        let caps = &s
            .process
            .as_ref()
            .unwrap()
            .capabilities
            .as_ref()
            .unwrap()
            .effective;
        assert!(caps.contains(&"CAP_SYS_ADMIN".to_string()));
        assert!(
            !caps.contains(&"CAP_SYS_RESOURCE".to_string()),
            "the host lacks it"
        );
        assert_eq!(caps.len(), 40);
        let l = s.linux.as_ref().unwrap();
        assert!(l.seccomp.is_none());
        assert!(l.masked_paths.is_empty() && l.readonly_paths.is_empty());
        assert!(!l.devices.is_empty());
        assert_eq!(l.resources.as_ref().unwrap().devices.len(), 1);
        let sys = s.mounts.iter().find(|m| m.destination == "/sys").unwrap();
        assert!(!sys.options.contains(&"ro".to_string()));
    }

    #[test]
    fn cap_add_drop() {
        let f = fx();
        let hc = HostConfig {
            cap_add: Some(strs(&["net_admin"])),
            cap_drop: Some(strs(&["CAP_CHOWN", "kill"])),
            ..Default::default()
        };
        let s = build_with(&f, &cfg(&["sh"]), &hc, &[]).unwrap();
        let caps = &s
            .process
            .as_ref()
            .unwrap()
            .capabilities
            .as_ref()
            .unwrap()
            .effective;
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(
            !caps.contains(&"CAP_CHOWN".to_string()) && !caps.contains(&"CAP_KILL".to_string())
        );
        assert_eq!(caps.len(), 13);
        let all = HostConfig {
            cap_add: Some(strs(&["ALL"])),
            cap_drop: Some(strs(&["NET_RAW"])),
            ..Default::default()
        };
        let s = build_with(&f, &cfg(&["sh"]), &all, &[]).unwrap();
        let caps = &s
            .process
            .as_ref()
            .unwrap()
            .capabilities
            .as_ref()
            .unwrap()
            .effective;
        assert_eq!(caps.len(), 39);
        assert!(!caps.contains(&"CAP_NET_RAW".to_string()));
        // The default seccomp profile follows the capabilities.
        let sc = s.linux.as_ref().unwrap().seccomp.as_ref().unwrap();
        assert!(sc
            .syscalls
            .iter()
            .any(|r| r.names.contains(&"mount".to_string())));
        let none = HostConfig {
            cap_drop: Some(strs(&["ALL"])),
            cap_add: Some(strs(&["chown"])),
            ..Default::default()
        };
        let s = build_with(&f, &cfg(&["sh"]), &none, &[]).unwrap();
        assert_eq!(
            s.process
                .as_ref()
                .unwrap()
                .capabilities
                .as_ref()
                .unwrap()
                .effective,
            strs(&["CAP_CHOWN"])
        );
        let bad = HostConfig {
            cap_add: Some(strs(&["bogus"])),
            ..Default::default()
        };
        assert_eq!(
            build_with(&f, &cfg(&["sh"]), &bad, &[])
                .unwrap_err()
                .to_string(),
            "unknown capability: \"CAP_BOGUS\""
        );
    }

    #[test]
    fn read_only_tmpfs_ulimits_shm_and_mounts() {
        let f = fx();
        let hc = HostConfig {
            readonly_rootfs: Some(true),
            tmpfs: Some(
                [("/run".to_string(), "size=1m".to_string())]
                    .into_iter()
                    .collect(),
            ),
            ulimits: Some(vec![ResourcesUlimits {
                name: Some("nofile".into()),
                soft: Some(100),
                hard: Some(200),
            }]),
            shm_size: Some(1 << 20),
            security_opt: Some(strs(&["no-new-privileges"])),
            ..Default::default()
        };
        let mounts = vec![
            ResolvedMount {
                source: "/v/data".into(),
                destination: "/data/sub".into(),
                kind: MountKind::Bind,
                read_only: true,
                propagation: None,
                subpath: None,
            },
            ResolvedMount {
                source: "/v/d".into(),
                destination: "/data".into(),
                kind: MountKind::Bind,
                read_only: false,
                propagation: Some("rslave".into()),
                subpath: None,
            },
            ResolvedMount {
                source: String::new(),
                destination: "/scratch".into(),
                kind: MountKind::Tmpfs {
                    options: strs(&["size=2m"]),
                },
                read_only: false,
                propagation: None,
                subpath: None,
            },
        ];
        let s = build_with(&f, &cfg(&["sh"]), &hc, &mounts).unwrap();
        assert_eq!(s.root.as_ref().unwrap().readonly, Some(true));
        let p = s.process.as_ref().unwrap();
        assert_eq!(p.rlimits[0].typ, "RLIMIT_NOFILE");
        assert_eq!((p.rlimits[0].soft, p.rlimits[0].hard), (100, 200));
        assert_eq!(p.no_new_privileges, Some(true));
        let m = |d: &str| {
            s.mounts
                .iter()
                .find(|m| m.destination == d)
                .unwrap()
                .clone()
        };
        assert!(m("/dev/shm").options.contains(&"size=1048576".to_string()));
        assert!(m("/etc/hosts").options.contains(&"ro".to_string()));
        assert_eq!(
            m("/run").options,
            strs(&["noexec", "nosuid", "nodev", "size=1m"])
        );
        assert_eq!(
            m("/scratch").options,
            strs(&["noexec", "nosuid", "nodev", "size=2m"])
        );
        assert_eq!(m("/data/sub").options, strs(&["rbind", "rprivate", "ro"]));
        assert_eq!(m("/data").options, strs(&["rbind", "rslave"]));
        // an rslave bind makes the root rslave (Moby's setMounts), so that mounts reach it
        assert_eq!(s.linux.as_ref().unwrap().rootfs_propagation.as_deref(), Some("rslave"));
        // Parents before children.
        let d = dests(&s);
        assert!(
            d.iter().position(|x| x == "/data").unwrap()
                < d.iter().position(|x| x == "/data/sub").unwrap()
        );
        let bad = HostConfig {
            ulimits: Some(vec![ResourcesUlimits {
                name: Some("bogus".into()),
                soft: Some(1),
                hard: Some(1),
            }]),
            ..Default::default()
        };
        assert!(build_with(&f, &cfg(&["sh"]), &bad, &[]).is_err());
    }

    #[test]
    fn user_env_workdir_init_and_limits() {
        let f = fx();
        let c = ContainerConfig {
            cmd: Some(strs(&["sh"])),
            entrypoint: Some(strs(&["/entry"])),
            user: Some("user".into()),
            env: Some(strs(&["PATH=/custom", "A=1"])),
            tty: Some(true),
            working_dir: Some("/w".into()),
            hostname: Some("h".into()),
            ..Default::default()
        };
        let hc = HostConfig {
            init: Some(true),
            memory: Some(64 << 20),
            nano_cpus: Some(1_500_000_000),
            cpu_shares: Some(512),
            pids_limit: Some(10),
            group_add: Some(strs(&["wheel"])),
            console_size: Some(vec![24, 80]),
            ..Default::default()
        };
        let s = build_with(&f, &c, &hc, &[]).unwrap();
        let p = s.process.as_ref().unwrap();
        assert_eq!(p.args, strs(&["/sbin/docker-init", "--", "/entry", "sh"]));
        assert_eq!(
            p.env,
            strs(&["PATH=/custom", "HOSTNAME=h", "TERM=xterm", "A=1"])
        );
        assert_eq!((p.user.uid, p.user.gid), (1000, 1000));
        assert_eq!(p.user.additional_gids, vec![1000, 10]);
        assert_eq!(p.cwd, "/w");
        assert_eq!(p.terminal, Some(true));
        assert_eq!(p.console_size.unwrap().width, 80);
        assert!(s
            .mounts
            .iter()
            .any(|m| m.destination == "/sbin/docker-init"));
        let r = s.linux.as_ref().unwrap().resources.as_ref().unwrap();
        assert_eq!(r.memory.as_ref().unwrap().limit, Some(64 << 20));
        assert_eq!(r.memory.as_ref().unwrap().swap, Some(128 << 20));
        assert_eq!(r.cpu.as_ref().unwrap().quota, Some(150000));
        assert_eq!(r.cpu.as_ref().unwrap().period, Some(100000));
        assert_eq!(r.cpu.as_ref().unwrap().shares, Some(512));
        assert_eq!(r.pids.as_ref().unwrap().limit, 10);
        let bad = ContainerConfig {
            user: Some("ghost".into()),
            ..c.clone()
        };
        assert_eq!(
            build_with(&f, &bad, &hc, &[]).unwrap_err().to_string(),
            "unable to find user ghost: no matching entries in passwd file"
        );
        let small = HostConfig {
            memory: Some(1 << 20),
            ..Default::default()
        };
        assert!(build_with(&f, &cfg(&["sh"]), &small, &[]).is_err());
    }

    #[test]
    fn exec_process_from_config() {
        let f = fx();
        let c = ContainerConfig {
            env: Some(strs(&["A=1"])),
            working_dir: Some("/w".into()),
            ..cfg(&["sh"])
        };
        let e = bus_schema::docker::ExecConfig {
            cmd: Some(strs(&["ls", "-l"])),
            env: Some(strs(&["B=2"])),
            user: Some("user".into()),
            tty: Some(true),
            ..Default::default()
        };
        let hc = HostConfig::default();
        let p = exec_process(&ExecInput {
            rootfs: &f.rootfs,
            config: &c,
            host_config: &hc,
            exec: &e,
            no_new_privileges: false,
            linked_env: &[],
        })
        .unwrap();
        let j = serde_json::to_value(&p).unwrap();
        assert_eq!(j["args"], serde_json::json!(["ls", "-l"]));
        assert_eq!(j["user"]["uid"], 1000);
        assert_eq!(j["cwd"], "/w");
        assert_eq!(j["terminal"], true);
        let env: Vec<String> = serde_json::from_value(j["env"].clone()).unwrap();
        assert!(
            env.contains(&"A=1".to_string())
                && env.contains(&"B=2".to_string())
                && env.contains(&"TERM=xterm".to_string())
        );
    }
}
