//! cgroups of containers, for the runtime service: the shim creates, fills and
//! removes a container's cgroup; the service updates limits (`docker update`), reads
//! stats, pauses and unpauses, and counts OOM kills. cgroup v1 (also on hosts with a
//! hybrid layout) and pure v2. Plain, short file I/O: call it directly from async code.

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
