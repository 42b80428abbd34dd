//! A tiny volume-driver plugin for the e2e tests (e2e/tests/plugins.rs): serves
//! Docker's plugin protocol on `/run/docker/plugins/$PLUGIN_SOCKET` (default
//! `berthvol.sock`) and keeps each volume as a directory under `$VOLUME_ROOT`
//! (default `/data`, in its own rootfs; a propagated mount when the config has one).
//! Every Mount and Unmount is logged as a line `Mount <volume> <id>` in
//! `/calls.log` of its rootfs (beside the volume root), for the test to read from
//! the host. A volume created with the option `fail=<text>` is refused with that
//! text.
//!
//! A volume created with `tmpfs=1` gets a tmpfs on its directory at its first Mount
//! (a file `inside` written there) and loses it at its last Unmount: with the
//! volume root in the plugin's propagated mount, the tmpfs reaches the host and the
//! containers using the volume only if that mount is shared (as sshfs/nfs plugins
//! need). HTTP: src/plugin_http.rs, shared with the test log plugin.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{json, Value};

#[path = "../plugin_http.rs"]
mod plugin_http;

#[derive(Default)]
struct State {
    /// Volume name -> the IDs it is mounted for now.
    mounts: BTreeMap<String, BTreeSet<String>>,
    /// Mount calls seen, per volume.
    mount_calls: BTreeMap<String, u64>,
    /// The `tmpfs=1` volumes.
    tmpfs: BTreeSet<String>,
}

struct Plugin {
    root: PathBuf,
    state: Mutex<State>,
}

fn valid(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

impl Plugin {
    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// A `tmpfs=1` volume: a tmpfs mounted on its directory at its first Mount
    /// (with a file `inside` written into it), unmounted at its last Unmount.
    fn tmpfs_mount(&self, name: &str) -> Result<(), String> {
        let d = self.dir(name);
        let c = std::ffi::CString::new(d.to_str().unwrap_or_default()).map_err(|e| e.to_string())?;
        let r = unsafe { libc::mount(c"tmpfs".as_ptr(), c.as_ptr(), c"tmpfs".as_ptr(), 0, c"size=1m".as_ptr().cast()) };
        if r != 0 {
            return Err(format!("mount tmpfs on {}: {}", d.display(), std::io::Error::last_os_error()));
        }
        std::fs::write(d.join("inside"), format!("written inside the tmpfs of {name}\n")).map_err(|e| e.to_string())
    }

    fn tmpfs_unmount(&self, name: &str) {
        if let Ok(c) = std::ffi::CString::new(self.dir(name).to_str().unwrap_or_default()) {
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

impl plugin_http::Handler for Plugin {
    fn handle(&self, method: &str, body: &Value) -> (u16, Value) {
        let name = body.get("Name").and_then(Value::as_str).unwrap_or("");
        let err = |m: String| (200, json!({ "Err": m }));
        match method {
            "/Plugin.Activate" => (200, json!({ "Implements": ["VolumeDriver"] })),
            "/VolumeDriver.Capabilities" => (200, json!({ "Capabilities": { "Scope": "local" } })),
            "/VolumeDriver.List" => {
                let mut vols = Vec::new();
                for e in std::fs::read_dir(&self.root).into_iter().flatten().flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    vols.push(json!({ "Name": n, "Mountpoint": self.dir(&n).display().to_string() }));
                }
                (200, json!({ "Volumes": vols, "Err": "" }))
            }
            _ if !valid(name) => err(format!("invalid volume name {name:?}")),
            "/VolumeDriver.Create" => {
                if let Some(f) = body.pointer("/Opts/fail").and_then(Value::as_str) {
                    return err(f.to_string());
                }
                if body.pointer("/Opts/tmpfs").and_then(Value::as_str) == Some("1") {
                    self.state.lock().unwrap().tmpfs.insert(name.to_string());
                }
                match std::fs::create_dir_all(self.dir(name)) {
                    Ok(()) => (200, json!({ "Err": "" })),
                    Err(e) => err(e.to_string()),
                }
            }
            "/VolumeDriver.Remove" => {
                if self.state.lock().unwrap().mounts.get(name).is_some_and(|m| !m.is_empty()) {
                    return err(format!("volume {name} is mounted"));
                }
                match std::fs::remove_dir_all(self.dir(name)) {
                    Ok(()) => (200, json!({ "Err": "" })),
                    Err(e) => err(format!("remove {name}: {e}")),
                }
            }
            "/VolumeDriver.Path" | "/VolumeDriver.Mount" | "/VolumeDriver.Unmount" | "/VolumeDriver.Get" => {
                let d = self.dir(name);
                if !d.is_dir() {
                    return err(format!("no such volume: {name}"));
                }
                let id = body.get("ID").and_then(Value::as_str).unwrap_or("").to_string();
                let mut st = self.state.lock().unwrap();
                if matches!(method, "/VolumeDriver.Mount" | "/VolumeDriver.Unmount") {
                    let log = self.root.parent().unwrap_or(Path::new("/")).join("calls.log");
                    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
                        let _ = writeln!(f, "{} {name} {id}", &method["/VolumeDriver.".len()..]);
                    }
                }
                let tmpfs = st.tmpfs.contains(name);
                match method {
                    "/VolumeDriver.Mount" => {
                        let users = st.mounts.entry(name.to_string()).or_default();
                        if tmpfs && users.is_empty() {
                            if let Err(e) = self.tmpfs_mount(name) {
                                return err(e);
                            }
                        }
                        users.insert(id);
                        *st.mount_calls.entry(name.to_string()).or_default() += 1;
                    }
                    "/VolumeDriver.Unmount" => {
                        let users = st.mounts.entry(name.to_string()).or_default();
                        if users.remove(&id) && users.is_empty() && tmpfs {
                            self.tmpfs_unmount(name);
                        }
                    }
                    _ => {}
                }
                let mp = d.display().to_string();
                if method == "/VolumeDriver.Get" {
                    let open = st.mounts.get(name).map(|m| m.len()).unwrap_or(0);
                    let calls = st.mount_calls.get(name).copied().unwrap_or(0);
                    (200, json!({ "Volume": { "Name": name, "Mountpoint": mp, "Status": { "open": open, "mounts": calls } }, "Err": "" }))
                } else if method == "/VolumeDriver.Unmount" {
                    (200, json!({ "Err": "" }))
                } else {
                    (200, json!({ "Mountpoint": mp, "Err": "" }))
                }
            }
            _ => (404, json!({ "Err": format!("{method} not implemented") })),
        }
    }
}

fn main() {
    let sock_name = std::env::var("PLUGIN_SOCKET").unwrap_or_else(|_| "berthvol.sock".into());
    let root = PathBuf::from(std::env::var("VOLUME_ROOT").unwrap_or_else(|_| "/data".into()));
    std::fs::create_dir_all(&root).expect("volume root");
    plugin_http::serve(&sock_name, Plugin { root, state: Mutex::new(State::default()) })
}
