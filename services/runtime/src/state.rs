//! A container as the runtime records it (`config.v2.json`), its state machine, and
//! the Docker views of it (inspect, ps).

use berth_rules::clock;
use bus_schema::{docker, BusError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Restarting => "restarting",
            Status::Removing => "removing",
            Status::Exited => "exited",
            Status::Dead => "dead",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub status: Status,
    pub pid: u32,
    pub exit_code: i64,
    pub error: String,
    pub started_at: String,
    pub finished_at: String,
    pub oom_killed: bool,
    pub health: Option<docker::Health>,
}

pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

impl Default for State {
    fn default() -> Self {
        State {
            status: Status::Created,
            pid: 0,
            exit_code: 0,
            error: String::new(),
            started_at: ZERO_TIME.into(),
            finished_at: ZERO_TIME.into(),
            oom_killed: false,
            health: None,
        }
    }
}

impl State {
    pub fn running(&self) -> bool {
        matches!(self.status, Status::Running | Status::Paused)
    }
}

/// A mount as inspect shows it, with what the runtime needs to undo it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MountRecord {
    /// bind, volume, tmpfs
    pub typ: String,
    pub name: String,
    pub source: String,
    pub destination: String,
    pub driver: String,
    pub mode: String,
    pub rw: bool,
    pub propagation: String,
    /// tmpfs options (size=, mode=).
    pub options: Vec<String>,
    /// Anonymous volume: removed with `docker rm -v`.
    pub anonymous: bool,
    /// Bind source created by the engine because it was missing (`-v` semantics).
    pub copy_image_content: bool,
    /// `VolumeOptions.Subpath`: the directory inside the volume to mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subpath: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    /// Without the leading slash.
    pub name: String,
    pub created: String,
    /// Image ID (`sha256:...`).
    pub image_id: String,
    /// The image's top layer, parent of the container's layers.
    pub image_chain: Option<String>,
    pub path: String,
    pub args: Vec<String>,
    pub config: docker::ContainerConfig,
    pub host_config: docker::HostConfig,
    /// Endpoints asked for at create or connect, by network name.
    pub endpoints: HashMap<String, docker::EndpointSettings>,
    pub state: State,
    pub restart_count: i64,
    pub manually_stopped: bool,
    /// Disconnected from the network of its mode (`network disconnect bridge c`):
    /// the mode stays, as Docker records it, but later starts do not join it again.
    #[serde(default)]
    pub mode_network_detached: bool,
    pub has_been_started: bool,
    pub mounts: Vec<MountRecord>,
    pub driver: String,
    pub platform: String,
    /// Set while running: what the network service gave the sandbox.
    pub sandbox_key: String,
    pub networks: HashMap<String, docker::EndpointSettings>,
    pub ports: HashMap<String, Option<Vec<docker::PortBinding>>>,
    pub log_path: String,
    pub hosts_path: String,
    pub hostname_path: String,
    pub resolv_path: String,
    #[serde(default)]
    pub exec_ids: Vec<String>,
    /// The mounted root filesystem while running.
    #[serde(default)]
    pub rootfs: String,
    /// Legacy links on the default bridge (`--link child:alias`), this container
    /// the parent: Moby's link graph, kept with the parent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
    /// A managed plugin's container (bus_schema::runtime::ContainerCreate::plugin):
    /// left out of lists, prune and events.
    #[serde(default)]
    pub plugin: bool,
    /// While it runs with a log-driver plugin: its FIFO, StopLogging at the exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_plugin: Option<crate::logplugin::LogPluginRun>,
}

/// One legacy link: the parent reaches `child` as `alias` (its link name is
/// `/<parent>/<alias>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub alias: String,
    /// The child's ID.
    pub child: String,
    /// The child's name when linked (what inspect shows once the child is gone).
    pub child_name: String,
}

impl Container {
    pub fn short_id(&self) -> &str {
        &self.id[..12]
    }

    /// Whether the container's log driver is a plugin's (not built in).
    pub fn logs_to_plugin(&self) -> bool {
        self.host_config.log_config.as_ref().and_then(|l| l.typ.as_deref()).is_some_and(|t| !t.is_empty() && !crate::logplugin::is_builtin(t))
    }

    pub fn is_tty(&self) -> bool {
        self.config.tty.unwrap_or(false)
    }

    pub fn network_mode(&self) -> String {
        match self.host_config.network_mode.as_deref() {
            None | Some("") | Some("default") => "bridge".to_string(),
            Some(m) => m.to_string(),
        }
    }

    /// `docker ps` STATUS.
    pub fn status_text(&self) -> String {
        let now = clock::now().0;
        let since = |t: &str| clock::parse_rfc3339(t).map(|x| now - x.0).unwrap_or(0);
        match self.state.status {
            Status::Created => "Created".into(),
            Status::Running => {
                let mut s = format!("Up {}", clock::human_duration(since(&self.state.started_at)));
                if let Some(h) = self.state.health.as_ref().and_then(|h| h.status) {
                    match h {
                        docker::HealthStatusEnum::STARTING => s.push_str(" (health: starting)"),
                        docker::HealthStatusEnum::HEALTHY => s.push_str(" (healthy)"),
                        docker::HealthStatusEnum::UNHEALTHY => s.push_str(" (unhealthy)"),
                        _ => {}
                    }
                }
                s
            }
            Status::Paused => format!("Up {} (Paused)", clock::human_duration(since(&self.state.started_at))),
            Status::Restarting => format!(
                "Restarting ({}) {} ago",
                self.state.exit_code,
                clock::human_duration(since(&self.state.finished_at))
            ),
            Status::Removing => "Removal In Progress".into(),
            Status::Exited => {
                if self.state.finished_at == ZERO_TIME {
                    format!("Exited ({})", self.state.exit_code)
                } else {
                    format!(
                        "Exited ({}) {} ago",
                        self.state.exit_code,
                        clock::human_duration(since(&self.state.finished_at))
                    )
                }
            }
            Status::Dead => "Dead".into(),
        }
    }

    pub fn command_text(&self) -> String {
        let mut parts = vec![self.path.clone()];
        parts.extend(self.args.iter().cloned());
        let s = parts
            .iter()
            .map(|p| if p.contains(' ') || p.is_empty() { format!("\"{p}\"") } else { p.clone() })
            .collect::<Vec<_>>()
            .join(" ");
        s
    }

    fn docker_state(&self) -> docker::ContainerState {
        use docker::ContainerStateStatusEnum as S;
        let st = &self.state;
        docker::ContainerState {
            status: Some(match st.status {
                Status::Created => S::CREATED,
                Status::Running => S::RUNNING,
                Status::Paused => S::PAUSED,
                Status::Restarting => S::RESTARTING,
                Status::Removing => S::REMOVING,
                Status::Exited => S::EXITED,
                Status::Dead => S::DEAD,
            }),
            running: Some(st.running() || st.status == Status::Restarting),
            paused: Some(st.status == Status::Paused),
            restarting: Some(st.status == Status::Restarting),
            oom_killed: Some(st.oom_killed),
            dead: Some(st.status == Status::Dead),
            pid: Some(st.pid as i64),
            exit_code: Some(st.exit_code),
            error: Some(st.error.clone()),
            started_at: Some(st.started_at.clone()),
            finished_at: Some(st.finished_at.clone()),
            health: st.health.clone(),
        }
    }

    pub fn docker_mounts(&self) -> Vec<docker::MountPoint> {
        self.mounts
            .iter()
            .map(|m| docker::MountPoint {
                typ: Some(m.typ.clone()),
                name: if m.name.is_empty() { None } else { Some(m.name.clone()) },
                source: Some(m.source.clone()),
                destination: Some(m.destination.clone()),
                driver: if m.driver.is_empty() { None } else { Some(m.driver.clone()) },
                mode: Some(m.mode.clone()),
                rw: Some(m.rw),
                propagation: Some(m.propagation.clone()),
            })
            .collect()
    }

    /// `docker inspect`.
    pub fn inspect(&self, size: Option<(i64, i64)>) -> docker::ContainerInspectResponse {
        let mut hc = self.host_config.clone();
        if hc.network_mode.as_deref().is_none_or(|m| m.is_empty()) {
            hc.network_mode = Some("bridge".into());
        }
        // the paths the container's spec masks and makes read-only (Moby records its
        // defaults in the HostConfig of an unprivileged container)
        if hc.privileged != Some(true) {
            let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            hc.masked_paths.get_or_insert_with(|| strs(&crate::spec::MASKED_PATHS));
            hc.readonly_paths.get_or_insert_with(|| strs(&crate::spec::READONLY_PATHS));
        }
        docker::ContainerInspectResponse {
            id: Some(self.id.clone()),
            created: Some(self.created.clone()),
            path: Some(self.path.clone()),
            args: Some(self.args.clone()),
            state: Some(self.docker_state()),
            image: Some(self.image_id.clone()),
            resolv_conf_path: Some(self.resolv_path.clone()),
            hostname_path: Some(self.hostname_path.clone()),
            hosts_path: Some(self.hosts_path.clone()),
            // a log plugin's container shows none (Moby sets LogPath for json-file
            // only); berth's local copy for `docker logs` and attach is not shown
            log_path: Some(if self.logs_to_plugin() { String::new() } else { self.log_path.clone() }),
            name: Some(format!("/{}", self.name)),
            restart_count: Some(self.restart_count),
            driver: Some(self.driver.clone()),
            platform: Some(self.platform.clone()),
            mount_label: Some(String::new()),
            process_label: Some(String::new()),
            app_armor_profile: Some(String::new()),
            exec_ids: if self.exec_ids.is_empty() { None } else { Some(self.exec_ids.clone()) },
            host_config: Some(hc),
            graph_driver: Some(docker::DriverData { name: self.driver.clone(), data: HashMap::new() }),
            size_rw: size.map(|s| s.0),
            size_root_fs: size.map(|s| s.1),
            mounts: Some(self.docker_mounts()),
            config: Some(self.config.clone()),
            network_settings: Some(docker::NetworkSettings {
                sandbox_id: Some(if self.sandbox_key.is_empty() { String::new() } else { self.id.clone() }),
                sandbox_key: Some(self.sandbox_key.clone()),
                ports: Some(self.ports.clone()),
                networks: Some(if self.state.running() { self.networks.clone() } else { self.idle_networks() }),
            }),
            ..Default::default()
        }
    }

    /// Networks as inspect shows them while stopped: the endpoints asked for, unaddressed.
    fn idle_networks(&self) -> HashMap<String, docker::EndpointSettings> {
        let mut m = self.endpoints.clone();
        if m.is_empty() {
            let mode = self.network_mode();
            if !mode.starts_with("container:") {
                m.insert(mode, docker::EndpointSettings::default());
            }
        }
        for v in m.values_mut() {
            v.ip_address.get_or_insert_with(String::new);
            v.gateway.get_or_insert_with(String::new);
            v.mac_address.get_or_insert_with(String::new);
            v.ip_prefix_len.get_or_insert(0);
        }
        m
    }

    /// `docker ps`.
    pub fn summary(&self, image_name: &str, size: Option<(i64, i64)>) -> docker::ContainerSummary {
        use docker::ContainerSummaryStateEnum as S;
        let mut ports = Vec::new();
        let mut keys: Vec<&String> = self.ports.keys().collect();
        keys.sort();
        for k in keys {
            let (port, proto) = k.split_once('/').unwrap_or((k.as_str(), "tcp"));
            let private: u16 = port.parse().unwrap_or(0);
            let typ = Some(match proto {
                "udp" => docker::PortSummaryTypeEnum::UDP,
                "sctp" => docker::PortSummaryTypeEnum::SCTP,
                _ => docker::PortSummaryTypeEnum::TCP,
            });
            match self.ports.get(k).cloned().flatten() {
                Some(bs) if !bs.is_empty() && self.state.running() => {
                    for b in bs {
                        ports.push(docker::PortSummary {
                            ip: b.host_ip.clone().filter(|s| !s.is_empty()),
                            private_port: private,
                            public_port: b.host_port.as_deref().and_then(|p| p.parse().ok()),
                            typ,
                        });
                    }
                }
                _ => ports.push(docker::PortSummary { ip: None, private_port: private, public_port: None, typ }),
            }
        }
        docker::ContainerSummary {
            id: Some(self.id.clone()),
            names: Some(vec![format!("/{}", self.name)]),
            image: Some(image_name.to_string()),
            image_id: Some(self.image_id.clone()),
            command: Some(self.command_text()),
            created: Some(clock::parse_rfc3339(&self.created).map(|x| x.0).unwrap_or(0)),
            ports: Some(ports),
            size_rw: size.map(|s| s.0),
            size_root_fs: size.map(|s| s.1),
            labels: Some(self.config.labels.clone().unwrap_or_default()),
            state: Some(match self.state.status {
                Status::Created => S::CREATED,
                Status::Running => S::RUNNING,
                Status::Paused => S::PAUSED,
                Status::Restarting => S::RESTARTING,
                Status::Removing => S::REMOVING,
                Status::Exited => S::EXITED,
                Status::Dead => S::DEAD,
            }),
            status: Some(self.status_text()),
            host_config: Some(docker::ContainerSummaryHostConfig {
                network_mode: Some(self.network_mode()),
                annotations: None,
            }),
            network_settings: Some(docker::ContainerSummaryNetworkSettings {
                networks: Some(if self.state.running() { self.networks.clone() } else { self.idle_networks() }),
            }),
            mounts: Some(self.docker_mounts()),
            health: None,
            image_manifest_descriptor: None,
        }
    }
}

/// Status guards: whether an operation may act on a container in its present status,
/// with the error Docker answers when it may not (message and kind as clients see
/// them). The callers hold the container's `op` lock, or check a snapshot first as
/// Moby does before acting.
impl Container {
    /// `docker start` (and the start of `restart` and of a restart policy).
    pub fn can_start(&self) -> Result<(), BusError> {
        match self.state.status {
            Status::Running => Err(BusError::not_modified("container already started")),
            Status::Paused => Err(BusError::conflict("cannot start a paused container, try unpause instead")),
            Status::Removing | Status::Dead => {
                Err(BusError::conflict(format!("container {} is marked for removal and cannot be started", self.id)))
            }
            Status::Created | Status::Restarting | Status::Exited => Ok(()),
        }
    }

    /// `docker stop`: a running or paused container, or one waiting to restart (the
    /// stop cancels the restart).
    pub fn can_stop(&self) -> Result<(), BusError> {
        if !self.state.running() && self.state.status != Status::Restarting {
            return Err(BusError::not_modified("container already stopped"));
        }
        Ok(())
    }

    /// `docker kill`: a running or paused container. `key` is the name or ID the
    /// client gave (Moby's message repeats it).
    pub fn can_kill(&self, key: &str) -> Result<(), BusError> {
        if !self.state.running() {
            return Err(BusError::conflict(format!("Cannot kill container: {key}: Container {} is not running", self.id)));
        }
        Ok(())
    }

    /// `docker pause`.
    pub fn can_pause(&self) -> Result<(), BusError> {
        match self.state.status {
            Status::Running => Ok(()),
            Status::Paused => Err(BusError::conflict(format!("Container {} is already paused", self.id))),
            _ => Err(BusError::conflict(format!("container {} is not running", self.id))),
        }
    }

    /// `docker unpause`.
    pub fn can_unpause(&self) -> Result<(), BusError> {
        if self.state.status != Status::Paused {
            return Err(BusError::conflict(format!("container {} is not paused", self.id)));
        }
        Ok(())
    }

    /// `docker rm`: a stopped container, or (`force`) a running, paused or restarting
    /// one, which the caller kills first; never one whose removal is under way.
    pub fn can_remove(&self, force: bool) -> Result<(), BusError> {
        if !force && (self.state.running() || self.state.status == Status::Restarting) {
            let what = if self.state.status == Status::Paused { "paused" } else { "running" };
            return Err(BusError::conflict(format!(
                "cannot remove container \"/{}\": container is {what}: stop the container before removing or force remove",
                self.name
            )));
        }
        if self.state.status == Status::Removing {
            return Err(BusError::conflict(format!("removal of container {} is already in progress", self.id)));
        }
        Ok(())
    }

    /// `docker exec` (the create of an exec instance).
    pub fn can_exec(&self) -> Result<(), BusError> {
        match self.state.status {
            Status::Running => Ok(()),
            Status::Paused => {
                Err(BusError::conflict(format!("Container {} is paused, unpause the container before exec", self.id)))
            }
            Status::Restarting => {
                Err(BusError::conflict(format!("Container {} is restarting, wait until the container is running", self.id)))
            }
            _ => Err(BusError::conflict(format!("container {} is not running", self.id))),
        }
    }

    /// The start of an exec instance: its container must still run (and not be paused).
    pub fn can_exec_start(&self) -> Result<(), BusError> {
        if self.state.status != Status::Running {
            return Err(BusError::conflict(format!("container {} is not running", self.id)));
        }
        Ok(())
    }

    /// `docker top`: a running or paused container.
    pub fn can_top(&self) -> Result<(), BusError> {
        if !self.state.running() {
            return Err(BusError::conflict(format!("container {} is not running", self.id)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bus_schema::ErrorKind;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const ALL: [Status; 7] = [
        Status::Created,
        Status::Running,
        Status::Paused,
        Status::Restarting,
        Status::Exited,
        Status::Dead,
        Status::Removing,
    ];

    fn container(status: Status) -> Container {
        Container {
            id: ID.into(),
            name: "web".into(),
            created: ZERO_TIME.into(),
            image_id: String::new(),
            image_chain: None,
            path: "sh".into(),
            args: vec![],
            config: Default::default(),
            host_config: Default::default(),
            endpoints: HashMap::new(),
            state: State { status, ..Default::default() },
            restart_count: 0,
            manually_stopped: false,
            mode_network_detached: false,
            has_been_started: false,
            mounts: vec![],
            driver: "overlay2".into(),
            platform: "linux".into(),
            sandbox_key: String::new(),
            networks: HashMap::new(),
            ports: HashMap::new(),
            log_path: String::new(),
            hosts_path: String::new(),
            hostname_path: String::new(),
            resolv_path: String::new(),
            exec_ids: vec![],
            rootfs: String::new(),
            links: vec![],
            plugin: false,
            log_plugin: None,
        }
    }

    /// Moby shows a LogPath for json-file only: a log plugin's container none.
    #[test]
    fn log_path_is_empty_for_plugins() {
        let mut c = container(Status::Exited);
        c.log_path = "/data/c/c-json.log".into();
        for (driver, want) in [(None, "/data/c/c-json.log"), (Some("json-file"), "/data/c/c-json.log"), (Some("berthlog:latest"), "")] {
            c.host_config.log_config = driver.map(|d| docker::HostConfigLogConfig { typ: Some(d.into()), config: None });
            assert_eq!(c.inspect(None).log_path.as_deref(), Some(want), "{driver:?}");
        }
    }

    /// Runs a guard over every status; `want` gives the expected answer of each.
    fn check(guard: impl Fn(&Container) -> Result<(), BusError>, want: impl Fn(Status) -> Option<(ErrorKind, String)>) {
        for st in ALL {
            let got = guard(&container(st)).err().map(|e| (e.kind, e.message));
            assert_eq!(got, want(st), "status {}", st.as_str());
        }
    }

    fn conflict(m: impl Into<String>) -> Option<(ErrorKind, String)> {
        Some((ErrorKind::Conflict, m.into()))
    }

    #[test]
    fn state_guard_start() {
        check(Container::can_start, |st| match st {
            Status::Running => Some((ErrorKind::NotModified, "container already started".into())),
            Status::Paused => conflict("cannot start a paused container, try unpause instead"),
            Status::Dead | Status::Removing => conflict(format!("container {ID} is marked for removal and cannot be started")),
            Status::Created | Status::Restarting | Status::Exited => None,
        });
    }

    #[test]
    fn state_guard_stop() {
        check(Container::can_stop, |st| match st {
            Status::Running | Status::Paused | Status::Restarting => None,
            _ => Some((ErrorKind::NotModified, "container already stopped".into())),
        });
    }

    #[test]
    fn state_guard_kill() {
        check(
            |c| c.can_kill("web"),
            |st| match st {
                Status::Running | Status::Paused => None,
                _ => conflict(format!("Cannot kill container: web: Container {ID} is not running")),
            },
        );
    }

    #[test]
    fn state_guard_pause() {
        check(Container::can_pause, |st| match st {
            Status::Running => None,
            Status::Paused => conflict(format!("Container {ID} is already paused")),
            _ => conflict(format!("container {ID} is not running")),
        });
    }

    #[test]
    fn state_guard_unpause() {
        check(Container::can_unpause, |st| match st {
            Status::Paused => None,
            _ => conflict(format!("container {ID} is not paused")),
        });
    }

    #[test]
    fn state_guard_remove() {
        let busy = |what: &str| {
            conflict(format!(
                "cannot remove container \"/web\": container is {what}: stop the container before removing or force remove"
            ))
        };
        let in_progress = conflict(format!("removal of container {ID} is already in progress"));
        check(
            |c| c.can_remove(false),
            |st| match st {
                Status::Running | Status::Restarting => busy("running"),
                Status::Paused => busy("paused"),
                Status::Removing => in_progress.clone(),
                Status::Created | Status::Exited | Status::Dead => None,
            },
        );
        check(
            |c| c.can_remove(true),
            |st| match st {
                Status::Removing => in_progress.clone(),
                _ => None,
            },
        );
    }

    #[test]
    fn state_guard_exec() {
        check(Container::can_exec, |st| match st {
            Status::Running => None,
            Status::Paused => conflict(format!("Container {ID} is paused, unpause the container before exec")),
            Status::Restarting => conflict(format!("Container {ID} is restarting, wait until the container is running")),
            _ => conflict(format!("container {ID} is not running")),
        });
        check(Container::can_exec_start, |st| match st {
            Status::Running => None,
            _ => conflict(format!("container {ID} is not running")),
        });
    }

    #[test]
    fn state_guard_top() {
        check(Container::can_top, |st| match st {
            Status::Running | Status::Paused => None,
            _ => conflict(format!("container {ID} is not running")),
        });
    }
}
