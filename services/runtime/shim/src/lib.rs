//! berth-shim: the per-container shim and the control protocol both sides speak.
//!
//! The library is synchronous and small: the runtime service (tokio) uses `proto`,
//! `oci`, `cgroups` and `jsonlog`'s reader-side helpers; the `berth-shim` binary uses
//! all of it (`init`: the container's set-up between fork and exec).

pub mod bpf;
pub mod caps;
pub mod cgroups;
pub mod devfilter;
pub mod fsutil;
pub mod init;
pub mod jsonlog;
pub mod logdriver;
pub mod oci;
pub mod proto;
pub mod syscalls;
pub mod sys;

/// berth-init, the static init bound at /sbin/docker-init for `--init`.
pub const INIT_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/berth-init"));
