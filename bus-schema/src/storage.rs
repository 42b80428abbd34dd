//! Requests served by the storage service: layers, container read-write layers,
//! volumes, disk usage. The storage service owns everything under `<root>/storage/`.
//!
//! Layer lifecycle: a layer is named by its chain ID (`sha256:` of the chain, as
//! Docker computes it: `chain(L1) = diff_id(L1)`, `chain(Ln) = sha256(chain(Ln-1) + " " + diff_id(Ln))`).
//! [`LayerApply`] creates one and hands the caller one reference; [`LayerRetain`] and
//! [`LayerRelease`] count references held by images; a child layer holds its parent;
//! a layer with no references and no children is removed (garbage collected).
//! Layers of one image may be applied concurrently: the service waits for a parent
//! where its driver needs it (vfs, btrfs) and applies independently where not (overlay2).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use crate::docker;
use crate::stream::ByteChunk;

/// Apply a layer diff (an OCI/Docker tar, compressed or not) on top of `parent`.
/// The caller streams the blob's bytes as input and ends the input when done; a
/// failed input (the caller's `fail`) discards everything. The service decompresses
/// (gzip, zstd or none per `media_type`), checks `compressed_digest` and
/// `diff_id` when given, refuses hostile tars, commits, and answers with one
/// [`LayerApplied`] item before ending the stream. Nothing is kept on failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerApply {
    pub parent: Option<String>,
    /// e.g. `application/vnd.oci.image.layer.v1.tar+gzip`, `...tar+zstd`, `...tar`,
    /// `application/vnd.docker.image.rootfs.diff.tar.gzip`.
    pub media_type: String,
    /// The blob digest the bytes must have (`sha256:...`), if known.
    pub compressed_digest: Option<String>,
    /// The uncompressed digest (the image config's `rootfs.diff_ids` entry), if known.
    pub diff_id: Option<String>,
}

/// The DiffID of a layer without changes (the tar of nothing: two zero blocks), as
/// Moby's `layer.DigestSHA256EmptyTar`: an image made from one does not add it.
pub const EMPTY_LAYER_DIFF_ID: &str = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerApplied {
    pub chain_id: String,
    pub diff_id: String,
    /// Bytes of file content in this layer (Docker's layer size).
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    pub chain_id: String,
    pub diff_id: String,
    pub parent: Option<String>,
    pub size: u64,
    /// References held by images (not counting children).
    pub references: u32,
}

/// Look a layer up by chain ID (NotFound if absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerStat {
    pub chain_id: String,
}

/// Take one more reference on a layer (an image now uses it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRetain {
    pub chain_id: String,
}

/// Drop one reference; unreferenced layers without children are removed, then their
/// parents in turn. Answers the chain IDs that were removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRelease {
    pub chain_id: String,
}

/// Stream one layer's diff as an uncompressed tar (for save and push). Digest of the
/// stream equals the layer's diff_id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerExport {
    pub chain_id: String,
}

/// Create a container's read-write layer (plus its init layer holding the mount
/// points /etc/hosts, /etc/hostname, /etc/resolv.conf, /dev, /proc, /sys, /.dockerenv)
/// on top of the image's top layer (`parent` None for an image FROM scratch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RwLayerCreate {
    pub id: String,
    pub parent: Option<String>,
}

/// Mount a container's root filesystem; mounts are counted. Answers the path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RwLayerMount {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RwMount {
    /// The merged root filesystem on the host.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RwLayerUnmount {
    pub id: String,
}

/// Remove a container's layers (unmounting first if needed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RwLayerRemove {
    pub id: String,
}

/// `docker diff`: what changed in the container's read-write layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RwLayerChanges {
    pub id: String,
}

/// One changed path; kind 0 modified, 1 added, 2 deleted (Docker's codes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub path: String,
    pub kind: u8,
}

/// `docker export`: the container's whole filesystem as a tar stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RwLayerExport {
    pub id: String,
}

/// Commit a container's changes as a new layer on top of its parent (for `docker
/// commit` and build steps). The caller owns one reference to the new layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RwLayerCommit {
    pub id: String,
}

/// Sizes for `docker ps -s` / inspect `SizeRw`, `SizeRootFs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RwLayerSize {
    pub id: String,
}

/// Every container read-write layer and how many times it is mounted: the runtime
/// and the builder reconcile theirs with it (orphans of a create or a removal that a
/// fault interrupted, mounts of containers that no longer run).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RwLayerList {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RwLayerState {
    pub id: String,
    pub mounts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RwSize {
    pub rw: i64,
    pub root_fs: i64,
}

/// Create a volume (`docker volume create`). `name` None makes an anonymous volume
/// with a random 64-hex name. Creating an existing volume with the same options
/// answers it (Docker's behaviour); with different options it is a Conflict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeCreate {
    pub name: Option<String>,
    pub driver: String,
    pub driver_opts: HashMap<String, String>,
    pub labels: HashMap<String, String>,
    /// Anonymous volumes carry `com.docker.volume.anonymous` in Docker.
    pub anonymous: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInspect {
    pub name: String,
}

/// Filters as Docker sends them: name, label, dangling, driver.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeList {
    pub filters: HashMap<String, Vec<String>>,
    /// Ask the enabled volume-driver plugins for their List (`docker volume ls`, as
    /// Moby's store does); false: berth's records only (what the images service asks
    /// while it handles a plugin: a plugin's List would ask it back).
    #[serde(default)]
    pub plugins: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRemove {
    pub name: String,
    pub force: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumePrune {
    pub filters: HashMap<String, Vec<String>>,
}

/// A container starts using a volume: mounts it when needed (tmpfs/bind options) and
/// counts the user, so `docker volume rm` answers 409 while it is referenced. When
/// `copy_from` names a directory in the container's rootfs (a path inside the
/// container, e.g. `/var/lib/data`, resolved in the rootfs of `container_id`'s
/// read-write layer) and the volume is empty and was never populated, its content is
/// copied in first (Docker's behaviour).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeAcquire {
    pub name: String,
    pub container_id: String,
    pub copy_from: Option<String>,
    /// Where the volume is mounted in the container, for the `volume mount` event.
    #[serde(default)]
    pub destination: Option<String>,
    /// Mounted read-only (the event's `read/write` attribute is false).
    #[serde(default)]
    pub read_only: bool,
    /// Bind propagation of the mount, for the event (empty for volumes by default).
    #[serde(default)]
    pub propagation: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMounted {
    /// Host path to bind into the container.
    pub path: String,
}

/// The container no longer uses the volume (it was removed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeReleaseRef {
    pub name: String,
    pub container_id: String,
    /// The container stopped (it still refers to the volume): a plugin's volume is
    /// unmounted (`VolumeDriver.Unmount`), a `local` one is left as it is.
    #[serde(default)]
    pub unmount_only: bool,
}

/// `docker system df`: layer and volume usage as the storage service sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageDf {}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StorageUsage {
    /// chain ID -> size of that layer alone.
    pub layers: HashMap<String, i64>,
    pub volumes: Vec<docker::Volume>,
}

/// The storage service's table of calls (see [`crate::contract`]).
#[macro_export]
macro_rules! storage_table {
    ($gen:path) => {
        $gen! {
            service: Storage, api: StorageApi, client: StorageClient, serve: serve_storage, module: storage,
            ops {
                layer_apply(LayerApply) -> (), stream LayerApplied, input ByteChunk; callers [Images], timeout |_| $crate::secs(120);
                layer_stat(LayerStat) -> LayerInfo; callers [Images], timeout |_| $crate::secs(120);
                layer_retain(LayerRetain) -> LayerInfo; callers [Images], timeout |_| $crate::secs(120);
                layer_release(LayerRelease) -> Vec<String>; callers [Images], timeout |_| $crate::secs(120);
                layer_export(LayerExport) -> (), stream ByteChunk; callers [Images], timeout |_| $crate::secs(120);
                rw_layer_create(RwLayerCreate) -> (); callers [Runtime, Builder];
                rw_layer_mount(RwLayerMount) -> RwMount; callers [Runtime, Builder];
                rw_layer_unmount(RwLayerUnmount) -> (); callers [Runtime, Builder];
                rw_layer_remove(RwLayerRemove) -> (); callers [Runtime, Builder];
                rw_layer_changes(RwLayerChanges) -> Vec<Change>; callers [Runtime];
                rw_layer_export(RwLayerExport) -> (), stream ByteChunk; callers [Runtime];
                rw_layer_commit(RwLayerCommit) -> LayerApplied; callers [Builder], timeout |_| $crate::secs(3600);
                rw_layer_size(RwLayerSize) -> RwSize; callers [Runtime];
                volume_create(VolumeCreate) -> docker::Volume; callers [Gateway, Runtime];
                volume_inspect(VolumeInspect) -> docker::Volume; callers [Gateway], idempotent;
                volume_list(VolumeList) -> Vec<docker::Volume>; callers [Gateway, Images], idempotent;
                volume_remove(VolumeRemove) -> (); callers [Gateway, Runtime];
                volume_prune(VolumePrune) -> docker::VolumePruneResponse; callers [Gateway], timeout |_| $crate::secs(300);
                volume_acquire(VolumeAcquire) -> VolumeMounted; callers [Runtime], timeout |_| $crate::secs(600);
                volume_release_ref(VolumeReleaseRef) -> (); callers [Runtime];
                storage_df(StorageDf) -> StorageUsage; callers [Gateway], timeout |_| $crate::secs(300), idempotent;
                rw_layer_list(RwLayerList) -> Vec<RwLayerState>; callers [Runtime];
            }
        }
    };
}
crate::storage_table!(crate::__api);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::roundtrip;

    #[test]
    fn storage_messages_roundtrip() {
        roundtrip(LayerApply {
            parent: Some("sha256:aa".into()),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            compressed_digest: Some("sha256:bb".into()),
            diff_id: None,
        });
        roundtrip(LayerApplied {
            chain_id: "sha256:c".into(),
            diff_id: "sha256:d".into(),
            size: 10,
        });
        roundtrip(LayerInfo {
            chain_id: "c".into(),
            diff_id: "d".into(),
            parent: None,
            size: 1,
            references: 2,
        });
        roundtrip(LayerStat {
            chain_id: "c".into(),
        });
        roundtrip(LayerRetain {
            chain_id: "c".into(),
        });
        roundtrip(LayerRelease {
            chain_id: "c".into(),
        });
        roundtrip(LayerExport {
            chain_id: "c".into(),
        });
        roundtrip(RwLayerCreate {
            id: "x".into(),
            parent: Some("c".into()),
        });
        roundtrip(RwLayerMount { id: "x".into() });
        roundtrip(RwMount { path: "/p".into() });
        roundtrip(RwLayerUnmount { id: "x".into() });
        roundtrip(RwLayerRemove { id: "x".into() });
        roundtrip(RwLayerChanges { id: "x".into() });
        roundtrip(Change {
            path: "/a".into(),
            kind: 1,
        });
        roundtrip(RwLayerExport { id: "x".into() });
        roundtrip(RwLayerCommit { id: "x".into() });
        roundtrip(RwLayerSize { id: "x".into() });
        roundtrip(RwSize { rw: 1, root_fs: 2 });
        roundtrip(RwLayerList {});
        roundtrip(RwLayerState { id: "x".into(), mounts: 1 });
        roundtrip(VolumeCreate {
            name: Some("v".into()),
            driver: "local".into(),
            driver_opts: HashMap::from([("type".into(), "tmpfs".into())]),
            labels: HashMap::new(),
            anonymous: false,
        });
        roundtrip(VolumeInspect { name: "v".into() });
        roundtrip(VolumeList {
            filters: HashMap::from([("name".into(), vec!["v".into()])]),
            plugins: true,
        });
        roundtrip(VolumeRemove {
            name: "v".into(),
            force: true,
        });
        roundtrip(VolumePrune::default());
        roundtrip(VolumeAcquire {
            name: "v".into(),
            container_id: "c".into(),
            copy_from: Some("/data".into()),
            destination: Some("/data".into()),
            read_only: true,
            propagation: Some("rprivate".into()),
        });
        // Senders that predate the event fields still decode.
        #[derive(Serialize)]
        struct OldAcquire {
            name: String,
            container_id: String,
            copy_from: Option<String>,
        }
        let old = crate::encode(&OldAcquire {
            name: "v".into(),
            container_id: "c".into(),
            copy_from: None,
        })
        .unwrap();
        let back: VolumeAcquire = crate::decode(&old).unwrap();
        assert_eq!(
            back,
            VolumeAcquire {
                name: "v".into(),
                container_id: "c".into(),
                ..Default::default()
            }
        );
        roundtrip(VolumeMounted { path: "/p".into() });
        roundtrip(VolumeReleaseRef {
            name: "v".into(),
            container_id: "c".into(),
            unmount_only: true,
        });
        roundtrip(StorageDf {});
        roundtrip(StorageUsage {
            layers: HashMap::from([("c".into(), 5)]),
            volumes: vec![docker::Volume {
                name: "v".into(),
                driver: "local".into(),
                scope: Some(docker::VolumeScopeEnum::LOCAL),
                ..Default::default()
            }],
        });
    }
}
