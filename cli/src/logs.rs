//! The node's own logs, `<root>/logs/<process>.log`: size-based rotation with the
//! limits Docker's json-file `log-opts` use for containers (`max-size`, `max-file`),
//! given to `berth up` as `--log-max-size` / `--log-max-file`.
//!
//! The processes keep writing to the descriptor they were started with (append mode,
//! and they outlive `berth up`), so `berth up` rotates by copy-then-truncate, as
//! logrotate's `copytruncate` does: `x.log` is copied to `x.log.1` (older copies shift
//! to `.2` … up to max-file − 1) and cut to zero; what a process appends while the copy
//! runs is copied too, so at most the lines written in the instant between the last
//! size check and the truncation can be lost.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub struct Rotation {
    /// Rotate a file once it is larger than this (bytes).
    pub max_size: u64,
    /// Files kept per process, the live one included (1: the live one is cut, no copy).
    pub max_file: u32,
}

/// `--log-max-size` as Docker reads `max-size` (`10m`, `1g`, `512k`, bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    match berth_mountspec::parse_size(s) {
        Ok(n) if n > 0 => Ok(n as u64),
        _ => Err(format!("invalid max-size: {s:?} (e.g. 20m)")),
    }
}

fn numbered(p: &Path, i: u32) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

/// Rotate every `*.log` in `dir` larger than the limit.
pub fn rotate_dir(dir: &Path, r: Rotation) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "log") && e.metadata().is_ok_and(|m| m.is_file() && m.len() > r.max_size) {
            if let Err(err) = rotate(&p, r) {
                eprintln!("berth: rotating {}: {err}", p.display());
            }
        }
    }
}

pub fn rotate(p: &Path, r: Rotation) -> std::io::Result<()> {
    let mut src = std::fs::OpenOptions::new().read(true).write(true).open(p)?;
    if r.max_file > 1 {
        for i in (1..r.max_file - 1).rev() {
            let from = numbered(p, i);
            if from.exists() {
                std::fs::rename(&from, numbered(p, i + 1))?;
            }
        }
        let tmp = numbered(p, 0);
        let mut dst = std::fs::File::create(&tmp)?;
        let mut copied = 0u64;
        loop {
            let len = src.metadata()?.len();
            if len <= copied {
                break;
            }
            src.seek(SeekFrom::Start(copied))?;
            copied += std::io::copy(&mut (&mut src).take(len - copied), &mut dst)?;
        }
        dst.flush()?;
        std::fs::rename(&tmp, numbered(p, 1))?;
    }
    src.set_len(0)
}

/// Rotate `dir`'s logs every second, for as long as this process runs.
pub fn spawn_rotation(dir: PathBuf, r: Rotation) {
    std::thread::Builder::new()
        .name("log-rotation".into())
        .spawn(move || loop {
            rotate_dir(&dir, r);
            std::thread::sleep(Duration::from_secs(1));
        })
        .expect("a thread");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_keeping_max_file_files_and_every_line() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("runtime.log");
        // the writer, as a service has it: append mode, never reopened
        let mut w = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let r = Rotation { max_size: 1000, max_file: 3 };
        let mut all = String::new();
        for i in 0..100 {
            let line = format!("line {i:04} {}\n", "x".repeat(40));
            w.write_all(line.as_bytes()).unwrap();
            all.push_str(&line);
            rotate_dir(d.path(), r);
        }
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        assert!(read(log.clone()).len() as u64 <= r.max_size);
        assert!(!numbered(&log, 3).exists(), "max-file 3: the live file and two copies");
        let kept = format!("{}{}{}", read(numbered(&log, 2)), read(numbered(&log, 1)), read(log.clone()));
        assert!(all.ends_with(&kept), "the newest lines, in order, none lost");
        assert!(kept.len() > 2000);
        // appended after a rotation: at the start of the live file, no hole of zeros
        assert!(!read(log).contains('\0'));
    }

    #[test]
    fn max_file_one_keeps_only_the_live_file() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("gateway.log");
        std::fs::write(&log, "y".repeat(5000)).unwrap();
        rotate_dir(d.path(), Rotation { max_size: 1000, max_file: 1 });
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        assert!(!numbered(&log, 1).exists());
        assert!(parse_size("20m").unwrap() == 20 << 20 && parse_size("nope").is_err());
    }
}
