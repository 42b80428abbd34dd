//! What the gateway knows of its own host: the fixed parts of `/version` and `/info`.

use bus_schema::docker;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct HostFacts {
    pub node_id: String,
    pub root: PathBuf,
    pub name: String,
    pub kernel: String,
    pub os: String,
    pub os_version: String,
    pub ncpu: i64,
    pub mem_total: i64,
    pub debug: bool,
    pub live_restore: bool,
    pub labels: Vec<String>,
    pub log_driver: String,
    /// daemon.json's `default-runtime`, else runc.
    pub default_runtime: String,
    pub cgroup_version: String,
}

fn uname_release() -> String {
    nix_uname().unwrap_or_default()
}

fn nix_uname() -> Option<String> {
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    let c = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) };
    Some(c.to_string_lossy().into_owned())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

fn os_release() -> (String, String) {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default()
    };
    (get("PRETTY_NAME"), get("VERSION_ID"))
}

pub fn cgroup_version() -> &'static str {
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "2"
    } else {
        "1"
    }
}

impl HostFacts {
    pub fn detect(node_id: &str, root: PathBuf, cfg: &berth_config::DaemonConfig) -> HostFacts {
        let (os, os_version) = os_release();
        HostFacts {
            node_id: node_id.to_string(),
            root,
            name: hostname(),
            kernel: uname_release(),
            os,
            os_version,
            ncpu: std::thread::available_parallelism().map(|n| n.get() as i64).unwrap_or(1),
            mem_total: berth_config::host_mem_total() as i64,
            debug: cfg.debug,
            live_restore: cfg.live_restore,
            labels: cfg.labels.clone(),
            log_driver: cfg.log_driver().to_string(),
            default_runtime: cfg.default_runtime_name().to_string(),
            cgroup_version: cgroup_version().to_string(),
        }
    }

    pub fn version(&self) -> docker::SystemVersion {
        let mut details = std::collections::HashMap::new();
        for (k, v) in [
            ("ApiVersion", berth_config::API_VERSION),
            ("MinAPIVersion", berth_config::MIN_API_VERSION),
            ("Arch", "amd64"),
            ("Os", "linux"),
            ("Experimental", "false"),
            ("GitCommit", option_env!("BERTH_GIT_COMMIT").unwrap_or("unknown")),
            ("GoVersion", "n/a (Rust)"),
            ("BuildTime", ""),
        ] {
            details.insert(k.to_string(), v.to_string());
        }
        details.insert("KernelVersion".into(), self.kernel.clone());
        docker::SystemVersion {
            platform: Some(docker::SystemVersionPlatform { name: "berth".into() }),
            components: Some(vec![docker::SystemVersionComponents {
                name: "Engine".into(),
                version: berth_config::VERSION.into(),
                details: Some(details),
            }]),
            version: Some(berth_config::VERSION.into()),
            api_version: Some(berth_config::API_VERSION.into()),
            min_api_version: Some(berth_config::MIN_API_VERSION.into()),
            git_commit: Some(option_env!("BERTH_GIT_COMMIT").unwrap_or("unknown").into()),
            go_version: Some("n/a (Rust)".into()),
            os: Some("linux".into()),
            arch: Some("amd64".into()),
            kernel_version: Some(self.kernel.clone()),
            // `omitempty` in Moby's types.Version: not sent when false
            experimental: None,
            build_time: Some(String::new()),
        }
    }

    /// The gateway's own part of `/info`; services fill in the rest.
    pub fn info(&self) -> docker::SystemInfo {
        docker::SystemInfo {
            id: Some(self.node_id.clone()),
            name: Some(self.name.clone()),
            containers: Some(0),
            containers_running: Some(0),
            containers_paused: Some(0),
            containers_stopped: Some(0),
            images: Some(0),
            debug: Some(self.debug),
            nfd: Some(count_fds()),
            n_goroutines: Some(0),
            system_time: Some(now_rfc3339()),
            logging_driver: Some(self.log_driver.clone()),
            cgroup_driver: Some(docker::SystemInfoCgroupDriverEnum::CGROUPFS),
            cgroup_version: Some(if self.cgroup_version == "2" {
                docker::SystemInfoCgroupVersionEnum::_2
            } else {
                docker::SystemInfoCgroupVersionEnum::_1
            }),
            n_events_listener: Some(0),
            kernel_version: Some(self.kernel.clone()),
            operating_system: Some(self.os.clone()),
            os_version: Some(self.os_version.clone()),
            os_type: Some("linux".into()),
            architecture: Some(std::env::consts::ARCH.into()),
            ncpu: Some(self.ncpu),
            mem_total: Some(self.mem_total),
            index_server_address: Some("https://index.docker.io/v1/".into()),
            docker_root_dir: Some(self.root.display().to_string()),
            http_proxy: Some(std::env::var("HTTP_PROXY").or_else(|_| std::env::var("http_proxy")).unwrap_or_default()),
            https_proxy: Some(std::env::var("HTTPS_PROXY").or_else(|_| std::env::var("https_proxy")).unwrap_or_default()),
            no_proxy: Some(std::env::var("NO_PROXY").or_else(|_| std::env::var("no_proxy")).unwrap_or_default()),
            labels: Some(self.labels.clone()),
            experimental_build: Some(false),
            server_version: Some(berth_config::VERSION.into()),
            live_restore_enabled: Some(self.live_restore),
            isolation: Some(docker::SystemInfoIsolationEnum::DEFAULT),
            security_options: Some(vec!["name=seccomp,profile=builtin".into()]),
            swarm: Some(docker::SwarmInfo {
                node_id: Some(String::new()),
                node_addr: Some(String::new()),
                local_node_state: Some(docker::LocalNodeState::INACTIVE),
                control_available: Some(false),
                error: Some(String::new()),
                remote_managers: None,
                ..Default::default()
            }),
            warnings: None,
            ..Default::default()
        }
    }
}

/// `net.bridge.bridge-nf-call-{iptables,ip6tables}` (false when br_netfilter is not loaded).
pub fn bridge_nf(which: &str) -> bool {
    std::fs::read_to_string(format!("/proc/sys/net/bridge/bridge-nf-call-{which}")).is_ok_and(|s| s.trim() == "1")
}

fn count_fds() -> i64 {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count() as i64).unwrap_or(0)
}

pub use berth_rules::clock::now_rfc3339;

