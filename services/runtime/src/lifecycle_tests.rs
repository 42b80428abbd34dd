//! The container lifecycle (start, stop, kill, restart policy, remove while
//! starting, exit while stopping) against in-memory fakes: storage, network and
//! images from their contracts' `Fake` traits, the bus's events recorded, and fake
//! shims whose "process" dies of the signals a test says, or exits when told. No
//! NATS, no shim, no root: the roots are temp dirs.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bus_schema::event::Event;
use bus_schema::images::{ImageResolve, ResolvedImage};
use bus_schema::network::{Sandbox, SandboxCreate, SandboxRemove};
use bus_schema::runtime::ContainerCreate;
use bus_schema::storage::{RwLayerCreate, RwLayerMount, RwLayerRemove, RwLayerUnmount, RwMount};
use bus_schema::{docker, BusError, ErrorKind};
use tokio::sync::{watch, Notify};

use crate::deps::{Deps, Events, PendingStart, ShimProcess, Shims};
use crate::engine::{Entry, Runtime};
use crate::shim_client::{Exec, ExecSpec, ExitStatus, ShimOptions, StartError};
use crate::state::Status;

/// Every call the fakes got, in order (`rw_layer_mount <id>`, `sandbox_remove <id>`...).
#[derive(Default)]
struct Calls(Mutex<Vec<String>>);

impl Calls {
    fn push(&self, s: String) {
        self.0.lock().unwrap().push(s);
    }
    fn count(&self, what: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.as_str() == what)
            .count()
    }
}

struct FakeStorage(Arc<Calls>, std::path::PathBuf);

impl bus_schema::storage::Fake for FakeStorage {
    async fn rw_layer_create(&self, req: RwLayerCreate) -> Result<(), BusError> {
        self.0.push(format!("rw_layer_create {}", req.id));
        Ok(())
    }
    async fn rw_layer_mount(&self, req: RwLayerMount) -> Result<RwMount, BusError> {
        self.0.push(format!("rw_layer_mount {}", req.id));
        let path = self.1.join("rootfs").join(&req.id);
        std::fs::create_dir_all(&path).unwrap();
        Ok(RwMount {
            path: path.display().to_string(),
        })
    }
    async fn rw_layer_unmount(&self, req: RwLayerUnmount) -> Result<(), BusError> {
        self.0.push(format!("rw_layer_unmount {}", req.id));
        Ok(())
    }
    async fn rw_layer_remove(&self, req: RwLayerRemove) -> Result<(), BusError> {
        self.0.push(format!("rw_layer_remove {}", req.id));
        Ok(())
    }
}

struct FakeNetwork(Arc<Calls>);

impl bus_schema::network::Fake for FakeNetwork {
    async fn sandbox_create(&self, req: SandboxCreate) -> Result<Sandbox, BusError> {
        self.0.push(format!("sandbox_create {}", req.container_id));
        Ok(Sandbox {
            key: String::new(),
            networks: HashMap::new(),
            ports: HashMap::new(),
            resolv_conf: "nameserver 10.0.0.1\n".into(),
            hosts: "127.0.0.1\tlocalhost\n".into(),
        })
    }
    async fn sandbox_remove(&self, req: SandboxRemove) -> Result<(), BusError> {
        self.0.push(format!("sandbox_remove {}", req.container_id));
        Ok(())
    }
}

struct FakeImages;

impl bus_schema::images::Fake for FakeImages {
    async fn image_resolve(&self, req: ImageResolve) -> Result<ResolvedImage, BusError> {
        Ok(ResolvedImage {
            id: format!("sha256:{}", "a".repeat(64)),
            name: req.reference,
            chain_id: Some(format!("sha256:{}", "c".repeat(64))),
            config: docker::ImageConfig::default(),
            os: "linux".into(),
            architecture: "amd64".into(),
        })
    }
}

/// The events published, in order.
#[derive(Default)]
struct FakeBus(Mutex<Vec<Event>>);

impl Events for FakeBus {
    fn node(&self) -> &str {
        "node-1"
    }
    async fn publish_event(&self, ev: &Event) {
        self.0.lock().unwrap().push(ev.clone());
    }
}

struct Fakes;

impl Deps for Fakes {
    type Bus = FakeBus;
    type Storage = FakeStorage;
    type Network = FakeNetwork;
    type Images = FakeImages;
}

/// A container's fake process: dies (128 + signal) of SIGKILL and of the signals in
/// `dies_on`, or exits when the test says.
struct FakeProc {
    pid: u32,
    dies_on: Vec<i32>,
    signals: Mutex<Vec<i32>>,
    exit: watch::Sender<Option<ExitStatus>>,
    signalled: Notify,
}

impl FakeProc {
    fn exit(&self, code: i32, signal: Option<i32>) {
        self.exit.send_if_modified(|st| {
            if st.is_some() {
                return false;
            }
            *st = Some(ExitStatus {
                code,
                signal,
                oom_killed: false,
                finished_at: berth_rules::clock::now_rfc3339(),
            });
            true
        });
    }
    fn signals(&self) -> Vec<i32> {
        self.signals.lock().unwrap().clone()
    }
}

#[async_trait]
impl ShimProcess for FakeProc {
    async fn kill(&self, signal: i32, _all: bool) -> io::Result<()> {
        if self.exit.borrow().is_some() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "process already finished",
            ));
        }
        self.signals.lock().unwrap().push(signal);
        if signal == 9 || self.dies_on.contains(&signal) {
            self.exit(128 + signal, Some(signal));
        }
        self.signalled.notify_one();
        Ok(())
    }
    async fn wait(&self) -> io::Result<ExitStatus> {
        let mut rx = self.exit.subscribe();
        let st = rx
            .wait_for(|s| s.is_some())
            .await
            .map_err(io::Error::other)?;
        Ok(st.clone().unwrap())
    }
    async fn write_stdin(&self, _data: &[u8]) -> io::Result<()> {
        Ok(())
    }
    async fn close_stdin(&self) -> io::Result<()> {
        Ok(())
    }
    async fn resize(&self, _height: u16, _width: u16) -> io::Result<()> {
        Ok(())
    }
    async fn exec(&self, _spec: ExecSpec) -> Result<Exec, StartError> {
        Err(StartError::Other("no exec in the fake".into()))
    }
}

/// What the next shims do.
#[derive(Clone, Default)]
struct Plan {
    /// The process dies of these signals too (SIGKILL always).
    dies_on: Vec<i32>,
    /// The process exits with this code as soon as it started.
    exits_at_once: Option<i32>,
    /// `go` fails with the command not found.
    not_found: bool,
    /// `go` waits here (`entered` notified) until `release` is.
    gate: Option<Arc<(Notify, Notify)>>,
}

#[derive(Default)]
struct FakeShims {
    plan: Mutex<Plan>,
    procs: Mutex<Vec<Arc<FakeProc>>>,
    /// Set when a shim is spawned for a bundle (the bundle must exist).
    spawned: Mutex<Vec<String>>,
}

struct Pending {
    shims: Arc<FakeShims>,
    plan: Plan,
    bundle: std::path::PathBuf,
}

#[async_trait]
impl Shims for Arc<FakeShims> {
    async fn spawn(&self, opts: &ShimOptions) -> Result<Box<dyn PendingStart>, StartError> {
        std::fs::create_dir_all(&opts.bundle).map_err(|e| StartError::Other(e.to_string()))?;
        self.spawned.lock().unwrap().push(opts.id.clone());
        let plan = self.plan.lock().unwrap().clone();
        Ok(Box::new(Pending {
            shims: self.clone(),
            plan,
            bundle: opts.bundle.clone(),
        }))
    }
}

#[async_trait]
impl PendingStart for Pending {
    async fn go(self: Box<Self>) -> Result<(Arc<dyn ShimProcess>, u32), StartError> {
        if let Some(g) = &self.plan.gate {
            let released = g.1.notified();
            g.0.notify_one();
            released.await;
        }
        // the runtime wrote the spec before `go`, as the real shim needs it
        assert!(
            self.bundle.join("config.json").is_file(),
            "no config.json in the bundle at go"
        );
        if self.plan.not_found {
            return Err(StartError::NotFound(
                "exec: \"nope\": executable file not found in $PATH".into(),
            ));
        }
        let mut procs = self.shims.procs.lock().unwrap();
        // far above any pid_max: the runtime never signals a real process
        let pid = 1_900_000_000 + procs.len() as u32;
        let p = Arc::new(FakeProc {
            pid,
            dies_on: self.plan.dies_on.clone(),
            signals: Mutex::new(Vec::new()),
            exit: watch::channel(None).0,
            signalled: Notify::new(),
        });
        if let Some(code) = self.plan.exits_at_once {
            p.exit(code, None);
        }
        procs.push(p.clone());
        Ok((p, pid))
    }
}

struct T {
    rt: Arc<Runtime<Fakes>>,
    calls: Arc<Calls>,
    shims: Arc<FakeShims>,
    _dir: tempfile::TempDir,
}

impl T {
    fn new() -> T {
        let dir = tempfile::tempdir().unwrap();
        let calls = Arc::new(Calls::default());
        let shims = Arc::new(FakeShims::default());
        let rt = Runtime::<Fakes>::with_deps(
            FakeStorage(calls.clone(), dir.path().to_path_buf()),
            FakeNetwork(calls.clone()),
            FakeImages,
            FakeBus::default(),
            Arc::new(shims.clone()),
            "berth-shim".into(),
            Default::default(),
            berth_config::Paths::new(dir.path().join("root")),
        );
        T {
            rt: Arc::new(rt),
            calls,
            shims,
            _dir: dir,
        }
    }

    fn plan(&self, p: Plan) {
        *self.shims.plan.lock().unwrap() = p;
    }

    /// `docker create --name <name> [--restart <policy>] busybox top`: the id.
    async fn create(
        &self,
        name: &str,
        restart: Option<(docker::RestartPolicyNameEnum, i64)>,
    ) -> String {
        let hc = docker::HostConfig {
            restart_policy: restart.map(|(n, max)| docker::RestartPolicy {
                name: Some(n),
                maximum_retry_count: Some(max),
            }),
            ..Default::default()
        };
        let body = docker::ContainerCreateBody {
            image: Some("busybox".into()),
            cmd: Some(vec!["top".into()]),
            host_config: Some(hc),
            ..Default::default()
        };
        self.rt
            .create(ContainerCreate {
                name: Some(name.into()),
                body,
                platform: None,
                plugin: None,
            })
            .await
            .unwrap()
            .id
    }

    fn entry(&self, id: &str) -> Arc<Entry> {
        self.rt.find(id).unwrap()
    }

    fn proc(&self, n: usize) -> Arc<FakeProc> {
        self.shims.procs.lock().unwrap()[n].clone()
    }

    fn procs(&self) -> usize {
        self.shims.procs.lock().unwrap().len()
    }

    /// The actions of the container's events, with their `exitCode`/`signal`
    /// (`die 137`, `kill 15`, `start`).
    fn events(&self, id: &str) -> Vec<String> {
        self.rt
            .bus
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.actor.id == id)
            .map(|e| {
                let a = &e.actor.attributes;
                match a.get("exitCode").or(a.get("signal")) {
                    Some(v) => format!("{} {v}", e.action),
                    None => e.action.clone(),
                }
            })
            .collect()
    }

    fn calls(&self, what: &str, id: &str) -> usize {
        self.calls.count(&format!("{what} {id}"))
    }

    /// Until the container's `exits` counter reaches `n`.
    async fn exits(&self, id: &str, n: u64) {
        let mut life = self.entry(id).life.subscribe();
        tokio::time::timeout(Duration::from_secs(5), life.wait_for(|l| l.exits >= n))
            .await
            .unwrap()
            .unwrap();
    }

    async fn starts(&self, id: &str, n: u64) {
        let mut life = self.entry(id).life.subscribe();
        tokio::time::timeout(Duration::from_secs(5), life.wait_for(|l| l.starts >= n))
            .await
            .unwrap()
            .unwrap();
    }
}

#[tokio::test]
async fn start_mounts_the_layer_makes_the_sandbox_and_runs() {
    let t = T::new();
    let id = t.create("web", None).await;
    t.rt.start("web").await.unwrap();
    let c = t.entry(&id).get();
    assert_eq!(c.state.status, Status::Running);
    assert_eq!(c.state.pid, t.proc(0).pid);
    assert!(c.has_been_started);
    assert_eq!(t.calls("rw_layer_mount", &id), 1);
    assert_eq!(t.calls("sandbox_create", &id), 1);
    assert!(std::path::Path::new(&c.resolv_path).is_file());
    assert_eq!(t.events(&id), ["create", "start"]);
    // a second start: Docker's 304
    let err = t.rt.start("web").await.unwrap_err();
    assert!(err.is(ErrorKind::NotModified), "{err:?}");
    assert_eq!(t.procs(), 1);
}

#[tokio::test]
async fn start_of_a_missing_command_gives_everything_back_with_127() {
    let t = T::new();
    let id = t.create("web", None).await;
    t.plan(Plan {
        not_found: true,
        ..Default::default()
    });
    let err = t.rt.start("web").await.unwrap_err();
    assert!(err.is(ErrorKind::InvalidArgument), "{err:?}");
    assert!(
        err.message.contains("executable file not found in $PATH"),
        "{}",
        err.message
    );
    assert!(
        err.message
            .starts_with("failed to create task for container: "),
        "{}",
        err.message
    );
    let c = t.entry(&id).get();
    assert_eq!(c.state.status, Status::Created);
    assert_eq!(c.state.exit_code, 127);
    assert_eq!(c.state.error, err.message);
    assert_eq!(t.calls("rw_layer_mount", &id), 1);
    assert_eq!(t.calls("rw_layer_unmount", &id), 1);
    assert_eq!(t.calls("sandbox_create", &id), 1);
    assert_eq!(t.calls("sandbox_remove", &id), 1);
    assert_eq!(t.events(&id), ["create"]);
}

#[tokio::test]
async fn stop_signals_then_records_the_exit_and_gives_back() {
    let t = T::new();
    let id = t.create("web", None).await;
    t.plan(Plan {
        dies_on: vec![15],
        ..Default::default()
    });
    t.rt.start("web").await.unwrap();
    t.rt.stop("web", None, None).await.unwrap();
    let c = t.entry(&id).get();
    assert_eq!(c.state.status, Status::Exited);
    assert_eq!(c.state.exit_code, 143);
    assert_eq!(c.state.pid, 0);
    assert!(c.manually_stopped);
    assert_eq!(t.proc(0).signals(), [15]);
    assert_eq!(t.calls("rw_layer_unmount", &id), 1);
    assert_eq!(t.calls("sandbox_remove", &id), 1);
    assert_eq!(
        t.events(&id),
        ["create", "start", "kill 15", "die 143", "stop"]
    );
    // stopped already: Docker's 304
    assert!(t
        .rt
        .stop("web", None, None)
        .await
        .unwrap_err()
        .is(ErrorKind::NotModified));
}

#[tokio::test]
async fn stop_kills_a_process_that_ignores_its_signal_after_the_timeout() {
    let t = T::new();
    let id = t.create("web", None).await;
    t.rt.start("web").await.unwrap();
    t.rt.stop("web", Some("SIGUSR1".into()), Some(1))
        .await
        .unwrap();
    let c = t.entry(&id).get();
    assert_eq!(c.state.status, Status::Exited);
    assert_eq!(c.state.exit_code, 137);
    assert_eq!(t.proc(0).signals(), [10, 9]);
    assert_eq!(t.calls("rw_layer_unmount", &id), 1);
    assert_eq!(t.calls("sandbox_remove", &id), 1);
    assert_eq!(
        t.events(&id),
        ["create", "start", "kill 10", "kill 9", "die 137", "stop"]
    );
}

#[tokio::test]
async fn exit_while_stopping_is_one_exit() {
    let t = T::new();
    let id = t.create("web", None).await;
    t.rt.start("web").await.unwrap();
    let p = t.proc(0);
    let signalled = p.signalled.notified();
    let rt = t.rt.clone();
    // a long grace period: the process ends by itself within it
    let stop = tokio::spawn(async move { rt.stop("web", None, Some(60)).await });
    signalled.await;
    p.exit(3, None);
    tokio::time::timeout(Duration::from_secs(5), stop)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let c = t.entry(&id).get();
    assert_eq!(c.state.status, Status::Exited);
    assert_eq!(c.state.exit_code, 3);
    assert_eq!(p.signals(), [15], "no SIGKILL after the process ended");
    assert_eq!(t.entry(&id).life.borrow().exits, 1);
    assert_eq!(t.calls("rw_layer_unmount", &id), 1);
    assert_eq!(t.calls("sandbox_remove", &id), 1);
    assert_eq!(
        t.events(&id),
        ["create", "start", "kill 15", "die 3", "stop"]
    );
}

#[tokio::test]
async fn kill_delivers_the_signal_and_refuses_bad_ones() {
    let t = T::new();
    let id = t.create("web", None).await;
    // not running: Docker's 409
    let err = t.rt.kill("web", None).await.unwrap_err();
    assert!(err.is(ErrorKind::Conflict), "{err:?}");
    assert_eq!(
        err.message,
        format!("Cannot kill container: web: Container {id} is not running")
    );
    t.rt.start("web").await.unwrap();
    let err = t.rt.kill("web", Some("NOPE".into())).await.unwrap_err();
    assert!(err.is(ErrorKind::InvalidArgument), "{err:?}");
    assert_eq!(err.message, "Invalid signal: NOPE");
    t.rt.kill("web", Some("USR1".into())).await.unwrap();
    assert_eq!(t.entry(&id).get().state.status, Status::Running);
    // the default, SIGKILL: answered once the container is dead
    t.rt.kill(&id[..12], None).await.unwrap();
    let c = t.entry(&id).get();
    assert_eq!(c.state.status, Status::Exited);
    assert_eq!(c.state.exit_code, 137);
    assert_eq!(t.proc(0).signals(), [10, 9]);
    assert_eq!(
        t.events(&id),
        ["create", "start", "kill 10", "kill 9", "die 137"]
    );
    assert_eq!(t.calls("rw_layer_unmount", &id), 1);
}

#[tokio::test]
async fn restart_always_starts_again_until_stopped() {
    let t = T::new();
    let id = t
        .create("web", Some((docker::RestartPolicyNameEnum::ALWAYS, 0)))
        .await;
    t.rt.start("web").await.unwrap();
    // exits by itself with 0: started again
    t.proc(0).exit(0, None);
    t.starts(&id, 2).await;
    let c = t.entry(&id).get();
    assert_eq!(c.state.status, Status::Running);
    assert_eq!(c.restart_count, 1);
    assert_eq!(t.procs(), 2);
    assert_eq!(c.state.pid, t.proc(1).pid);
    assert_eq!(t.calls("rw_layer_mount", &id), 2);
    assert_eq!(t.calls("rw_layer_unmount", &id), 1);
    assert_eq!(
        t.events(&id),
        ["create", "start", "die 0", "start", "restart"]
    );
    // an explicit stop is not restarted
    t.rt.stop("web", Some("KILL".into()), None).await.unwrap();
    let c = t.entry(&id).get();
    assert_eq!(c.state.status, Status::Exited);
    assert_eq!(t.procs(), 2);
}

#[tokio::test]
async fn restart_on_failure_stops_after_its_maximum() {
    let t = T::new();
    let id = t
        .create("web", Some((docker::RestartPolicyNameEnum::ON_FAILURE, 2)))
        .await;
    t.plan(Plan {
        exits_at_once: Some(1),
        ..Default::default()
    });
    t.rt.start("web").await.unwrap();
    // the first run and two restarts, each failing
    t.exits(&id, 3).await;
    let c = t.entry(&id).get();
    assert_eq!(c.state.status, Status::Exited, "no third restart");
    assert_eq!(c.restart_count, 2);
    assert_eq!(c.state.exit_code, 1);
    assert_eq!(t.procs(), 3);
    assert_eq!(t.calls("rw_layer_unmount", &id), 3);
    assert_eq!(
        t.events(&id),
        ["create", "start", "die 1", "start", "restart", "die 1", "start", "restart", "die 1"]
    );

    // a success is not restarted under on-failure
    let t = T::new();
    let id = t
        .create("ok", Some((docker::RestartPolicyNameEnum::ON_FAILURE, 0)))
        .await;
    t.plan(Plan {
        exits_at_once: Some(0),
        ..Default::default()
    });
    t.rt.start("ok").await.unwrap();
    t.exits(&id, 1).await;
    assert_eq!(t.entry(&id).get().state.status, Status::Exited);
    assert_eq!(t.procs(), 1);
}

#[tokio::test]
async fn unless_stopped_is_not_restarted_after_an_explicit_stop() {
    let t = T::new();
    let id = t
        .create(
            "web",
            Some((docker::RestartPolicyNameEnum::UNLESS_STOPPED, 0)),
        )
        .await;
    t.plan(Plan {
        dies_on: vec![15],
        ..Default::default()
    });
    t.rt.start("web").await.unwrap();
    // a crash: restarted
    t.proc(0).exit(2, None);
    t.starts(&id, 2).await;
    assert_eq!(t.entry(&id).get().restart_count, 1);
    // `docker stop`: stays stopped
    t.rt.stop("web", None, None).await.unwrap();
    let c = t.entry(&id).get();
    assert_eq!(c.state.status, Status::Exited);
    assert!(c.manually_stopped);
    assert_eq!(t.procs(), 2);
    assert_eq!(t.entry(&id).life.borrow().exits, 2);
    // `docker start` clears the explicit stop
    t.rt.start("web").await.unwrap();
    assert!(!t.entry(&id).get().manually_stopped);
    assert_eq!(t.procs(), 3);
}

/// A start of "web" held in the shim's `go` (planned with `plan`'s other fields) until the
/// gate's second `Notify`: the gate, and the start.
async fn held_start(t: &T, plan: Plan) -> (Arc<(Notify, Notify)>, tokio::task::JoinHandle<Result<(), bus_schema::BusError>>) {
    let gate = Arc::new((Notify::new(), Notify::new()));
    t.plan(Plan { gate: Some(gate.clone()), ..plan });
    let entered = gate.0.notified();
    let rt = t.rt.clone();
    let start = tokio::spawn(async move { rt.start("web").await });
    entered.await;
    (gate, start)
}

#[tokio::test]
async fn remove_while_starting_waits_then_leaks_nothing() {
    let t = T::new();
    let id = t.create("web", None).await;
    let (gate, start) = held_start(&t, Plan::default()).await;
    // the start is in the shim's `go`: a `docker rm -f` waits for it
    let rt = t.rt.clone();
    let rm = tokio::spawn(async move { rt.remove("web", true, false).await });
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert!(!rm.is_finished(), "rm did not wait for the start");
    assert_eq!(t.calls("rw_layer_remove", &id), 0);
    gate.1.notify_one();
    start.await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(5), rm)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // the started container was killed, then everything given back
    assert_eq!(t.proc(0).signals(), [9]);
    assert_eq!(t.calls("rw_layer_mount", &id), 1);
    assert_eq!(t.calls("rw_layer_unmount", &id), 1);
    assert_eq!(t.calls("rw_layer_remove", &id), 1);
    assert!(t.calls("sandbox_remove", &id) >= 1);
    assert!(t.rt.find(&id).is_err_and(|e| e.is(ErrorKind::NotFound)));
    assert!(!t.rt.containers_dir().join(&id).exists());
    assert!(!t.rt.bundle_dir(&id).exists());
    assert_eq!(
        t.events(&id),
        ["create", "start", "kill 9", "die 137", "destroy"]
    );

    // without -f: refused once the start has made it run (Docker's 409), nothing taken
    let t = T::new();
    let id = t.create("web", None).await;
    let (gate, start) = held_start(&t, Plan::default()).await;
    let rt = t.rt.clone();
    let rm = tokio::spawn(async move { rt.remove("web", false, false).await });
    gate.1.notify_one();
    start.await.unwrap().unwrap();
    let err = rm.await.unwrap().unwrap_err();
    assert!(err.is(ErrorKind::Conflict), "{err:?}");
    assert!(
        err.message.contains("container is running"),
        "{}",
        err.message
    );
    assert_eq!(t.entry(&id).get().state.status, Status::Running);
    assert_eq!(t.calls("rw_layer_remove", &id), 0);
}

#[tokio::test]
async fn remove_while_a_start_fails_gives_everything_back() {
    let t = T::new();
    let id = t.create("web", None).await;
    let (gate, start) = held_start(&t, Plan { not_found: true, ..Default::default() }).await;
    let rt = t.rt.clone();
    let rm = tokio::spawn(async move { rt.remove("web", false, false).await });
    gate.1.notify_one();
    assert!(start.await.unwrap().is_err());
    rm.await.unwrap().unwrap();
    assert_eq!(t.calls("rw_layer_mount", &id), 1);
    assert_eq!(t.calls("rw_layer_unmount", &id), 1);
    assert_eq!(t.calls("rw_layer_remove", &id), 1);
    assert!(t.calls("sandbox_remove", &id) >= 1);
    assert!(t.rt.find(&id).is_err());
    assert_eq!(t.events(&id), ["create", "destroy"]);
}
