//! Node configuration: Docker's `daemon.json` keys, the environment contract between
//! `berth up` and the services it starts, and the layout of the data root.

pub mod clock;
pub mod daemon;
pub mod env;
pub mod paths;

pub use daemon::{ConfigError, DaemonConfig};
pub use paths::Paths;

/// berth's own version, reported as the engine version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The highest Docker Engine API version berth serves.
pub const API_VERSION: &str = "1.51";
/// The lowest Docker Engine API version berth accepts.
pub const MIN_API_VERSION: &str = "1.24";
