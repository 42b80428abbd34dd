//! Start, exit, stop, kill, restart, pause, remove: the container state machine.
//!
//! Locking: `Entry::op` serialises changes to one container. Nobody holds it while
//! waiting for a process to exit: stop sends its signal under the lock, then waits on
//! the container's `life` signal without it, so the exit monitor can take the lock
//! to record the exit.
//!
//! One file per operation (youki's shape): start, exit, stop, kill, restart, pause,
//! remove, rename.

mod start;
mod exit;
mod stop;
mod kill;
mod restart;
mod pause;
mod remove;
mod rename;

pub use kill::parse_signal;
pub use restart::restart_delay;

/// Docker's size strings for log options: `10m`, `1g`, `512k`, `100`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mult) = match s.trim_end_matches('b').chars().last()? {
        'k' => (&s[..s.find('k')?], 1u64 << 10),
        'm' => (&s[..s.find('m')?], 1 << 20),
        'g' => (&s[..s.find('g')?], 1 << 30),
        _ => (s.trim_end_matches('b'), 1),
    };
    num.trim().parse::<f64>().ok().map(|n| (n * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn signals() {
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("kill").unwrap(), 9);
        assert_eq!(parse_signal("HUP").unwrap(), 1);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("0").is_err());
    }
    #[test]
    fn sizes() {
        assert_eq!(parse_size("10m"), Some(10 << 20));
        assert_eq!(parse_size("1k"), Some(1024));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("2g"), Some(2 << 30));
    }
}
