//! The storage service on a real nats-server: every kind of request through the bus.
//! Needs root (mounts, ownership); fails otherwise (BERTH_SKIP_ROOT_TESTS=1 skips).

use std::io::Write;
use std::time::Duration;

use berth_bus::storage::{StorageApi, StorageClient};
use berth_bus::{Bus, SystemClient};
use futures_util::StreamExt;
use berth_config::DaemonConfig;
use berth_test_support::Nats;
use bus_schema::storage::*;
use bus_schema::stream::ByteChunk;
use bus_schema::{ErrorKind, Service};
use sha2::{Digest, Sha256};


fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// A layer tar with `files` (name, content) and `whiteouts`.
fn layer(files: &[(&str, &[u8])], whiteouts: &[&str]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (n, c) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(c.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        b.append_data(&mut h, n, *c).unwrap();
    }
    for w in whiteouts {
        let mut h = tar::Header::new_ustar();
        h.set_size(0);
        h.set_mode(0o644);
        b.append_data(&mut h, w, &[][..]).unwrap();
    }
    b.into_inner().unwrap()
}

struct Node {
    _nats: Nats,
    _root: tempfile::TempDir,
    bus: Bus,
    storage: StorageClient,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(driver: &str) -> Node {
    let nats = Nats::start();
    let root = tempfile::tempdir_in("/var/tmp").unwrap();
    let cfg = DaemonConfig {
        data_root: Some(root.path().to_path_buf()),
        storage_driver: Some(driver.into()),
        ..Default::default()
    };
    let bus = Bus::connect(&nats.url(), None, "n1", "storage-test")
        .await
        .unwrap();
    let server = berth_storage::serve(bus.clone(), cfg).await.unwrap();
    let task = tokio::spawn(async move {
        let _ = server.run().await;
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    Node {
        _nats: nats,
        _root: root,
        storage: StorageClient::new(bus.clone()),
        bus,
        task,
    }
}

async fn apply(
    c: &StorageClient,
    parent: Option<&str>,
    blob: &[u8],
    diff_id: Option<String>,
) -> Result<LayerApplied, bus_schema::BusError> {
    let req = LayerApply {
        parent: parent.map(str::to_string),
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        compressed_digest: Some(digest(blob)),
        diff_id,
    };
    let (tx, input) = berth_bus::channel(4);
    let ((), mut out) = c.layer_apply(req, input).await?;
    for part in blob.chunks(50_000) {
        tx.send(ByteChunk(part.to_vec())).await?;
    }
    drop(tx);
    let item = out.next().await.expect("one item")?;
    assert!(out.next().await.is_none());
    Ok(item)
}

async fn export(c: &StorageClient, chain: &str) -> Vec<u8> {
    let ((), mut rd) = c
        .layer_export(LayerExport {
            chain_id: chain.into(),
        })
        .await
        .unwrap();
    let mut v = Vec::new();
    while let Some(c) = rd.next().await {
        v.extend_from_slice(&c.unwrap().0);
    }
    v
}

async fn layers_and_containers(driver: &str) {
    let n = start(driver).await;
    let b = &n.storage;

    // docker info part.
    let info = SystemClient::new(n.bus.clone())
        .info_part(Service::Storage)
        .await
        .unwrap();
    assert_eq!(info.info.driver.as_deref(), Some(driver));

    // Two layers; the child is applied before its parent exists (both in flight).
    let l1 = layer(
        &[
            ("etc/os-release", b"berth\n"),
            ("bin/tool", b"#!/bin/sh\n"),
            ("data/a", b"a"),
        ],
        &[],
    );
    let l2 = layer(&[("etc/motd", b"hi\n")], &["data/.wh.a"]);
    let (g1, g2) = (gzip(&l1), gzip(&l2));
    let (d1, d2) = (digest(&l1), digest(&l2));
    let c1 = d1.clone();
    let c2 = berth_storage::layers::chain_id(Some(&c1), &d2);
    let (r1, r2) = {
        let bb = b.clone();
        let c1b = c1.clone();
        let d2b = d2.clone();
        let g2b = g2.clone();
        let child = tokio::spawn(async move { apply(&bb, Some(&c1b), &g2b, Some(d2b)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r1 = apply(b, None, &g1, Some(d1.clone())).await.unwrap();
        (r1, child.await.unwrap().unwrap())
    };
    assert_eq!(
        (r1.chain_id.as_str(), r1.diff_id.as_str(), r1.size),
        (c1.as_str(), d1.as_str(), 6 + 10 + 1)
    );
    assert_eq!(r2.chain_id, c2);

    // The export reproduces the diff byte for byte.
    assert_eq!(digest(&export(b, &c2).await), d2);
    assert_eq!(digest(&export(b, &c1).await), d1);

    // A wrong digest fails and leaves nothing.
    let bad = apply(
        b,
        None,
        &gzip(&layer(&[("x", b"y")], &[])),
        Some(d1.clone()),
    )
    .await
    .unwrap_err();
    assert!(bad.message.contains("diff_id mismatch"), "{bad}");
    let e = b
        .layer_stat(LayerStat {
            chain_id: "sha256:nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);

    // A container on top: mount, write, diff, size, commit, export.
    b.rw_layer_create(RwLayerCreate {
        id: "ctr1".into(),
        parent: Some(c2.clone()),
    })
    .await
    .unwrap();
    let e = b
        .rw_layer_create(RwLayerCreate {
            id: "ctr1".into(),
            parent: Some(c2.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict);
    let m = b
        .rw_layer_mount(RwLayerMount { id: "ctr1".into() })
        .await
        .unwrap();
    let root = std::path::PathBuf::from(&m.path);
    assert_eq!(std::fs::read(root.join("etc/motd")).unwrap(), b"hi\n");
    assert!(!root.join("data/a").exists(), "whiteout applied");
    assert!(
        root.join(".dockerenv").exists()
            && root.join("proc").is_dir()
            && root.join("etc/hosts").exists()
    );
    std::fs::write(root.join("etc/new"), b"new!").unwrap();
    std::fs::remove_file(root.join("bin/tool")).unwrap();
    // Mounts are counted.
    let m2 = b
        .rw_layer_mount(RwLayerMount { id: "ctr1".into() })
        .await
        .unwrap();
    assert_eq!(m2.path, m.path);
    b.rw_layer_unmount(RwLayerUnmount { id: "ctr1".into() })
        .await
        .unwrap();
    assert!(root.join("etc/new").exists(), "still mounted once");
    let ch = b
        .rw_layer_changes(RwLayerChanges { id: "ctr1".into() })
        .await
        .unwrap();
    let got: Vec<(String, u8)> = ch.into_iter().map(|c| (c.path, c.kind)).collect();
    assert_eq!(
        got,
        vec![
            ("/bin".into(), 0),
            ("/bin/tool".into(), 2),
            ("/etc".into(), 0),
            ("/etc/new".into(), 1)
        ],
        "docker diff"
    );
    let sz = b.rw_layer_size(RwLayerSize { id: "ctr1".into() }).await.unwrap();
    assert_eq!(sz.rw, 4);
    assert_eq!(sz.root_fs, 4 + 17 + 3);
    let ((), mut rd) = b
        .rw_layer_export(RwLayerExport { id: "ctr1".into() })
        .await
        .unwrap();
    let mut tarball = Vec::new();
    while let Some(c) = rd.next().await {
        tarball.extend_from_slice(&c.unwrap().0);
    }
    let names: Vec<String> = tar::Archive::new(&tarball[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains(&"etc/new".to_string()) && names.contains(&"etc/motd".to_string()),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n == "bin/tool"));
    let committed = b
        .rw_layer_commit(RwLayerCommit { id: "ctr1".into() })
        .await
        .unwrap();
    assert_eq!(
        digest(&export(b, &committed.chain_id).await),
        committed.diff_id
    );
    let info = b
        .layer_stat(LayerStat {
            chain_id: committed.chain_id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        (info.parent.as_deref(), info.references),
        (Some(c2.as_str()), 1)
    );

    // df sees the layers.
    let df = b.storage_df(StorageDf {}).await.unwrap();
    assert_eq!(df.layers.len(), 3);

    // Releasing: the image layers stay while a container stands on them.
    let removed = b
        .layer_release(LayerRelease {
            chain_id: committed.chain_id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(removed, vec![committed.chain_id.clone()]);
    assert!(
        b.layer_release(LayerRelease {
            chain_id: c2.clone()
        })
        .await
        .unwrap()
        .is_empty(),
        "c2 still holds ctr1"
    );
    assert!(
        b.layer_release(LayerRelease {
            chain_id: c1.clone()
        })
        .await
        .unwrap()
        .is_empty(),
        "c1 has a child"
    );
    b.rw_layer_unmount(RwLayerUnmount { id: "ctr1".into() })
        .await
        .unwrap();
    b.rw_layer_remove(RwLayerRemove { id: "ctr1".into() })
        .await
        .unwrap();
    let e = b
        .layer_stat(LayerStat {
            chain_id: c1.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.kind,
        ErrorKind::NotFound,
        "the chain went with its last container"
    );
    let e = b
        .rw_layer_mount(RwLayerMount { id: "ctr1".into() })
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay2_over_the_bus() {
    berth_test_support::require_root!();
    layers_and_containers("overlay2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vfs_over_the_bus() {
    berth_test_support::require_root!();
    layers_and_containers("vfs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_over_the_bus() {
    berth_test_support::require_root!();
    let n = start("overlay2").await;
    let b = &n.storage;
    let v = b
        .volume_create(VolumeCreate {
            name: Some("data1".into()),
            driver: "local".into(),
            driver_opts: Default::default(),
            labels: [("team".to_string(), "a".to_string())].into(),
            anonymous: false,
        })
        .await
        .unwrap();
    assert_eq!(v.scope, Some(bus_schema::docker::VolumeScopeEnum::LOCAL));
    let tmpfs = b
        .volume_create(VolumeCreate {
            name: Some("scratch".into()),
            driver: "local".into(),
            driver_opts: [("type", "tmpfs"), ("device", "tmpfs"), ("o", "size=1m")]
                .into_iter()
                .map(|(a, c)| (a.into(), c.into()))
                .collect(),
            labels: Default::default(),
            anonymous: false,
        })
        .await
        .unwrap();
    // A container layer with content to copy into the volume.
    let l = layer(&[("srv/seed/hello", b"from image")], &[]);
    let r = apply(b, None, &gzip(&l), None).await.unwrap();
    b.rw_layer_create(RwLayerCreate {
        id: "ctrv".into(),
        parent: Some(r.chain_id.clone()),
    })
    .await
    .unwrap();
    b.rw_layer_mount(RwLayerMount { id: "ctrv".into() })
        .await
        .unwrap();
    let got = b
        .volume_acquire(VolumeAcquire {
            name: "data1".into(),
            container_id: "ctrv".into(),
            copy_from: Some("/srv/seed".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(std::path::Path::new(&got.path).join("hello")).unwrap(),
        b"from image"
    );
    let t = b
        .volume_acquire(VolumeAcquire {
            name: "scratch".into(),
            container_id: "ctrv".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        berth_fsutil::is_mountpoint(std::path::Path::new(&t.path)).unwrap(),
        "tmpfs mounted on acquire"
    );
    let e = b
        .volume_remove(VolumeRemove {
            name: "data1".into(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.kind, e.message.as_str()),
        (
            ErrorKind::Conflict,
            "remove data1: volume is in use - [ctrv]"
        )
    );
    b.volume_release_ref(VolumeReleaseRef {
        name: "scratch".into(),
        container_id: "ctrv".into(),
        unmount_only: false,
    })
    .await
    .unwrap();
    assert!(
        !berth_fsutil::is_mountpoint(std::path::Path::new(&tmpfs.mountpoint)).unwrap(),
        "unmounted with its last user"
    );
    b.volume_release_ref(VolumeReleaseRef {
        name: "data1".into(),
        container_id: "ctrv".into(),
        unmount_only: false,
    })
    .await
    .unwrap();
    let list = b
        .volume_list(VolumeList {
            filters: [("label".to_string(), vec!["team=a".to_string()])].into(),
            plugins: false,
        })
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    let df = b.storage_df(StorageDf {}).await.unwrap();
    let d1 = df.volumes.iter().find(|v| v.name == "data1").unwrap();
    assert!(d1.usage_data.as_ref().unwrap().size > 0);
    let p = b
        .volume_prune(VolumePrune {
            filters: [("all".to_string(), vec!["true".to_string()])].into(),
        })
        .await
        .unwrap();
    let mut del = p.volumes_deleted.unwrap();
    del.sort();
    // scratch has mount options (a tmpfs): Moby's prune leaves it
    assert_eq!(del, vec!["data1"]);
    b.volume_remove(VolumeRemove {
        name: "scratch".into(),
        force: false,
    })
    .await
    .unwrap();
    b.rw_layer_remove(RwLayerRemove { id: "ctrv".into() })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_client_streams_both_ways() {
    berth_test_support::require_root!();
    let n = start("overlay2").await;
    let c = &n.storage;
    let tar = layer(&[("hello", b"world")], &[]);
    let (tx, input) = berth_bus::channel(4);
    tx.send(ByteChunk(gzip(&tar))).await.unwrap();
    drop(tx);
    let req = LayerApply {
        parent: None,
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        compressed_digest: None,
        diff_id: Some(digest(&tar)),
    };
    let ((), items) = c.layer_apply(req, input).await.unwrap();
    let applied = berth_bus::single(items, "the apply").await.unwrap();
    assert_eq!(applied.diff_id, digest(&tar));
    assert_eq!(export(c, &applied.chain_id).await, tar);
    // A missing layer is the request's error, not the stream's.
    let e = c.layer_export(LayerExport { chain_id: "sha256:none".into() }).await.err().expect("an error");
    assert_eq!(e.kind, ErrorKind::NotFound);
    // A failed input fails the apply with the caller's error and keeps nothing.
    let (tx, input) = berth_bus::channel(4);
    tx.send(ByteChunk(gzip(&tar)[..10].to_vec())).await.unwrap();
    tx.fail(bus_schema::BusError::internal("download broke")).await;
    let req = LayerApply {
        parent: None,
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        compressed_digest: None,
        diff_id: None,
    };
    let ((), items) = c.layer_apply(req, input).await.unwrap();
    let e = berth_bus::single(items, "the apply").await.unwrap_err();
    assert!(e.message.contains("download broke"), "{e}");
    assert_eq!(
        c.layer_release(LayerRelease {
            chain_id: applied.chain_id.clone()
        })
        .await
        .unwrap(),
        vec![applied.chain_id]
    );
}
