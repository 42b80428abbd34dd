//! A tiny volume-driver plugin for the e2e tests (e2e/tests/plugins.rs): serves
//! Docker's plugin protocol on `/run/docker/plugins/$PLUGIN_SOCKET` (default
//! `berthvol.sock`) and keeps each volume as a directory under `$VOLUME_ROOT`
//! (default `/data`, in its own rootfs; a propagated mount when the config has one).
//! Every Mount and Unmount is logged as a line `Mount <volume> <id>` in
//! `/calls.log` of its rootfs (beside the volume root), for the test to read from
//! the host. A volume created with the option `fail=<text>` is refused with that
//! text.
//!
//! Hand-written HTTP/1.1 (one request per connection, `Connection: close`): the
//! plugin runs from a rootfs of its own binary and libc only, std and serde_json.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

const MEDIA_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

#[derive(Default)]
struct State {
    /// Volume name -> the IDs it is mounted for now.
    mounts: BTreeMap<String, BTreeSet<String>>,
    /// Mount calls seen, per volume.
    mount_calls: BTreeMap<String, u64>,
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
                match method {
                    "/VolumeDriver.Mount" => {
                        st.mounts.entry(name.to_string()).or_default().insert(id);
                        *st.mount_calls.entry(name.to_string()).or_default() += 1;
                    }
                    "/VolumeDriver.Unmount" => {
                        st.mounts.entry(name.to_string()).or_default().remove(&id);
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

fn serve(p: &Plugin, s: UnixStream) -> std::io::Result<()> {
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; len.min(1 << 20)];
    r.read_exact(&mut body)?;
    let v: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let (status, answer) = p.handle(&path, &v);
    let text = answer.to_string();
    let reason = if status == 200 { "OK" } else { "Not Found" };
    let mut w = s;
    write!(w, "HTTP/1.1 {status} {reason}\r\nContent-Type: {MEDIA_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}", text.len())?;
    w.flush()
}

fn main() {
    let sock_name = std::env::var("PLUGIN_SOCKET").unwrap_or_else(|_| "berthvol.sock".into());
    let root = PathBuf::from(std::env::var("VOLUME_ROOT").unwrap_or_else(|_| "/data".into()));
    std::fs::create_dir_all(&root).expect("volume root");
    let dir = Path::new("/run/docker/plugins");
    std::fs::create_dir_all(dir).expect("socket dir");
    let sock = dir.join(sock_name);
    let _ = std::fs::remove_file(&sock);
    let l = UnixListener::bind(&sock).expect("bind the plugin socket");
    eprintln!("serving {}", sock.display());
    let p = Arc::new(Plugin { root, state: Mutex::new(State::default()) });
    for s in l.incoming() {
        let Ok(s) = s else { continue };
        let p = p.clone();
        std::thread::spawn(move || {
            if let Err(e) = serve(&p, s) {
                eprintln!("request failed: {e}");
            }
        });
    }
}
