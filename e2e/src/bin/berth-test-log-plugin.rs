//! A tiny log-driver plugin for the e2e tests (e2e/tests/plugins.rs): serves
//! Docker's plugin protocol on `/run/docker/plugins/$PLUGIN_SOCKET` (default
//! `berthlog.sock`), answers `/Plugin.Activate` with `LogDriver`, and for each
//! `/LogDriver.StartLogging` {File, Info} opens the FIFO and appends every entry it
//! reads to `$LOG_DIR/<container ID>.entries` (default `/logs`, a bind mount the test
//! reads) as one JSON line {source, line, partial, time_nano, partial_log_metadata}.
//! Calls are logged as lines in `$LOG_DIR/calls.log`: `StartLogging <container ID>
//! <File>` (with the Info in `<container ID>.info.json`), `StopLogging <container
//! ID> <File>`.
//!
//! With `READ_LOGS=1` (a setting: `docker plugin set <plugin> READ_LOGS=1`) it
//! answers `/LogDriver.Capabilities` with `ReadLogs` and serves
//! `/LogDriver.ReadLogs` {Info, Config}: the entries it stored for the container,
//! the last `Config.Tail` of them (-1: all), each line marked `[berthlog] ` and
//! ended by a newline (unless partial), as length-prefixed LogEntry frames; with
//! `Config.Follow`, new entries too until StopLogging. The call is logged as
//! `ReadLogs <container ID> <Config as JSON>`. It does not filter by time. Like
//! plugins that keep what StartLogging set up, it reads only for a container it
//! logs now (Moby starts a logger around the ReadLogs of a stopped container);
//! else it answers `no logger for <container ID>`.
//!
//! While the file `$LOG_DIR/stall` exists it reads nothing from its FIFOs (a
//! slow plugin: the tests of `--log-opt mode`).
//!
//! The entries are decoded by hand from the protobuf wire format (the framing:
//! a big-endian u32 length, then the LogEntry): a check independent of the
//! encoder berth uses. HTTP: src/plugin_http.rs, shared with the test volume plugin.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

#[path = "../plugin_http.rs"]
mod plugin_http;

struct Plugin {
    dir: PathBuf,
    read_logs: bool,
    /// File -> container ID.
    files: Arc<Mutex<HashMap<String, String>>>,
}

fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let x = *b.get(*at)?;
        *at += 1;
        v |= ((x & 0x7f) as u64) << shift;
        if x & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The fields of one message: (tag, varint value or bytes).
fn fields(b: &[u8]) -> Option<Vec<(u64, Result<u64, Vec<u8>>)>> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < b.len() {
        let key = varint(b, &mut at)?;
        match key & 7 {
            0 => out.push((key >> 3, Ok(varint(b, &mut at)?))),
            2 => {
                let len = varint(b, &mut at)? as usize;
                let v = b.get(at..at + len)?.to_vec();
                at += len;
                out.push((key >> 3, Err(v)));
            }
            _ => return None,
        }
    }
    Some(out)
}

/// A LogEntry as JSON.
fn decode(b: &[u8]) -> Option<Value> {
    let mut e = json!({ "source": "", "time_nano": 0, "line": "", "partial": false, "partial_log_metadata": null });
    for (tag, v) in fields(b)? {
        match (tag, v) {
            (1, Err(s)) => e["source"] = json!(String::from_utf8_lossy(&s)),
            (2, Ok(n)) => e["time_nano"] = json!(n as i64),
            (3, Err(s)) => e["line"] = json!(String::from_utf8_lossy(&s)),
            (4, Ok(n)) => e["partial"] = json!(n != 0),
            (5, Err(m)) => {
                let mut p = json!({ "last": false, "id": "", "ordinal": 0 });
                for (t, v) in fields(&m)? {
                    match (t, v) {
                        (1, Ok(n)) => p["last"] = json!(n != 0),
                        (2, Err(s)) => p["id"] = json!(String::from_utf8_lossy(&s)),
                        (3, Ok(n)) => p["ordinal"] = json!(n as i32),
                        _ => return None,
                    }
                }
                e["partial_log_metadata"] = p;
            }
            _ => return None,
        }
    }
    Some(e)
}

fn append(path: &Path, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{line}");
    }
}

/// Reads the FIFO until every writer closed it (nothing while `stall` exists).
fn consume(file: String, out: PathBuf, stall: PathBuf) {
    let mut f = match std::fs::File::open(&file) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("open {file}: {e}");
            return;
        }
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        while stall.exists() {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let n = match f.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        while buf.len() - at >= 4 {
            let len = u32::from_be_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
            if buf.len() - at - 4 < len {
                break;
            }
            match decode(&buf[at + 4..at + 4 + len]) {
                Some(e) => append(&out, &e.to_string()),
                None => append(&out, "{\"undecodable\":true}"),
            }
            at += 4 + len;
        }
        buf.drain(..at);
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A stored entry (as [`decode`] made it) as a frame: the length, then the
/// LogEntry with its line marked.
fn frame(e: &Value) -> Vec<u8> {
    let partial = e["partial"].as_bool().unwrap_or(false);
    let mut line = format!("[berthlog] {}", e["line"].as_str().unwrap_or(""));
    if !partial {
        line.push('\n');
    }
    let mut m = Vec::new();
    let source = e["source"].as_str().unwrap_or("");
    m.push(0x0a);
    put_varint(&mut m, source.len() as u64);
    m.extend_from_slice(source.as_bytes());
    m.push(0x10);
    put_varint(&mut m, e["time_nano"].as_i64().unwrap_or(0) as u64);
    m.push(0x1a);
    put_varint(&mut m, line.len() as u64);
    m.extend_from_slice(line.as_bytes());
    if partial {
        m.extend_from_slice(&[0x20, 1]);
    }
    let mut out = (m.len() as u32).to_be_bytes().to_vec();
    out.extend(m);
    out
}

/// The entries stored so far (whole lines only).
fn stored(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = text.rfind('\n').map(|i| &text[..=i]).unwrap_or("");
    whole.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

impl plugin_http::Handler for Plugin {
    fn stream(&self, method: &str, body: &Value) -> Option<Box<dyn FnOnce(&mut dyn Write) -> std::io::Result<()> + Send>> {
        if method != "/LogDriver.ReadLogs" || !self.read_logs {
            return None;
        }
        let id = body.pointer("/Info/ContainerID").and_then(Value::as_str).unwrap_or("").to_string();
        if id.is_empty() || id.contains('/') {
            return None;
        }
        append(&self.dir.join("calls.log"), &format!("ReadLogs {id} {}", body["Config"]));
        if !self.files.lock().unwrap().values().any(|v| *v == id) {
            // answered by handle: an error
            return None;
        }
        let tail = body.pointer("/Config/Tail").and_then(Value::as_i64).unwrap_or(-1);
        let follow = body.pointer("/Config/Follow").and_then(Value::as_bool).unwrap_or(false);
        let path = self.dir.join(format!("{id}.entries"));
        let files = self.files.clone();
        Some(Box::new(move |w: &mut dyn Write| {
            let all = stored(&path);
            let skip = if tail >= 0 { all.len().saturating_sub(tail as usize) } else { 0 };
            for e in &all[skip..] {
                w.write_all(&frame(e))?;
            }
            w.flush()?;
            let mut sent = all.len();
            while follow {
                let running = files.lock().unwrap().values().any(|v| *v == id);
                // once stopped: what the FIFO still had, then the end
                std::thread::sleep(std::time::Duration::from_millis(if running { 50 } else { 300 }));
                let all = stored(&path);
                for e in &all[sent.min(all.len())..] {
                    w.write_all(&frame(e))?;
                }
                w.flush()?;
                sent = all.len();
                if !running {
                    break;
                }
            }
            Ok(())
        }))
    }

    fn handle(&self, method: &str, body: &Value) -> (u16, Value) {
        let file = body.get("File").and_then(Value::as_str).unwrap_or("").to_string();
        match method {
            "/Plugin.Activate" => (200, json!({ "Implements": ["LogDriver"] })),
            "/LogDriver.Capabilities" => (200, json!({ "Cap": { "ReadLogs": self.read_logs } })),
            "/LogDriver.ReadLogs" if self.read_logs => {
                let id = body.pointer("/Info/ContainerID").and_then(Value::as_str).unwrap_or("");
                (500, json!({ "Err": format!("no logger for {id}") }))
            }
            "/LogDriver.StartLogging" => {
                let id = body.pointer("/Info/ContainerID").and_then(Value::as_str).unwrap_or("").to_string();
                if id.is_empty() || id.contains('/') || !file.starts_with("/run/docker/logging/") {
                    return (200, json!({ "Err": format!("bad StartLogging: {body}") }));
                }
                let _ = std::fs::write(self.dir.join(format!("{id}.info.json")), body["Info"].to_string());
                append(&self.dir.join("calls.log"), &format!("StartLogging {id} {file}"));
                self.files.lock().unwrap().insert(file.clone(), id.clone());
                let out = self.dir.join(format!("{id}.entries"));
                let stall = self.dir.join("stall");
                std::thread::spawn(move || consume(file, out, stall));
                (200, json!({ "Err": "" }))
            }
            "/LogDriver.StopLogging" => {
                let id = self.files.lock().unwrap().remove(&file).unwrap_or_default();
                append(&self.dir.join("calls.log"), &format!("StopLogging {id} {file}"));
                (200, json!({ "Err": "" }))
            }
            _ => (404, json!({ "Err": format!("{method} not implemented") })),
        }
    }
}

fn main() {
    let sock_name = std::env::var("PLUGIN_SOCKET").unwrap_or_else(|_| "berthlog.sock".into());
    let dir = PathBuf::from(std::env::var("LOG_DIR").unwrap_or_else(|_| "/logs".into()));
    std::fs::create_dir_all(&dir).expect("log dir");
    let read_logs = std::env::var("READ_LOGS").is_ok_and(|v| v == "1");
    plugin_http::serve(&sock_name, Plugin { dir, read_logs, files: Arc::new(Mutex::new(HashMap::new())) })
}
