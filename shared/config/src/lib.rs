//! Node configuration: Docker's `daemon.json` keys, the environment contract between
//! `berth up` and the services it starts, and the layout of the data root.

/// Moved to `berth_rules::clock`; kept here for code written against this path.
pub use berth_rules::clock;
pub mod daemon;
pub mod env;
pub mod hosts;
pub mod paths;
pub mod records;

pub use daemon::{ConfigError, DaemonConfig};
pub use paths::Paths;

/// berth's own version, reported as the engine version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The highest Docker Engine API version berth serves.
pub const API_VERSION: &str = "1.51";
/// The lowest Docker Engine API version berth accepts.
pub const MIN_API_VERSION: &str = "1.24";

/// The host's memory in bytes (/proc/meminfo MemTotal), 0 when unreadable:
/// `docker info`'s MemTotal and the limit `docker stats` shows for unlimited containers.
pub fn host_mem_total() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
