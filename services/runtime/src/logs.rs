//! Reading a container's json-file log for `docker logs` (and attach with logs):
//! rotated files oldest first, `--tail` across them, `--since`/`--until`, `-t`
//! timestamps, and `-f` following new writes across rotation and truncation
//! (inotify on the log's directory, no polling) until the container has exited and
//! everything written is sent.

use berth_shim::jsonlog::{rotated, Entry, Time};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, BufReader};
use tokio::sync::mpsc;

#[derive(Debug, Clone, PartialEq)]
pub struct LogOptions {
    pub follow: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// Unix seconds; 0 for none.
    pub since: f64,
    /// Unix seconds; 0 for none.
    pub until: f64,
    pub timestamps: bool,
    /// None: all.
    pub tail: Option<usize>,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            follow: false,
            stdout: true,
            stderr: true,
            since: 0.0,
            until: 0.0,
            timestamps: false,
            tail: None,
        }
    }
}

/// Parses Docker's `tail` parameter ("all", "", or a number).
pub fn parse_tail(s: &str) -> Option<usize> {
    match s.trim() {
        "" | "all" => None,
        n => n.parse::<i64>().ok().map(|n| n.max(0) as usize),
    }
}

/// One parsed record.
struct Rec {
    stream: u8,
    time: Time,
    log: Vec<u8>,
}

fn parse(line: &[u8]) -> Option<Rec> {
    let e: Entry = serde_json::from_slice(line).ok()?;
    let stream = match e.stream.as_str() {
        "stderr" => 2,
        _ => 1,
    };
    let time = Time::parse(&e.time)?;
    Some(Rec {
        stream,
        time,
        log: e.log.into_bytes(),
    })
}

enum Flow {
    Go,
    /// Past `until`, or the receiver is gone.
    Stop,
}

async fn emit(r: Rec, o: &LogOptions, tx: &mpsc::Sender<(u8, Vec<u8>)>) -> Flow {
    if o.until > 0.0 && r.time.as_f64() > o.until {
        return Flow::Stop;
    }
    if o.since > 0.0 && r.time.as_f64() < o.since {
        return Flow::Go;
    }
    if (r.stream == 1 && !o.stdout) || (r.stream == 2 && !o.stderr) {
        return Flow::Go;
    }
    let data = if o.timestamps {
        let mut d = r.time.format(true).into_bytes();
        d.push(b' ');
        d.extend_from_slice(&r.log);
        d
    } else {
        r.log
    };
    if tx.send((r.stream, data)).await.is_err() {
        return Flow::Stop;
    }
    Flow::Go
}

/// One message read from elsewhere (a log plugin's ReadLogs): filtered and
/// formatted as the json-file's. False once past `until` or the receiver is gone.
pub async fn send_message(stream: u8, time: Time, log: Vec<u8>, o: &LogOptions, tx: &mpsc::Sender<(u8, Vec<u8>)>) -> bool {
    matches!(emit(Rec { stream, time, log }, o, tx).await, Flow::Go)
}

/// The log's files, oldest first.
fn files(path: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let mut n = 1;
    while rotated(path, n).exists() {
        v.push(rotated(path, n));
        n += 1;
    }
    v.reverse();
    v.push(path.to_path_buf());
    v
}

/// Watches a directory for changes (inotify), so following needs no polling.
struct Watch {
    /// Some until dropped.
    fd: Option<AsyncFd<OwnedFd>>,
}

impl Drop for Watch {
    /// Closing an inotify instance waits for an SRCU grace period (13-21 ms on a
    /// 2-vCPU VM): on a blocking thread, never on a worker, where it stalled every
    /// task queued behind it (the bus replies of the same `docker run`).
    fn drop(&mut self) {
        if let Some(a) = self.fd.take() {
            let fd = a.into_inner();
            match tokio::runtime::Handle::try_current() {
                Ok(h) => drop(h.spawn_blocking(move || drop(fd))),
                Err(_) => drop(fd),
            }
        }
    }
}

impl Watch {
    fn new(dir: &Path) -> io::Result<Watch> {
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let c =
            std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
        let mask = libc::IN_MODIFY
            | libc::IN_CREATE
            | libc::IN_MOVED_TO
            | libc::IN_MOVED_FROM
            | libc::IN_DELETE
            | libc::IN_CLOSE_WRITE;
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: we own the inotify fd and it stays registered until Watch drops it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(Watch { fd: Some(fd) })
    }

    /// Resolves at the next change (events are drained, their content does not matter).
    async fn changed(&self) -> io::Result<()> {
        loop {
            let fd = self.fd.as_ref().expect("a live watch");
            let mut g = fd.readable().await?;
            let mut buf = [0u8; 4096];
            let r = g.try_io(|fd| {
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n)
                }
            });
            match r {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Sends (stream, bytes) records from a json-file log (and its rotated siblings),
/// following new writes when `follow` until `stop` resolves (container exited and
/// drained) or the receiver is dropped. With timestamps, each line is prefixed as
/// Docker does (`2006-01-02T15:04:05.000000000Z `).
pub async fn read_log(
    path: &Path,
    opts: LogOptions,
    stop: impl Future<Output = ()> + Send + 'static,
    tx: mpsc::Sender<(u8, Vec<u8>)>,
) -> io::Result<()> {
    // Watch before reading, so nothing written in between is missed.
    let watch = if opts.follow {
        Some(Watch::new(path.parent().unwrap_or(Path::new("/")))?)
    } else {
        None
    };

    // The history: whole files, with --tail kept in a ring.
    let all = files(path);
    let mut ring: VecDeque<Rec> = VecDeque::new();
    let mut live: Option<(tokio::fs::File, u64, u64)> = None; // (file, inode, offset)
    let mut seen: Vec<u64> = Vec::new();
    for (i, f) in all.iter().enumerate() {
        let file = match tokio::fs::File::open(f).await {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let ino = file.metadata().await?.ino();
        seen.push(ino);
        let mut r = BufReader::new(file);
        let mut line = Vec::new();
        let mut off = 0u64;
        loop {
            line.clear();
            let n = r.read_until(b'\n', &mut line).await?;
            if n == 0 || line.last() != Some(&b'\n') {
                break; // EOF, or a record still being written
            }
            off += n as u64;
            let Some(rec) = parse(&line) else { continue };
            match opts.tail {
                Some(t) => {
                    if t == 0 {
                        continue;
                    }
                    if ring.len() == t {
                        ring.pop_front();
                    }
                    ring.push_back(rec);
                }
                None => {
                    if let Flow::Stop = emit(rec, &opts, &tx).await {
                        return Ok(());
                    }
                }
            }
        }
        if i == all.len() - 1 {
            let mut file = r.into_inner();
            file.seek(io::SeekFrom::Start(off)).await?;
            live = Some((file, ino, off));
        }
    }
    for rec in ring.drain(..) {
        if let Flow::Stop = emit(rec, &opts, &tx).await {
            return Ok(());
        }
    }
    let Some(watch) = watch else { return Ok(()) };

    // Follow.
    let mut stop = std::pin::pin!(stop);
    let mut stopping = false;
    let mut pending: Vec<u8> = Vec::new();
    loop {
        // Read what is there.
        if let Some((file, _, off)) = live.as_mut() {
            let mut r = BufReader::new(&mut *file);
            loop {
                let n = r.read_until(b'\n', &mut pending).await?;
                if n == 0 || pending.last() != Some(&b'\n') {
                    break;
                }
                *off += pending.len() as u64;
                let rec = parse(&pending);
                pending.clear();
                if let Some(rec) = rec {
                    if let Flow::Stop = emit(rec, &opts, &tx).await {
                        return Ok(());
                    }
                }
            }
            // Keep the file position at the end of what was consumed.
            let consumed = *off;
            drop(r);
            file.seek(io::SeekFrom::Start(consumed + pending.len() as u64))
                .await?;
            *off = consumed;
        }
        // Rotated or truncated? Once the old file is drained, go on with the next file
        // not read yet (oldest first), so a quick series of rotations loses nothing
        // that is still on disk.
        let (cur_ino, cur_off) = live.as_ref().map(|(_, i, o)| (*i, *o)).unwrap_or((0, 0));
        match tokio::fs::metadata(path).await {
            Ok(m) if m.ino() == cur_ino => {
                if m.len() < cur_off {
                    let (file, _, off) = live.as_mut().unwrap();
                    file.seek(io::SeekFrom::Start(0)).await?;
                    *off = 0;
                    pending.clear();
                    continue;
                }
            }
            _ => {
                let mut next = None;
                for f in files(path) {
                    if let Ok(file) = tokio::fs::File::open(&f).await {
                        let ino = file.metadata().await?.ino();
                        if !seen.contains(&ino) {
                            next = Some((file, ino));
                            break;
                        }
                    }
                }
                if let Some((file, ino)) = next {
                    seen.push(ino);
                    live = Some((file, ino, 0));
                    pending.clear();
                    continue;
                }
            }
        }
        if stopping {
            return Ok(());
        }
        tokio::select! {
            r = watch.changed() => r?,
            _ = &mut stop => {
                // One more pass picks up the last writes.
                stopping = true;
            }
            _ = tx.closed() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_shim::jsonlog::LogWriter;

    fn t(s: i64) -> Time {
        Time { secs: s, nanos: 0 }
    }

    async fn collect(path: &Path, o: LogOptions) -> Vec<(u8, String)> {
        let (tx, mut rx) = mpsc::channel(1000);
        read_log(path, o, async {}, tx).await.unwrap();
        let mut v = Vec::new();
        while let Ok(x) = rx.try_recv() {
            v.push((x.0, String::from_utf8(x.1).unwrap()));
        }
        v
    }

    fn write_log(dir: &Path) -> PathBuf {
        let p = dir.join("c-json.log");
        let mut w = LogWriter::open(&p, None, 1).unwrap();
        for i in 0..10 {
            w.write(i % 2, format!("l{i}\n").as_bytes(), t(100 + i as i64))
                .unwrap();
        }
        p
    }

    #[tokio::test]
    async fn tail_since_until_streams_timestamps() {
        let d = tempfile::tempdir().unwrap();
        let p = write_log(d.path());
        let all = collect(&p, LogOptions::default()).await;
        assert_eq!(all.len(), 10);
        assert_eq!(all[1], (2, "l1\n".into()));
        let tail = collect(
            &p,
            LogOptions {
                tail: Some(3),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(
            tail.iter().map(|x| x.1.as_str()).collect::<Vec<_>>(),
            vec!["l7\n", "l8\n", "l9\n"]
        );
        assert!(collect(
            &p,
            LogOptions {
                tail: Some(0),
                ..Default::default()
            }
        )
        .await
        .is_empty());
        let since = collect(
            &p,
            LogOptions {
                since: 105.0,
                until: 107.0,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(
            since.iter().map(|x| x.1.as_str()).collect::<Vec<_>>(),
            vec!["l5\n", "l6\n", "l7\n"]
        );
        let out = collect(
            &p,
            LogOptions {
                stderr: false,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(out.len(), 5);
        assert!(out.iter().all(|x| x.0 == 1));
        let ts = collect(
            &p,
            LogOptions {
                timestamps: true,
                tail: Some(1),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(ts[0].1, "1970-01-01T00:01:49.000000000Z l9\n");
        assert_eq!(parse_tail("all"), None);
        assert_eq!(parse_tail("5"), Some(5));
    }

    #[tokio::test]
    async fn reads_rotated_files_in_order() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.log");
        let mut w = LogWriter::open(&p, Some(300), 5).unwrap();
        for i in 0..40 {
            w.write(0, format!("line {i}\n").as_bytes(), t(i)).unwrap();
        }
        assert!(rotated(&p, 2).exists());
        let all = collect(&p, LogOptions::default()).await;
        let kept: Vec<u32> = all
            .iter()
            .map(|x| x.1.trim().trim_start_matches("line ").parse().unwrap())
            .collect();
        assert!(kept.windows(2).all(|w| w[1] == w[0] + 1), "{kept:?}");
        assert_eq!(*kept.last().unwrap(), 39);
        let tail = collect(
            &p,
            LogOptions {
                tail: Some(4),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(tail.len(), 4);
        assert_eq!(tail[3].1, "line 39\n");
    }

    #[tokio::test]
    async fn follows_across_rotation_until_stopped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.log");
        // Room for every line on disk: the reader may lag, rotation must not lose it.
        let mut w = LogWriter::open(&p, Some(1500), 5).unwrap();
        w.write(0, b"first\n", t(1)).unwrap();
        let (tx, mut rx) = mpsc::channel(1000);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let path = p.clone();
        let reader = tokio::spawn(async move {
            read_log(
                &path,
                LogOptions {
                    follow: true,
                    ..Default::default()
                },
                async move {
                    let _ = stop_rx.await;
                },
                tx,
            )
            .await
        });
        assert_eq!(rx.recv().await.unwrap().1, b"first\n");
        // Writes from another thread, rotating several times.
        let writer = std::thread::spawn(move || {
            for i in 0..60 {
                w.write(1, format!("n{i}\n").as_bytes(), t(2 + i)).unwrap();
                if i % 7 == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            }
        });
        let mut got = Vec::new();
        while got.len() < 60 {
            let (s, d) = rx.recv().await.unwrap();
            assert_eq!(s, 2);
            got.push(String::from_utf8(d).unwrap());
        }
        writer.join().unwrap();
        let want: Vec<String> = (0..60).map(|i| format!("n{i}\n")).collect();
        assert_eq!(got, want);
        stop_tx.send(()).unwrap();
        reader.await.unwrap().unwrap();
        assert!(rx.recv().await.is_none());
    }
}
