//! Requests served by the runtime service: containers and their processes. The
//! service owns `<root>/runtime/`; each running container has a shim that owns its
//! processes, stdio and json-file log and outlives the service.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use crate::docker;
use crate::stream::{ByteChunk, StdinChunk, StdioChunk};

/// `POST /containers/create`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerCreate {
    pub name: Option<String>,
    pub body: docker::ContainerCreateBody,
    pub platform: Option<String>,
    /// A managed plugin's container (the images service runs enabled plugins): its
    /// rootfs is the plugin's layer instead of an image, its ID the plugin's, and it
    /// is hidden from `docker ps` and prune (Moby runs plugins in a containerd
    /// namespace of their own). Never set from a client request.
    #[serde(default)]
    pub plugin: Option<PluginRootfs>,
}

/// See [`ContainerCreate::plugin`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRootfs {
    /// The plugin's ID: the container's ID too.
    pub id: String,
    /// The plugin's rootfs layer in the storage service.
    pub chain_id: String,
}

/// `POST /containers/{id}/start`; NotModified when already running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStart {
    pub id: String,
}

/// `POST /containers/{id}/stop`: the stop signal, then SIGKILL after the timeout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStop {
    pub id: String,
    pub signal: Option<String>,
    pub timeout: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRestart {
    pub id: String,
    pub signal: Option<String>,
    pub timeout: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerKill {
    pub id: String,
    pub signal: Option<String>,
}

/// `POST /containers/{id}/wait`: the reply comes at once (the container exists), the
/// single item when the condition is met (not-running, next-exit, removed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerWait {
    pub id: String,
    pub condition: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRemove {
    pub id: String,
    pub force: bool,
    pub volumes: bool,
    /// `?link=1`: remove the legacy link named `id` (`<parent>/<alias>`), not a container.
    #[serde(default)]
    pub link: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInspect {
    pub id: String,
    pub size: bool,
}

/// The plugin manager's (the images service's) hold on a managed plugin's container:
/// the container API does not find those (Moby keeps plugins in containerd's plugin
/// namespace, out of `docker inspect`/`rm`/`stop`), only this call does, by full ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginContainer {
    pub id: String,
    pub action: PluginContainerAction,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PluginContainerAction {
    Start,
    /// SIGTERM, then SIGKILL after `timeout` seconds.
    Stop { timeout: i64 },
    /// Forced.
    Remove,
    Inspect,
}

/// `docker ps`. Filters as Docker sends them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerList {
    pub all: bool,
    pub limit: Option<i64>,
    pub size: bool,
    pub filters: HashMap<String, Vec<String>>,
}

/// `docker logs`: read from the json-file log the shim writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerLogs {
    pub id: String,
    pub follow: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// Unix seconds (with fraction), 0 for none.
    pub since: f64,
    pub until: f64,
    pub timestamps: bool,
    /// "all" or a number of lines.
    pub tail: String,
}

/// Whether the container has a TTY (raw stream) or not (multiplexed stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    pub tty: bool,
}

/// `POST /containers/{id}/attach` (hijacked). Output is what the container writes
/// from the moment of attaching (plus the log when `logs`); input is its stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerAttach {
    pub id: String,
    pub stream: bool,
    pub logs: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub detach_keys: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerResize {
    pub id: String,
    pub height: u16,
    pub width: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecCreate {
    pub container: String,
    pub config: docker::ExecConfig,
}

/// `POST /exec/{id}/start` (hijacked unless detached).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStart {
    pub id: String,
    pub detach: bool,
    pub tty: bool,
    pub console_size: Option<(u16, u16)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResize {
    pub id: String,
    pub height: u16,
    pub width: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecInspect {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerTop {
    pub id: String,
    pub ps_args: Option<String>,
}

/// `docker stats`: one item per second while `stream`, else one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStats {
    pub id: String,
    pub stream: bool,
    pub one_shot: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerUpdate {
    pub id: String,
    pub body: docker::ContainerUpdateBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRename {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPause {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerUnpause {
    pub id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPrune {
    pub filters: HashMap<String, Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerChanges {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerExport {
    pub id: String,
}

/// The stat Docker sends in `X-Docker-Container-Path-Stat` (base64 JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathStat {
    pub name: String,
    pub size: i64,
    /// Go's os.FileMode bits (type bits high, permissions low).
    pub mode: u32,
    /// RFC 3339.
    pub mtime: String,
    #[serde(rename = "linkTarget")]
    pub link_target: String,
}

/// `HEAD /containers/{id}/archive`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerArchiveStat {
    pub id: String,
    pub path: String,
}

/// `GET /containers/{id}/archive`: a tar of `path` resolved inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerArchiveGet {
    pub id: String,
    pub path: String,
}

/// `PUT /containers/{id}/archive`: the caller streams a tar to extract at `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerArchivePut {
    pub id: String,
    pub path: String,
    pub no_overwrite_dir_non_dir: bool,
    pub copy_uid_gid: bool,
}

/// Containers (IDs) whose image is `image_id`, for `docker rmi` conflicts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainersUsingImage {
    pub image_id: String,
}

/// Containers (IDs) logging to the log-driver plugin `name` (`x:latest`) now: the
/// images service refuses to disable a plugin in use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPluginUsers {
    pub name: String,
}

/// Connect a container to a network (`POST /networks/{id}/connect`): recorded in the
/// container and, when it runs, attached live through the network service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerNetworkConnect {
    pub container: String,
    pub network: String,
    pub endpoint: Option<docker::EndpointSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerNetworkDisconnect {
    pub container: String,
    pub network: String,
    pub force: bool,
}

/// Counts for `/info` and `docker system df`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerDf {}

/// How long a caller waits for a stop: the container's grace period (Docker's
/// default 10 s), then the kill, with room to spare.
pub fn stop_wait(timeout: Option<i64>) -> std::time::Duration {
    std::time::Duration::from_secs(timeout.unwrap_or(10).clamp(0, 3600) as u64 + 30)
}

/// A `docker stats` sample, as Docker's JSON.
pub type StatsSample = serde_json::Value;

/// The runtime service's table of calls (see [`crate::contract`]).
#[macro_export]
macro_rules! runtime_table {
    ($gen:path) => {
        $gen! {
            service: Runtime, api: RuntimeApi, client: RuntimeClient, serve: serve_runtime, module: runtime,
            ops {
                container_create(ContainerCreate) -> docker::ContainerCreateResponse; callers [Gateway, Builder, Swarm, Images], timeout |_| $crate::secs(120);
                container_start(ContainerStart) -> (); callers [Gateway, Builder, Swarm], timeout |_| $crate::secs(120);
                container_stop(ContainerStop) -> (); callers [Gateway, Swarm], timeout |r| $crate::runtime::stop_wait(r.timeout);
                container_restart(ContainerRestart) -> (); callers [Gateway], timeout |r| $crate::runtime::stop_wait(r.timeout) + $crate::secs(60);
                container_kill(ContainerKill) -> (); callers [Gateway];
                container_wait(ContainerWait) -> (), stream docker::ContainerWaitResponse; callers [Gateway, Builder, Swarm];
                container_remove(ContainerRemove) -> (); callers [Gateway, Builder, Swarm], timeout |_| $crate::secs(120);
                container_inspect(ContainerInspect) -> docker::ContainerInspectResponse; callers [Gateway, Builder, Swarm], idempotent;
                container_list(ContainerList) -> Vec<docker::ContainerSummary>; callers [Gateway, Network, Swarm], idempotent;
                container_logs(ContainerLogs) -> StreamInfo, stream StdioChunk; callers [Gateway, Swarm], idempotent;
                container_attach(ContainerAttach) -> StreamInfo, stream StdioChunk, input StdinChunk; callers [Gateway, Builder];
                container_resize(ContainerResize) -> (); callers [Gateway];
                exec_create(ExecCreate) -> docker::IdResponse; callers [Gateway];
                exec_start(ExecStart) -> StreamInfo, stream StdioChunk, input StdinChunk; callers [Gateway], timeout |_| $crate::secs(60);
                exec_resize(ExecResize) -> (); callers [Gateway];
                exec_inspect(ExecInspect) -> docker::ExecInspectResponse; callers [Gateway];
                container_top(ContainerTop) -> docker::ContainerTopResponse; callers [Gateway];
                container_stats(ContainerStats) -> (), stream StatsSample; callers [Gateway];
                container_update(ContainerUpdate) -> docker::ContainerUpdateResponse; callers [Gateway];
                container_rename(ContainerRename) -> (); callers [Gateway];
                container_pause(ContainerPause) -> (); callers [Gateway, Builder];
                container_unpause(ContainerUnpause) -> (); callers [Gateway, Builder];
                container_prune(ContainerPrune) -> docker::ContainerPruneResponse; callers [Gateway], timeout |_| $crate::secs(300);
                container_changes(ContainerChanges) -> Vec<docker::FilesystemChange>; callers [Gateway], timeout |_| $crate::secs(120);
                container_export(ContainerExport) -> (), stream ByteChunk; callers [Gateway];
                container_archive_stat(ContainerArchiveStat) -> PathStat; callers [Gateway];
                container_archive_get(ContainerArchiveGet) -> PathStat, stream ByteChunk; callers [Gateway];
                container_archive_put(ContainerArchivePut) -> (), stream (), input ByteChunk; callers [Gateway];
                plugin_container(PluginContainer) -> Option<docker::ContainerInspectResponse>; callers [Images], timeout |_| $crate::secs(120);
                containers_using_image(ContainersUsingImage) -> Vec<String>; callers [Images];
                log_plugin_users(LogPluginUsers) -> Vec<String>; callers [Images], idempotent;
                container_network_connect(ContainerNetworkConnect) -> (); callers [Gateway];
                container_network_disconnect(ContainerNetworkDisconnect) -> (); callers [Gateway];
                container_df(ContainerDf) -> Vec<docker::ContainerSummary>; callers [Gateway], timeout |_| $crate::secs(300), idempotent;
            }
        }
    };
}
crate::runtime_table!(crate::__api);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::roundtrip;

    #[test]
    fn runtime_messages_roundtrip() {
        roundtrip(ContainerCreate {
            name: Some("web".into()),
            body: docker::ContainerCreateBody {
                image: Some("busybox".into()),
                cmd: Some(vec!["sh".into()]),
                host_config: Some(docker::HostConfig {
                    memory: Some(1 << 20),
                    ..Default::default()
                }),
                ..Default::default()
            },
            platform: None,
            plugin: Some(PluginRootfs { id: "a".repeat(64), chain_id: "sha256:b".into() }),
        });
        roundtrip(ContainerStart { id: "x".into() });
        roundtrip(ContainerStop {
            id: "x".into(),
            signal: Some("SIGTERM".into()),
            timeout: Some(1),
        });
        roundtrip(ContainerRestart {
            id: "x".into(),
            signal: None,
            timeout: None,
        });
        roundtrip(ContainerKill {
            id: "x".into(),
            signal: Some("9".into()),
        });
        roundtrip(ContainerWait {
            id: "x".into(),
            condition: "not-running".into(),
        });
        roundtrip(ContainerRemove {
            id: "x".into(),
            force: true,
            volumes: true,
            link: false,
        });
        roundtrip(ContainerInspect {
            id: "x".into(),
            size: false,
        });
        roundtrip(ContainerList {
            all: true,
            limit: Some(3),
            size: false,
            filters: HashMap::new(),
        });
        roundtrip(ContainerLogs {
            id: "x".into(),
            follow: true,
            stdout: true,
            stderr: true,
            since: 0.0,
            until: 0.0,
            timestamps: false,
            tail: "all".into(),
        });
        roundtrip(StreamInfo { tty: true });
        roundtrip(ContainerAttach {
            id: "x".into(),
            stream: true,
            logs: false,
            stdin: true,
            stdout: true,
            stderr: true,
            detach_keys: None,
        });
        roundtrip(ContainerResize {
            id: "x".into(),
            height: 24,
            width: 80,
        });
        roundtrip(ExecCreate {
            container: "x".into(),
            config: docker::ExecConfig {
                cmd: Some(vec!["true".into()]),
                ..Default::default()
            },
        });
        roundtrip(ExecStart {
            id: "e".into(),
            detach: false,
            tty: true,
            console_size: Some((24, 80)),
        });
        roundtrip(ExecResize {
            id: "e".into(),
            height: 1,
            width: 2,
        });
        roundtrip(ExecInspect { id: "e".into() });
        roundtrip(ContainerTop {
            id: "x".into(),
            ps_args: Some("-ef".into()),
        });
        roundtrip(ContainerStats {
            id: "x".into(),
            stream: false,
            one_shot: true,
        });
        roundtrip(ContainerUpdate {
            id: "x".into(),
            body: docker::ContainerUpdateBody {
                cpu_shares: Some(512),
                ..Default::default()
            },
        });
        roundtrip(ContainerRename {
            id: "x".into(),
            name: "y".into(),
        });
        roundtrip(ContainerPause { id: "x".into() });
        roundtrip(ContainerUnpause { id: "x".into() });
        roundtrip(ContainerPrune::default());
        roundtrip(ContainerChanges { id: "x".into() });
        roundtrip(ContainerExport { id: "x".into() });
        roundtrip(PathStat {
            name: "f".into(),
            size: 1,
            mode: 0o644,
            mtime: "t".into(),
            link_target: String::new(),
        });
        roundtrip(ContainerArchiveStat {
            id: "x".into(),
            path: "/a".into(),
        });
        roundtrip(ContainerArchiveGet {
            id: "x".into(),
            path: "/a".into(),
        });
        roundtrip(ContainerArchivePut {
            id: "x".into(),
            path: "/a".into(),
            no_overwrite_dir_non_dir: true,
            copy_uid_gid: false,
        });
        roundtrip(LogPluginUsers { name: "x:latest".into() });
        roundtrip(ContainersUsingImage {
            image_id: "sha256:1".into(),
        });
        roundtrip(ContainerNetworkConnect {
            container: "x".into(),
            network: "n".into(),
            endpoint: None,
        });
        roundtrip(ContainerNetworkDisconnect {
            container: "x".into(),
            network: "n".into(),
            force: false,
        });
        roundtrip(ContainerDf {});
    }
}
