//! Freezing and thawing a container's cgroup (pause/unpause) on cgroup v1 (freezer
//! controller) and v2 (`cgroup.freeze`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ROOT: &str = "/sys/fs/cgroup";

fn v2() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

fn dir(rel: &str) -> PathBuf {
    if v2() {
        Path::new(ROOT).join(rel)
    } else {
        Path::new(ROOT).join("freezer").join(rel)
    }
}

fn set(rel: &str, frozen: bool) -> std::io::Result<()> {
    let d = dir(rel);
    let (file, want, state_file) = if v2() {
        ("cgroup.freeze", if frozen { "1" } else { "0" }, "cgroup.events")
    } else {
        ("freezer.state", if frozen { "FROZEN" } else { "THAWED" }, "freezer.state")
    };
    std::fs::write(d.join(file), want)?;
    // wait until the kernel says it is done
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        let s = std::fs::read_to_string(d.join(state_file))?;
        let done = if v2() {
            s.lines().any(|l| l == format!("frozen {want}"))
        } else {
            s.trim() == want
        };
        if done {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(1));
        if !frozen && !v2() {
            std::fs::write(d.join(file), want)?;
        }
    }
    Err(std::io::Error::other("timed out waiting for the freezer"))
}

pub fn freeze(rel: &str) -> std::io::Result<()> {
    set(rel, true)
}

pub fn thaw(rel: &str) -> std::io::Result<()> {
    set(rel, false)
}
