//! Requests served by the images service: registries (pull, push, login), the image
//! store (list, inspect, tag, remove, history, prune), archives (save, load, import)
//! and images made from layers (commit, build steps). It owns `<root>/images/`:
//! the content store (`blobs/sha256/<hex>`) and image metadata per storage driver.
//! Layers are applied through the storage service.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use crate::docker;
pub use crate::plugin::{
    Plugin, PluginCreate, PluginDisable, PluginEnable, PluginInspect, PluginList, PluginPrivilege, PluginPrivilegeList, PluginPull, PluginPush,
    PluginRemove, PluginSet, PluginUpgrade,
};
use crate::storage::LayerApplied;
use crate::stream::ByteChunk;

/// Credentials from `X-Registry-Auth` or `POST /auth` (Docker's AuthConfig).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryAuth {
    pub username: Option<String>,
    pub password: Option<String>,
    pub server_address: Option<String>,
    pub identity_token: Option<String>,
    pub registry_token: Option<String>,
}

/// A progress/status message in Docker's JSON stream (`pkg/jsonmessage`), as sent by
/// pull, push, load, import and build. Field names are Docker's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JsonMessage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    #[serde(rename = "progressDetail", skip_serializing_if = "Option::is_none")]
    pub progress_detail: Option<ProgressDetail>,
    /// Build output lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Push result `{"Tag","Digest","Size"}`, build result `{"ID"}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aux: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(rename = "errorDetail", skip_serializing_if = "Option::is_none")]
    pub error_detail: Option<ErrorDetail>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressDetail {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
    pub message: String,
}

impl JsonMessage {
    pub fn status(s: impl Into<String>) -> JsonMessage {
        JsonMessage {
            status: Some(s.into()),
            ..Default::default()
        }
    }
    pub fn with_id(mut self, id: impl Into<String>) -> JsonMessage {
        self.id = Some(id.into());
        self
    }
    pub fn stream(s: impl Into<String>) -> JsonMessage {
        JsonMessage {
            stream: Some(s.into()),
            ..Default::default()
        }
    }
    pub fn error(msg: impl Into<String>) -> JsonMessage {
        let m = msg.into();
        JsonMessage {
            error: Some(m.clone()),
            error_detail: Some(ErrorDetail {
                code: None,
                message: m,
            }),
            ..Default::default()
        }
    }
}

/// `docker pull` / `POST /images/create?fromImage=`. `reference` is what the user
/// typed (`busybox`, `reg:5000/a/b:t`, `x@sha256:...`); the service normalises it as
/// Docker does. Registry errors end the stream with an error frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePull {
    pub reference: String,
    /// `os/arch[/variant]`; None means the node's platform (linux/amd64).
    pub platform: Option<String>,
    pub auth: Option<RegistryAuth>,
}

/// `docker push`. `name` may carry a tag; `tag` None pushes the tag in `name`
/// (or every tag of the repository when `name` has none, as Docker does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePush {
    pub name: String,
    pub tag: Option<String>,
    pub auth: Option<RegistryAuth>,
}

/// `docker login`: check credentials against the registry (`POST /auth`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryLogin {
    pub auth: RegistryAuth,
}

/// `docker images`. Filters as Docker sends them (reference, dangling, label, before, since).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageList {
    pub all: bool,
    pub digests: bool,
    pub filters: HashMap<String, Vec<String>>,
}

/// `docker image inspect`: by ID, short ID, name[:tag] or name@digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInspect {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageHistory {
    pub name: String,
}

/// `docker tag SOURCE REPO[:TAG]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageTag {
    pub source: String,
    pub repo: String,
    pub tag: Option<String>,
}

/// `docker rmi` with Docker's rules: untag versus delete; a Conflict when a
/// container uses the image unless `force`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRemove {
    pub name: String,
    pub force: bool,
    pub noprune: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePrune {
    pub filters: HashMap<String, Vec<String>>,
}

/// `docker save`: a docker-archive tar (manifest.json, repositories, OCI layout too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSave {
    pub names: Vec<String>,
}

/// `docker load`: the caller streams the archive; messages come back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageLoad {
    pub quiet: bool,
}

/// `docker import`: from the input stream (`source` "-") or a URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageImport {
    pub source: String,
    pub repo: Option<String>,
    pub tag: Option<String>,
    /// Dockerfile instructions (`-c`), e.g. `CMD ["sh"]`, `ENV A=b`.
    pub changes: Vec<String>,
    pub message: Option<String>,
    pub platform: Option<String>,
}

/// What the runtime and builder need to create a container from an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageResolve {
    pub reference: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedImage {
    /// `sha256:<config digest>`.
    pub id: String,
    /// The normalised name the image was found by (`docker.io/library/busybox:latest`),
    /// or the ID when found by ID.
    pub name: String,
    /// Top layer's chain ID; None for an image with no layers.
    pub chain_id: Option<String>,
    pub config: docker::ImageConfig,
    pub os: String,
    pub architecture: String,
}

/// A history entry as an image config records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub created_by: String,
    pub comment: Option<String>,
    pub author: Option<String>,
    pub empty_layer: bool,
}

/// Make an image from a parent image and, optionally, one new layer (for `docker
/// commit` and each build step). The new image's config is `config`; its rootfs is
/// the parent's plus the layer; its history the parent's plus `history`. The images
/// service takes over the caller's reference on `layer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageCreateFromLayer {
    pub parent: Option<String>,
    pub layer: Option<LayerApplied>,
    pub config: docker::ImageConfig,
    pub history: HistoryEntry,
    pub author: Option<String>,
    pub comment: Option<String>,
    /// Tags to set (`repo:tag`, normalised by the service).
    pub tags: Vec<String>,
    /// Recorded as the image's `Parent` (classic builder and commit do).
    pub record_parent: bool,
}

/// An image as `docker image inspect` shows it, with what Docker's current model
/// no longer has but the API sends before 1.52: `Parent` (images the classic
/// builder and commit made) and `DockerVersion`. Empty when there is none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageDetails {
    pub inspect: docker::ImageInspect,
    pub parent: String,
    pub docker_version: String,
}

/// `GET /distribution/{name}/json`: what the registry (a mirror first) holds under
/// `reference`: the top manifest's descriptor and the platforms it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistributionInspect {
    pub reference: String,
    pub auth: Option<RegistryAuth>,
}

/// Images and their sizes for `docker system df`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDf {}

/// The images service's table of calls (see [`crate::contract`]).
#[macro_export]
macro_rules! images_table {
    ($gen:path) => {
        $gen! {
            service: Images, api: ImagesApi, client: ImagesClient, serve: serve_images, module: images,
            ops {
                image_pull(ImagePull) -> (), stream JsonMessage; callers [Gateway, Builder, Swarm], timeout |_| $crate::secs(120);
                image_push(ImagePush) -> (), stream JsonMessage; callers [Gateway], timeout |_| $crate::secs(120);
                registry_login(RegistryLogin) -> docker::AuthResponse; callers [Gateway], timeout |_| $crate::secs(60);
                image_list(ImageList) -> Vec<docker::ImageSummary>; callers [Gateway], idempotent;
                image_inspect(ImageInspect) -> ImageDetails; callers [Gateway, Builder], idempotent;
                image_history(ImageHistory) -> Vec<docker::ImageHistoryResponseItem>; callers [Gateway];
                image_tag(ImageTag) -> (); callers [Gateway, Builder];
                image_remove(ImageRemove) -> Vec<docker::ImageDeleteResponseItem>; callers [Gateway], timeout |_| $crate::secs(120);
                image_prune(ImagePrune) -> docker::ImagePruneResponse; callers [Gateway], timeout |_| $crate::secs(120);
                image_save(ImageSave) -> (), stream ByteChunk; callers [Gateway], timeout |_| $crate::secs(120);
                image_load(ImageLoad) -> (), stream JsonMessage, input ByteChunk; callers [Gateway];
                image_import(ImageImport) -> (), stream JsonMessage, input ByteChunk; callers [Gateway];
                image_resolve(ImageResolve) -> ResolvedImage; callers [Runtime, Builder, Swarm];
                image_create_from_layer(ImageCreateFromLayer) -> String; callers [Builder];
                image_df(ImageDf) -> Vec<docker::ImageSummary>; callers [Gateway], timeout |_| $crate::secs(300), idempotent;
                distribution_inspect(DistributionInspect) -> docker::DistributionInspect; callers [Gateway], timeout |_| $crate::secs(60);
                plugin_create(PluginCreate) -> (), stream (), input ByteChunk; callers [Gateway], timeout |_| $crate::secs(120);
                plugin_list(PluginList) -> Vec<Plugin>; callers [Gateway, Storage], idempotent;
                plugin_inspect(PluginInspect) -> Plugin; callers [Gateway, Storage, Runtime], idempotent;
                plugin_set(PluginSet) -> (); callers [Gateway];
                plugin_enable(PluginEnable) -> (); callers [Gateway];
                plugin_disable(PluginDisable) -> (); callers [Gateway];
                plugin_remove(PluginRemove) -> (); callers [Gateway], timeout |_| $crate::secs(120);
                plugin_privilege_list(PluginPrivilegeList) -> Option<Vec<PluginPrivilege>>; callers [Gateway], timeout |_| $crate::secs(60);
                plugin_pull(PluginPull) -> String, stream JsonMessage; callers [Gateway], timeout |_| $crate::secs(120);
                plugin_push(PluginPush) -> (), stream JsonMessage; callers [Gateway], timeout |_| $crate::secs(120);
                plugin_upgrade(PluginUpgrade) -> String, stream JsonMessage; callers [Gateway], timeout |_| $crate::secs(120);
            }
        }
    };
}
crate::images_table!(crate::__api);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::roundtrip;

    #[test]
    fn images_messages_roundtrip() {
        let auth = RegistryAuth {
            username: Some("u".into()),
            password: Some("p".into()),
            ..Default::default()
        };
        roundtrip(ImagePull {
            reference: "busybox".into(),
            platform: Some("linux/amd64".into()),
            auth: Some(auth.clone()),
        });
        roundtrip(ImagePush {
            name: "r/x".into(),
            tag: Some("1".into()),
            auth: None,
        });
        roundtrip(RegistryLogin { auth });
        roundtrip(ImageList {
            all: true,
            digests: false,
            filters: HashMap::from([("dangling".into(), vec!["true".into()])]),
        });
        roundtrip(ImageInspect { name: "x".into() });
        roundtrip(ImageHistory { name: "x".into() });
        roundtrip(ImageTag {
            source: "a".into(),
            repo: "b".into(),
            tag: None,
        });
        roundtrip(ImageRemove {
            name: "x".into(),
            force: true,
            noprune: false,
        });
        roundtrip(ImagePrune::default());
        roundtrip(ImageSave {
            names: vec!["x".into()],
        });
        roundtrip(ImageLoad { quiet: true });
        roundtrip(ImageImport {
            source: "-".into(),
            repo: Some("r".into()),
            tag: None,
            changes: vec!["CMD [\"sh\"]".into()],
            message: None,
            platform: None,
        });
        roundtrip(ImageResolve {
            reference: "busybox".into(),
        });
        roundtrip(ResolvedImage {
            id: "sha256:1".into(),
            name: "docker.io/library/busybox:latest".into(),
            chain_id: Some("sha256:2".into()),
            config: docker::ImageConfig {
                cmd: Some(vec!["sh".into()]),
                ..Default::default()
            },
            os: "linux".into(),
            architecture: "amd64".into(),
        });
        roundtrip(ImageCreateFromLayer {
            parent: Some("sha256:1".into()),
            layer: Some(LayerApplied {
                chain_id: "c".into(),
                diff_id: "d".into(),
                size: 3,
            }),
            config: docker::ImageConfig::default(),
            history: HistoryEntry {
                created_by: "RUN x".into(),
                ..Default::default()
            },
            author: None,
            comment: None,
            tags: vec!["a:b".into()],
            record_parent: true,
        });
        roundtrip(ImageDf {});
        roundtrip(JsonMessage::status("Pulling fs layer").with_id("abc"));
        roundtrip(JsonMessage {
            progress_detail: Some(ProgressDetail {
                current: Some(1),
                total: Some(2),
            }),
            aux: Some(serde_json::json!({"Tag": "1", "Digest": "sha256:x", "Size": 5})),
            ..Default::default()
        });
        roundtrip(JsonMessage::error("boom"));
    }

    #[test]
    fn json_message_is_dockers_shape() {
        let m = JsonMessage {
            id: Some("a".into()),
            status: Some("Downloading".into()),
            progress_detail: Some(ProgressDetail {
                current: Some(1),
                total: Some(9),
            }),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"id":"a","status":"Downloading","progressDetail":{"current":1,"total":9}}"#
        );
    }
}
