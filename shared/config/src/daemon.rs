//! `daemon.json` with Docker's keys. Unknown keys are refused as dockerd refuses them:
//! "the following directives don't match any configuration option: ...".

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unable to configure the berth daemon with file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("unable to configure the berth daemon with file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("unable to configure the berth daemon with file {path}: the following directives don't match any configuration option: {keys}")]
    UnknownKeys { path: String, keys: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A key dockerd knows, with a value berth does not implement: refused at start-up,
    /// naming the key, rather than accepted and ignored.
    #[error("unable to configure the berth daemon with file {path}: {key}: {why}")]
    Unsupported { path: String, key: String, why: String },
}

/// Every key dockerd's daemon.json accepts (moby `daemon/config`). Keys berth does
/// not act on yet are accepted, as Docker accepts them, and listed by `unused_keys`.
pub const KNOWN_KEYS: &[&str] = &[
    "allow-direct-routing", "allow-nondistributable-artifacts", "api-cors-header",
    "authorization-plugins", "bip", "bip6", "bridge", "builder", "cdi-spec-dirs",
    "cgroup-parent", "containerd", "containerd-namespace", "containerd-plugins-namespace",
    "cpu-rt-period", "cpu-rt-runtime", "data-root", "debug", "default-address-pools",
    "default-cgroupns-mode", "default-gateway", "default-gateway-v6", "default-ipc-mode",
    "default-network-opts", "default-runtime", "default-shm-size", "default-ulimits",
    "dns", "dns-opts", "dns-search", "exec-opts", "exec-root", "experimental", "features",
    "firewall-backend", "fixed-cidr", "fixed-cidr-v6", "group", "host-gateway-ip",
    "host-gateway-ips", "hosts", "http-proxy", "https-proxy", "icc", "init", "init-path",
    "insecure-registries", "ip", "ip-forward", "ip-forward-no-drop", "ip-masq", "ip6tables",
    "iptables", "ipv6", "labels", "live-restore", "log-driver", "log-format", "log-level",
    "log-opts", "max-concurrent-downloads", "max-concurrent-uploads",
    "max-download-attempts", "metrics-addr", "mtu", "network-control-plane-mtu",
    "network-diagnostic-port", "no-new-privileges", "no-proxy", "node-generic-resources",
    "oom-score-adjust", "pidfile", "proxies", "raw-logs", "registry-mirrors", "runtimes",
    "seccomp-profile", "selinux-enabled", "shutdown-timeout", "storage-driver",
    "storage-opts", "swarm-default-advertise-addr", "tls", "tlscacert", "tlscert", "tlskey",
    "tlsverify", "userland-proxy", "userland-proxy-path", "userns-remap",
];

/// The runtime names Docker lists in `docker info` (Moby 20.10's), all served by
/// berth's shim: clients (docker-py, compose files) name `runc` explicitly.
pub const RUNTIMES: [&str; 3] = ["runc", "io.containerd.runc.v2", "io.containerd.runtime.v1.linux"];
pub const DEFAULT_RUNTIME: &str = "runc";

/// dockerd's keys berth has no behaviour for: accepted only when off (false, 0, "", [],
/// {}, null, or an object of such values: dockerd's defaults), refused naming the key
/// otherwise. Keys berth implements are read where they act (typed fields above, or
/// `other` in the network and runtime services); `pidfile` by `berth up`.
pub const NOT_IMPLEMENTED: &[&str] = &[
    "allow-direct-routing", "allow-nondistributable-artifacts", "api-cors-header",
    "authorization-plugins", "bip6", "cdi-spec-dirs", "containerd", "containerd-namespace",
    "containerd-plugins-namespace", "cpu-rt-period", "cpu-rt-runtime", "default-gateway",
    "default-gateway-v6", "default-network-opts", "default-ulimits", "exec-root", "features",
    "firewall-backend", "fixed-cidr-v6", "host-gateway-ip", "host-gateway-ips", "http-proxy",
    "https-proxy", "init-path", "ip-forward-no-drop", "ip6tables", "ipv6",
    "max-download-attempts", "network-control-plane-mtu", "network-diagnostic-port",
    "no-proxy", "node-generic-resources", "oom-score-adjust", "proxies", "raw-logs",
    "runtimes", "selinux-enabled", "swarm-default-advertise-addr",
];

/// Off, as a daemon.json value: what leaves dockerd's default behaviour.
fn is_off(v: &serde_json::Value) -> bool {
    use serde_json::Value::*;
    match v {
        Null => true,
        Bool(b) => !b,
        Number(n) => n.as_f64() == Some(0.0),
        String(s) => s.is_empty(),
        Array(a) => a.is_empty(),
        Object(o) => o.values().all(is_off),
    }
}

/// Storage drivers berth implements.
pub const STORAGE_DRIVERS: &[&str] = &["overlay2", "btrfs", "vfs"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressPool {
    pub base: String,
    pub size: u8,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DaemonConfig {
    #[serde(default)]
    pub hosts: Vec<String>,
    pub data_root: Option<PathBuf>,
    pub storage_driver: Option<String>,
    #[serde(default)]
    pub storage_opts: Vec<String>,
    #[serde(default)]
    pub registry_mirrors: Vec<String>,
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    #[serde(default)]
    pub default_address_pools: Vec<AddressPool>,
    pub bip: Option<String>,
    #[serde(default)]
    pub live_restore: bool,
    pub log_driver: Option<String>,
    #[serde(default)]
    pub log_opts: BTreeMap<String, String>,
    #[serde(default)]
    pub debug: bool,
    pub log_level: Option<String>,
    pub metrics_addr: Option<String>,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub dns: Vec<String>,
    #[serde(default)]
    pub dns_opts: Vec<String>,
    #[serde(default)]
    pub dns_search: Vec<String>,
    pub mtu: Option<u32>,
    pub iptables: Option<bool>,
    pub ip_forward: Option<bool>,
    pub ip_masq: Option<bool>,
    pub userland_proxy: Option<bool>,
    pub default_shm_size: Option<String>,
    pub max_concurrent_downloads: Option<u32>,
    pub max_concurrent_uploads: Option<u32>,
    pub shutdown_timeout: Option<u32>,
    pub experimental: Option<bool>,
    pub tls: Option<bool>,
    pub tlsverify: Option<bool>,
    pub tlscacert: Option<PathBuf>,
    pub tlscert: Option<PathBuf>,
    pub tlskey: Option<PathBuf>,
    pub group: Option<String>,
    pub init: Option<bool>,
    pub no_new_privileges: Option<bool>,
    pub default_runtime: Option<String>,
    #[serde(default)]
    pub exec_opts: Vec<String>,
    /// The rest of the accepted keys, kept verbatim.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl DaemonConfig {
    /// Parse daemon.json text; `path` is only used in messages.
    pub fn parse(text: &str, path: &str) -> Result<DaemonConfig, ConfigError> {
        let raw: serde_json::Value = if text.trim().is_empty() {
            serde_json::json!({})
        } else {
            serde_json::from_str(text)
                .map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?
        };
        let obj = raw.as_object().ok_or_else(|| ConfigError::Parse {
            path: path.into(),
            message: "the configuration must be a JSON object".into(),
        })?;
        let mut unknown: Vec<&str> =
            obj.keys().map(|k| k.as_str()).filter(|k| !KNOWN_KEYS.contains(k)).collect();
        if !unknown.is_empty() {
            unknown.sort();
            return Err(ConfigError::UnknownKeys { path: path.into(), keys: unknown.join(", ") });
        }
        let cfg: DaemonConfig = serde_json::from_value(raw)
            .map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        cfg.validate()?;
        if let Some((key, why)) = cfg.unsupported() {
            return Err(ConfigError::Unsupported { path: path.into(), key: key.into(), why });
        }
        Ok(cfg)
    }

    /// Load a daemon.json; a missing file is an empty configuration.
    pub fn load(path: &Path) -> Result<DaemonConfig, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(t) => Self::parse(&t, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DaemonConfig::default()),
            Err(e) => Err(ConfigError::Read { path: path.display().to_string(), source: e }),
        }
    }

    /// Load from the path in `BERTH_CONFIG`, if set.
    pub fn from_env() -> Result<DaemonConfig, ConfigError> {
        match std::env::var_os(crate::env::CONFIG) {
            Some(p) if !p.is_empty() => Self::load(Path::new(&p)),
            _ => Ok(DaemonConfig::default()),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(d) = &self.storage_driver {
            match d.as_str() {
                x if STORAGE_DRIVERS.contains(&x) => {}
                "aufs" | "devicemapper" | "zfs" | "overlay" | "fuse-overlayfs" => {
                    return Err(ConfigError::Invalid(format!(
                        "storage driver \"{d}\" is not supported by this engine or kernel; use one of: {}",
                        STORAGE_DRIVERS.join(", ")
                    )))
                }
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "unknown storage driver \"{d}\"; use one of: {}",
                        STORAGE_DRIVERS.join(", ")
                    )))
                }
            }
        }
        if let Some(l) = &self.log_level {
            if !["debug", "info", "warn", "error", "fatal"].contains(&l.as_str()) {
                return Err(ConfigError::Invalid(format!("unable to parse logging level: {l}")));
            }
        }
        for h in &self.hosts {
            if !(h.starts_with("unix://") || h.starts_with("tcp://") || h.starts_with("fd://")) {
                return Err(ConfigError::Invalid(format!("invalid host {h:?}: use unix:///path or tcp://host:port")));
            }
        }
        for m in &self.registry_mirrors {
            if !(m.starts_with("http://") || m.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "invalid mirror: unsupported scheme \"{m}\" in \"{m}\""
                )));
            }
        }
        for p in &self.default_address_pools {
            if !(1..=32).contains(&p.size) || !p.base.contains('/') {
                return Err(ConfigError::Invalid(format!("invalid default address pool {}/{}", p.base, p.size)));
            }
        }
        Ok(())
    }

    /// The first key whose value berth does not implement, and why (nothing dockerd
    /// accepts is silently ignored: issue 17).
    pub fn unsupported(&self) -> Option<(&'static str, String)> {
        let other = |k: &str| self.other.get(k).filter(|v| !v.is_null());
        if let Some(r) = self.default_runtime.as_deref().filter(|r| !r.is_empty()) {
            if !RUNTIMES.contains(&r) {
                // dockerd's words for a runtime it does not know
                return Some(("default-runtime", format!("specified default runtime '{r}' does not exist (berth runs {})", RUNTIMES.join(", "))));
            }
        }
        if let Some(s) = &self.default_shm_size {
            if self.default_shm_size_bytes().is_none() {
                return Some(("default-shm-size", format!("invalid size: '{s}'")));
            }
        }
        if self.userland_proxy == Some(true) {
            return Some(("userland-proxy", "berth publishes ports with nftables rules only, as dockerd does with \"userland-proxy\": false; set it to false or remove it".into()));
        }
        if other("userland-proxy-path").is_some() {
            return Some(("userland-proxy-path", "berth has no userland proxy; remove the key".into()));
        }
        if other("userns-remap").is_some_and(|v| v.as_str() != Some("")) {
            return Some(("userns-remap", "user namespace remapping is not supported by berth; remove the key".into()));
        }
        if other("seccomp-profile").is_some_and(|v| !matches!(v.as_str(), Some("" | "builtin"))) {
            return Some((
                "seccomp-profile",
                "a daemon-wide seccomp profile is not supported by berth (its default is Docker's); give one per container with --security-opt seccomp=<file>".into(),
            ));
        }
        for k in NOT_IMPLEMENTED {
            if other(k).is_some_and(|v| !is_off(v)) {
                return Some((k, "not implemented by berth; remove the key (or leave it at dockerd's default, off)".into()));
            }
        }
        match other("log-format").and_then(|v| v.as_str()) {
            None | Some("" | "text") => {}
            Some(f) => return Some(("log-format", format!("{f:?} is not implemented by berth (its logs are text); remove the key"))),
        }
        for (k, how) in [("default-ipc-mode", "private"), ("default-cgroupns-mode", if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() { "private" } else { "host" })] {
            match other(k).and_then(|v| v.as_str()) {
                None | Some("") => {}
                Some(m) if m == how => {}
                Some(m) => return Some((k, format!("{m:?} is not implemented by berth (its containers get {how:?} here); remove the key"))),
            }
        }
        for o in &self.exec_opts {
            let (k, v) = o.split_once('=').map(|(k, v)| (k.trim(), v.trim())).unwrap_or((o.as_str(), ""));
            match (k, v) {
                ("native.cgroupdriver", "cgroupfs") => {}
                ("native.cgroupdriver", d) => {
                    return Some(("exec-opts", format!("native.cgroupdriver={d} is not supported: berth manages cgroups itself (native.cgroupdriver=cgroupfs)")))
                }
                // dockerd: "run exec-opts: unknown option"
                _ => return Some(("exec-opts", format!("unknown option {k}"))),
            }
        }
        None
    }

    /// `default-shm-size` in bytes (Docker's size strings: `64M`, `1g`, `65536`).
    pub fn default_shm_size_bytes(&self) -> Option<i64> {
        match &self.default_shm_size {
            None => Some(64 << 20),
            Some(s) => berth_mountspec::parse_size(s).ok().filter(|n| *n > 0),
        }
    }

    /// `shutdown-timeout`: how long an orderly stop waits for each container (dockerd's
    /// default: 15 s).
    pub fn shutdown_timeout(&self) -> u32 {
        self.shutdown_timeout.unwrap_or(15)
    }

    pub fn storage_driver(&self) -> &str {
        self.storage_driver.as_deref().unwrap_or("overlay2")
    }

    pub fn log_driver(&self) -> &str {
        self.log_driver.as_deref().unwrap_or("json-file")
    }

    /// The runtime of a container whose HostConfig names none: `default-runtime`,
    /// else runc.
    pub fn default_runtime_name(&self) -> &str {
        self.default_runtime.as_deref().filter(|r| !r.is_empty()).unwrap_or(DEFAULT_RUNTIME)
    }

    /// The data root: `data-root` or `/var/lib/berth`.
    pub fn data_root(&self) -> PathBuf {
        self.data_root.clone().unwrap_or_else(|| PathBuf::from("/var/lib/berth"))
    }

    /// Accepted keys that berth keeps but does not act on.
    pub fn unused_keys(&self) -> Vec<String> {
        self.other.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_keys() {
        let c = DaemonConfig::parse(
            r#"{"hosts":["unix:///tmp/x.sock"],"data-root":"/tmp/r","storage-driver":"vfs",
                "registry-mirrors":["http://127.0.0.1:5000"],"insecure-registries":["127.0.0.1:5000"],
                "default-address-pools":[{"base":"10.10.0.0/16","size":24}],"bip":"10.9.0.1/24",
                "live-restore":true,"log-driver":"json-file","log-opts":{"max-size":"10m"},
                "debug":true,"metrics-addr":"127.0.0.1:9323","icc":true}"#,
            "t",
        )
        .unwrap();
        assert_eq!(c.storage_driver(), "vfs");
        assert_eq!(c.default_address_pools[0].size, 24);
        assert!(c.live_restore);
        assert_eq!(c.log_opts["max-size"], "10m");
        assert_eq!(c.unused_keys(), vec!["icc".to_string()]);
    }

    #[test]
    fn refuses_unknown_keys_like_dockerd() {
        let e = DaemonConfig::parse(r#"{"debug":true,"no-such":1,"also-bad":2}"#, "/etc/x.json").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unable to configure the berth daemon with file /etc/x.json: the following directives don't match any configuration option: also-bad, no-such"
        );
    }

    #[test]
    fn refuses_what_it_does_not_implement_naming_the_key() {
        let refused = |json: &str, key: &str| {
            let e = DaemonConfig::parse(json, "/etc/d.json").unwrap_err().to_string();
            assert!(e.starts_with(&format!("unable to configure the berth daemon with file /etc/d.json: {key}: ")), "{json}: {e}");
        };
        refused(r#"{"default-runtime":"nvidia"}"#, "default-runtime");
        refused(r#"{"default-shm-size":"lots"}"#, "default-shm-size");
        refused(r#"{"userland-proxy":true}"#, "userland-proxy");
        refused(r#"{"userland-proxy-path":"/usr/bin/docker-proxy"}"#, "userland-proxy-path");
        refused(r#"{"userns-remap":"default"}"#, "userns-remap");
        refused(r#"{"seccomp-profile":"/etc/docker/seccomp.json"}"#, "seccomp-profile");
        refused(r#"{"seccomp-profile":"unconfined"}"#, "seccomp-profile");
        refused(r#"{"exec-opts":["native.cgroupdriver=systemd"]}"#, "exec-opts");
        refused(r#"{"exec-opts":["isolation=hyperv"]}"#, "exec-opts");
        refused(r#"{"ipv6":true}"#, "ipv6");
        refused(r#"{"features":{"buildkit":true}}"#, "features");
        refused(r#"{"exec-root":"/run/x"}"#, "exec-root");
        refused(r#"{"log-format":"json"}"#, "log-format");
        refused(r#"{"default-ipc-mode":"shareable"}"#, "default-ipc-mode");
        DaemonConfig::parse(r#"{"ipv6":false,"ip6tables":false,"features":{"buildkit":false},"selinux-enabled":false,"runtimes":{},"log-format":"text","default-ipc-mode":"private","pidfile":"/run/b.pid"}"#, "t").unwrap();
        // what berth does (or does anyway) is accepted
        let c = DaemonConfig::parse(
            r#"{"default-runtime":"runc","default-shm-size":"128M","userland-proxy":false,"userns-remap":"",
                "seccomp-profile":"builtin","exec-opts":["native.cgroupdriver=cgroupfs"],"no-new-privileges":true,
                "shutdown-timeout":3}"#,
            "t",
        )
        .unwrap();
        assert_eq!(c.default_shm_size_bytes(), Some(128 << 20));
        assert_eq!(c.shutdown_timeout(), 3);
        assert_eq!(DaemonConfig::default().default_shm_size_bytes(), Some(64 << 20));
        assert_eq!(DaemonConfig::default().shutdown_timeout(), 15);
    }

    #[test]
    fn refuses_unsupported_drivers() {
        for d in ["aufs", "devicemapper", "zfs"] {
            let e = DaemonConfig::parse(&format!(r#"{{"storage-driver":"{d}"}}"#), "t").unwrap_err();
            assert!(e.to_string().contains("not supported"), "{e}");
        }
        assert!(DaemonConfig::parse(r#"{"storage-driver":"nope"}"#, "t").is_err());
    }

    #[test]
    fn empty_and_missing() {
        assert_eq!(DaemonConfig::parse("", "t").unwrap().storage_driver(), "overlay2");
        let d = tempfile::tempdir().unwrap();
        assert!(DaemonConfig::load(&d.path().join("none.json")).unwrap().hosts.is_empty());
        assert!(DaemonConfig::parse("[1]", "t").is_err());
        assert!(DaemonConfig::parse(r#"{"hosts":["nope"]}"#, "t").is_err());
    }
}
