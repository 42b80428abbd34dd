//! Log-driver plugins (`docker run --log-driver <plugin>`): the shim sends every
//! message of the container's output to the plugin's FIFO as Moby 20.10's plugin
//! adapter does (daemon/logger/adapter.go): one `LogEntry` protobuf
//! (api/types/plugins/logdriver/entry.proto) per message, each prefixed by its length
//! as a big-endian uint32 (logdriver.NewLogEntryEncoder, pkg/ioutils' framing).
//!
//! Messages are Moby's copier's (daemon/logger/copier.go): a line without its
//! newline; a piece of a longer line (16 KiB here, as the json-file copy) or the
//! unterminated end of the output is `partial`, with `partial_log_metadata` {id (64
//! hex, one per line), ordinal from 1, last: false}; the line that ends such a
//! sequence is partial too, with `last: true`. Pieces of one line carry the time of
//! the first.
//!
//! The FIFO is opened read-write and non-blocking (Moby opens it
//! `O_RDWR|O_NONBLOCK` too, so a plugin that closes or dies gives no broken pipe);
//! what the pipe does not take at once waits, written as the pipe drains. Moby's
//! modes (`--log-opt mode`):
//! * `blocking`, the default: nothing is dropped; while anything waits the shim
//!   reads no more of the container's output ([`FifoSink::accepts_more`]), so a
//!   slow plugin slows the container's writes, as Moby's copier waits for the
//!   driver;
//! * `non-blocking`: at most `max-buffer-size` waits (default [`MAX_PENDING`],
//!   Moby's 1 MiB); a message that does not fit is dropped whole (never half a
//!   frame) and counted, the container never waits.
//!
//! The local json-file copy always gets every message (Moby 20.10's dual logging:
//! `docker logs` reads it).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use crate::jsonlog::Time;
use crate::sys;

/// The protobuf of one message (Moby's `logdriver.LogEntry`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LogEntry {
    #[prost(string, tag = "1")]
    pub source: String,
    #[prost(int64, tag = "2")]
    pub time_nano: i64,
    #[prost(bytes = "vec", tag = "3")]
    pub line: Vec<u8>,
    #[prost(bool, tag = "4")]
    pub partial: bool,
    #[prost(message, optional, tag = "5")]
    pub partial_log_metadata: Option<PartialLogEntryMetadata>,
}

/// `logdriver.PartialLogEntryMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PartialLogEntryMetadata {
    #[prost(bool, tag = "1")]
    pub last: bool,
    #[prost(string, tag = "2")]
    pub id: String,
    #[prost(int32, tag = "3")]
    pub ordinal: i32,
}

/// Appends one frame: the entry's length (big-endian u32), then the entry.
pub fn encode_frame(out: &mut Vec<u8>, e: &LogEntry) {
    use prost::Message as _;
    let len = e.encoded_len();
    out.reserve(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    e.encode(out).expect("a Vec grows");
}

/// Splits frames off the front of `buf`: the entries of the whole frames, and how
/// many bytes they took (the rest is an incomplete frame).
pub fn decode_frames(buf: &[u8]) -> Result<(Vec<LogEntry>, usize), prost::DecodeError> {
    use prost::Message as _;
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() - at >= 4 {
        let len = u32::from_be_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
        if buf.len() - at - 4 < len {
            break;
        }
        out.push(LogEntry::decode(&buf[at + 4..at + 4 + len])?);
        at += 4 + len;
    }
    Ok((out, at))
}

/// What waits for the pipe at most (Moby's non-blocking mode's default buffer).
pub const MAX_PENDING: usize = 1 << 20;

const SOURCES: [&str; 2] = ["stdout", "stderr"];

/// The partial line being sent of one stream: its id, the next ordinal, its time.
#[derive(Debug, Default)]
struct Partial {
    id: String,
    ordinal: i32,
    time: Option<Time>,
}

/// The plugin's FIFO, as the shim writes it.
pub struct FifoSink {
    fd: OwnedFd,
    pending: Vec<u8>,
    /// What may wait for the pipe in non-blocking mode (`--log-opt
    /// max-buffer-size`, else [`MAX_PENDING`]); None: blocking mode.
    max_pending: Option<usize>,
    partial: [Partial; 2],
    /// Messages dropped because the plugin did not keep up.
    pub dropped: u64,
    frame: Vec<u8>,
}

/// Where a log plugin's FIFO is: a path inside a root the plugin controls (its
/// rootfs, or the host side of its propagated mount). The path is only ever
/// resolved by the kernel inside that root (openat2 `RESOLVE_IN_ROOT`): a link the
/// plugin places anywhere on the way (`run/docker/logging -> /etc`) leads inside
/// its root, never to a host directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogFifo {
    pub root: PathBuf,
    /// Absolute, inside `root`.
    pub path: String,
}

/// `p` relative to a root (`.` for the root itself).
fn rel(p: &str) -> &Path {
    let r = p.trim_start_matches('/');
    Path::new(if r.is_empty() { "." } else { r })
}

/// The root directory as a descriptor (a trusted host path).
fn open_root(root: &Path) -> io::Result<OwnedFd> {
    sys::open(root, libc::O_PATH | libc::O_DIRECTORY, 0)
}

/// Open the FIFO `name` of the directory `dir` read-write and non-blocking, never
/// through a link, and only if it is a FIFO.
pub fn open_fifo_at(dir: BorrowedFd<'_>, name: &Path) -> io::Result<OwnedFd> {
    let fd = sys::openat2(dir.as_raw_fd(), name, libc::O_RDWR | libc::O_NONBLOCK | libc::O_NOFOLLOW, 0, sys::RESOLVE_IN_ROOT)?;
    let st = sys::fstat(fd.as_raw_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return Err(io::Error::other(format!("{} is not a FIFO", name.display())));
    }
    Ok(fd)
}

/// Open the FIFO at `f.path` inside `f.root` (see [`LogFifo`]): resolved in the
/// root, the last component not followed, a FIFO or nothing.
pub fn open_fifo(f: &LogFifo) -> io::Result<OwnedFd> {
    let root = open_root(&f.root)?;
    open_fifo_at(root.as_fd(), rel(&f.path))
}

/// The directory holding `f.path` (resolved in the root) and the FIFO's name.
fn parent_in_root(f: &LogFifo) -> io::Result<(OwnedFd, PathBuf)> {
    let p = rel(&f.path);
    let name = p.file_name().ok_or_else(|| io::Error::other(format!("{}: no file name", f.path)))?;
    let parent = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let root = open_root(&f.root)?;
    let dir = sys::openat2(root.as_raw_fd(), parent, libc::O_PATH | libc::O_DIRECTORY, 0, sys::RESOLVE_IN_ROOT)?;
    Ok((dir, PathBuf::from(name)))
}

/// Remove the FIFO (or whatever the plugin put at its name) inside the root.
pub fn remove_fifo(f: &LogFifo) -> io::Result<()> {
    let (dir, name) = parent_in_root(f)?;
    sys::unlinkat(dir.as_raw_fd(), &name)
}

impl FifoSink {
    /// Opens the FIFO the runtime made (read-write, non-blocking). It lives in the
    /// plugin's rootfs, which the plugin can change under us: a link there is not
    /// followed and anything but a FIFO is refused, so the container's output never
    /// goes into a host file the plugin points at.
    pub fn open(f: &LogFifo) -> io::Result<FifoSink> {
        open_fifo(f).map(FifoSink::from_fd)
    }

    pub fn from_fd(fd: OwnedFd) -> FifoSink {
        FifoSink { fd, pending: Vec::new(), max_pending: None, partial: Default::default(), dropped: 0, frame: Vec::new() }
    }

    /// Non-blocking mode: at most `n` bytes wait for the pipe (Moby's ring
    /// buffer's `max-buffer-size`), more messages are dropped.
    pub fn with_max_pending(mut self, n: usize) -> FifoSink {
        self.max_pending = Some(n);
        self
    }

    /// Whether more of the container's output may be read now: always in
    /// non-blocking mode; in blocking mode once the pipe took everything.
    pub fn accepts_more(&self) -> bool {
        self.max_pending.is_some() || self.pending.is_empty()
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Bytes waiting for the pipe.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// One message as the json-file copy gets it (a line with its newline, or a
    /// piece without one) from stream 0 (stdout) or 1 (stderr).
    pub fn log(&mut self, stream: usize, msg: &[u8], t: Time) {
        let (line, complete) = match msg.strip_suffix(b"\n") {
            Some(l) => (l, true),
            None => (msg, false),
        };
        let p = &mut self.partial[stream];
        let (time, meta) = if complete {
            if p.ordinal == 0 {
                (t, None)
            } else {
                let m = PartialLogEntryMetadata { last: true, id: std::mem::take(&mut p.id), ordinal: p.ordinal };
                let time = p.time.take().unwrap_or(t);
                *p = Partial::default();
                (time, Some(m))
            }
        } else {
            if p.ordinal == 0 {
                p.id = random_id();
                p.ordinal = 1;
                p.time = Some(t);
            }
            let m = PartialLogEntryMetadata { last: false, id: p.id.clone(), ordinal: p.ordinal };
            p.ordinal += 1;
            (p.time.unwrap_or(t), Some(m))
        };
        let e = LogEntry {
            source: SOURCES[stream].to_string(),
            time_nano: time.secs.saturating_mul(1_000_000_000).saturating_add(time.nanos as i64),
            line: line.to_vec(),
            partial: meta.is_some(),
            partial_log_metadata: meta,
        };
        let mut frame = std::mem::take(&mut self.frame);
        frame.clear();
        encode_frame(&mut frame, &e);
        self.send(&frame);
        self.frame = frame;
    }

    fn send(&mut self, frame: &[u8]) {
        if !self.pending.is_empty() {
            self.flush();
        }
        let mut rest = frame;
        if self.pending.is_empty() {
            match sys::write(self.fd.as_raw_fd(), frame) {
                Ok(n) => rest = &frame[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.dropped += 1;
                    return;
                }
            }
        }
        if rest.is_empty() {
            return;
        }
        // a frame begun in the pipe is always finished; a whole one may be dropped
        if rest.len() == frame.len() && self.max_pending.is_some_and(|max| self.pending.len() + rest.len() > max) {
            self.dropped += 1;
            return;
        }
        self.pending.extend_from_slice(rest);
    }

    /// Writes what the pipe takes of the waiting bytes.
    pub fn flush(&mut self) {
        while !self.pending.is_empty() {
            match sys::write(self.fd.as_raw_fd(), &self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.pending.clear();
                    self.dropped += 1;
                    break;
                }
            }
        }
        if self.pending.is_empty() && self.pending.capacity() > 64 << 10 {
            self.pending = Vec::new();
        }
    }
}

/// 64 hex digits (Moby's stringid.GenerateRandomID for a partial line's id).
fn random_id() -> String {
    let mut b = [0u8; 32];
    let mut got = 0;
    while got < b.len() {
        let n = unsafe { libc::getrandom(b[got..].as_mut_ptr().cast(), b.len() - got, 0) };
        if n <= 0 {
            // no entropy source: the time and pid still make it unique enough here
            let t = Time::now();
            let s = format!("{:016x}{:08x}{:08x}", t.secs, t.nanos, std::process::id());
            return format!("{s:0<64}");
        }
        got += n as usize;
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    fn mkfifo(p: &Path) {
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o700) }, 0);
    }

    fn fifo_in(root: &Path, path: &str) -> LogFifo {
        LogFifo { root: root.to_path_buf(), path: path.into() }
    }

    #[test]
    fn open_fifo_refuses_links_and_files() {
        let d = tempfile::tempdir().unwrap();
        mkfifo(&d.path().join("f"));
        assert!(open_fifo(&fifo_in(d.path(), "/f")).is_ok());
        std::fs::write(d.path().join("host-file"), "secret").unwrap();
        assert!(open_fifo(&fifo_in(d.path(), "/host-file")).is_err(), "a regular file is refused");
        std::os::unix::fs::symlink(d.path().join("f"), d.path().join("link")).unwrap();
        assert!(open_fifo(&fifo_in(d.path(), "/link")).is_err(), "a link is not followed");
        assert_eq!(std::fs::read_to_string(d.path().join("host-file")).unwrap(), "secret");
    }

    /// The plugin owns its rootfs: `run/docker/logging` made a link to a host
    /// directory (absolute, or climbing with `..`) leads inside the rootfs, never
    /// to the host's FIFO.
    #[test]
    fn open_fifo_resolves_in_the_root() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().join("host");
        std::fs::create_dir_all(&host).unwrap();
        mkfifo(&host.join("x"));
        let rootfs = d.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("run/docker")).unwrap();
        for target in [host.clone(), PathBuf::from(format!("{}{}", "../".repeat(20), host.display()))] {
            let _ = std::fs::remove_file(rootfs.join("run/docker/logging"));
            std::os::unix::fs::symlink(&target, rootfs.join("run/docker/logging")).unwrap();
            let f = fifo_in(&rootfs, "/run/docker/logging/x");
            let e = open_fifo(&f).expect_err("the host's FIFO is out of reach");
            assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{target:?}: {e}");
            assert_eq!(remove_fifo(&f).unwrap_err().raw_os_error(), Some(libc::ENOENT));
            assert!(host.join("x").exists(), "the host's FIFO stays");
        }
        // the same link inside the root: followed there
        let inside = rootfs.join(host.strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        mkfifo(&inside.join("x"));
        let f = fifo_in(&rootfs, "/run/docker/logging/x");
        assert!(open_fifo(&f).is_ok());
        remove_fifo(&f).unwrap();
        assert!(!inside.join("x").exists() && host.join("x").exists());
    }


    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) }, 0);
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn read_all(fd: &OwnedFd) -> Vec<u8> {
        let mut out = Vec::new();
        let mut b = [0u8; 65536];
        loop {
            let n = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) };
            if n <= 0 {
                return out;
            }
            out.extend_from_slice(&b[..n as usize]);
        }
    }

    /// The bytes Go's protobuf (gogo, Moby's logdriver package) writes for an entry:
    /// fields in tag order, zero values left out, a length-prefixed frame.
    #[test]
    fn frames_as_moby_encodes_them() {
        let e = LogEntry { source: "stdout".into(), time_nano: 1_700_000_000_123_456_789, line: b"hello".to_vec(), partial: false, partial_log_metadata: None };
        let mut out = Vec::new();
        encode_frame(&mut out, &e);
        let body: Vec<u8> = [
            &[0x0a, 6][..],
            b"stdout",
            // 1700000000123456789 as a varint
            &[0x10, 0x95, 0x9a, 0x97, 0xec, 0xe3, 0x9f, 0xe7, 0xcb, 0x17],
            &[0x1a, 5],
            b"hello",
        ]
        .concat();
        assert_eq!(&out[..4], &(body.len() as u32).to_be_bytes());
        assert_eq!(&out[4..], &body[..]);

        let p = LogEntry {
            source: "stderr".into(),
            time_nano: 1,
            line: b"x".to_vec(),
            partial: true,
            partial_log_metadata: Some(PartialLogEntryMetadata { last: true, id: "ab".into(), ordinal: 2 }),
        };
        let mut out2 = Vec::new();
        encode_frame(&mut out2, &p);
        let body2: Vec<u8> = [&[0x0a, 6][..], b"stderr", &[0x10, 1, 0x1a, 1, b'x', 0x20, 1, 0x2a, 8, 0x08, 1, 0x12, 2, b'a', b'b', 0x18, 2]].concat();
        assert_eq!(&out2[4..], &body2[..]);

        let mut both = out.clone();
        both.extend_from_slice(&out2);
        both.extend_from_slice(&[0, 0, 0]);
        let (got, used) = decode_frames(&both).unwrap();
        assert_eq!(got, vec![e, p]);
        assert_eq!(used, both.len() - 3);
    }

    #[test]
    fn messages_as_moby_copier_sends_them() {
        let (r, w) = pipe();
        let mut s = FifoSink::from_fd(w);
        let t = Time { secs: 5, nanos: 7 };
        s.log(0, b"hello\n", t);
        s.log(1, b"part one", t);
        s.log(1, b" and two", Time { secs: 6, nanos: 0 });
        s.log(1, b" end\n", Time { secs: 7, nanos: 0 });
        s.log(0, b"tail", t);
        let (got, _) = decode_frames(&read_all(&r)).unwrap();
        assert_eq!(got.len(), 5);
        assert_eq!((got[0].source.as_str(), &got[0].line[..], got[0].partial, got[0].time_nano), ("stdout", &b"hello"[..], false, 5_000_000_007));
        assert!(got[0].partial_log_metadata.is_none());
        let m: Vec<_> = got[1..4].iter().map(|e| e.partial_log_metadata.clone().unwrap()).collect();
        assert!(got[1..4].iter().all(|e| e.partial && e.source == "stderr" && e.time_nano == 5_000_000_007));
        assert_eq!(m.iter().map(|m| (m.ordinal, m.last)).collect::<Vec<_>>(), vec![(1, false), (2, false), (3, true)]);
        assert_eq!(m[0].id.len(), 64);
        assert!(m.iter().all(|x| x.id == m[0].id));
        assert_eq!(&got[3].line[..], b" end");
        let last = got[4].partial_log_metadata.clone().unwrap();
        assert_eq!((got[4].partial, last.ordinal, last.last), (true, 1, false));
        assert_ne!(last.id, m[0].id);
    }

    /// Non-blocking mode, a plugin that does not read: the pipe fills, then the
    /// buffer, then whole messages are dropped; nothing blocks, and no frame is
    /// ever cut.
    #[test]
    fn a_plugin_that_does_not_read_never_blocks() {
        let (r, w) = pipe();
        let mut s = FifoSink::from_fd(w).with_max_pending(MAX_PENDING);
        let line = vec![b'x'; 1000];
        let mut msg = line.clone();
        msg.push(b'\n');
        for _ in 0..3000 {
            s.log(0, &msg, Time { secs: 1, nanos: 0 });
        }
        assert!(s.dropped > 0);
        assert!(s.pending.len() <= MAX_PENDING);
        // the reader catches up: every frame it gets is whole
        let mut got = read_all(&r);
        for _ in 0..100 {
            s.flush();
            got.extend(read_all(&r));
            if !s.has_pending() {
                break;
            }
        }
        assert!(!s.has_pending());
        let (entries, used) = decode_frames(&got).unwrap();
        assert_eq!(used, got.len());
        assert_eq!(entries.len() as u64 + s.dropped, 3000);
        assert!(entries.iter().all(|e| e.line == line));
    }

    /// Blocking mode (the default): nothing is dropped; once the pipe is full the
    /// sink asks for no more output until the plugin reads.
    #[test]
    fn blocking_mode_drops_nothing() {
        let (r, w) = pipe();
        let mut s = FifoSink::from_fd(w);
        let line = vec![b'z'; 1000];
        let msg = [line.clone(), vec![b'\n']].concat();
        let mut got = Vec::new();
        let mut sent = 0;
        let mut held = 0;
        while sent < 3000 {
            if s.accepts_more() {
                s.log(0, &msg, Time { secs: 1, nanos: 0 });
                sent += 1;
            } else {
                held += 1;
                // the plugin reads, the pipe drains
                got.extend(read_all(&r));
                s.flush();
            }
        }
        assert!(held > 0, "a full pipe holds the output back");
        for _ in 0..100 {
            got.extend(read_all(&r));
            s.flush();
        }
        got.extend(read_all(&r));
        assert!(!s.has_pending());
        assert_eq!(s.dropped, 0);
        let (entries, used) = decode_frames(&got).unwrap();
        assert_eq!((entries.len(), used), (3000, got.len()));
        assert!(entries.iter().all(|e| e.line == line));
    }

    /// `max-buffer-size`: what waits for a plugin that does not read stays under
    /// it; more messages are dropped.
    #[test]
    fn max_buffer_size_bounds_what_waits() {
        let (r, w) = pipe();
        let mut s = FifoSink::from_fd(w).with_max_pending(10_000);
        let msg = [vec![b'y'; 1000], vec![b'\n']].concat();
        for _ in 0..3000 {
            s.log(1, &msg, Time { secs: 1, nanos: 0 });
        }
        assert!(s.pending.len() <= 10_000, "{}", s.pending.len());
        let mut got = read_all(&r);
        for _ in 0..100 {
            s.flush();
            got.extend(read_all(&r));
        }
        let (entries, _) = decode_frames(&got).unwrap();
        assert_eq!(entries.len() as u64 + s.dropped, 3000);
    }
}
