//! TEMPORARY stand-ins with the agreed interfaces of spec/shim_client/logs/user, so
//! the orchestration compiles before the shim branch lands. Removed at integration.
#![allow(dead_code, unused_variables)]

pub mod spec {
    use bus_schema::docker;
    use std::path::Path;
    pub struct SpecInput<'a> {
        pub id: &'a str,
        pub rootfs: &'a Path,
        pub config: &'a docker::ContainerConfig,
        pub host_config: &'a docker::HostConfig,
        pub netns: Option<&'a str>,
        pub etc_hosts: &'a Path,
        pub etc_hostname: &'a Path,
        pub etc_resolv: &'a Path,
        pub mounts: &'a [ResolvedMount],
        pub cgroup_path: &'a str,
        pub init_binary: Option<&'a Path>,
    }
    pub struct ResolvedMount {
        pub source: String,
        pub destination: String,
        pub kind: MountKind,
        pub read_only: bool,
        pub propagation: Option<String>,
    }
    pub enum MountKind {
        Bind,
        Tmpfs { options: Vec<String> },
    }
    #[derive(Debug)]
    pub struct SpecError(pub String);
    impl std::fmt::Display for SpecError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    pub fn build(input: &SpecInput) -> Result<oci_spec::runtime::Spec, SpecError> {
        Err(SpecError("not yet".into()))
    }
    pub fn exec_process(
        spec: &oci_spec::runtime::Spec,
        c: &crate::state::Container,
        cfg: &docker::ExecConfig,
        tty: bool,
    ) -> Result<oci_spec::runtime::Process, SpecError> {
        Err(SpecError("not yet".into()))
    }
}

pub mod shim_client {
    use std::io;
    use std::path::{Path, PathBuf};
    pub struct ShimOptions {
        pub id: String,
        pub bundle: PathBuf,
        pub log_path: Option<PathBuf>,
        pub log_max_size: Option<u64>,
        pub log_max_file: u32,
        pub stdin: bool,
        pub stdin_once: bool,
        pub tty: bool,
    }
    #[derive(Debug)]
    pub enum StartError {
        NotFound(String),
        PermissionDenied(String),
        Other(String),
    }
    #[derive(Debug, Clone)]
    pub struct ExitStatus {
        pub code: i32,
        pub signal: Option<i32>,
        pub oom_killed: bool,
        pub finished_at: String,
    }
    pub struct Shim;
    impl Shim {
        pub async fn start(shim_bin: &Path, opts: &ShimOptions) -> Result<(Shim, u32), StartError> {
            Err(StartError::Other("not yet".into()))
        }
        pub async fn connect(bundle: &Path) -> io::Result<Shim> {
            Err(io::Error::other("not yet"))
        }
        pub async fn kill(&self, signal: i32, all: bool) -> io::Result<()> {
            Ok(())
        }
        pub async fn write_stdin(&self, data: &[u8]) -> io::Result<()> {
            Ok(())
        }
        pub async fn close_stdin(&self) -> io::Result<()> {
            Ok(())
        }
        pub async fn resize(&self, height: u16, width: u16) -> io::Result<()> {
            Ok(())
        }
        pub async fn wait(&self) -> io::Result<ExitStatus> {
            Err(io::Error::other("not yet"))
        }
        pub async fn exec(&self, spec: ExecSpec) -> Result<Exec, StartError> {
            Err(StartError::Other("not yet".into()))
        }
        pub fn pid(&self) -> u32 {
            0
        }
    }
    pub fn read_exit(bundle: &Path) -> Option<ExitStatus> {
        None
    }
    pub struct ExecSpec {
        pub exec_id: String,
        pub process: oci_spec::runtime::Process,
        pub stdin: bool,
    }
    pub struct Exec {}
    impl Exec {
        pub async fn take_output(&self) -> Option<tokio::sync::mpsc::Receiver<(u8, Vec<u8>)>> {
            None
        }
        pub async fn write_stdin(&self, data: &[u8]) -> io::Result<()> {
            Ok(())
        }
        pub async fn close_stdin(&self) -> io::Result<()> {
            Ok(())
        }
        pub async fn resize(&self, height: u16, width: u16) -> io::Result<()> {
            Ok(())
        }
        pub async fn kill(&self, signal: i32) -> io::Result<()> {
            Ok(())
        }
        pub async fn wait(&self) -> io::Result<i32> {
            Ok(0)
        }
        pub fn pid(&self) -> u32 {
            0
        }
    }
}

pub mod logs {
    use std::future::Future;
    use std::io;
    use std::path::Path;
    pub struct LogOptions {
        pub follow: bool,
        pub stdout: bool,
        pub stderr: bool,
        pub since: f64,
        pub until: f64,
        pub timestamps: bool,
        pub tail: Option<usize>,
    }
    pub async fn read_log(
        path: &Path,
        opts: LogOptions,
        stop: impl Future<Output = ()> + Send + 'static,
        tx: tokio::sync::mpsc::Sender<(u8, Vec<u8>)>,
    ) -> io::Result<()> {
        Ok(())
    }
}

pub mod user {
    use std::path::Path;
    /// (uid, gid, additional gids) for `-u` inside `rootfs`.
    pub fn resolve(rootfs: &Path, user: &str) -> Result<(u32, u32, Vec<u32>), String> {
        Ok((0, 0, vec![]))
    }
}
