//! Docker's rules that more than one service applies, each written once: before this
//! crate every service carried its own copy and the copies disagreed (the runtime
//! took `until` values the images and network services refused; three RFC 3339
//! formatters printed three forms).
//!
//! - [`clock`]: now, Go's RFC 3339 layouts, `until`/`since` values, Go durations,
//!   `docker ps`'s human durations
//! - [`filters`]: `label` / `label!` filters
//! - [`id`]: 64-hex object IDs
//! - [`path`]: Go's `path.Clean`

pub mod clock;
pub mod filters;
pub mod id;
pub mod path;
