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

/// The IPv4 routes of this network namespace's main table, default routes left out, as
/// (network, prefix length), from `/proc/net/route` (hex, little-endian): the subnets a
/// new bridge or overlay network must not take (the network service's IPAM, the
/// swarm's overlay subnets).
pub fn ipv4_routes() -> Vec<(std::net::Ipv4Addr, u8)> {
    parse_proc_routes(&std::fs::read_to_string("/proc/net/route").unwrap_or_default())
}

pub fn parse_proc_routes(text: &str) -> Vec<(std::net::Ipv4Addr, u8)> {
    let mut v = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let (Ok(dst), Ok(mask)) = (u32::from_str_radix(f[1], 16), u32::from_str_radix(f[7], 16)) else {
            continue;
        };
        let mask = u32::from_be(mask);
        let prefix = mask.leading_ones() as u8;
        if prefix == 0 {
            continue;
        }
        v.push((std::net::Ipv4Addr::from(u32::from_be(dst) & mask), prefix));
    }
    v
}

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
