//! berth-shim: the per-container shim and the control protocol both sides speak.

/// berth-init, the static init bound at /sbin/docker-init for `--init`.
pub const INIT_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/berth-init"));
