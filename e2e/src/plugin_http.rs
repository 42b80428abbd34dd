//! The HTTP side of the e2e test plugins (src/bin/berth-test-volume-plugin.rs,
//! berth-test-log-plugin.rs), included by each with `#[path]`: Docker's plugin
//! protocol on `/run/docker/plugins/<socket>`, hand-written HTTP/1.1 (one request
//! per connection, `Connection: close`; the plugins run from a rootfs of their own
//! binary and libc only, std and serde_json), a thread per connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};

const MEDIA_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// Answers one request: (status, JSON body) for the method path and the body.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, method: &str, body: &Value) -> (u16, Value);

    /// A 200 answer streamed instead (no length; its end is the close): what
    /// writes it, or None to answer with [`Handler::handle`].
    #[allow(clippy::type_complexity)]
    fn stream(&self, _method: &str, _body: &Value) -> Option<Box<dyn FnOnce(&mut dyn Write) -> std::io::Result<()> + Send>> {
        None
    }
}

fn serve_one<H: Handler>(h: &H, s: UnixStream) -> std::io::Result<()> {
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
    if let Some(write) = h.stream(&path, &v) {
        let mut w = s;
        write!(w, "HTTP/1.1 200 OK\r\nContent-Type: application/x-json-stream\r\nConnection: close\r\n\r\n")?;
        w.flush()?;
        return write(&mut w);
    }
    let (status, answer) = h.handle(&path, &v);
    let text = answer.to_string();
    let reason = if status == 200 { "OK" } else { "Not Found" };
    let mut w = s;
    write!(w, "HTTP/1.1 {status} {reason}\r\nContent-Type: {MEDIA_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}", text.len())?;
    w.flush()
}

/// Serve `h` on `/run/docker/plugins/<sock_name>` until the process ends.
pub fn serve<H: Handler>(sock_name: &str, h: H) -> ! {
    let dir = Path::new("/run/docker/plugins");
    std::fs::create_dir_all(dir).expect("socket dir");
    let sock = dir.join(sock_name);
    let _ = std::fs::remove_file(&sock);
    let l = UnixListener::bind(&sock).expect("bind the plugin socket");
    eprintln!("serving {}", sock.display());
    let h = Arc::new(h);
    for s in l.incoming() {
        let Ok(s) = s else { continue };
        let h = h.clone();
        std::thread::spawn(move || {
            if let Err(e) = serve_one(&*h, s) {
                eprintln!("request failed: {e}");
            }
        });
    }
    unreachable!("incoming() never ends")
}
