//! Managed plugins (`docker plugin create/ls/inspect/set/enable/disable/rm`), kept
//! as Moby keeps them: a plugin is a config (Docker's PluginConfig, stored as a
//! blob named by its digest) and a rootfs (one layer in the storage service, held by
//! a reference), under a random 64-hex ID and a normalised name (`x/y:latest`).
//!
//! Records live in `<root>/images/<driver>/plugins/<id>/` (`plugin.json`, the
//! record; `config.json`, the config blob), written to a temp dir and renamed, so a
//! plugin is there whole or not at all. `create` reads the tar `docker plugin create`
//! sends (config.json + rootfs/) as Moby's splitConfigRootFSFromTar does: the
//! entries under `rootfs/` become the layer's tar (names without the prefix, hard
//! links too), which storage applies with its checks against hostile archives.
//!
//! Enabling runs the plugin: its rootfs as a container of the runtime service,
//! hidden from the user's lists (Moby runs plugins in a containerd namespace of
//! their own), with the ID of the plugin and the config's entrypoint, env, mounts,
//! capabilities and network type. Its runtime directory
//! (`berth_config::Paths::plugin_run`) is bound at `/run/docker/plugins`; the
//! plugin's socket appears there, and berth activates the plugin through it
//! (`/Plugin.Activate`, its `Implements` checked against the config's types).
//! Disabling stops that container (it stays, with the plugin's rootfs changes,
//! until `set` or `rm`); a node that starts again runs the plugins that were
//! enabled. A plugin process that dies is restarted as Moby restarts it (the
//! container's restart policy `always`); calls made meanwhile answer a connect
//! error at once.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_bus::runtime::{RuntimeApi as _, RuntimeClient};
use berth_bus::storage::{StorageApi as _, StorageClient};
use berth_bus::Bus;
use bus_schema::docker;
use bus_schema::plugin::*;
use bus_schema::runtime::{ContainerCreate, LogPluginUsers, PluginContainer, PluginContainerAction, PluginRootfs};
use bus_schema::storage::VolumeList;
use bus_schema::storage::LayerApply;
use bus_schema::stream::{ByteChunk, MAX_CHUNK};
use bus_schema::BusError;
use serde::{Deserialize, Serialize};

use crate::archive::ByteSource;
use crate::registry::Registry;

pub mod dist;
use crate::layers::{self, Layers};
use crate::reference::{RefError, Reference};

/// A config.json larger than this is refused (Moby reads it whole, unbounded).
const MAX_CONFIG: u64 = 1 << 20;

/// What is stored for one plugin.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    plugin: Plugin,
    /// `sha256:` of config.json as stored.
    config_digest: String,
    /// The rootfs layer (one reference held by this plugin).
    chain_id: String,
    /// The layers under it, bottom first, when the plugin came from a registry
    /// with more than one (one reference each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    lower: Vec<String>,
}

pub struct Plugins {
    dir: PathBuf,
    tmp: PathBuf,
    layers: Layers,
    records: tokio::sync::Mutex<BTreeMap<String, Record>>,
    /// Runs the plugins' containers; None in unit tests (nothing is run).
    runner: Option<Runner>,
    /// The images service's registry client (install, push, upgrade).
    registry: Option<Arc<Registry>>,
}

/// What enabling needs: the runtime (the plugin's container), storage (its
/// volumes), and where the plugins' runtime directories are.
pub struct Runner {
    runtime: RuntimeClient,
    storage: StorageClient,
    paths: berth_config::Paths,
    /// Plugin events go out on it.
    bus: Bus,
}

/// How long a started plugin has to serve its socket (Moby: 0.5 s, then 3 dials
/// 3 s apart).
const SOCKET_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Runner {
    pub fn new(bus: Bus, root: &Path) -> Runner {
        Runner { runtime: RuntimeClient::new(bus.clone()), storage: StorageClient::new(bus.clone()), paths: berth_config::Paths::new(root), bus }
    }
}

/// The plugin's container: Moby's v2 plugin InitSpec as far as berth's containers
/// go (entrypoint + settings args, settings env and mounts, the runtime directory,
/// the propagated mount, capabilities, host network/pid/ipc, devices, user, workdir).
fn container_body(p: &Plugin, run: &Path) -> Result<docker::ContainerCreateBody, BusError> {
    let c = &p.config;
    let mut argv = c.entrypoint.clone().unwrap_or_default();
    argv.extend(p.settings.args.iter().filter(|a| !a.is_empty()).cloned());
    if argv.is_empty() {
        return Err(BusError::internal(format!("plugin {} has no entrypoint", p.name)));
    }
    let mut binds = vec![format!("{}:{}", run.join("sock").display(), berth_pluginproto::SOCKET_DIR_IN_PLUGIN)];
    if !c.propagated_mount.is_empty() {
        // rshared (Moby's InitSpec: rbind, rshared, and the root shared): what the
        // plugin mounts there reaches the host, and the containers using its volumes
        binds.push(format!("{}:{}:rshared", run.join("propagated-mount").display(), c.propagated_mount));
    }
    for m in &p.settings.mounts {
        if !m.typ.is_empty() && m.typ != "bind" {
            return Err(BusError::internal(format!("plugin {}: mount {:?} of type {:?} is not supported", p.name, m.name, m.typ)));
        }
        let src = m.source.clone().filter(|s| !s.is_empty()).ok_or_else(|| BusError::internal(format!("plugin {}: mount {:?} has no source", p.name, m.name)))?;
        let ro = m.options.iter().flatten().any(|o| o == "ro");
        binds.push(format!("{src}:{}{}", m.destination, if ro { ":ro" } else { "" }));
    }
    let devices: Vec<docker::DeviceMapping> = p
        .settings
        .devices
        .iter()
        .filter_map(|d| d.path.clone().filter(|x| !x.is_empty()))
        .map(|path| docker::DeviceMapping { path_on_host: Some(path.clone()), path_in_container: Some(path), cgroup_permissions: Some("rwm".into()) })
        .collect();
    let user = if c.user.uid != 0 || c.user.gid != 0 { Some(format!("{}:{}", c.user.uid, c.user.gid)) } else { None };
    let host = |b: bool| if b { Some("host".to_string()) } else { None };
    Ok(docker::ContainerCreateBody {
        entrypoint: Some(argv),
        env: Some(p.settings.env.clone()),
        working_dir: Some(c.work_dir.clone()).filter(|w| !w.is_empty()),
        user,
        labels: Some(std::collections::HashMap::from([("com.docker.plugin.name".to_string(), p.name.clone())])),
        host_config: Some(docker::HostConfig {
            binds: Some(binds),
            network_mode: Some(if c.network.typ == "host" { "host" } else { "none" }.to_string()),
            cap_add: c.linux.capabilities.clone().filter(|v| !v.is_empty()),
            pid_mode: host(c.pid_host),
            ipc_mode: host(c.ipc_host),
            devices: if devices.is_empty() { None } else { Some(devices) },
            // Moby restarts a plugin whose process ends (until it is disabled)
            restart_policy: Some(docker::RestartPolicy { name: Some(docker::RestartPolicyNameEnum::ALWAYS), maximum_retry_count: None }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The propagated mount's host side as a shared mount (Moby's mount.MakeRShared:
/// bound onto itself first when it is not a mount point).
fn make_rshared(dir: &Path) -> std::io::Result<()> {
    use rustix::mount::{mount_bind, mount_change, MountPropagationFlags};
    if !berth_fsutil::is_mountpoint(dir)? {
        mount_bind(dir, dir)?;
    }
    mount_change(dir, MountPropagationFlags::SHARED | MountPropagationFlags::REC)?;
    Ok(())
}

/// Unmount `dir` and everything under it (lazily: a mount the plugin left busy
/// goes when its last user does).
fn unmount_all(dir: &Path) -> std::io::Result<()> {
    use rustix::mount::{unmount, UnmountFlags};
    for _ in 0..16 {
        if !berth_fsutil::is_mountpoint(dir)? {
            return Ok(());
        }
        unmount(dir, UnmountFlags::DETACH)?;
    }
    Ok(())
}

fn ref_error(e: &RefError) -> String {
    match e {
        // Moby 20.10's distribution/reference does not name the repository here
        RefError::NameNotCanonical(_) => "invalid reference format: repository name must be lowercase".into(),
        RefError::NameEmpty => "invalid reference format".into(),
        e => e.to_string(),
    }
}

/// Moby's CreateFromContext name: ParseNormalizedNamed, no digest, `:latest`.
fn create_name(name: &str) -> Result<String, BusError> {
    let r = Reference::parse_normalized(name)
        .map_err(|e| BusError::internal(format!("failed to parse reference {name}: {}", ref_error(&e))))?;
    if r.digest.is_some() {
        return Err(BusError::internal("canonical references are not permitted"));
    }
    Ok(r.with_default_tag().familiar_string())
}

fn not_found(name: &str) -> BusError {
    BusError::not_found(format!("plugin {name:?} not found"))
}

fn is_full_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Moby's Store.resolvePluginID: a full ID, else a name (`:latest` implied), else a
/// unique ID prefix.
fn resolve(records: &BTreeMap<String, Record>, name: &str) -> Result<String, BusError> {
    if is_full_id(name) {
        return records.contains_key(name).then(|| name.to_string()).ok_or_else(|| not_found(name));
    }
    let r = Reference::parse_normalized(name).map_err(|_| not_found(name))?;
    if r.digest.is_some() {
        return Err(not_found(name));
    }
    let fam = r.with_default_tag().familiar_string();
    if let Some((id, _)) = records.iter().find(|(_, rec)| rec.plugin.name == fam) {
        return Ok(id.clone());
    }
    let mut found = records.keys().filter(|id| id.starts_with(name));
    match (found.next(), found.next()) {
        (Some(id), None) => Ok(id.clone()),
        (Some(_), Some(_)) => Err(BusError::invalid(format!("multiple plugins found for {name:?}"))),
        _ => Err(not_found(name)),
    }
}

/// Split the create tar: config.json's bytes, and the entries under rootfs/ written
/// to `layer` as a tar of their own. Errors are Moby's.
fn split_tar<R: Read, W: Write>(input: R, layer: W) -> Result<Option<Vec<u8>>, BusError> {
    let read_err = |e: std::io::Error| {
        let m = if e.kind() == std::io::ErrorKind::UnexpectedEof { "unexpected EOF".to_string() } else { e.to_string() };
        BusError::internal(format!("failed to read from tar: {m}"))
    };
    let write_err = |e: std::io::Error| BusError::internal(format!("error writing tar header: {e}"));
    let mut ar = tar::Archive::new(input);
    let mut out = tar::Builder::new(layer);
    out.follow_symlinks(false);
    let mut config = None;
    let mut has_rootfs = false;
    for entry in ar.entries().map_err(read_err)? {
        let mut e = entry.map_err(read_err)?;
        let raw = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        // Go's path.Clean, a leading `/` dropped
        let name = berth_fsutil::clean(&raw);
        let name = name.trim_start_matches('/');
        if name == "config.json" {
            let mut b = Vec::new();
            (&mut e).take(MAX_CONFIG + 1).read_to_end(&mut b).map_err(read_err)?;
            if b.len() as u64 > MAX_CONFIG {
                return Err(BusError::invalid(format!("config.json is larger than {MAX_CONFIG} bytes")));
            }
            config = Some(b);
            continue;
        }
        let Some(rest) = name.strip_prefix("rootfs").filter(|r| r.is_empty() || r.starts_with('/')) else {
            continue;
        };
        has_rootfs = true;
        let rest = rest.trim_start_matches('/');
        if rest.is_empty() {
            continue; // the rootfs directory itself
        }
        let mut h = e.header().clone();
        let typ = h.entry_type();
        if typ.is_hard_link() || typ.is_symlink() {
            let target = e.link_name_bytes().map(|l| String::from_utf8_lossy(&l).into_owned()).unwrap_or_default();
            let target = match (typ.is_hard_link(), target.strip_prefix("rootfs/")) {
                (true, Some(t)) => t.to_string(),
                _ => target,
            };
            out.append_link(&mut h, rest, target).map_err(write_err)?;
        } else {
            out.append_data(&mut h, rest, &mut e).map_err(write_err)?;
        }
    }
    if !has_rootfs {
        return Err(BusError::internal("no rootfs found: EOF"));
    }
    out.into_inner().map_err(write_err)?;
    Ok(config)
}

/// One `docker plugin set` argument: `name[.field][=value]` (Moby's settable).
struct Settable {
    name: String,
    field: String,
    value: String,
}

fn invalid_format() -> BusError {
    BusError::internal("invalid format, must be <name>[.<field>][=<value>]")
}

impl Settable {
    fn parse(arg: &str) -> Result<Settable, BusError> {
        let (mut name, value) = match arg.find('=') {
            Some(0) => return Err(invalid_format()),
            Some(i) => (arg[..i].to_string(), arg[i + 1..].to_string()),
            None => (arg.to_string(), String::new()),
        };
        let mut field = String::new();
        if let Some(i) = name.rfind('.').filter(|i| *i > 0) {
            field = name[i + 1..].to_string();
            name.truncate(i);
        }
        Ok(Settable { name, field, value })
    }

    fn pretty(&self) -> String {
        if self.field.is_empty() {
            self.name.clone()
        } else {
            format!("{}.{}", self.name, self.field)
        }
    }

    /// Settable through `allowed` and the config's list? (An unnamed field is the
    /// only settable one, if there is one.)
    fn check(&mut self, allowed: &str, settable: &Option<Vec<String>>) -> Result<(), BusError> {
        let settable = settable.as_deref().unwrap_or_default();
        if self.field.is_empty() {
            match settable.len() {
                1 => self.field = settable[0].clone(),
                0 => {}
                _ => return Err(BusError::internal("multiple fields are settable, one must be specified")),
            }
        }
        if self.field == allowed && settable.iter().any(|s| *s == self.field) {
            Ok(())
        } else {
            Err(BusError::internal(format!("{:?} is not settable", self.pretty())))
        }
    }
}

/// Moby's Plugin.Set, on the record's plugin.
fn apply_settings(p: &mut Plugin, args: &[String]) -> Result<(), BusError> {
    if p.enabled {
        return Err(BusError::internal("cannot set on an active plugin, disable plugin before setting"));
    }
    let sets = args.iter().map(|a| Settable::parse(a)).collect::<Result<Vec<_>, _>>()?;
    for mut s in sets {
        let c = &mut p.config;
        if let Some(env) = c.env.iter().flatten().find(|e| e.name == s.name) {
            s.check("value", &env.settable)?;
            let kv = format!("{}={}", s.name, s.value);
            match p.settings.env.iter_mut().find(|e| e.split('=').next() == Some(s.name.as_str())) {
                Some(e) => *e = kv,
                None => p.settings.env.push(kv),
            }
            continue;
        }
        if let Some(i) = c.mounts.iter().flatten().position(|m| m.name == s.name) {
            s.check("source", &c.mounts.as_ref().unwrap()[i].settable)?;
            // Moby's settings share the config's Source pointer: both change
            c.mounts.as_mut().unwrap()[i].source = Some(s.value.clone());
            if let Some(m) = p.settings.mounts.iter_mut().find(|m| m.name == s.name) {
                m.source = Some(s.value.clone());
            }
            continue;
        }
        if let Some(i) = c.linux.devices.iter().flatten().position(|d| d.name == s.name) {
            s.check("path", &c.linux.devices.as_ref().unwrap()[i].settable)?;
            c.linux.devices.as_mut().unwrap()[i].path = Some(s.value.clone());
            if let Some(d) = p.settings.devices.iter_mut().find(|d| d.name == s.name) {
                d.path = Some(s.value.clone());
            }
            continue;
        }
        if c.args.name == s.name {
            s.check("value", &c.args.settable)?;
            p.settings.args = s.value.split(' ').map(str::to_string).collect();
            continue;
        }
        return Err(BusError::internal(format!("setting {:?} not found in the plugin configuration", s.name)));
    }
    Ok(())
}

/// Go's strconv.ParseBool, for the `enabled` filter.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The capability of an interface type `prefix.capability/version`, as Go parses it.
fn capability(t: &str) -> &str {
    let end = t.find('/').unwrap_or(t.len());
    let head = &t[..end];
    let start = head.rfind('.').map(|i| i + 1).unwrap_or(1.min(head.len()));
    &head[start..]
}

fn io_err(ctx: &str) -> impl Fn(std::io::Error) -> BusError + '_ {
    move |e| BusError::internal(format!("{ctx}: {e}"))
}

impl Plugins {
    /// Open the records under `images_root/<driver>/plugins` (an unreadable record
    /// is logged and left out; a half-written one, a `*.tmp` dir, removed).
    pub fn open(layers: Layers, images_root: &Path, driver: &str) -> std::io::Result<Plugins> {
        let dir = images_root.join(driver).join("plugins");
        std::fs::create_dir_all(&dir)?;
        let mut records = BTreeMap::new();
        for e in std::fs::read_dir(&dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !is_full_id(&name) {
                let _ = std::fs::remove_dir_all(e.path());
                continue;
            }
            match std::fs::read(e.path().join("plugin.json")).map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice::<Record>(&b).map_err(|e| e.to_string())) {
                Ok(r) => {
                    records.insert(name, r);
                }
                Err(err) => tracing::warn!(plugin = %name, error = %err, "unreadable plugin record"),
            }
        }
        Ok(Plugins { dir, tmp: images_root.join("tmp"), layers, records: tokio::sync::Mutex::new(records), runner: None, registry: None })
    }

    /// Install, push and upgrade go through the images service's registry client.
    pub fn with_registry(mut self, registry: Arc<Registry>) -> Plugins {
        self.registry = Some(registry);
        self
    }

    /// Enabling runs plugins through `runner` (without one, enable records the state).
    pub fn with_runner(mut self, runner: Runner) -> Plugins {
        self.runner = Some(runner);
        self
    }

    /// Run the plugin's container and activate it. The container stays between a
    /// disable and the next enable (its rootfs is the plugin's, as Moby keeps a
    /// plugin's rootfs); one still running (a node killed, its shims alive) is
    /// activated as it is.
    async fn start(&self, id: &str, rec: &Record) -> Result<(), BusError> {
        let Some(r) = &self.runner else { return Ok(()) };
        let p = &rec.plugin;
        let run = r.paths.plugin_run(id);
        let mkdir = |d: &Path| std::fs::create_dir_all(d).map_err(io_err("preparing the plugin's directory"));
        mkdir(&run.join("sock"))?;
        if !p.config.propagated_mount.is_empty() {
            let pm = run.join("propagated-mount");
            mkdir(&pm)?;
            make_rshared(&pm).map_err(|e| BusError::internal(format!("error setting up propagated mount dir: {e}")))?;
        }
        let running = match plugin_inspect(r, id).await {
            Ok(c) => c.state.and_then(|s| s.running).unwrap_or(false),
            Err(e) if e.kind == bus_schema::ErrorKind::NotFound => {
                let body = container_body(p, &run)?;
                r.runtime
                    .container_create(ContainerCreate {
                        name: Some(format!("plugin-{id}")),
                        body,
                        platform: None,
                        plugin: Some(PluginRootfs { id: id.to_string(), chain_id: rec.chain_id.clone() }),
                    })
                    .await?;
                false
            }
            Err(e) => return Err(e),
        };
        let res = async {
            if !running {
                let _ = std::fs::remove_file(run.join("sock").join(&p.config.interface.socket));
                match r.runtime.plugin_container(PluginContainer { id: id.to_string(), action: PluginContainerAction::Start }).await.map(|_| ()) {
                    // started meanwhile by its restart policy (a node starting again)
                    Err(e) if e.kind == bus_schema::ErrorKind::NotModified => {}
                    r => r?,
                }
            }
            self.activate(r, id, p, &run).await
        }
        .await;
        if res.is_err() {
            self.stop(id).await;
        }
        res
    }

    /// Wait for the socket (the plugin may take a moment to listen), then
    /// `/Plugin.Activate`; a plugin whose process ended answers at once.
    async fn activate(&self, r: &Runner, id: &str, p: &Plugin, run: &Path) -> Result<(), BusError> {
        let sock = run.join("sock").join(&p.config.interface.socket);
        let deadline = tokio::time::Instant::now() + SOCKET_WAIT;
        let mut tries = 0u32;
        let implements = loop {
            match berth_pluginproto::activate(&sock, std::time::Duration::from_secs(5)).await {
                Ok(i) => break i,
                Err(e @ berth_pluginproto::Error::Connect { .. }) => {
                    tries += 1;
                    if tokio::time::Instant::now() >= deadline {
                        return Err(BusError::internal(e.to_string()));
                    }
                    if tries % 5 == 0 {
                        let c = plugin_inspect(r, id).await?;
                        let st = c.state.unwrap_or_default();
                        if st.running != Some(true) {
                            return Err(BusError::internal(format!(
                                "plugin {} exited with code {} before serving its socket {}",
                                p.name,
                                st.exit_code.unwrap_or(-1),
                                p.config.interface.socket
                            )));
                        }
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(BusError::internal(format!("activating plugin {}: {e}", p.name))),
            }
        };
        for t in p.config.interface.types.iter().flatten() {
            if let Some(want) = berth_pluginproto::implements_of(t) {
                if !implements.iter().any(|i| i == want) {
                    return Err(BusError::internal(format!("plugin {} does not implement {want} (its config says {t}), it implements {implements:?}", p.name)));
                }
            }
        }
        Ok(())
    }

    /// A plugin event as Moby 20.10 logs it (daemon.LogPluginEvent): type
    /// `plugin`, Actor ID `id`, attribute `name`.
    pub(crate) async fn event(&self, action: bus_schema::event::Action, id: &str, name: &str) {
        use bus_schema::event::{Event, EventType};
        if let Some(r) = &self.runner {
            r.bus.publish_event(&Event::now(EventType::Plugin, action, id).attr("name", name)).await;
        }
    }

    /// Stop the plugin's container (quietly: it may not be there), then unmount its
    /// propagated mount and what the plugin mounted there (Moby's HandleExitEvent
    /// of a plugin not restarted).
    async fn stop(&self, id: &str) {
        let Some(r) = &self.runner else { return };
        if let Err(e) = r.runtime.plugin_container(PluginContainer { id: id.to_string(), action: PluginContainerAction::Stop { timeout: 10 } }).await {
            if e.kind != bus_schema::ErrorKind::NotFound && e.kind != bus_schema::ErrorKind::NotModified {
                tracing::warn!(plugin = id, error = %e, "stopping the plugin's container");
            }
        }
        let pm = r.paths.plugin_run(id).join("propagated-mount");
        if let Err(e) = unmount_all(&pm) {
            tracing::warn!(plugin = id, error = %e, "unmounting the plugin's propagated mount");
        }
    }

    /// Remove the plugin's container (its rootfs changes go with it) and its
    /// runtime directory.
    async fn remove_container(&self, id: &str) {
        let Some(r) = &self.runner else { return };
        if let Err(e) = r.runtime.plugin_container(PluginContainer { id: id.to_string(), action: PluginContainerAction::Remove }).await {
            if e.kind != bus_schema::ErrorKind::NotFound {
                tracing::warn!(plugin = id, error = %e, "removing the plugin's container");
            }
        }
        // never removed through a mount (what a plugin mounts there is its data)
        if let Err(e) = unmount_all(&r.paths.plugin_run(id).join("propagated-mount")) {
            tracing::warn!(plugin = id, error = %e, "unmounting the plugin's propagated mount");
        }
        let _ = std::fs::remove_dir_all(r.paths.plugin_run(id).join("sock"));
    }

    /// Volumes made with the plugin, or containers logging to it now (Moby counts
    /// both as references: the plugin cannot be disabled or removed while any
    /// exists).
    async fn in_use(&self, name: &str) -> Result<bool, BusError> {
        let Some(r) = &self.runner else { return Ok(false) };
        let filters = HashMap::from([("driver".to_string(), vec![name.to_string()])]);
        if !r.storage.volume_list(VolumeList { filters, plugins: false }).await?.is_empty() {
            return Ok(true);
        }
        Ok(!r.runtime.log_plugin_users(LogPluginUsers { name: name.to_string() }).await?.is_empty())
    }

    /// At start: run the plugins that were enabled (the runtime service may come up
    /// after this one: retried a while).
    pub async fn restore(self: Arc<Self>) {
        let enabled: Vec<(String, Record)> = self.records.lock().await.iter().filter(|(_, r)| r.plugin.enabled).map(|(i, r)| (i.clone(), r.clone())).collect();
        for (id, rec) in enabled {
            let mut last = None;
            for _ in 0..30 {
                match self.start(&id, &rec).await {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) => {
                        last = Some(e);
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
            match last {
                None => tracing::info!(plugin = %rec.plugin.name, "plugin enabled again"),
                Some(e) => tracing::warn!(plugin = %rec.plugin.name, error = %e, "the plugin could not be run again"),
            }
        }
    }

    fn save(&self, id: &str, rec: &Record, config: Option<&[u8]>) -> Result<(), BusError> {
        let final_dir = self.dir.join(id);
        let work = self.dir.join(format!("{id}.tmp"));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).map_err(io_err("saving the plugin"))?;
        let config = match config {
            Some(c) => c.to_vec(),
            None => std::fs::read(final_dir.join("config.json")).map_err(io_err("saving the plugin"))?,
        };
        let write = |name: &str, b: &[u8]| -> std::io::Result<()> {
            let mut f = std::fs::File::create(work.join(name))?;
            f.write_all(b)?;
            f.sync_all()
        };
        let rec_json = serde_json::to_vec(rec).map_err(|e| BusError::internal(e.to_string()))?;
        write("config.json", &config).and_then(|_| write("plugin.json", &rec_json)).map_err(io_err("saving the plugin"))?;
        // swap: the old dir out of the way, the new one in, the old one gone
        let old = self.dir.join(format!("{id}.old.tmp"));
        let had_old = std::fs::rename(&final_dir, &old).is_ok();
        std::fs::rename(&work, &final_dir).map_err(io_err("saving the plugin"))?;
        if had_old {
            let _ = std::fs::remove_dir_all(&old);
        }
        Ok(())
    }

    async fn spool<I: ByteSource>(&self, input: &mut I) -> Result<std::fs::File, BusError> {
        std::fs::create_dir_all(&self.tmp).map_err(io_err("spooling the plugin"))?;
        let mut f = tempfile::tempfile_in(&self.tmp).map_err(io_err("spooling the plugin"))?;
        while let Some(c) = input.next().await {
            f.write_all(&c?).map_err(io_err("spooling the plugin"))?;
        }
        f.rewind().map_err(io_err("spooling the plugin"))?;
        Ok(f)
    }

    /// `POST /plugins/create?name=`.
    pub async fn create<I: ByteSource>(&self, name: &str, input: &mut I) -> Result<(), BusError> {
        let name = create_name(name)?;
        let exists = |recs: &BTreeMap<String, Record>| recs.values().any(|r| r.plugin.name == name);
        if exists(&*self.records.lock().await) {
            return Err(BusError::conflict(format!("plugin {name} already exists")));
        }
        let spool = self.spool(input).await?;
        let layer_tar = tempfile::tempfile_in(&self.tmp).map_err(io_err("splitting the plugin"))?;
        let lt = layer_tar.try_clone().map_err(io_err("splitting the plugin"))?;
        let config = tokio::task::spawn_blocking(move || split_tar(std::io::BufReader::new(spool), std::io::BufWriter::new(lt)))
            .await
            .map_err(|e| BusError::internal(e.to_string()))??;
        let config = config.ok_or_else(|| BusError::internal("config not found"))?;
        // Moby's json.Unmarshal: Go's wording of a syntax error
        let mut cfg: PluginConfig = match bus_schema::gojson::decode_first(&config) {
            Ok(Some(c)) => c,
            Ok(None) => return Err(BusError::internal("failed to parse config: unexpected end of JSON input")),
            Err(m) => return Err(BusError::internal(format!("failed to parse config: {m}"))),
        };
        let applied = self.apply_layer(layer_tar).await?;
        cfg.rootfs = Some(PluginConfigRootfs { diff_ids: Some(vec![applied.diff_id.clone()]), typ: "layers".into() });
        cfg.docker_version = berth_config::VERSION.into();
        let blob = serde_json::to_vec(&cfg).map_err(|e| BusError::internal(e.to_string()))?;
        let mut id = [0u8; 32];
        getrandom::fill(&mut id).map_err(|e| BusError::internal(e.to_string()))?;
        let id = hex::encode(id);
        let mut plugin = Plugin { config: cfg, enabled: false, id: id.clone(), name: name.clone(), plugin_reference: name.clone(), ..Default::default() };
        plugin.init_settings();
        let rec = Record { plugin, config_digest: crate::content::sha256_digest(&blob), chain_id: applied.chain_id.clone(), lower: vec![] };
        let mut recs = self.records.lock().await;
        let res = if exists(&recs) {
            Err(BusError::conflict(format!("plugin {name} already exists")))
        } else {
            self.save(&id, &rec, Some(&blob))
        };
        if let Err(e) = res {
            drop(recs);
            self.layers.release_quietly(&applied.chain_id).await;
            return Err(e);
        }
        recs.insert(id.clone(), rec);
        drop(recs);
        self.event(bus_schema::event::Action::Create, &id, &name).await;
        Ok(())
    }

    async fn apply_layer(&self, mut f: std::fs::File) -> Result<bus_schema::storage::LayerApplied, BusError> {
        f.rewind().map_err(io_err("reading the plugin rootfs"))?;
        let (rd, mut wr) = self
            .layers
            .apply(LayerApply { parent: None, media_type: "application/vnd.oci.image.layer.v1.tar".into(), compressed_digest: None, diff_id: None })
            .await?;
        loop {
            let mut buf = vec![0u8; MAX_CHUNK];
            let n = match f.read(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    let e = BusError::internal(format!("reading the plugin rootfs: {e}"));
                    let _ = wr.fail(e.clone()).await;
                    return Err(e);
                }
            };
            if n == 0 {
                break;
            }
            buf.truncate(n);
            wr.send(ByteChunk(buf)).await?;
        }
        wr.end().await?;
        layers::applied(rd).await
    }

    /// `GET /plugins`.
    pub async fn list(&self, filters: &HashMap<String, Vec<String>>) -> Result<Vec<Plugin>, BusError> {
        // Moby's filters.Validate and GetBoolOrDefault (Go prints the values as `[a b]`)
        if let Some(k) = filters.keys().find(|k| *k != "enabled" && *k != "capability") {
            return Err(BusError::invalid(format!("Invalid filter '{k}'")));
        }
        let enabled = match filters.get("enabled").map(|v| v.as_slice()) {
            None | Some([]) => None,
            Some([v]) => Some(parse_bool(v).ok_or_else(|| BusError::invalid(format!("Invalid filter 'enabled=[{v}]'")))?),
            Some(v) => return Err(BusError::invalid(format!("Invalid filter 'enabled=[{}]'", v.join(" ")))),
        };
        let caps = filters.get("capability").filter(|c| !c.is_empty());
        let recs = self.records.lock().await;
        Ok(recs
            .values()
            .map(|r| &r.plugin)
            .filter(|p| enabled.is_none_or(|e| p.enabled == e))
            .filter(|p| caps.is_none_or(|c| p.config.interface.types.iter().flatten().all(|t| c.iter().any(|x| x == capability(t)))))
            .cloned()
            .collect())
    }

    /// `GET /plugins/{name}/json`.
    pub async fn inspect(&self, name: &str) -> Result<Plugin, BusError> {
        let recs = self.records.lock().await;
        let id = resolve(&recs, name)?;
        Ok(recs[&id].plugin.clone())
    }

    /// Change a record and store it; the change is kept in memory only if stored.
    async fn update(&self, name: &str, f: impl FnOnce(&mut Plugin) -> Result<(), BusError>) -> Result<(), BusError> {
        let mut recs = self.records.lock().await;
        let id = resolve(&recs, name)?;
        let mut rec = recs[&id].clone();
        f(&mut rec.plugin)?;
        self.save(&id, &rec, None)?;
        recs.insert(id, rec);
        Ok(())
    }

    /// `POST /plugins/{name}/set`.
    /// The plugin's container is made again at the next enable, with the new
    /// settings.
    pub async fn set(&self, name: &str, args: &[String]) -> Result<(), BusError> {
        self.update(name, |p| apply_settings(p, args)).await?;
        let id = resolve(&*self.records.lock().await, name)?;
        self.remove_container(&id).await;
        Ok(())
    }

    /// `POST /plugins/{name}/enable`: run the plugin, then record it enabled.
    pub async fn enable(&self, name: &str) -> Result<(), BusError> {
        let (id, rec) = {
            let recs = self.records.lock().await;
            let id = resolve(&recs, name)?;
            (id.clone(), recs[&id].clone())
        };
        if rec.plugin.enabled {
            return Err(BusError::conflict(format!("plugin already enabled: plugin {} is enabled", rec.plugin.name)));
        }
        self.start(&id, &rec).await?;
        let res = self
            .update(&id, |p| {
                p.enabled = true;
                Ok(())
            })
            .await;
        match res {
            // Moby names it as it was asked for (refOrID)
            Ok(()) => self.event(bus_schema::event::Action::Enable, &id, name).await,
            Err(_) => self.stop(&id).await,
        }
        res
    }

    /// `POST /plugins/{name}/disable`: refused while volumes of it exist, unless
    /// forced (Moby's reference count); then the plugin's container goes.
    pub async fn disable(&self, name: &str, force: bool) -> Result<(), BusError> {
        let (id, rec) = {
            let recs = self.records.lock().await;
            let id = resolve(&recs, name)?;
            (id.clone(), recs[&id].clone())
        };
        if !rec.plugin.enabled {
            return Err(BusError::conflict(format!("plugin is already disabled: plugin {} found but disabled", rec.plugin.name)));
        }
        if !force && self.in_use(&rec.plugin.name).await? {
            return Err(BusError::conflict(format!("plugin {} is in use", rec.plugin.name)));
        }
        self.stop(&id).await;
        self.update(&id, |p| {
            p.enabled = false;
            Ok(())
        })
        .await?;
        self.event(bus_schema::event::Action::Disable, &id, name).await;
        Ok(())
    }

    /// `DELETE /plugins/{name}`: refused while enabled unless forced; the record goes
    /// first (renamed away, then removed), then the rootfs layer's reference.
    pub async fn remove(&self, name: &str, force: bool) -> Result<(), BusError> {
        let mut recs = self.records.lock().await;
        let id = resolve(&recs, name)?;
        let rec = recs[&id].clone();
        if !force && self.in_use(&rec.plugin.name).await? {
            return Err(BusError::conflict(format!("plugin {} is in use", rec.plugin.name)));
        }
        if rec.plugin.enabled && !force {
            return Err(BusError::conflict(format!("plugin {} is enabled", rec.plugin.name)));
        }
        self.remove_container(&id).await;
        if let Some(r) = &self.runner {
            let run = r.paths.plugin_run(&id);
            if berth_fsutil::is_mountpoint(&run.join("propagated-mount")).unwrap_or(true) {
                tracing::warn!(plugin = %id, "its propagated mount is still mounted: its directory is left");
            } else {
                let _ = std::fs::remove_dir_all(run);
            }
        }
        let gone = self.dir.join(format!("{id}.removing.tmp"));
        std::fs::rename(self.dir.join(&id), &gone).map_err(io_err("removing the plugin"))?;
        recs.remove(&id);
        drop(recs);
        self.event(bus_schema::event::Action::Remove, &id, name).await;
        let _ = std::fs::remove_dir_all(&gone);
        self.layers.release_quietly(&rec.chain_id).await;
        for c in rec.lower.iter().rev() {
            self.layers.release_quietly(c).await;
        }
        Ok(())
    }
}

/// The plugin's container as `docker inspect` shows a container (through the
/// runtime's plugin call: the container API does not find it).
async fn plugin_inspect(r: &Runner, id: &str) -> Result<docker::ContainerInspectResponse, BusError> {
    r.runtime
        .plugin_container(PluginContainer { id: id.to_string(), action: PluginContainerAction::Inspect })
        .await?
        .ok_or_else(|| BusError::internal(format!("no inspect of plugin container {id}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            if name.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
            } else {
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
            }
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn names(tar: &[u8]) -> Vec<String> {
        tar::Archive::new(tar).entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn split_takes_config_and_strips_rootfs() {
        let t = tar_of(&[("./config.json", b"{}"), ("rootfs/", b""), ("rootfs/dummy/", b""), ("rootfs/dummy/file.txt", b"x"), ("other", b"y")]);
        let mut layer = Vec::new();
        let c = split_tar(&t[..], &mut layer).unwrap();
        assert_eq!(c.as_deref(), Some(&b"{}"[..]));
        assert_eq!(names(&layer), vec!["dummy", "dummy/file.txt"]);
    }

    #[test]
    fn split_errors_as_moby() {
        let e = split_tar(&tar_of(&[("config.json", b"{}")])[..], Vec::new()).unwrap_err();
        assert_eq!(e.message, "no rootfs found: EOF");
        let e = split_tar(&b""[..], Vec::new()).unwrap_err();
        assert_eq!(e.message, "no rootfs found: EOF");
        assert_eq!(split_tar(&tar_of(&[("rootfs/", b"")])[..], Vec::new()).unwrap(), None);
        let e = split_tar(&b"not a tar"[..], Vec::new()).unwrap_err();
        assert!(e.message.starts_with("failed to read from tar: "), "{}", e.message);
    }

    #[test]
    fn names_as_moby() {
        assert_eq!(create_name("docker-sdk-py/dummy").unwrap(), "docker-sdk-py/dummy:latest");
        assert_eq!(create_name("docker.io/library/c").unwrap(), "c:latest");
        assert_eq!(create_name("localhost:5000/a/b:v2").unwrap(), "localhost:5000/a/b:v2");
        assert_eq!(create_name("").unwrap_err().message, "failed to parse reference : invalid reference format");
        assert_eq!(
            create_name("Bad/Name").unwrap_err().message,
            "failed to parse reference Bad/Name: invalid reference format: repository name must be lowercase"
        );
        assert_eq!(create_name(&format!("x@sha256:{}", "0".repeat(64))).unwrap_err().message, "canonical references are not permitted");
    }

    fn dummy() -> Plugin {
        let mut p = Plugin {
            name: "d:latest".into(),
            config: bus_schema::gojson::from_slice(br#"{"env":[{"name":"DEBUG","settable":["value"],"value":"0"},{"name":"FIXED","value":"1"}],
                "mounts":[{"name":"mnt","settable":["source"],"source":"/a"}],"args":{"name":"args","settable":["value"],"value":["a"]}}"#)
            .unwrap(),
            ..Default::default()
        };
        p.init_settings();
        p
    }

    #[test]
    fn set_as_moby() {
        let mut p = dummy();
        apply_settings(&mut p, &["DEBUG=1".into()]).unwrap();
        assert_eq!(p.settings.env, vec!["DEBUG=1", "FIXED=1"]);
        apply_settings(&mut p, &["DEBUG".into()]).unwrap();
        assert_eq!(p.settings.env, vec!["DEBUG=", "FIXED=1"]);
        apply_settings(&mut p, &["mnt.source=/b".into(), "args=x y".into()]).unwrap();
        assert_eq!(p.settings.mounts[0].source.as_deref(), Some("/b"));
        assert_eq!(p.settings.args, vec!["x", "y"]);
        let err = |p: &mut Plugin, a: &str| apply_settings(p, &[a.to_string()]).unwrap_err().message;
        assert_eq!(err(&mut p, "NOPE=1"), "setting \"NOPE\" not found in the plugin configuration");
        assert_eq!(err(&mut p, "mnt.x=1"), "\"mnt.x\" is not settable");
        assert_eq!(err(&mut p, "FIXED=2"), "\"FIXED\" is not settable");
        assert_eq!(err(&mut p, "=1"), "invalid format, must be <name>[.<field>][=<value>]");
        p.enabled = true;
        assert_eq!(err(&mut p, "DEBUG=1"), "cannot set on an active plugin, disable plugin before setting");
    }

    #[test]
    fn lookup_by_name_or_id_prefix() {
        let mut recs = BTreeMap::new();
        let id = format!("558039ad{}", "0".repeat(56));
        let mut p = dummy();
        p.name = "docker-sdk-py/dummy:latest".into();
        recs.insert(id.clone(), Record { plugin: p, config_digest: String::new(), chain_id: String::new(), lower: vec![] });
        assert_eq!(resolve(&recs, "docker-sdk-py/dummy").unwrap(), id);
        assert_eq!(resolve(&recs, "docker-sdk-py/dummy:latest").unwrap(), id);
        assert_eq!(resolve(&recs, "558039ad").unwrap(), id);
        assert_eq!(resolve(&recs, &id).unwrap(), id);
        assert_eq!(resolve(&recs, "nope").unwrap_err().message, "plugin \"nope\" not found");
        assert_eq!(resolve(&recs, "docker-sdk-py/dummy:v2").unwrap_err().message, "plugin \"docker-sdk-py/dummy:v2\" not found");
        assert_eq!(capability("docker.volumedriver/1.0"), "volumedriver");
    }
}
