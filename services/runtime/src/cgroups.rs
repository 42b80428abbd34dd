//! cgroups of containers, for the runtime service: the shim creates, fills and
//! removes a container's cgroup; the service updates limits (`docker update`), reads
//! stats, pauses and unpauses, and counts OOM kills. cgroup v1 (also on hosts with a
//! hybrid layout) and pure v2. Plain, short file I/O: call it directly from async code,
//! except freezing and thawing, which wait for the kernel ([`freeze`], [`thaw`]: on
//! the blocking pool).

pub use berth_shim::cgroups::{shares_to_weight, Cgroup, Hierarchy, Layout, Stats};
pub use berth_shim::oci::{BlockIo, Cpu, Memory, Pids, Resources};

use bus_schema::docker::ContainerUpdateBody;

/// The host's cgroup hierarchies, read once per service (reading mountinfo costs
/// O(mounts): with many containers running it is the largest part of a start).
pub fn layout() -> std::io::Result<&'static Layout> {
    static LAYOUT: std::sync::OnceLock<Layout> = std::sync::OnceLock::new();
    if let Some(l) = LAYOUT.get() {
        return Ok(l);
    }
    let l = Layout::detect()?;
    Ok(LAYOUT.get_or_init(|| l))
}

/// A container's cgroup from its cgroup path (e.g. "berth/<id>").
pub fn open(path: &str) -> std::io::Result<Cgroup> {
    Ok(layout()?.cgroup(path))
}

/// Freezes a container's cgroup (`docker pause`): the freezer of the v1 hierarchy that
/// has it, else `cgroup.freeze` of the unified one. NotFound when the cgroup is gone.
pub async fn freeze(path: &str) -> std::io::Result<()> {
    set_frozen(open(path)?, true).await
}

/// Thaws a container's cgroup (`docker unpause`, and before a stop or kill of a
/// paused container).
pub async fn thaw(path: &str) -> std::io::Result<()> {
    set_frozen(open(path)?, false).await
}

/// [`Cgroup::freeze`] polls until the kernel has frozen every task (up to seconds):
/// run on the blocking pool, not on the service's async threads.
pub async fn set_frozen(cg: Cgroup, frozen: bool) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || if frozen { cg.freeze() } else { cg.thaw() })
        .await
        .map_err(std::io::Error::other)?
}

/// The limits `docker update` changes, in the shape the cgroup manager applies
/// (only what the body sets).
pub fn update_resources(u: &ContainerUpdateBody) -> Resources {
    let mut r = Resources::default();
    let memory = u.memory.filter(|m| *m > 0);
    let mem = Memory {
        limit: memory,
        reservation: u.memory_reservation.filter(|m| *m > 0),
        swap: u.memory_swap.filter(|s| *s != 0),
        swappiness: None,
        disable_oom_killer: None,
    };
    if mem != Memory::default() {
        r.memory = Some(mem);
    }
    let mut cpu = Cpu {
        shares: u.cpu_shares.filter(|s| *s > 0).map(|s| s as u64),
        quota: u.cpu_quota.filter(|q| *q != 0),
        period: u.cpu_period.filter(|p| *p > 0).map(|p| p as u64),
        cpus: u.cpuset_cpus.clone().filter(|s| !s.is_empty()),
        mems: u.cpuset_mems.clone().filter(|s| !s.is_empty()),
        ..Default::default()
    };
    if let Some(n) = u.nano_cpus.filter(|n| *n > 0) {
        cpu.period = Some(100_000);
        cpu.quota = Some((n as u64 * 100_000 / 1_000_000_000) as i64);
    }
    if cpu != Cpu::default() {
        r.cpu = Some(cpu);
    }
    if let Some(p) = u.pids_limit.filter(|p| *p != 0) {
        r.pids = Some(Pids { limit: p });
    }
    if let Some(w) = u.blkio_weight.filter(|w| *w > 0) {
        r.block_io = Some(BlockIo { weight: Some(w) });
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_maps_docker_fields() {
        let u = ContainerUpdateBody {
            memory: Some(128 << 20),
            nano_cpus: Some(500_000_000),
            pids_limit: Some(-1),
            ..Default::default()
        };
        let r = update_resources(&u);
        assert_eq!(r.memory.unwrap().limit, Some(128 << 20));
        assert_eq!(r.cpu.as_ref().unwrap().quota, Some(50000));
        assert_eq!(r.pids.unwrap().limit, -1);
        assert!(update_resources(&ContainerUpdateBody::default()) == Resources::default());
    }

    /// A fake cgroup tree: one hierarchy at a temporary directory, v1 (a freezer
    /// controller) or v2 (the unified one), with the container's directory `berth/c1`.
    fn fake(v2: bool) -> (tempfile::TempDir, Cgroup) {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("berth/c1");
        std::fs::create_dir_all(&d).unwrap();
        if v2 {
            std::fs::write(d.join("cgroup.freeze"), "0").unwrap();
            // what the kernel says once the tasks are frozen
            std::fs::write(d.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        } else {
            std::fs::write(d.join("freezer.state"), "THAWED").unwrap();
        }
        let controllers = if v2 {
            vec![]
        } else {
            vec!["freezer".to_string()]
        };
        let layout = Layout {
            hierarchies: vec![Hierarchy {
                mount: tmp.path().into(),
                controllers,
                v2,
            }],
        };
        let cg = layout.cgroup("berth/c1");
        (tmp, cg)
    }

    #[tokio::test]
    async fn freeze_thaw_v1_freezer() {
        let (tmp, cg) = fake(false);
        let state = tmp.path().join("berth/c1/freezer.state");
        set_frozen(cg.clone(), true).await.unwrap();
        assert_eq!(std::fs::read_to_string(&state).unwrap(), "FROZEN");
        assert!(cg.is_frozen());
        set_frozen(cg.clone(), false).await.unwrap();
        assert_eq!(std::fs::read_to_string(&state).unwrap(), "THAWED");
        std::fs::remove_dir_all(tmp.path().join("berth/c1")).unwrap();
        let err = set_frozen(cg, true).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn freeze_thaw_v2_cgroup_freeze() {
        let (tmp, cg) = fake(true);
        let file = tmp.path().join("berth/c1/cgroup.freeze");
        set_frozen(cg.clone(), true).await.unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "1");
        assert!(cg.is_frozen());
        set_frozen(cg.clone(), false).await.unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "0");
        // gone (the container exited): NotFound, which pause answers "not running"
        std::fs::remove_dir_all(tmp.path().join("berth/c1")).unwrap();
        let err = set_frozen(cg.clone(), true).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        let err = set_frozen(cg, false).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }

    /// Real cgroups (root): create, limit, update, stats, freeze, remove.
    #[test]
    fn real_cgroup_lifecycle() {
        let Ok(layout) = Layout::detect() else { return };
        if layout.hierarchies.is_empty() || unsafe { libc::geteuid() } != 0 {
            return;
        }
        let path = format!("berth-runtime-test/cg-{}", std::process::id());
        let cg = layout.cgroup(&path);
        cg.create().unwrap();
        let r = Resources {
            memory: Some(Memory {
                limit: Some(64 << 20),
                ..Default::default()
            }),
            pids: Some(Pids { limit: 20 }),
            ..Default::default()
        };
        cg.apply(&r).unwrap();
        cg.apply(&update_resources(&ContainerUpdateBody {
            memory: Some(96 << 20),
            ..Default::default()
        }))
        .unwrap();
        let st = cg.stats();
        assert_eq!(st.memory_limit, 96 << 20);
        assert_eq!(st.pids_limit, 20);
        cg.freeze().unwrap();
        assert!(cg.is_frozen());
        cg.thaw().unwrap();
        assert_eq!(cg.oom_kills(), 0);
        cg.remove().unwrap();
        layout
            .cgroup("berth-runtime-test")
            .remove_if_empty()
            .unwrap();
        assert!(!layout.with("memory").unwrap().mount.join(&path).exists());
    }
}
