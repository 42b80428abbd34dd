//! The parts of an OCI runtime spec (config.json) the shim acts on, and the shim's
//! own options (shim.json). The runtime service writes config.json with the oci-spec
//! crate; the shim reads it with these lean types (no builders in the shim binary).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A bind mount option naming a directory inside the source to bind instead
/// (`VolumeOptions.Subpath`): the shim opens it with `openat2(RESOLVE_IN_ROOT)` from
/// the source, so a symlink the container left in its volume cannot lead outside it.
pub const SUBPATH_OPTION: &str = "x-berth.subpath=";

/// `<bundle>/shim.json`: what the runtime tells the shim besides config.json.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShimConfig {
    pub id: String,
    /// json-file log; None for log-driver none.
    pub log_path: Option<PathBuf>,
    pub log_max_size: Option<u64>,
    #[serde(default = "one")]
    pub log_max_file: u32,
    /// A log-driver plugin's FIFO (in the plugin's root; the runtime made it):
    /// every message goes there too (berth_shim::logdriver).
    #[serde(default, skip_serializing_if = "skip")]
    pub log_fifo: Option<crate::logdriver::LogFifo>,
    /// `mode=non-blocking`: what may wait for the FIFO (`max-buffer-size`, else
    /// 1 MiB), more is dropped. None: blocking (the container waits for the plugin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_max_buffer: Option<u64>,
    /// Keep the container's stdin open as a pipe (OpenStdin).
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    /// Subscribe the spawn connection to the output from the first byte (an attach
    /// that was waiting for the start).
    #[serde(default, skip_serializing_if = "skip")]
    pub attach_stdout: bool,
    #[serde(default, skip_serializing_if = "skip")]
    pub attach_stderr: bool,
    /// The host's cgroup hierarchies as the runtime read them once; None: the shim
    /// reads /proc/self/mountinfo itself.
    #[serde(default, skip_serializing_if = "skip")]
    pub cgroups: Option<crate::cgroups::Layout>,
}

/// Serialize only what is set (Options, empty lists and maps are left out).
fn skip<T: IsEmpty>(v: &T) -> bool {
    v.is_empty_value()
}

trait IsEmpty {
    fn is_empty_value(&self) -> bool;
}
impl<T> IsEmpty for Option<T> {
    fn is_empty_value(&self) -> bool {
        self.is_none()
    }
}
impl<T> IsEmpty for Vec<T> {
    fn is_empty_value(&self) -> bool {
        self.is_empty()
    }
}
impl<K, V> IsEmpty for BTreeMap<K, V> {
    fn is_empty_value(&self) -> bool {
        self.is_empty()
    }
}
impl IsEmpty for String {
    fn is_empty_value(&self) -> bool {
        self.is_empty()
    }
}
macro_rules! never_empty {
    ($($t:ty),*) => {$(impl IsEmpty for $t {
        fn is_empty_value(&self) -> bool {
            false
        }
    })*};
}
never_empty!(u32, i64, bool);
impl IsEmpty for User {
    fn is_empty_value(&self) -> bool {
        false
    }
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(default, rename = "ociVersion")]
    pub oci_version: String,
    #[serde(default, skip_serializing_if = "skip")]
    pub process: Option<Process>,
    #[serde(default, skip_serializing_if = "skip")]
    pub root: Option<Root>,
    #[serde(default, skip_serializing_if = "skip")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "skip")]
    pub domainname: Option<String>,
    #[serde(default, skip_serializing_if = "skip")]
    pub mounts: Vec<Mount>,
    #[serde(default, skip_serializing_if = "skip")]
    pub linux: Option<Linux>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Root {
    pub path: PathBuf,
    #[serde(default, skip_serializing_if = "skip")]
    pub readonly: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    #[serde(default, skip_serializing_if = "skip")]
    pub terminal: Option<bool>,
    #[serde(default, skip_serializing_if = "skip")]
    pub console_size: Option<ConsoleSize>,
    #[serde(default, skip_serializing_if = "skip")]
    pub user: User,
    #[serde(default, skip_serializing_if = "skip")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "skip")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "skip")]
    pub cwd: String,
    #[serde(default, skip_serializing_if = "skip")]
    pub capabilities: Option<Capabilities>,
    #[serde(default, skip_serializing_if = "skip")]
    pub rlimits: Vec<Rlimit>,
    #[serde(default, skip_serializing_if = "skip")]
    pub no_new_privileges: Option<bool>,
    #[serde(default, skip_serializing_if = "skip")]
    pub oom_score_adj: Option<i32>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
pub struct ConsoleSize {
    pub height: u32,
    pub width: u32,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    #[serde(default, skip_serializing_if = "skip")]
    pub uid: u32,
    #[serde(default, skip_serializing_if = "skip")]
    pub gid: u32,
    #[serde(default, skip_serializing_if = "skip")]
    pub umask: Option<u32>,
    #[serde(default, skip_serializing_if = "skip")]
    pub additional_gids: Vec<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Capabilities {
    #[serde(default, skip_serializing_if = "skip")]
    pub bounding: Vec<String>,
    #[serde(default, skip_serializing_if = "skip")]
    pub effective: Vec<String>,
    #[serde(default, skip_serializing_if = "skip")]
    pub inheritable: Vec<String>,
    #[serde(default, skip_serializing_if = "skip")]
    pub permitted: Vec<String>,
    #[serde(default, skip_serializing_if = "skip")]
    pub ambient: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Rlimit {
    #[serde(rename = "type")]
    pub typ: String,
    pub hard: u64,
    pub soft: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Mount {
    pub destination: String,
    #[serde(default, rename = "type")]
    pub typ: Option<String>,
    #[serde(default, skip_serializing_if = "skip")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "skip")]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    #[serde(default, skip_serializing_if = "skip")]
    pub namespaces: Vec<Namespace>,
    #[serde(default, skip_serializing_if = "skip")]
    pub devices: Vec<Device>,
    #[serde(default, skip_serializing_if = "skip")]
    pub cgroups_path: Option<String>,
    #[serde(default, skip_serializing_if = "skip")]
    pub resources: Option<Resources>,
    #[serde(default, skip_serializing_if = "skip")]
    pub rootfs_propagation: Option<String>,
    #[serde(default, skip_serializing_if = "skip")]
    pub seccomp: Option<Seccomp>,
    #[serde(default, skip_serializing_if = "skip")]
    pub sysctl: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "skip")]
    pub masked_paths: Vec<String>,
    #[serde(default, skip_serializing_if = "skip")]
    pub readonly_paths: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Namespace {
    #[serde(rename = "type")]
    pub typ: String,
    #[serde(default, skip_serializing_if = "skip")]
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub path: String,
    #[serde(rename = "type")]
    pub typ: String,
    #[serde(default, skip_serializing_if = "skip")]
    pub major: i64,
    #[serde(default, skip_serializing_if = "skip")]
    pub minor: i64,
    #[serde(default, skip_serializing_if = "skip")]
    pub file_mode: Option<u32>,
    #[serde(default, skip_serializing_if = "skip")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "skip")]
    pub gid: Option<u32>,
}

/// `linux.resources`: what the cgroups get. Also the shape `docker update` uses.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceCgroup>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<Pids>,
    #[serde(default, rename = "blockIO", skip_serializing_if = "Option::is_none")]
    pub block_io: Option<BlockIo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unified: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct DeviceCgroup {
    pub allow: bool,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<i64>,
    /// Memory plus swap (Docker's --memory-swap); -1 unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swappiness: Option<u64>,
    #[serde(
        default,
        rename = "disableOOMKiller",
        skip_serializing_if = "Option::is_none"
    )]
    pub disable_oom_killer: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cpu {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realtime_runtime: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realtime_period: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mems: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Pids {
    /// <= 0: unlimited.
    pub limit: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct BlockIo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Seccomp {
    pub default_action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub syscalls: Vec<SyscallRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyscallRule {
    pub names: Vec<String>,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<SyscallArg>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyscallArg {
    pub index: u32,
    pub value: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_two: Option<u64>,
    pub op: String,
}
