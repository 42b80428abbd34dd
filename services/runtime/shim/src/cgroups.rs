//! cgroups for containers: cgroup v1 (each controller its own hierarchy, as on hosts
//! with a hybrid layout whose cgroup2 mount holds little or nothing) and pure cgroup
//! v2. Plain file I/O, usable from the shim and (briefly, off the hot path) from the
//! async runtime service.
//!
//! A container's cgroup is `<hierarchy mount>/<path>` in every hierarchy the host
//! has mounted (v1 controllers, named v1 hierarchies such as name=systemd, and the
//! unified one). Each limit goes to the hierarchy that has its controller.

use crate::oci::{DeviceCgroup, Resources};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hierarchy {
    pub mount: PathBuf,
    /// v1: the controllers of the mount (`cpu`, `memory`, `name=systemd`, ...);
    /// v2: the controllers the root offers (cgroup.controllers).
    pub controllers: Vec<String>,
    pub v2: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Layout {
    pub hierarchies: Vec<Hierarchy>,
}

const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "net_cls",
    "net_prio",
    "perf_event",
    "hugetlb",
    "rdma",
    "misc",
];

impl Layout {
    /// The cgroup hierarchies mounted in this mount namespace. Reads all of
    /// /proc/self/mountinfo: its cost grows with the host's mounts (~8 ms with 200
    /// containers running), so callers on a start path take it once and pass it on.
    pub fn detect() -> io::Result<Layout> {
        let mi = fs::read_to_string("/proc/self/mountinfo")?;
        let mut l = Layout::from_mountinfo(&mi);
        for h in l.hierarchies.iter_mut().filter(|h| h.v2) {
            h.controllers = fs::read_to_string(h.mount.join("cgroup.controllers"))
                .map(|s| s.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default();
        }
        Ok(l)
    }

    /// Parses /proc/self/mountinfo (v2 controllers left empty).
    pub fn from_mountinfo(text: &str) -> Layout {
        let mut hs: Vec<Hierarchy> = Vec::new();
        for line in text.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            if pre.len() < 5 || post.len() < 3 {
                continue;
            }
            let mount = PathBuf::from(berth_fsutil::unescape_mountinfo(pre[4]));
            match post[0] {
                // the first mount of each hierarchy only: a second mount of the
                // same one (a bind into another root on the host, such as a test's
                // chroot) is not another hierarchy, and mounting it twice at the
                // same place in a container fails with EBUSY
                "cgroup2" if !hs.iter().any(|h| h.v2) => hs.push(Hierarchy {
                    mount,
                    controllers: vec![],
                    v2: true,
                }),
                "cgroup" => {
                    let controllers: Vec<String> = post[2]
                        .split(',')
                        .filter(|o| V1_CONTROLLERS.contains(o) || o.starts_with("name="))
                        .map(str::to_string)
                        .collect();
                    if !controllers.is_empty() && !hs.iter().any(|h| h.controllers == controllers) {
                        hs.push(Hierarchy {
                            mount,
                            controllers,
                            v2: false,
                        });
                    }
                }
                _ => {}
            }
        }
        Layout { hierarchies: hs }
    }

    /// Only a unified hierarchy (no v1 controllers at all).
    pub fn is_pure_v2(&self) -> bool {
        !self.hierarchies.is_empty() && self.hierarchies.iter().all(|h| h.v2)
    }

    /// The hierarchy that holds a controller: the v1 one, else the unified one if it
    /// offers it.
    pub fn with(&self, ctrl: &str) -> Option<&Hierarchy> {
        self.hierarchies
            .iter()
            .find(|h| !h.v2 && h.controllers.iter().any(|c| c == ctrl))
            .or_else(|| {
                self.hierarchies
                    .iter()
                    .find(|h| h.v2 && h.controllers.iter().any(|c| c == ctrl))
            })
    }

    pub fn cgroup(&self, path: &str) -> Cgroup {
        Cgroup {
            layout: self.clone(),
            rel: path.trim_matches('/').to_string(),
        }
    }
}

/// Raw counters for `docker stats` and `docker top`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub memory_usage: u64,
    pub memory_max_usage: u64,
    pub memory_limit: u64,
    pub memory_failcnt: u64,
    /// memory.stat as key/value.
    pub memory_stat: BTreeMap<String, u64>,
    pub cpu_total_ns: u64,
    pub cpu_percpu_ns: Vec<u64>,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub throttling_periods: u64,
    pub throttled_periods: u64,
    pub throttled_time_ns: u64,
    pub pids_current: u64,
    /// 0: no limit.
    pub pids_limit: u64,
    /// (major, minor, op, value) of bytes serviced: v1 blkio.throttle.io_service_bytes
    /// (op Read/Write/...), v2 io.stat rbytes/wbytes as Read/Write.
    pub io_service_bytes: Vec<(u64, u64, String, u64)>,
}

/// One container's cgroup across the hierarchies.
#[derive(Debug, Clone)]
pub struct Cgroup {
    pub layout: Layout,
    rel: String,
}

fn write(p: &Path, v: &str) -> io::Result<()> {
    fs::write(p, v)
        .map_err(|e| io::Error::new(e.kind(), format!("writing {v:?} to {}: {e}", p.display())))
}

/// NotFound for a cgroup directory that is not there (its container's processes all
/// exited and the cgroup was removed), as v1's freezer.state write says it.
fn gone(d: &Path) -> io::Result<()> {
    if d.is_dir() {
        return Ok(());
    }
    Err(io::Error::new(
        ErrorKind::NotFound,
        format!("{}: no such cgroup", d.display()),
    ))
}

fn read_u64(p: &Path) -> Option<u64> {
    let s = fs::read_to_string(p).ok()?;
    let s = s.trim();
    if s == "max" {
        return Some(u64::MAX);
    }
    s.parse().ok()
}

fn kv_file(p: &Path) -> BTreeMap<String, u64> {
    fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// cpu.shares (2..262144) to cpu.weight (1..10000), as runc converts.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    1 + ((shares.clamp(2, 262144) - 2) * 9999) / 262142
}

fn device_rule(d: &DeviceCgroup) -> String {
    let t = d.typ.as_deref().unwrap_or("a");
    if t == "a" {
        return "a".into();
    }
    let n = |v: Option<i64>| {
        v.filter(|v| *v >= 0)
            .map(|v| v.to_string())
            .unwrap_or_else(|| "*".into())
    };
    format!(
        "{t} {}:{} {}",
        n(d.major),
        n(d.minor),
        d.access.as_deref().unwrap_or("rwm")
    )
}

impl Cgroup {
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn path(&self) -> &str {
        &self.rel
    }

    /// This cgroup's directory in a hierarchy.
    pub fn dir(&self, h: &Hierarchy) -> PathBuf {
        h.mount.join(&self.rel)
    }

    /// The directory in the hierarchy holding `ctrl`.
    pub fn dir_of(&self, ctrl: &str) -> Option<PathBuf> {
        self.layout.with(ctrl).map(|h| self.dir(h))
    }

    /// Creates the cgroup in every hierarchy (parents too). v1 cpuset levels get their
    /// parent's cpus/mems; v2 levels get the controllers enabled for their children.
    pub fn create(&self) -> io::Result<()> {
        for h in &self.layout.hierarchies {
            // a parent removed by someone else between our mkdirs (another
            // container's cleanup of a shared parent) is made again
            let mut attempt = 0;
            loop {
                match self.create_in(h) {
                    Err(e) if e.kind() == ErrorKind::NotFound && attempt < 10 => attempt += 1,
                    r => break r?,
                }
            }
        }
        Ok(())
    }

    fn create_in(&self, h: &Hierarchy) -> io::Result<()> {
        {
            let mut cur = h.mount.clone();
            for comp in Path::new(&self.rel).components() {
                if h.v2 {
                    enable_controllers(&cur, &h.controllers);
                }
                let parent = cur.clone();
                cur.push(comp);
                match fs::create_dir(&cur) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("creating cgroup {}: {e}", cur.display()),
                        ))
                    }
                }
                if !h.v2 && h.controllers.iter().any(|c| c == "cpuset") {
                    for f in ["cpuset.cpus", "cpuset.mems"] {
                        let mine = fs::read_to_string(cur.join(f)).unwrap_or_default();
                        if mine.trim().is_empty() {
                            let theirs = fs::read_to_string(parent.join(f)).unwrap_or_default();
                            let _ = fs::write(cur.join(f), theirs.trim());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies limits; absent fields are left as they are (so `docker update` can
    /// change one thing).
    pub fn apply(&self, r: &Resources) -> io::Result<()> {
        if let Some(m) = &r.memory {
            if let Some(d) = self.dir_of("memory") {
                if self.v2_for("memory") {
                    let max = |v: i64| {
                        if v < 0 {
                            "max".to_string()
                        } else {
                            v.to_string()
                        }
                    };
                    if let Some(l) = m.limit {
                        write(&d.join("memory.max"), &max(l))?;
                    }
                    if let Some(s) = m.swap {
                        let swap = if s < 0 {
                            -1
                        } else {
                            s - m.limit.unwrap_or(0).max(0)
                        };
                        if d.join("memory.swap.max").exists() {
                            write(&d.join("memory.swap.max"), &max(swap.max(-1)))?;
                        }
                    }
                    if let Some(r) = m.reservation {
                        write(&d.join("memory.low"), &max(r))?;
                    }
                    if m.disable_oom_killer == Some(true) {
                        // v2 has no per-cgroup OOM-killer switch; memory.oom.group stays off.
                    }
                } else {
                    let limit = d.join("memory.limit_in_bytes");
                    let memsw = d.join("memory.memsw.limit_in_bytes");
                    let has_sw = memsw.exists();
                    match (m.limit, m.swap.filter(|_| has_sw)) {
                        (Some(l), Some(s)) => {
                            // Both must keep memsw >= limit at every step.
                            if write(&limit, &l.to_string()).is_err() {
                                write(&memsw, &s.to_string())?;
                                write(&limit, &l.to_string())?;
                            } else {
                                write(&memsw, &s.to_string())?;
                            }
                        }
                        (Some(l), None) => {
                            if write(&limit, &l.to_string()).is_err() && has_sw {
                                // Raising the limit above memsw: raise memsw with it.
                                write(&memsw, &l.to_string())?;
                                write(&limit, &l.to_string())?;
                            }
                        }
                        (None, Some(s)) => write(&memsw, &s.to_string())?,
                        (None, None) => {}
                    }
                    if let Some(r) = m.reservation {
                        write(&d.join("memory.soft_limit_in_bytes"), &r.to_string())?;
                    }
                    if let Some(s) = m.swappiness {
                        if s <= 100 {
                            let _ = write(&d.join("memory.swappiness"), &s.to_string());
                        }
                    }
                    if m.disable_oom_killer == Some(true) {
                        write(&d.join("memory.oom_control"), "1")?;
                    }
                }
            }
        }
        if let Some(c) = &r.cpu {
            if let Some(d) = self.dir_of("cpu") {
                if self.v2_for("cpu") {
                    if let Some(s) = c.shares {
                        write(&d.join("cpu.weight"), &shares_to_weight(s).to_string())?;
                    }
                    if c.quota.is_some() || c.period.is_some() {
                        let q = match c.quota {
                            Some(q) if q > 0 => q.to_string(),
                            _ => "max".into(),
                        };
                        write(
                            &d.join("cpu.max"),
                            &format!("{q} {}", c.period.unwrap_or(100_000)),
                        )?;
                    }
                } else {
                    if let Some(s) = c.shares {
                        write(&d.join("cpu.shares"), &s.to_string())?;
                    }
                    if let Some(p) = c.period {
                        write(&d.join("cpu.cfs_period_us"), &p.to_string())?;
                    }
                    if let Some(q) = c.quota {
                        write(
                            &d.join("cpu.cfs_quota_us"),
                            &(if q > 0 { q } else { -1 }).to_string(),
                        )?;
                    }
                    if let Some(p) = c.realtime_period {
                        write(&d.join("cpu.rt_period_us"), &p.to_string())?;
                    }
                    if let Some(r) = c.realtime_runtime {
                        write(&d.join("cpu.rt_runtime_us"), &r.to_string())?;
                    }
                }
            }
            if let Some(d) = self.dir_of("cpuset") {
                if let Some(cpus) = c.cpus.as_deref().filter(|s| !s.is_empty()) {
                    write(&d.join("cpuset.cpus"), cpus)?;
                }
                if let Some(mems) = c.mems.as_deref().filter(|s| !s.is_empty()) {
                    write(&d.join("cpuset.mems"), mems)?;
                }
            }
        }
        if let Some(p) = &r.pids {
            if let Some(d) = self.dir_of("pids") {
                let v = if p.limit > 0 {
                    p.limit.to_string()
                } else {
                    "max".into()
                };
                write(&d.join("pids.max"), &v)?;
            }
        }
        if let Some(w) = r.block_io.as_ref().and_then(|b| b.weight) {
            if let Some(d) = self.dir_of("blkio") {
                for f in ["blkio.weight", "blkio.bfq.weight"] {
                    if d.join(f).exists() {
                        write(&d.join(f), &w.to_string())?;
                        break;
                    }
                }
            } else if let Some(d) = self.dir_of("io") {
                for f in ["io.weight", "io.bfq.weight"] {
                    if d.join(f).exists() {
                        // blkio weight 10..1000 to io weight 1..10000.
                        let v = 1 + (w.clamp(10, 1000) as u64 - 10) * 9999 / 990;
                        write(&d.join(f), &v.to_string())?;
                        break;
                    }
                }
            }
        }
        if !r.devices.is_empty() {
            if let Some(d) = self.dir_of("devices").filter(|_| !self.v2_for("devices")) {
                for dev in &r.devices {
                    let f = if dev.allow {
                        "devices.allow"
                    } else {
                        "devices.deny"
                    };
                    write(&d.join(f), &device_rule(dev))?;
                }
            }
            // v2 has no devices files: a BPF program on the cgroup does it (on a hybrid
            // host the kernel applies both, so both are set)
            if let Some(h) = self.layout.hierarchies.iter().find(|h| h.v2) {
                crate::devfilter::apply(&self.dir(h), &r.devices)?;
            }
        }
        if let Some(u) = &r.unified {
            if let Some(h) = self.layout.hierarchies.iter().find(|h| h.v2) {
                for (k, v) in u {
                    if k.contains('/') {
                        continue;
                    }
                    write(&self.dir(h).join(k), v)?;
                }
            }
        }
        Ok(())
    }

    fn v2_for(&self, ctrl: &str) -> bool {
        self.layout.with(ctrl).is_some_and(|h| h.v2)
    }

    /// Moves the calling process, which must be single-threaded (a freshly forked
    /// child), into the cgroup in every hierarchy; v2 ones are skipped when
    /// `v2_joined` (the child was cloned straight into them, see `v2_dir`).
    ///
    /// v1 hierarchies get the caller's thread in `tasks`: for the caller's own thread
    /// the kernel moves it without the global threadgroup lock, whose write side
    /// waits for an RCU grace period (5-25 ms per start on a 2-core VM), and a
    /// single-threaded process is that one thread. v2 only moves whole processes.
    pub fn join_self(&self, v2_joined: bool) -> io::Result<()> {
        for h in &self.layout.hierarchies {
            match h.v2 {
                true if v2_joined => {}
                true => write(&self.dir(h).join("cgroup.procs"), "0")?,
                false => write(&self.dir(h).join("tasks"), "0")?,
            }
        }
        Ok(())
    }

    /// The cgroup's directory in the unified hierarchy, if the host has one: a child
    /// cloned with CLONE_INTO_CGROUP into it starts there, without a migration.
    pub fn v2_dir(&self) -> Option<PathBuf> {
        self.layout.hierarchies.iter().find(|h| h.v2).map(|h| self.dir(h))
    }

    /// The `cgroup.procs` file this cgroup is best counted by.
    fn procs_file(&self) -> Option<PathBuf> {
        for c in ["pids", "freezer", "memory", "cpu"] {
            if let Some(d) = self.dir_of(c) {
                return Some(d.join("cgroup.procs"));
            }
        }
        self.layout
            .hierarchies
            .first()
            .map(|h| self.dir(h).join("cgroup.procs"))
    }

    /// Pids (host namespace) of every process in the cgroup.
    pub fn procs(&self) -> io::Result<Vec<u32>> {
        let Some(f) = self.procs_file() else {
            return Ok(vec![]);
        };
        match fs::read_to_string(&f) {
            Ok(s) => Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(e),
        }
    }

    /// Signals every process in the cgroup (frozen meanwhile, so none escapes by forking).
    pub fn kill_all(&self, sig: i32) -> io::Result<()> {
        let frozen = self.freeze().is_ok();
        for _ in 0..10 {
            let pids = self.procs()?;
            if pids.is_empty() {
                break;
            }
            for p in &pids {
                unsafe {
                    libc::kill(*p as i32, sig);
                }
            }
            if frozen || sig != libc::SIGKILL {
                break;
            }
        }
        if frozen {
            self.thaw()?;
        }
        Ok(())
    }

    /// Freezes every process (docker pause).
    pub fn freeze(&self) -> io::Result<()> {
        if let Some(d) = self.dir_of("freezer").filter(|_| !self.v2_for("freezer")) {
            write(&d.join("freezer.state"), "FROZEN")?;
            for i in 0..2000u32 {
                if fs::read_to_string(d.join("freezer.state"))?.trim() == "FROZEN" {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_micros(100 * (i.min(100) as u64 + 1)));
            }
            let _ = write(&d.join("freezer.state"), "THAWED");
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                "the cgroup did not freeze",
            ));
        }
        if let Some(h) = self.layout.hierarchies.iter().find(|h| h.v2) {
            let d = self.dir(h);
            gone(&d)?;
            if d.join("cgroup.freeze").exists() {
                write(&d.join("cgroup.freeze"), "1")?;
                for i in 0..2000u32 {
                    if kv_file(&d.join("cgroup.events")).get("frozen") == Some(&1) {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_micros(100 * (i.min(100) as u64 + 1)));
                }
                let _ = write(&d.join("cgroup.freeze"), "0");
                return Err(io::Error::new(
                    ErrorKind::TimedOut,
                    "the cgroup did not freeze",
                ));
            }
        }
        Err(io::Error::new(ErrorKind::Unsupported, "no freezer cgroup"))
    }

    pub fn thaw(&self) -> io::Result<()> {
        if let Some(d) = self.dir_of("freezer").filter(|_| !self.v2_for("freezer")) {
            return write(&d.join("freezer.state"), "THAWED");
        }
        if let Some(h) = self.layout.hierarchies.iter().find(|h| h.v2) {
            let d = self.dir(h);
            gone(&d)?;
            if d.join("cgroup.freeze").exists() {
                return write(&d.join("cgroup.freeze"), "0");
            }
        }
        Err(io::Error::new(ErrorKind::Unsupported, "no freezer cgroup"))
    }

    pub fn is_frozen(&self) -> bool {
        if let Some(d) = self.dir_of("freezer").filter(|_| !self.v2_for("freezer")) {
            return fs::read_to_string(d.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN");
        }
        if let Some(h) = self.layout.hierarchies.iter().find(|h| h.v2) {
            return fs::read_to_string(self.dir(h).join("cgroup.freeze"))
                .is_ok_and(|s| s.trim() == "1");
        }
        false
    }

    /// How many processes the OOM killer killed in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let Some(d) = self.dir_of("memory") else {
            return 0;
        };
        if self.v2_for("memory") {
            kv_file(&d.join("memory.events"))
                .get("oom_kill")
                .copied()
                .unwrap_or(0)
        } else {
            kv_file(&d.join("memory.oom_control"))
                .get("oom_kill")
                .copied()
                .unwrap_or(0)
        }
    }

    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        if let Some(d) = self.dir_of("memory") {
            if self.v2_for("memory") {
                s.memory_usage = read_u64(&d.join("memory.current")).unwrap_or(0);
                s.memory_max_usage = read_u64(&d.join("memory.peak")).unwrap_or(0);
                s.memory_limit = read_u64(&d.join("memory.max")).unwrap_or(u64::MAX);
                s.memory_failcnt = kv_file(&d.join("memory.events"))
                    .get("max")
                    .copied()
                    .unwrap_or(0);
            } else {
                s.memory_usage = read_u64(&d.join("memory.usage_in_bytes")).unwrap_or(0);
                s.memory_max_usage = read_u64(&d.join("memory.max_usage_in_bytes")).unwrap_or(0);
                s.memory_limit = read_u64(&d.join("memory.limit_in_bytes")).unwrap_or(u64::MAX);
                s.memory_failcnt = read_u64(&d.join("memory.failcnt")).unwrap_or(0);
            }
            s.memory_stat = kv_file(&d.join("memory.stat"));
        }
        if let Some(d) = self.dir_of("cpuacct").filter(|_| !self.v2_for("cpuacct")) {
            s.cpu_total_ns = read_u64(&d.join("cpuacct.usage")).unwrap_or(0);
            s.cpu_percpu_ns = fs::read_to_string(d.join("cpuacct.usage_percpu"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            let st = kv_file(&d.join("cpuacct.stat"));
            // USER_HZ ticks.
            let tick = 1_000_000_000 / 100;
            s.cpu_user_ns = st.get("user").copied().unwrap_or(0) * tick;
            s.cpu_system_ns = st.get("system").copied().unwrap_or(0) * tick;
        } else if let Some(h) = self.layout.hierarchies.iter().find(|h| h.v2) {
            let st = kv_file(&self.dir(h).join("cpu.stat"));
            s.cpu_total_ns = st.get("usage_usec").copied().unwrap_or(0) * 1000;
            s.cpu_user_ns = st.get("user_usec").copied().unwrap_or(0) * 1000;
            s.cpu_system_ns = st.get("system_usec").copied().unwrap_or(0) * 1000;
            s.throttling_periods = st.get("nr_periods").copied().unwrap_or(0);
            s.throttled_periods = st.get("nr_throttled").copied().unwrap_or(0);
            s.throttled_time_ns = st.get("throttled_usec").copied().unwrap_or(0) * 1000;
        }
        if let Some(d) = self.dir_of("cpu").filter(|_| !self.v2_for("cpu")) {
            let st = kv_file(&d.join("cpu.stat"));
            s.throttling_periods = st.get("nr_periods").copied().unwrap_or(0);
            s.throttled_periods = st.get("nr_throttled").copied().unwrap_or(0);
            s.throttled_time_ns = st.get("throttled_time").copied().unwrap_or(0);
        }
        if let Some(d) = self.dir_of("pids") {
            s.pids_current = read_u64(&d.join("pids.current")).unwrap_or(0);
            s.pids_limit = read_u64(&d.join("pids.max"))
                .filter(|v| *v != u64::MAX)
                .unwrap_or(0);
        }
        if let Some(d) = self.dir_of("blkio").filter(|_| !self.v2_for("blkio")) {
            for l in fs::read_to_string(d.join("blkio.throttle.io_service_bytes"))
                .unwrap_or_default()
                .lines()
            {
                let f: Vec<&str> = l.split_whitespace().collect();
                if f.len() == 3 {
                    if let (Some((ma, mi)), Ok(v)) = (f[0].split_once(':'), f[2].parse()) {
                        if let (Ok(ma), Ok(mi)) = (ma.parse(), mi.parse()) {
                            s.io_service_bytes.push((ma, mi, f[1].to_string(), v));
                        }
                    }
                }
            }
        } else if let Some(d) = self.dir_of("io") {
            for l in fs::read_to_string(d.join("io.stat"))
                .unwrap_or_default()
                .lines()
            {
                let mut it = l.split_whitespace();
                let Some((ma, mi)) = it.next().and_then(|d| d.split_once(':')) else {
                    continue;
                };
                let (Ok(ma), Ok(mi)) = (ma.parse::<u64>(), mi.parse::<u64>()) else {
                    continue;
                };
                for kv in it {
                    if let Some((k, v)) = kv.split_once('=') {
                        let op = match k {
                            "rbytes" => "Read",
                            "wbytes" => "Write",
                            _ => continue,
                        };
                        s.io_service_bytes
                            .push((ma, mi, op.into(), v.parse().unwrap_or(0)));
                    }
                }
            }
        }
        s
    }

    /// Removes the cgroup where it has no children and no processes (no waiting).
    pub fn remove_if_empty(&self) -> io::Result<()> {
        if self.rel.is_empty() {
            return Ok(());
        }
        for h in &self.layout.hierarchies {
            let _ = fs::remove_dir(self.dir(h));
        }
        Ok(())
    }

    /// Removes the cgroup from every hierarchy, waiting (bounded) for exiting
    /// processes to leave it.
    pub fn remove(&self) -> io::Result<()> {
        if self.rel.is_empty() {
            return Ok(());
        }
        let mut last = Ok(());
        for h in &self.layout.hierarchies {
            let d = self.dir(h);
            let mut i = 0u32;
            loop {
                match fs::remove_dir(&d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && i < 2000 => {
                        i += 1;
                        std::thread::sleep(Duration::from_micros(if i < 20 { 50 } else { 1000 }));
                    }
                    Err(e) => {
                        last = Err(io::Error::new(
                            e.kind(),
                            format!("removing cgroup {}: {e}", d.display()),
                        ));
                        break;
                    }
                }
            }
        }
        last
    }
}

fn enable_controllers(dir: &Path, available: &[String]) {
    let want = ["cpu", "cpuset", "io", "memory", "pids", "hugetlb"];
    let enabled = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let have: Vec<&str> = enabled.split_whitespace().collect();
    let offered = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let offered: Vec<&str> = offered.split_whitespace().collect();
    let add: Vec<String> = want
        .iter()
        .filter(|c| {
            offered.contains(c)
                && !have.contains(c)
                && (available.is_empty() || available.iter().any(|a| a == *c))
        })
        .map(|c| format!("+{c}"))
        .collect();
    if add.is_empty() {
        return;
    }
    if fs::write(dir.join("cgroup.subtree_control"), add.join(" ")).is_err() {
        // One at a time, so one refused controller does not block the others.
        for a in add {
            let _ = fs::write(dir.join("cgroup.subtree_control"), a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{Cpu, Memory, Pids};

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
35 31 0:32 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
36 31 0:33 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn parses_hybrid_and_v2() {
        let l = Layout::from_mountinfo(HYBRID);
        assert_eq!(l.hierarchies.len(), 5);
        assert!(!l.is_pure_v2());
        assert_eq!(
            l.with("memory").unwrap().mount,
            Path::new("/sys/fs/cgroup/memory")
        );
        assert_eq!(l.hierarchies[3].controllers, vec!["name=systemd"]);
        assert!(l.with("pids").is_none());
        // a hierarchy mounted again elsewhere (another root's /sys/fs/cgroup) counts once
        let again = format!(
            "{HYBRID}170 160 0:38 / /var/tmp/x/root/sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
             171 160 0:32 / /var/tmp/x/root/sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
        );
        let l2 = Layout::from_mountinfo(&again);
        assert_eq!(l2.hierarchies.len(), l.hierarchies.len());
        assert_eq!(l2.hierarchies.iter().filter(|h| h.v2).count(), l.hierarchies.iter().filter(|h| h.v2).count());
        let v2 = Layout::from_mountinfo(
            "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        assert!(v2.is_pure_v2());
        assert_eq!(
            v2.cgroup("/berth/x").dir(&v2.hierarchies[0]),
            Path::new("/sys/fs/cgroup/berth/x")
        );
    }

    #[test]
    fn conversions() {
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262144), 10000);
        let d = |t: Option<&str>, ma, mi| DeviceCgroup {
            allow: true,
            typ: t.map(str::to_string),
            major: ma,
            minor: mi,
            access: Some("rwm".into()),
        };
        assert_eq!(device_rule(&d(None, None, None)), "a");
        assert_eq!(device_rule(&d(Some("c"), Some(1), Some(3))), "c 1:3 rwm");
        assert_eq!(device_rule(&d(Some("c"), Some(136), None)), "c 136:* rwm");
    }

    /// A fake hierarchy in a temp dir: limits land in the v1 file names.
    #[test]
    fn applies_v1_files() {
        let tmp = tempfile::tempdir().unwrap();
        let mk = |c: &str| {
            let m = tmp.path().join(c);
            fs::create_dir_all(m.join("b/x")).unwrap();
            Hierarchy {
                mount: m,
                controllers: vec![c.to_string()],
                v2: false,
            }
        };
        let l = Layout {
            hierarchies: vec![mk("memory"), mk("cpu"), mk("pids")],
        };
        let cg = l.cgroup("b/x");
        let r = Resources {
            memory: Some(Memory {
                limit: Some(1 << 20),
                swap: Some(2 << 20),
                ..Default::default()
            }),
            cpu: Some(Cpu {
                shares: Some(512),
                quota: Some(50000),
                period: Some(100000),
                ..Default::default()
            }),
            pids: Some(Pids { limit: 10 }),
            ..Default::default()
        };
        // memsw only counts where the file exists (swap accounting on).
        fs::write(
            tmp.path().join("memory/b/x/memory.memsw.limit_in_bytes"),
            "",
        )
        .unwrap();
        cg.apply(&r).unwrap();
        let rd = |p: &str| fs::read_to_string(tmp.path().join(p)).unwrap();
        assert_eq!(rd("memory/b/x/memory.limit_in_bytes"), "1048576");
        assert_eq!(rd("memory/b/x/memory.memsw.limit_in_bytes"), "2097152");
        assert_eq!(rd("cpu/b/x/cpu.shares"), "512");
        assert_eq!(rd("cpu/b/x/cpu.cfs_quota_us"), "50000");
        assert_eq!(rd("cpu/b/x/cpu.cfs_period_us"), "100000");
        assert_eq!(rd("pids/b/x/pids.max"), "10");
        cg.apply(&Resources {
            pids: Some(Pids { limit: 0 }),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(rd("pids/b/x/pids.max"), "max");
    }

    #[test]
    fn applies_v2_files() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("b/x")).unwrap();
        let h = Hierarchy {
            mount: tmp.path().to_path_buf(),
            controllers: vec!["memory".into(), "cpu".into(), "pids".into()],
            v2: true,
        };
        let cg = Layout {
            hierarchies: vec![h],
        }
        .cgroup("b/x");
        fs::write(tmp.path().join("b/x/memory.swap.max"), "").unwrap();
        let r = Resources {
            memory: Some(Memory {
                limit: Some(1 << 20),
                swap: Some(3 << 20),
                ..Default::default()
            }),
            cpu: Some(Cpu {
                shares: Some(1024),
                quota: Some(150000),
                period: Some(100000),
                ..Default::default()
            }),
            pids: Some(Pids { limit: -1 }),
            ..Default::default()
        };
        cg.apply(&r).unwrap();
        let rd = |p: &str| fs::read_to_string(tmp.path().join(p)).unwrap();
        assert_eq!(rd("b/x/memory.max"), "1048576");
        assert_eq!(rd("b/x/memory.swap.max"), "2097152");
        assert_eq!(rd("b/x/cpu.weight"), "39");
        assert_eq!(rd("b/x/cpu.max"), "150000 100000");
        assert_eq!(rd("b/x/pids.max"), "max");
    }
}
