//! Requests served by the builder service: `docker build` (the classic builder API,
//! `POST /build` with a tar context) and `docker commit`.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use crate::docker;
pub use crate::images::{JsonMessage, RegistryAuth};
use crate::stream::ByteChunk;

/// `POST /build`: the caller streams the context tar (as sent by the CLI, possibly
/// compressed); the build streams Docker's JSON messages back (`stream` lines,
/// `aux.ID` at the end, `error`/`errorDetail` on failure).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageBuild {
    pub dockerfile: String,
    pub tags: Vec<String>,
    pub target: Option<String>,
    pub build_args: HashMap<String, Option<String>>,
    pub labels: HashMap<String, String>,
    pub no_cache: bool,
    pub pull: bool,
    pub quiet: bool,
    pub rm: bool,
    pub force_rm: bool,
    pub network_mode: Option<String>,
    pub platform: Option<String>,
    /// From `X-Registry-Config`, by registry.
    pub auth: HashMap<String, RegistryAuth>,
    /// A remote context (git or URL) instead of the input stream.
    pub remote: Option<String>,
    pub memory: Option<i64>,
    pub cpu_shares: Option<i64>,
    pub shm_size: Option<i64>,
    pub extra_hosts: Vec<String>,
    /// `--cache-from` images (Docker's `cachefrom`).
    #[serde(default)]
    pub cache_from: Vec<String>,
}

/// `POST /commit`: a new image from a container's changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerCommit {
    pub container: String,
    pub repo: Option<String>,
    pub tag: Option<String>,
    pub comment: Option<String>,
    pub author: Option<String>,
    pub pause: bool,
    /// Dockerfile instructions (`-c`).
    pub changes: Vec<String>,
    /// Config overrides sent in the body.
    pub config: Option<docker::ContainerConfig>,
}

/// `docker builder prune` / build cache usage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildPrune {
    pub all: bool,
}

/// The builder's table of calls (see [`crate::contract`]).
#[macro_export]
macro_rules! builder_table {
    ($gen:path) => {
        $gen! {
            service: Builder, api: BuilderApi, client: BuilderClient, serve: serve_builder, module: builder,
            ops {
                image_build(ImageBuild) -> (), stream JsonMessage, input ByteChunk; callers [Gateway];
                container_commit(ContainerCommit) -> docker::IdResponse; callers [Gateway], timeout |_| $crate::secs(600);
                build_prune(BuildPrune) -> docker::BuildPruneResponse; callers [Gateway];
            }
        }
    };
}
crate::builder_table!(crate::__api);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::roundtrip;

    #[test]
    fn builder_messages_roundtrip() {
        roundtrip(ImageBuild {
            dockerfile: "Dockerfile".into(),
            tags: vec!["a:1".into()],
            ..Default::default()
        });
        roundtrip(ContainerCommit {
            container: "c".into(),
            repo: Some("r".into()),
            tag: None,
            comment: None,
            author: None,
            pause: true,
            changes: vec![],
            config: None,
        });
        roundtrip(BuildPrune { all: true });
    }
}
