//! `docker top`: the host's `ps` output restricted to the container's processes.

use std::sync::Arc;

use bus_schema::{docker, BusError};

use crate::engine::Runtime;

/// PIDs in the container's cgroup (v2, or any v1 hierarchy that has it).
pub fn cgroup_pids(rel: &str) -> Vec<u32> {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let candidates = if root.join("cgroup.controllers").exists() {
        vec![root.join(rel)]
    } else {
        ["pids", "memory", "cpu", "freezer", "systemd"].iter().map(|c| root.join(c).join(rel)).collect()
    };
    for dir in candidates {
        if let Ok(t) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            return t.lines().filter_map(|l| l.trim().parse().ok()).collect();
        }
    }
    Vec::new()
}

/// Parse `ps` output and keep the rows of `pids`.
pub fn filter_ps(output: &str, pids: &[u32]) -> Result<docker::ContainerTopResponse, BusError> {
    let mut lines = output.lines();
    let header = lines.next().ok_or_else(|| BusError::internal("ps gave no output"))?;
    let titles: Vec<String> = header.split_whitespace().map(str::to_string).collect();
    let pid_col = titles
        .iter()
        .position(|t| t == "PID")
        .ok_or_else(|| BusError::invalid("Couldn't find PID field in ps output"))?;
    let n = titles.len();
    let mut procs = Vec::new();
    for l in lines {
        let fields: Vec<&str> = l.split_whitespace().collect();
        if fields.len() < n {
            continue;
        }
        let Ok(pid) = fields[pid_col].parse::<u32>() else { continue };
        if !pids.contains(&pid) {
            continue;
        }
        let mut row: Vec<String> = fields[..n - 1].iter().map(|s| s.to_string()).collect();
        row.push(fields[n - 1..].join(" "));
        procs.push(row);
    }
    Ok(docker::ContainerTopResponse { titles: Some(titles), processes: Some(procs) })
}

impl<D: crate::deps::Deps> Runtime<D> {
    pub async fn top(self: &Arc<Self>, key: &str, ps_args: Option<String>) -> Result<docker::ContainerTopResponse, BusError> {
        let e = self.find(key)?;
        let c = e.get();
        c.can_top()?;
        let mut pids = cgroup_pids(&self.cgroup_rel(&c.id));
        if pids.is_empty() && c.state.pid > 0 {
            pids.push(c.state.pid);
        }
        let args: Vec<String> = ps_args.unwrap_or_else(|| "-ef".into()).split_whitespace().map(str::to_string).collect();
        let out = tokio::process::Command::new("ps")
            .args(&args)
            .output()
            .await
            .map_err(|err| BusError::internal(format!("running ps: {err}")))?;
        if !out.status.success() {
            return Err(BusError::internal(format!(
                "ps: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        filter_ps(&String::from_utf8_lossy(&out.stdout), &pids)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn filters_rows() {
        let out = "UID PID PPID C STIME TTY TIME CMD\nroot 1 0 0 10:00 ? 00:00:01 /sbin/init\nroot 42 1 0 10:00 ? 00:00:00 sleep 1000\n";
        let r = super::filter_ps(out, &[42]).unwrap();
        let p = r.processes.unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0][7], "sleep 1000");
    }
}
