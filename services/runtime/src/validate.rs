//! HostConfig checks and defaults at create time, with Docker's messages.

use berth_config::DaemonConfig;
use bus_schema::{docker, BusError};

pub use berth_config::daemon::{DEFAULT_RUNTIME, RUNTIMES};

/// The logging drivers built into Docker; a name not among them is a plugin's.
const DOCKER_LOG_DRIVERS: [&str; 12] =
    ["awslogs", "etwlogs", "fluentd", "gcplogs", "gelf", "journald", "json-file", "local", "logentries", "none", "splunk", "syslog"];

/// The options of every log driver but `none` (Moby's ValidateLogOpts, before
/// the driver is looked up): `mode` blocking or non-blocking, `max-buffer-size`
/// only with non-blocking and a size.
fn log_mode(opts: Option<&std::collections::HashMap<String, String>>) -> Result<(), BusError> {
    let get = |k: &str| opts.and_then(|o| o.get(k)).map(String::as_str);
    let mode = get("mode").unwrap_or_default();
    if !["", "blocking", "non-blocking"].contains(&mode) {
        return Err(BusError::invalid(format!("logger: logging mode not supported: {mode}")));
    }
    if let Some(s) = get("max-buffer-size") {
        if mode != "non-blocking" {
            return Err(BusError::invalid("logger: max-buffer-size option is only supported with 'mode=non-blocking'"));
        }
        ram_in_bytes(s).map_err(|e| BusError::invalid(format!("error parsing option max-buffer-size: {e}")))?;
    }
    Ok(())
}

/// go-units' RAMInBytes as Moby 20.10 vendors it: `^(\d+(\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$`,
/// binary multiples, with its errors.
pub fn ram_in_bytes(s: &str) -> Result<i64, String> {
    let invalid = || format!("invalid size: '{s}'");
    let b = s.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let st = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > st
    };
    if !digits(&mut i) {
        return Err(invalid());
    }
    while i < b.len() && b[i] == b'.' {
        i += 1;
        if !digits(&mut i) {
            return Err(invalid());
        }
    }
    let num = &s[..i];
    if b.get(i) == Some(&b' ') {
        i += 1;
    }
    let mut mult = 1i64;
    if let Some(u) = b.get(i).map(|c| c.to_ascii_lowercase()).and_then(|c| "kmgtp".find(c as char)) {
        mult = 1i64 << (10 * (u + 1));
        i += 1;
    }
    if matches!(b.get(i), Some(b'i' | b'I')) {
        i += 1;
    }
    if matches!(b.get(i), Some(b'b' | b'B')) {
        i += 1;
    }
    if i != b.len() {
        return Err(invalid());
    }
    let n: f64 = num.parse().map_err(|_| format!("strconv.ParseFloat: parsing \"{num}\": invalid syntax"))?;
    Ok((n * mult as f64) as i64)
}

pub fn host_config(hc: &mut docker::HostConfig, cfg: &DaemonConfig) -> Result<(), BusError> {
    // legacy links need a network of the container's own (Moby's validateNetMode)
    if hc.links.as_ref().is_some_and(|l| !l.is_empty()) {
        let mode = hc.network_mode.as_deref().unwrap_or_default();
        if mode == "host" {
            return Err(BusError::invalid(crate::links::HOST_AND_LINKS));
        }
        if mode.starts_with("container:") {
            return Err(BusError::invalid(crate::links::CONTAINER_AND_LINKS));
        }
    }
    // restart policy
    let mut rp = hc.restart_policy.clone().unwrap_or_default();
    let name = rp.name.map(|n| n.to_string()).unwrap_or_default();
    let name = if name.is_empty() { "no".to_string() } else { name };
    let max = rp.maximum_retry_count.unwrap_or(0);
    match name.as_str() {
        "no" | "always" | "unless-stopped" => {
            if max != 0 {
                return Err(BusError::invalid(format!("invalid restart policy: maximum retry count can only be used with 'on-failure'")));
            }
        }
        "on-failure" => {
            if max < 0 {
                return Err(BusError::invalid("invalid restart policy: maximum retry count cannot be negative"));
            }
        }
        other => return Err(BusError::invalid(format!("invalid restart policy: unknown policy '{other}'; use one of 'no', 'always', 'on-failure', or 'unless-stopped'"))),
    }
    if hc.auto_remove.unwrap_or(false) && name != "no" {
        return Err(BusError::invalid("can't create 'AutoRemove' container with restart policy"));
    }
    rp.name = Some(match name.as_str() {
        "always" => docker::RestartPolicyNameEnum::ALWAYS,
        "unless-stopped" => docker::RestartPolicyNameEnum::UNLESS_STOPPED,
        "on-failure" => docker::RestartPolicyNameEnum::ON_FAILURE,
        _ => docker::RestartPolicyNameEnum::NO,
    });
    rp.maximum_retry_count = Some(max);
    hc.restart_policy = Some(rp);

    // resources
    if let Some(m) = hc.memory.filter(|m| *m != 0) {
        if m < 6 * 1024 * 1024 {
            return Err(BusError::invalid("Minimum memory limit allowed is 6MB"));
        }
        if let Some(s) = hc.memory_swap.filter(|s| *s > 0) {
            if s < m {
                return Err(BusError::invalid(
                    "Minimum memoryswap limit should be larger than memory limit, see usage",
                ));
            }
        }
    } else if hc.memory_swap.is_some_and(|s| s > 0) {
        return Err(BusError::invalid("You should always set the Memory limit when using Memoryswap limit, see usage"));
    }
    if let Some(n) = hc.nano_cpus.filter(|n| *n != 0) {
        if hc.cpu_period.is_some_and(|p| p != 0) {
            return Err(BusError::invalid("Conflicting options: Nano CPUs and CPU Period cannot both be set"));
        }
        if hc.cpu_quota.is_some_and(|p| p != 0) {
            return Err(BusError::invalid("Conflicting options: Nano CPUs and CPU Quota cannot both be set"));
        }
        let ncpu = std::thread::available_parallelism().map(|n| n.get() as i64).unwrap_or(1);
        if n < 10_000_000 || n > ncpu * 1_000_000_000 {
            return Err(BusError::invalid(format!(
                "Range of CPUs is from 0.01 to {ncpu}.00, as there are only {ncpu} CPUs available"
            )));
        }
    }
    if hc.pids_limit.is_some_and(|p| p == 0) {
        hc.pids_limit = None;
    }
    if let Some(cpus) = hc.cpuset_cpus.as_deref().filter(|s| !s.is_empty()) {
        let ncpu = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        for part in cpus.split(',') {
            for x in part.split('-') {
                match x.trim().parse::<usize>() {
                    Ok(v) if v < ncpu => {}
                    Ok(_) => {
                        return Err(BusError::invalid(format!(
                            "Requested CPUs are not available - requested {cpus}, available: 0-{}",
                            ncpu - 1
                        )))
                    }
                    Err(_) => return Err(BusError::invalid(format!("Invalid value {cpus} for cpuset cpus"))),
                }
            }
        }
    }

    security_opts(hc)?;

    // defaults as Docker shows them in inspect
    if hc.network_mode.as_deref().is_none_or(|m| m.is_empty() || m == "default") {
        hc.network_mode = Some("bridge".into());
    }
    let mut lc = hc.log_config.clone().unwrap_or_default();
    if lc.typ.as_deref().is_none_or(|t| t.is_empty()) {
        lc.typ = Some(cfg.log_driver().to_string());
        if lc.config.as_ref().is_none_or(|c| c.is_empty()) {
            lc.config = Some(cfg.log_opts.clone().into_iter().collect());
        }
    }
    if lc.typ.as_deref() != Some("none") {
        log_mode(lc.config.as_ref())?;
    }
    match lc.typ.as_deref() {
        Some("json-file") | Some("none") | Some("local") => {}
        Some(t) if DOCKER_LOG_DRIVERS.contains(&t) => {
            return Err(BusError::invalid(format!("logging driver \"{t}\" is not supported by this engine; use json-file or none")))
        }
        // any other name is a logging plugin's, looked up by the caller
        // (crate::logplugin, async)
        Some(_) | None => {}
    }
    lc.config.get_or_insert_with(Default::default);
    hc.log_config = Some(lc);
    if hc.shm_size.is_none_or(|s| s <= 0) {
        // daemon.json `default-shm-size` (checked at start-up), else Docker's 64 MiB
        hc.shm_size = Some(cfg.default_shm_size_bytes().unwrap_or(64 << 20));
    }
    hc.ipc_mode.get_or_insert_with(|| "private".into());
    hc.cgroupns_mode.get_or_insert(if berth_cgroup_v2() {
        docker::HostConfigCgroupnsModeEnum::PRIVATE
    } else {
        docker::HostConfigCgroupnsModeEnum::HOST
    });
    hc.console_size.get_or_insert_with(|| vec![0, 0]);
    // Binds and PortBindings stay unset (`null`) unless given, as Moby keeps them.
    hc.auto_remove.get_or_insert(false);
    hc.privileged.get_or_insert(false);
    hc.publish_all_ports.get_or_insert(false);
    hc.readonly_rootfs.get_or_insert(false);
    hc.oom_kill_disable.get_or_insert(false);
    hc.memory.get_or_insert(0);
    hc.nano_cpus.get_or_insert(0);
    hc.cpu_shares.get_or_insert(0);
    hc.pid_mode.get_or_insert_with(String::new);
    hc.uts_mode.get_or_insert_with(String::new);
    hc.userns_mode.get_or_insert_with(String::new);
    hc.cgroup.get_or_insert_with(String::new);
    hc.volume_driver.get_or_insert_with(String::new);
    // Moby 20.10 fills in the default runtime at the first start, not at create: its
    // created container's inspect has no HostConfig.Runtime (DaemonConfig::default_runtime_name, written at the first start)
    match hc.runtime.as_deref().filter(|r| !r.is_empty()) {
        None => hc.runtime = None,
        Some(r) if RUNTIMES.contains(&r) => {}
        Some(r) => return Err(BusError::invalid(format!("Unknown runtime specified {r}"))),
    }
    hc.isolation.get_or_insert(docker::HostConfigIsolationEnum::EMPTY);
    Ok(())
}

/// `--security-opt` as dockerd parses it (daemon/create.go parseSecurityOpt, with its
/// messages), except that what dockerd would ignore on this host is refused: berth has
/// neither AppArmor nor SELinux, so a profile or label asked for cannot be applied, and
/// a container that believes it is confined must not run unconfined.
fn security_opts(hc: &docker::HostConfig) -> Result<(), BusError> {
    for opt in hc.security_opt.iter().flatten() {
        if opt == "no-new-privileges" || opt == "disable" {
            continue;
        }
        let Some((k, v)) = opt.split_once('=').or_else(|| opt.split_once(':')) else {
            // dockerd 20.10 answers these two with a 500
            return Err(BusError::internal(format!("invalid --security-opt 1: {opt:?}")));
        };
        match k {
            "label" if v == "disable" => {}
            "label" => {
                return Err(BusError::invalid(format!(
                    "SELinux label {v:?} cannot be applied: SELinux is not enabled on this host (berth supports only label=disable)"
                )))
            }
            "apparmor" if v == "unconfined" => {}
            "apparmor" => {
                return Err(BusError::invalid(format!(
                    "AppArmor profile {v:?} cannot be applied: AppArmor is not enabled on this host (berth supports only apparmor=unconfined)"
                )))
            }
            "seccomp" => {}
            "no-new-privileges" if ["1", "t", "T", "true", "TRUE", "True", "0", "f", "F", "false", "FALSE", "False"].contains(&v) => {}
            _ => return Err(BusError::internal(format!("invalid --security-opt 2: {opt:?}"))),
        }
    }
    Ok(())
}

fn berth_cgroup_v2() -> bool {
    std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn restart_policies() {
        let cfg = DaemonConfig::default();
        let mut hc = docker::HostConfig::default();
        host_config(&mut hc, &cfg).unwrap();
        assert_eq!(hc.restart_policy.as_ref().unwrap().name, Some(docker::RestartPolicyNameEnum::NO));
        assert_eq!(hc.network_mode.as_deref(), Some("bridge"));
        let mut hc = docker::HostConfig {
            restart_policy: Some(docker::RestartPolicy { name: Some(docker::RestartPolicyNameEnum::ALWAYS), maximum_retry_count: None }),
            auto_remove: Some(true),
            ..Default::default()
        };
        assert!(host_config(&mut hc, &cfg).unwrap_err().message.contains("AutoRemove"));
        let mut hc = docker::HostConfig { memory: Some(1024), ..Default::default() };
        assert_eq!(host_config(&mut hc, &cfg).unwrap_err().message, "Minimum memory limit allowed is 6MB");
    }

    #[test]
    fn runtimes_as_docker_names_them() {
        let cfg = DaemonConfig::default();
        let mut hc = docker::HostConfig::default();
        host_config(&mut hc, &cfg).unwrap();
        // filled in at the first start, as Moby 20.10
        assert_eq!(hc.runtime, None);
        assert_eq!(cfg.default_runtime_name(), "runc");
        let mut hc = docker::HostConfig { runtime: Some("io.containerd.runc.v2".into()), ..Default::default() };
        host_config(&mut hc, &cfg).unwrap();
        assert_eq!(hc.runtime.as_deref(), Some("io.containerd.runc.v2"));
        let mut hc = docker::HostConfig { runtime: Some("nvidia".into()), ..Default::default() };
        assert_eq!(host_config(&mut hc, &cfg).unwrap_err().message, "Unknown runtime specified nvidia");
    }

    #[test]
    fn security_opts_are_applied_or_refused() {
        let cfg = DaemonConfig::default();
        let so = |o: &[&str]| docker::HostConfig { security_opt: Some(o.iter().map(|s| s.to_string()).collect()), ..Default::default() };
        for ok in [&["no-new-privileges"][..], &["no-new-privileges=false"], &["label=disable"], &["apparmor=unconfined"], &["seccomp=unconfined"], &["label:disable"]] {
            host_config(&mut so(ok), &cfg).unwrap();
        }
        let err = |o: &str| host_config(&mut so(&[o]), &cfg).unwrap_err().message;
        assert_eq!(err("apparmor=docker-default"), "AppArmor profile \"docker-default\" cannot be applied: AppArmor is not enabled on this host (berth supports only apparmor=unconfined)");
        assert!(err("label=type:svirt_apache_t").starts_with("SELinux label \"type:svirt_apache_t\" cannot be applied"));
        assert_eq!(err("bogus"), "invalid --security-opt 1: \"bogus\"");
        assert_eq!(err("foo=bar"), "invalid --security-opt 2: \"foo=bar\"");
        assert_eq!(err("no-new-privileges=maybe"), "invalid --security-opt 2: \"no-new-privileges=maybe\"");
    }

    /// Moby 20.10's answers (asked of a dockerd 20.10 with these LogConfigs).
    #[test]
    fn log_mode_and_buffer_size_as_moby() {
        let cfg = DaemonConfig::default();
        let check = |typ: &str, opts: &[(&str, &str)]| {
            let config = Some(opts.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
            let mut hc = docker::HostConfig {
                log_config: Some(docker::HostConfigLogConfig { typ: Some(typ.into()), config }),
                ..Default::default()
            };
            host_config(&mut hc, &cfg).err().map(|e| e.message)
        };
        let err = |opts: &[(&str, &str)]| check("json-file", opts);
        assert_eq!(err(&[("mode", "x")]).unwrap(), "logger: logging mode not supported: x");
        assert_eq!(err(&[("max-buffer-size", "1m")]).unwrap(), "logger: max-buffer-size option is only supported with 'mode=non-blocking'");
        assert_eq!(err(&[("mode", "blocking"), ("max-buffer-size", "1m")]).unwrap(), "logger: max-buffer-size option is only supported with 'mode=non-blocking'");
        assert_eq!(err(&[("mode", "non-blocking"), ("max-buffer-size", "abc")]).unwrap(), "error parsing option max-buffer-size: invalid size: 'abc'");
        assert_eq!(err(&[("mode", "non-blocking"), ("max-buffer-size", "-1")]).unwrap(), "error parsing option max-buffer-size: invalid size: '-1'");
        assert_eq!(
            err(&[("mode", "non-blocking"), ("max-buffer-size", "1.2.3")]).unwrap(),
            "error parsing option max-buffer-size: strconv.ParseFloat: parsing \"1.2.3\": invalid syntax"
        );
        assert_eq!(err(&[("mode", "")]), None);
        assert_eq!(err(&[("mode", "non-blocking"), ("max-buffer-size", "1.5 KiB")]), None);
        assert_eq!(err(&[("mode", "blocking")]), None);
        // `none` takes anything; a plugin's name is checked first as any driver's
        assert_eq!(check("none", &[("mode", "x")]), None);
        assert_eq!(check("someplugin", &[("mode", "x")]).unwrap(), "logger: logging mode not supported: x");
        assert_eq!(check("syslog", &[("mode", "x")]).unwrap(), "logger: logging mode not supported: x");
        assert_eq!(ram_in_bytes("1.5 KiB"), Ok(1536));
        assert_eq!(ram_in_bytes("2m"), Ok(2 << 20));
        assert_eq!(ram_in_bytes("100"), Ok(100));
        assert_eq!(ram_in_bytes("1g"), Ok(1 << 30));
        assert!(ram_in_bytes("1 k b").is_err() && ram_in_bytes("").is_err() && ram_in_bytes(".5").is_err());
    }

    #[test]
    fn daemon_json_defaults_apply() {
        let cfg = DaemonConfig::parse(r#"{"default-shm-size":"128m","default-runtime":"io.containerd.runc.v2"}"#, "t").unwrap();
        let mut hc = docker::HostConfig::default();
        host_config(&mut hc, &cfg).unwrap();
        assert_eq!(hc.shm_size, Some(128 << 20));
        assert_eq!(hc.runtime, None);
        assert_eq!(cfg.default_runtime_name(), "io.containerd.runc.v2");
        let mut hc = docker::HostConfig { shm_size: Some(1 << 20), ..Default::default() };
        host_config(&mut hc, &cfg).unwrap();
        assert_eq!(hc.shm_size, Some(1 << 20));
    }

    #[test]
    fn unknown_log_drivers_are_plugins_to_docker() {
        let cfg = DaemonConfig::default();
        let lc = |t: &str| docker::HostConfig {
            log_config: Some(docker::HostConfigLogConfig { typ: Some(t.into()), config: None }),
            ..Default::default()
        };
        // any other name is a plugin's, looked up at create (logplugin.rs; e2e
        // plugins.rs log_plugin_gets_the_output checks Moby's "not found")
        host_config(&mut lc("asdf"), &cfg).unwrap();
        assert!(host_config(&mut lc("syslog"), &cfg).unwrap_err().message.contains("not supported by this engine"));
        host_config(&mut lc("json-file"), &cfg).unwrap();
    }
}
