//! `docker stats` (cgroup counters, the netns's interfaces) and `docker update`
//! (limits applied to the running cgroup and recorded in HostConfig).

use bus_schema::event::Action;
use std::sync::Arc;
use std::time::Duration;

use berth_rules::clock;
use bus_schema::runtime::{ContainerStats, ContainerUpdate};
use bus_schema::{docker, BusError};
use serde_json::{json, Value};

use crate::engine::Runtime;
use crate::state::Container;

/// Host CPU time in ns (all of /proc/stat's first line), and the online CPUs.
fn system_cpu() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut total = 0u64;
    let mut cpus = 0u64;
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("cpu ") {
            total = rest.split_whitespace().filter_map(|x| x.parse::<u64>().ok()).sum();
        } else if l.starts_with("cpu") {
            cpus += 1;
        }
    }
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    (total * (1_000_000_000 / hz), cpus.max(1))
}

/// /proc/<pid>/net/dev of the container's namespace, without lo.
fn networks(pid: u32) -> Option<Value> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok()?;
    let mut m = serde_json::Map::new();
    for l in text.lines().skip(2) {
        let Some((name, rest)) = l.split_once(':') else { continue };
        let name = name.trim();
        if name == "lo" {
            continue;
        }
        let v: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        if v.len() < 16 {
            continue;
        }
        m.insert(
            name.to_string(),
            json!({"rx_bytes": v[0], "rx_packets": v[1], "rx_errors": v[2], "rx_dropped": v[3],
                   "tx_bytes": v[8], "tx_packets": v[9], "tx_errors": v[10], "tx_dropped": v[11]}),
        );
    }
    Some(Value::Object(m))
}

/// Moby's BlkioStats: every list is there. cgroup v1 reads each blkio file (empty
/// lists when nothing was counted); v2 has io.stat only, the other lists `null`.
/// `io` is the service-bytes list, `None` for a container that is not running.
fn blkio(io: Option<Vec<Value>>) -> Value {
    const OTHERS: [&str; 7] = [
        "io_serviced_recursive",
        "io_queue_recursive",
        "io_service_time_recursive",
        "io_wait_time_recursive",
        "io_merged_recursive",
        "io_time_recursive",
        "sectors_recursive",
    ];
    let v1 = io.is_some() && !std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let mut m = serde_json::Map::new();
    m.insert(
        "io_service_bytes_recursive".into(),
        match io {
            Some(l) if v1 || !l.is_empty() => Value::Array(l),
            _ => Value::Null,
        },
    );
    for k in OTHERS {
        m.insert(k.into(), if v1 { json!([]) } else { Value::Null });
    }
    Value::Object(m)
}

fn zero_cpu() -> Value {
    json!({"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
           "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}})
}

impl<D: crate::deps::Deps> Runtime<D> {
    /// One sample in Docker's stats shape (`precpu_stats` filled by the caller).
    fn sample(&self, c: &Container) -> Value {
        let name = format!("/{}", c.name);
        if !c.state.running() || c.state.pid == 0 {
            return json!({
                "read": "0001-01-01T00:00:00Z", "preread": "0001-01-01T00:00:00Z",
                "pids_stats": {}, "blkio_stats": blkio(None),
                "num_procs": 0, "storage_stats": {}, "cpu_stats": zero_cpu(), "precpu_stats": zero_cpu(),
                "memory_stats": {}, "name": name, "id": c.id,
            });
        }
        let st = crate::cgroups::open(&self.cgroup_rel(&c.id)).map(|cg| cg.stats()).unwrap_or_default();
        let (sys, cpus) = system_cpu();
        let io: Vec<Value> = st
            .io_service_bytes
            .iter()
            .map(|(ma, mi, op, v)| json!({"major": ma, "minor": mi, "op": op, "value": v}))
            .collect();
        let mut cpu_usage = json!({"total_usage": st.cpu_total_ns, "usage_in_kernelmode": st.cpu_system_ns,
                                   "usage_in_usermode": st.cpu_user_ns});
        if !st.cpu_percpu_ns.is_empty() {
            cpu_usage["percpu_usage"] = json!(st.cpu_percpu_ns);
        }
        let mut pids = json!({"current": st.pids_current});
        if st.pids_limit > 0 {
            pids["limit"] = json!(st.pids_limit);
        }
        let limit = if st.memory_limit == 0 || st.memory_limit >= i64::MAX as u64 / 2 { berth_config::host_mem_total() } else { st.memory_limit };
        let mut v = json!({
            "read": clock::now_rfc3339(),
            "preread": "0001-01-01T00:00:00Z",
            "pids_stats": pids,
            "blkio_stats": blkio(Some(io)),
            "num_procs": 0,
            "storage_stats": {},
            "cpu_stats": {"cpu_usage": cpu_usage, "system_cpu_usage": sys, "online_cpus": cpus,
                          "throttling_data": {"periods": st.throttling_periods, "throttled_periods": st.throttled_periods,
                                              "throttled_time": st.throttled_time_ns}},
            "precpu_stats": zero_cpu(),
            "memory_stats": {"usage": st.memory_usage, "stats": st.memory_stat, "limit": limit},
            "name": name,
            "id": c.id,
        });
        if st.memory_max_usage > 0 {
            v["memory_stats"]["max_usage"] = json!(st.memory_max_usage);
            // `omitempty` in Moby's MemoryStats
            if st.memory_failcnt > 0 {
                v["memory_stats"]["failcnt"] = json!(st.memory_failcnt);
            }
        }
        if c.network_mode() != "host" {
            if let Some(n) = networks(c.state.pid) {
                v["networks"] = n;
            }
        }
        v
    }

    pub async fn stats(self: &Arc<Self>, r: ContainerStats, resp: berth_bus::Answer<ContainerStats>) -> Result<(), BusError> {
        let e = self.find(&r.id)?;
        let mut w = resp.accept(()).await?;
        let mut prev: Option<Value> = None;
        // a single answer (no stream) still carries a previous sample, as Docker's
        // does, so the CLI can show CPU %; one-shot skips that wait
        if !r.stream && !r.one_shot {
            prev = Some(self.sample(&e.get()));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        loop {
            let mut v = self.sample(&e.get());
            if let Some(p) = &prev {
                v["precpu_stats"] = p["cpu_stats"].clone();
                v["preread"] = p["read"].clone();
            }
            w.send(v.clone()).await?;
            if !r.stream {
                break;
            }
            prev = Some(v);
            let mut life = e.life.subscribe();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = life.wait_for(|l| l.removed) => break,
            }
        }
        w.end().await
    }

    pub async fn update(self: &Arc<Self>, r: ContainerUpdate) -> Result<docker::ContainerUpdateResponse, BusError> {
        let e = self.find(&r.id)?;
        let c = e.get();
        let u = &r.body;
        if let Some(m) = u.memory.filter(|m| *m > 0) {
            if m < 6 * 1024 * 1024 {
                return Err(BusError::invalid("Minimum memory limit allowed is 6MB"));
            }
            let swap = u.memory_swap.or(c.host_config.memory_swap).unwrap_or(0);
            if swap > 0 && swap < m {
                return Err(BusError::invalid(
                    "Memory limit should be smaller than already set memoryswap limit, update the memoryswap at the same time",
                ));
            }
        }
        if u.nano_cpus.is_some_and(|n| n > 0) && (u.cpu_quota.is_some_and(|q| q > 0) || u.cpu_period.is_some_and(|p| p > 0)) {
            return Err(BusError::invalid("Conflicting options: Nano CPUs and CPU Period cannot both be set"));
        }
        if let Some(rp) = &u.restart_policy {
            let always = !matches!(rp.name, None | Some(docker::RestartPolicyNameEnum::NO) | Some(docker::RestartPolicyNameEnum::EMPTY));
            if always && c.host_config.auto_remove.unwrap_or(false) {
                return Err(BusError::invalid(
                    "Cannot update restart policy: Restart policy cannot be updated because AutoRemove is enabled for the container",
                ));
            }
        }
        if c.state.running() {
            let res = crate::cgroups::update_resources(u);
            let cg = crate::cgroups::open(&self.cgroup_rel(&c.id)).map_err(|err| BusError::internal(format!("cgroups: {err}")))?;
            cg.apply(&res).map_err(|err| BusError::internal(format!("Cannot update container {}: {err}", c.id)))?;
        }
        e.update(|c| {
            let hc = &mut c.host_config;
            macro_rules! set {
                ($f:ident, $pred:expr) => {
                    if let Some(v) = u.$f.clone() {
                        #[allow(clippy::redundant_closure_call)]
                        if ($pred)(&v) {
                            hc.$f = Some(v);
                        }
                    }
                };
            }
            set!(memory, |v: &i64| *v > 0);
            set!(memory_swap, |v: &i64| *v != 0);
            set!(memory_reservation, |v: &i64| *v > 0);
            set!(nano_cpus, |v: &i64| *v > 0);
            set!(cpu_shares, |v: &i64| *v > 0);
            set!(cpu_quota, |v: &i64| *v != 0);
            set!(cpu_period, |v: &i64| *v > 0);
            set!(cpuset_cpus, |v: &String| !v.is_empty());
            set!(cpuset_mems, |v: &String| !v.is_empty());
            set!(pids_limit, |v: &i64| *v != 0);
            set!(blkio_weight, |v: &u16| *v > 0);
            if let Some(rp) = u.restart_policy.clone() {
                hc.restart_policy = Some(rp);
            }
        });
        e.save()?;
        let c = e.get();
        self.event(&c, Action::Update, &[]).await;
        Ok(docker::ContainerUpdateResponse { warnings: Some(vec![]) })
    }
}

