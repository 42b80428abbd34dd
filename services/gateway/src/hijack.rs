//! Docker's hijacked streams (attach, exec start): the connection is upgraded
//! (`101 UPGRADED`, `Upgrade: tcp`), output goes to the client raw (TTY) or in
//! Docker's 8-byte multiplexed frames `[stream, 0, 0, 0, size(u32 BE)]`, and the
//! client's bytes become the process's stdin. EOF from the client closes stdin; the
//! detach sequence (default ctrl-p ctrl-q) ends the attach without touching stdin.

use axum::body::Body;
use axum::response::Response;
use berth_bus::Emitter;
use bus_schema::BusStream;
use futures_util::StreamExt;
use bus_schema::stream::{StdinChunk, StdioChunk};
use http::StatusCode;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Parse Docker's detach keys (`ctrl-p,ctrl-q`, `a`, `ctrl-@`...). Empty: the default.
pub fn detach_keys(spec: Option<&str>) -> Result<Vec<u8>, String> {
    let spec = match spec {
        Some(s) if !s.is_empty() => s,
        _ => "ctrl-p,ctrl-q",
    };
    let mut out = Vec::new();
    for k in spec.split(',') {
        let k = k.trim();
        if let Some(c) = k.strip_prefix("ctrl-") {
            let ch = c.chars().next().filter(|_| c.chars().count() == 1).ok_or_else(|| format!("Unknown character: '{k}'"))?;
            let b = match ch {
                'a'..='z' => ch as u8 - b'a' + 1,
                '@' => 0,
                '[' => 27,
                '\\' => 28,
                ']' => 29,
                '^' => 30,
                '_' => 31,
                _ => return Err(format!("Unknown character: '{k}'")),
            };
            out.push(b);
        } else if k.chars().count() == 1 && k.is_ascii() {
            out.push(k.as_bytes()[0]);
        } else {
            return Err(format!("Unknown character: '{k}'"));
        }
    }
    Ok(out)
}

/// The 101 response; the caller spawns [`pump`] on the upgrade future. The content
/// type says the output is multiplexed when it is framed and the API is 1.42 or later.
pub fn upgrade_response(tty: bool, multiplexed_ok: bool) -> Response {
    let ct = if !tty && multiplexed_ok {
        "application/vnd.docker.multiplexed-stream"
    } else {
        "application/vnd.docker.raw-stream"
    };
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "tcp")
        .header(http::header::CONTENT_TYPE, ct)
        .body(Body::empty())
        .unwrap()
}

/// An error after the answer started, told in the stream: a multiplexed stream gets
/// a `systemerr` frame (stream 3: the docker CLI and Go clients end with "error from
/// daemon in stream: <message>" and fail), a TTY stream (no frames) the bare text.
pub fn error_in_stream(tty: bool, message: &str) -> Vec<u8> {
    if tty {
        format!("\r\n{message}\r\n").into_bytes()
    } else {
        frame(3, message.as_bytes())
    }
}

pub fn frame(stream: u8, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + data.len());
    v.extend_from_slice(&[stream, 0, 0, 0]);
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// How a hijacked session frames its output and when it detaches.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// Docker's 8-byte frames (no TTY on this request), else raw bytes.
    pub framed: bool,
    /// The detach sequence, applied to the client's bytes; empty: never (Docker
    /// only watches for it in a TTY session).
    pub detach: Vec<u8>,
}

impl Session {
    /// Output framed unless `tty`; the detach keys only with a TTY.
    pub fn new(tty: bool, detach: Vec<u8>) -> Session {
        Session { framed: !tty, detach: if tty { detach } else { Vec::new() } }
    }
}

/// Pump an upgraded connection: `out` to the client, the client to `input`.
pub async fn pump(
    on_upgrade: hyper::upgrade::OnUpgrade,
    out: BusStream<StdioChunk>,
    input: Option<Emitter<StdinChunk>>,
    session: Session,
) {
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(error = %e, "upgrade failed");
            // dropping the output stream cancels it
            return;
        }
    };
    pump_io(TokioIo::new(upgraded), out, input, session).await
}

/// A client that did not ask for an upgrade (no `Upgrade` header) gets, as from
/// Moby, `200 OK` with the raw-stream content type and the output as the body,
/// until the stream ends; it has no stdin.
pub fn body_response(mut out: BusStream<StdioChunk>, session: Session) -> Response {
    let framed = session.framed;
    let s = crate::util::async_stream(move |tx| async move {
        while let Some(item) = out.next().await {
            let Ok(c) = item else { return };
            let bytes = if framed { frame(c.stream, &c.data) } else { c.data };
            if tx.send(Ok(bytes::Bytes::from(bytes))).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/vnd.docker.raw-stream")
        .body(Body::from_stream(s))
        .unwrap()
}

/// Write one message on a hijacked connection and close it: Moby writes an exec
/// that could not start as `<error>\r\n` on its stdout.
pub async fn write_error<IO>(mut io: IO, session: &Session, msg: &str)
where
    IO: tokio::io::AsyncWrite + Unpin,
{
    let line = format!("{msg}\r\n");
    let bytes = if session.framed { frame(1, line.as_bytes()) } else { line.into_bytes() };
    let _ = io.write_all(&bytes).await;
    let _ = io.flush().await;
    let _ = io.shutdown().await;
}

/// Pump a hijacked connection (or any duplex byte stream): `out` to the client,
/// the client to `input`.
pub async fn pump_io<IO>(io: IO, mut out: BusStream<StdioChunk>, input: Option<Emitter<StdinChunk>>, session: Session)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let Session { framed, detach } = session;
    let (mut rd, mut wr) = tokio::io::split(io);
    let (detached_tx, mut detached_rx) = tokio::sync::oneshot::channel::<()>();

    // client -> stdin
    let reader = tokio::spawn(async move {
        let mut input = input;
        let mut buf = vec![0u8; 32 * 1024];
        let mut matched = 0usize;
        loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) | Err(_) => 0,
                Ok(n) => n,
            };
            if n == 0 {
                if let Some(w) = input.take() {
                    let _ = w.send(StdinChunk::Close).await;
                }
                return;
            }
            let data = &buf[..n];
            // detach keys only apply to an interactive TTY session, as in Docker
            if !detach.is_empty() {
                let mut cut = None;
                for (i, b) in data.iter().enumerate() {
                    if *b == detach[matched] {
                        matched += 1;
                        if matched == detach.len() {
                            cut = Some(i);
                            break;
                        }
                    } else {
                        matched = if *b == detach[0] { 1 } else { 0 };
                    }
                }
                if let Some(i) = cut {
                    let keep = (i + 1).saturating_sub(detach.len());
                    if let Some(w) = input.as_mut() {
                        if keep > 0 {
                            let _ = w.send(StdinChunk::Data(data[..keep].to_vec())).await;
                        }
                    }
                    // dropping the emitter ends stdin
                    drop(input.take());
                    let _ = detached_tx.send(());
                    return;
                }
            }
            if let Some(w) = input.as_mut() {
                if w.send(StdinChunk::Data(data.to_vec())).await.is_err() {
                    input = None;
                }
            }
        }
    });

    // output -> client
    let mut detach_open = true;
    loop {
        tokio::select! {
            item = out.next() => {
                match item {
                    Some(Ok(c)) => {
                        let bytes = if framed { frame(c.stream, &c.data) } else { c.data };
                        if let Err(e) = wr.write_all(&bytes).await {
                            tracing::debug!(error = %e, "attach client went away");
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        // the service serving it died, or the bus dropped
                        tracing::warn!(error = %e, "attach stream ended with an error");
                        let _ = wr.write_all(&error_in_stream(!framed, &e.message)).await;
                        break;
                    }
                    None => break,
                }
            }
            r = &mut detached_rx, if detach_open => {
                // a dropped sender only means the client closed its write side
                // (the CLI does that when it has no stdin); output goes on
                if r.is_err() {
                    detach_open = false;
                    continue;
                }
                break;
            }
        }
    }
    // the output stream, unread from here, is cancelled
    drop(out);
    let _ = wr.flush().await;
    let _ = wr.shutdown().await;
    reader.abort();
}

/// Pump a WebSocket attach: each output chunk a message (binary or text), each
/// message from the client to stdin; the client's close ends stdin.
pub async fn pump_ws(
    socket: axum::extract::ws::WebSocket,
    mut out: BusStream<StdioChunk>,
    input: Option<Emitter<StdinChunk>>,
    binary: bool,
) {
    use axum::extract::ws::Message;
    use futures_util::SinkExt;
    let (mut tx, mut rx) = socket.split();
    let reader = tokio::spawn(async move {
        let mut input = input;
        while let Some(Ok(m)) = rx.next().await {
            let data = match m {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_str().as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            if let Some(w) = input.as_mut() {
                if w.send(StdinChunk::Data(data)).await.is_err() {
                    input = None;
                }
            }
        }
        if let Some(w) = input.take() {
            let _ = w.send(StdinChunk::Close).await;
        }
    });
    while let Some(item) = out.next().await {
        let Ok(c) = item else { break };
        let m = if binary {
            Message::Binary(c.data.into())
        } else {
            Message::Text(String::from_utf8_lossy(&c.data).into_owned().into())
        };
        if tx.send(m).await.is_err() {
            break;
        }
    }
    let _ = tx.send(Message::Close(None)).await;
    let _ = tx.close().await;
    reader.abort();
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_detach_keys() {
        assert_eq!(detach_keys(None).unwrap(), vec![16, 17]);
        assert_eq!(detach_keys(Some("ctrl-a,x")).unwrap(), vec![1, b'x']);
        assert!(detach_keys(Some("ctrl-é")).is_err());
        assert!(detach_keys(Some("abc")).is_err());
    }
    #[test]
    fn frames_like_docker() {
        assert_eq!(frame(1, b"hi"), vec![1, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']);
        assert_eq!(error_in_stream(false, "x"), vec![3, 0, 0, 0, 0, 0, 0, 1, b'x']);
        assert_eq!(error_in_stream(true, "x"), b"\r\nx\r\n");
    }
}
