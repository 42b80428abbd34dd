//! The control protocol between the runtime service and a shim, over the unix socket
//! `<bundle>/shim.sock` (and the socket the shim inherits as its stdin at spawn).
//!
//! A frame is `u32` little-endian length (of what follows), one tag byte, a payload.
//! Data frames (stdin, output) carry raw bytes, so a chunk costs no encoding.
//!
//! A connection starts as a control connection: `Kill`, `Resize`, `CloseStdin` and
//! `State` get one reply each (`Ok`, `Error` or `State`); `Stdin` gets none (the socket
//! is the backpressure); `Wait` subscribes to `Exited`; `Attach` subscribes to the
//! container's live output (`Output`). A connection that sends `Exec` becomes that
//! exec's: the shim answers `ExecStarted` or `StartFailed`, then streams `Output` and
//! finally `ExecExited`; `Stdin`/`CloseStdin`/`Resize`/`Kill` on it go to the exec.
//! The spawn connection gets `Started` or `StartFailed`, then (when the shim was told
//! to attach it) the container's output, then `Exited`.

use serde::{Deserialize, Serialize};
use std::io;

/// The byte the runtime sends on the spawn socket once the bundle is complete: a
/// shim waits for it before reading config.json (it exits quietly on EOF instead).
pub const GO: u8 = b'g';

/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 4 << 20;
/// Largest output/stdin chunk put in one frame.
pub const CHUNK: usize = 32 << 10;

/// Stream ids, as Docker's stdcopy numbers them.
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;

mod tag {
    pub const ATTACH: u8 = 1;
    pub const STDIN: u8 = 2;
    pub const CLOSE_STDIN: u8 = 3;
    pub const RESIZE: u8 = 4;
    pub const KILL: u8 = 5;
    pub const EXEC: u8 = 6;
    pub const STATE: u8 = 7;
    pub const WAIT: u8 = 8;
    pub const EXEC_WAIT: u8 = 9;

    pub const STARTED: u8 = 65;
    pub const START_FAILED: u8 = 66;
    pub const EXITED: u8 = 67;
    pub const OUTPUT: u8 = 68;
    pub const OK: u8 = 69;
    pub const ERROR: u8 = 70;
    pub const STATE_REPLY: u8 = 71;
    pub const EXEC_STARTED: u8 = 72;
    pub const EXEC_EXITED: u8 = 73;
}

/// Where the shim records the exit of an exec that ended without a client (the
/// runtime was gone): `<bundle>/exec-<id>.exit.json`. None for an id that is not a
/// plain name (it becomes a file name).
pub fn exec_exit_file(bundle: &std::path::Path, exec_id: &str) -> Option<std::path::PathBuf> {
    let plain = !exec_id.is_empty()
        && exec_id.len() <= 128
        && exec_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    plain.then(|| bundle.join(format!("exec-{exec_id}.exit.json")))
}

/// How a container's (or exec's) process ended. Stored as `<bundle>/exit.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The exit code, or 128+signal when killed by a signal.
    pub code: i32,
    pub signal: Option<i32>,
    /// The cgroup's OOM killer killed a process of the container during its life.
    pub oom_killed: bool,
    /// RFC 3339 with nanoseconds, UTC.
    pub finished_at: String,
}

/// Why a process could not be started; the CLI maps these to exit codes 127 / 126.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartErrorKind {
    /// `exec: "x": executable file not found in $PATH`, `... no such file or directory`.
    NotFound,
    /// `... permission denied`.
    PermissionDenied,
    Other,
}

impl StartErrorKind {
    fn to_u8(self) -> u8 {
        match self {
            StartErrorKind::NotFound => 1,
            StartErrorKind::PermissionDenied => 2,
            StartErrorKind::Other => 3,
        }
    }
    fn from_u8(b: u8) -> StartErrorKind {
        match b {
            1 => StartErrorKind::NotFound,
            2 => StartErrorKind::PermissionDenied,
            _ => StartErrorKind::Other,
        }
    }
}

/// What `State` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateInfo {
    pub id: String,
    /// Host pid of the container's init.
    pub pid: u32,
    pub running: bool,
    pub exit: Option<ExitStatus>,
    /// Execs still running, by exec id with their host pid.
    pub execs: Vec<(String, u32)>,
}

/// A process to run inside a running container (`docker exec`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub exec_id: String,
    /// An OCI `process` object (JSON): args, env, cwd, user, capabilities, terminal,
    /// noNewPrivileges, rlimits.
    pub process: serde_json::Value,
    /// Keep a stdin pipe open (else /dev/null).
    pub stdin: bool,
    /// Nothing reads the output: give the process /dev/null (`docker exec -d`).
    #[serde(default)]
    pub detach: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Attach { stdout: bool, stderr: bool },
    Stdin(Vec<u8>),
    CloseStdin,
    Resize { height: u16, width: u16 },
    Kill { signal: i32, all: bool },
    Exec(Box<ExecRequest>),
    State,
    Wait,
    /// Become the client of a running exec whose client went away (a runtime that
    /// restarted): `ExecStarted` with its pid, then its `ExecExited`; `Error` when no
    /// such exec runs (its exit, if it ended meanwhile, is in the bundle:
    /// [`exec_exit_file`]).
    ExecWait { exec_id: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Started {
        pid: u32,
    },
    StartFailed {
        kind: StartErrorKind,
        message: String,
    },
    Exited(ExitStatus),
    Output {
        stream: u8,
        data: Vec<u8>,
    },
    Ok,
    Error(String),
    State(StateInfo),
    ExecStarted {
        pid: u32,
    },
    ExecExited(ExitStatus),
}

fn header(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.extend_from_slice(&((len + 1) as u32).to_le_bytes());
    out.push(tag);
}

fn frame(out: &mut Vec<u8>, tag: u8, payload: &[u8]) {
    header(out, tag, payload.len());
    out.extend_from_slice(payload);
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("serializing a protocol message")
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("shim protocol: bad {what}"),
    )
}

fn from_json<'a, T: Deserialize<'a>>(b: &'a [u8], what: &str) -> io::Result<T> {
    serde_json::from_slice(b).map_err(|_| bad(what))
}

/// Appends an `Output` frame without building an `Event` (the shim's hot path).
pub fn encode_output(out: &mut Vec<u8>, stream: u8, data: &[u8]) {
    header(out, tag::OUTPUT, data.len() + 1);
    out.push(stream);
    out.extend_from_slice(data);
}

impl Request {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Request::Attach { stdout, stderr } => {
                frame(out, tag::ATTACH, &[*stdout as u8, *stderr as u8])
            }
            Request::Stdin(d) => frame(out, tag::STDIN, d),
            Request::CloseStdin => frame(out, tag::CLOSE_STDIN, &[]),
            Request::Resize { height, width } => {
                let mut p = [0u8; 4];
                p[..2].copy_from_slice(&height.to_le_bytes());
                p[2..].copy_from_slice(&width.to_le_bytes());
                frame(out, tag::RESIZE, &p)
            }
            Request::Kill { signal, all } => {
                let mut p = [0u8; 5];
                p[..4].copy_from_slice(&signal.to_le_bytes());
                p[4] = *all as u8;
                frame(out, tag::KILL, &p)
            }
            Request::Exec(e) => frame(out, tag::EXEC, &json(e)),
            Request::State => frame(out, tag::STATE, &[]),
            Request::Wait => frame(out, tag::WAIT, &[]),
            Request::ExecWait { exec_id } => frame(out, tag::EXEC_WAIT, exec_id.as_bytes()),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    pub fn decode(tag: u8, p: &[u8]) -> io::Result<Request> {
        Ok(match tag {
            tag::ATTACH if p.len() == 2 => Request::Attach {
                stdout: p[0] != 0,
                stderr: p[1] != 0,
            },
            tag::STDIN => Request::Stdin(p.to_vec()),
            tag::CLOSE_STDIN => Request::CloseStdin,
            tag::RESIZE if p.len() == 4 => Request::Resize {
                height: u16::from_le_bytes([p[0], p[1]]),
                width: u16::from_le_bytes([p[2], p[3]]),
            },
            tag::KILL if p.len() == 5 => Request::Kill {
                signal: i32::from_le_bytes([p[0], p[1], p[2], p[3]]),
                all: p[4] != 0,
            },
            tag::EXEC => Request::Exec(Box::new(from_json(p, "exec request")?)),
            tag::STATE => Request::State,
            tag::WAIT => Request::Wait,
            tag::EXEC_WAIT => Request::ExecWait {
                exec_id: String::from_utf8(p.to_vec()).map_err(|_| bad("exec id"))?,
            },
            _ => return Err(bad("request")),
        })
    }
}

impl Event {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Event::Started { pid } => frame(out, tag::STARTED, &pid.to_le_bytes()),
            Event::StartFailed { kind, message } => {
                header(out, tag::START_FAILED, message.len() + 1);
                out.push(kind.to_u8());
                out.extend_from_slice(message.as_bytes());
            }
            Event::Exited(s) => frame(out, tag::EXITED, &json(s)),
            Event::Output { stream, data } => encode_output(out, *stream, data),
            Event::Ok => frame(out, tag::OK, &[]),
            Event::Error(m) => frame(out, tag::ERROR, m.as_bytes()),
            Event::State(s) => frame(out, tag::STATE_REPLY, &json(s)),
            Event::ExecStarted { pid } => frame(out, tag::EXEC_STARTED, &pid.to_le_bytes()),
            Event::ExecExited(s) => frame(out, tag::EXEC_EXITED, &json(s)),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    pub fn decode(tag: u8, p: &[u8]) -> io::Result<Event> {
        let u32_of = |p: &[u8]| -> io::Result<u32> {
            Ok(u32::from_le_bytes(p.try_into().map_err(|_| bad("pid"))?))
        };
        Ok(match tag {
            tag::STARTED => Event::Started { pid: u32_of(p)? },
            tag::START_FAILED if !p.is_empty() => Event::StartFailed {
                kind: StartErrorKind::from_u8(p[0]),
                message: String::from_utf8_lossy(&p[1..]).into_owned(),
            },
            tag::EXITED => Event::Exited(from_json(p, "exit status")?),
            tag::OUTPUT if !p.is_empty() => Event::Output {
                stream: p[0],
                data: p[1..].to_vec(),
            },
            tag::OK => Event::Ok,
            tag::ERROR => Event::Error(String::from_utf8_lossy(p).into_owned()),
            tag::STATE_REPLY => Event::State(from_json(p, "state")?),
            tag::EXEC_STARTED => Event::ExecStarted { pid: u32_of(p)? },
            tag::EXEC_EXITED => Event::ExecExited(from_json(p, "exit status")?),
            _ => return Err(bad("event")),
        })
    }
}

/// Splits complete frames off the front of a buffer: `Some((tag, payload_range,
/// frame_len))` when one is whole.
pub fn split_frame(buf: &[u8]) -> io::Result<Option<(u8, std::ops::Range<usize>, usize)>> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(bad("frame length"));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    Ok(Some((buf[4], 5..4 + len, 4 + len)))
}

/// Blocking read of one frame (tests and simple clients).
pub fn read_frame(r: &mut impl io::Read) -> io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 5];
    r.read_exact(&mut h)?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(bad("frame length"));
    }
    let mut p = vec![0u8; len - 1];
    r.read_exact(&mut p)?;
    Ok((h[4], p))
}

/// Blocking read of one event.
pub fn read_event(r: &mut impl io::Read) -> io::Result<Event> {
    let (t, p) = read_frame(r)?;
    Event::decode(t, &p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt_req(r: Request) {
        let b = r.to_bytes();
        let (t, range, n) = split_frame(&b).unwrap().unwrap();
        assert_eq!(n, b.len());
        assert_eq!(Request::decode(t, &b[range]).unwrap(), r);
    }

    fn rt_ev(e: Event) {
        let b = e.to_bytes();
        assert_eq!(read_event(&mut &b[..]).unwrap(), e);
    }

    #[test]
    fn requests_roundtrip() {
        rt_req(Request::Attach {
            stdout: true,
            stderr: false,
        });
        rt_req(Request::Stdin(b"hello\n".to_vec()));
        rt_req(Request::Stdin(vec![]));
        rt_req(Request::CloseStdin);
        rt_req(Request::Resize {
            height: 24,
            width: 80,
        });
        rt_req(Request::Kill {
            signal: 9,
            all: true,
        });
        rt_req(Request::Exec(Box::new(ExecRequest {
            exec_id: "e1".into(),
            process: serde_json::json!({"args": ["true"], "cwd": "/"}),
            stdin: true,
            detach: false,
        })));
        rt_req(Request::State);
        rt_req(Request::Wait);
        rt_req(Request::ExecWait {
            exec_id: "e1".into(),
        });
    }

    #[test]
    fn exec_exit_files_are_plain_names_in_the_bundle() {
        let b = std::path::Path::new("/b");
        assert_eq!(
            exec_exit_file(b, "ab12-x_"),
            Some(std::path::PathBuf::from("/b/exec-ab12-x_.exit.json"))
        );
        assert_eq!(exec_exit_file(b, "../x"), None);
        assert_eq!(exec_exit_file(b, ""), None);
    }

    #[test]
    fn events_roundtrip() {
        let st = ExitStatus {
            code: 137,
            signal: Some(9),
            oom_killed: true,
            finished_at: "2024-01-01T00:00:00.1Z".into(),
        };
        rt_ev(Event::Started { pid: 42 });
        rt_ev(Event::StartFailed {
            kind: StartErrorKind::NotFound,
            message: "exec: \"x\": executable file not found in $PATH".into(),
        });
        rt_ev(Event::Exited(st.clone()));
        rt_ev(Event::Output {
            stream: STDERR,
            data: b"err".to_vec(),
        });
        rt_ev(Event::Ok);
        rt_ev(Event::Error("no".into()));
        rt_ev(Event::State(StateInfo {
            id: "c".into(),
            pid: 1,
            running: true,
            exit: None,
            execs: vec![("e".into(), 7)],
        }));
        rt_ev(Event::ExecStarted { pid: 9 });
        rt_ev(Event::ExecExited(st));
    }

    #[test]
    fn partial_and_bad_frames() {
        let b = Event::Ok.to_bytes();
        assert!(split_frame(&b[..3]).unwrap().is_none());
        assert!(split_frame(&[0, 0, 0, 0, 1]).is_err());
        assert!(split_frame(&[0xff, 0xff, 0xff, 0x7f, 1]).is_err());
        assert!(Request::decode(200, &[]).is_err());
    }
}
