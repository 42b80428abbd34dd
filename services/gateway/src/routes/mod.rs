//! Route tables, one module per area, each over a small backend trait (moby's router
//! shape). Handlers parse, call the backend, and set the status.

pub mod build;
pub mod containers;
pub mod events;
pub mod images;
pub mod networks;
pub mod plugins;
pub mod swarm;
pub mod system;
pub mod unserved;
pub mod volumes;
