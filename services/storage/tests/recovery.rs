//! What a crash leaves and what a restart does with it; switching drivers on one root.
//! Needs root (overlay2); fails otherwise (BERTH_SKIP_ROOT_TESTS=1 skips).

use std::sync::Arc;
use std::time::Duration;

use berth_storage::{volumes::NoEvents, Storage, StorageApi};
use bus_schema::storage::*;
use sha2::{Digest, Sha256};


fn layer_tar(name: &str, size: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(size as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, name, &vec![b'x'; size][..]).unwrap();
    b.into_inner().unwrap()
}

async fn apply(s: &Storage, parent: Option<String>, tar: &[u8]) -> LayerApplied {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(Ok(tar.to_vec())).await.unwrap();
    drop(tx);
    s.apply_layer(
        LayerApply {
            parent,
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            compressed_digest: None,
            diff_id: None,
        },
        rx,
    )
    .await
    .unwrap()
}

fn snapshots(s: &Storage) -> Vec<String> {
    let mut v = Vec::new();
    s.driver.walk(&mut |i| v.push(i.name.clone())).unwrap();
    v.sort();
    v
}

#[test]
fn a_half_applied_layer_is_gone_after_a_restart() {
    berth_test_support::require_root!();
    let root = tempfile::tempdir_in("/var/tmp").unwrap();
    let tar = layer_tar("big", 4 << 20);
    {
        // The "service": an apply that has received half its bytes when the process dies.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let s = Arc::new(Storage::open(root.path(), "overlay2", &[], Arc::new(NoEvents)).unwrap());
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let s2 = s.clone();
        rt.spawn(async move {
            let _ = s2
                .apply_layer(
                    LayerApply {
                        parent: None,
                        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                        compressed_digest: None,
                        diff_id: None,
                    },
                    rx,
                )
                .await;
        });
        let half = tar[..tar.len() / 2].to_vec();
        rt.block_on(async {
            tx.send(Ok(half)).await.unwrap();
            // Wait until the staging snapshot holds data.
            for _ in 0..200 {
                if snapshots(&s).iter().any(|n| n.starts_with("staging-")) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        assert!(snapshots(&s).iter().any(|n| n.starts_with("staging-")));
        // SIGKILL: nothing runs any more, nothing is cleaned up.
        std::mem::forget(tx);
        rt.shutdown_background();
        std::mem::forget(s);
    }
    let s = Storage::open(root.path(), "overlay2", &[], Arc::new(NoEvents)).unwrap();
    assert!(snapshots(&s).is_empty(), "{:?}", snapshots(&s));
    assert!(s.layers.list().is_empty());
    // No directory of it remains either.
    let dirs: Vec<_> = std::fs::read_dir(root.path().join("storage/overlay2"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 64)
        .collect();
    assert!(dirs.is_empty(), "{dirs:?}");
}

#[test]
fn interrupted_commits_and_creates_are_reconciled() {
    berth_test_support::require_root!();
    let root = tempfile::tempdir_in("/var/tmp").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let chain = {
        let s = Storage::open(root.path(), "overlay2", &[], Arc::new(NoEvents)).unwrap();
        let l = rt.block_on(apply(&s, None, &layer_tar("a", 10)));
        rt.block_on(s.rw_layer_create(RwLayerCreate {
            id: "c1".into(),
            parent: Some(l.chain_id.clone()),
        }))
        .unwrap();
        rt.block_on(s.rw_layer_mount(RwLayerMount { id: "c1".into() }))
            .unwrap();
        // A container create that died after its snapshots but before its record.
        s.driver.prepare("c2-init", Some(&l.chain_id)).unwrap();
        // A committed snapshot whose layer metadata was never written.
        s.driver.prepare("k", None).unwrap();
        s.driver
            .commit(
                "sha256:0000000000000000000000000000000000000000000000000000000000000000",
                "k",
                Default::default(),
            )
            .unwrap();
        l.chain_id
    };
    let s = Storage::open(root.path(), "overlay2", &[], Arc::new(NoEvents)).unwrap();
    assert_eq!(
        snapshots(&s),
        vec![
            "c1".to_string(),
            format!("init-{}", chain.trim_start_matches("sha256:")),
            chain.clone()
        ]
    );
    // The mounted container is still mounted and its count continues.
    let m = rt
        .block_on(s.rw_layer_mount(RwLayerMount { id: "c1".into() }))
        .unwrap();
    assert!(std::path::Path::new(&m.path).join("a").exists());
    rt.block_on(s.rw_layer_remove(RwLayerRemove { id: "c1".into() }))
        .unwrap();
    // The layer is still referenced by its image (one reference from the apply).
    assert_eq!(
        rt.block_on(s.layer_stat(LayerStat {
            chain_id: chain.clone()
        }))
        .unwrap()
        .references,
        1
    );
}

#[test]
fn switching_drivers_hides_and_brings_back_layers() {
    berth_test_support::require_root!();
    let root = tempfile::tempdir_in("/var/tmp").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tar = layer_tar("f", 100);
    let diff = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
    {
        let s = Storage::open(root.path(), "overlay2", &[], Arc::new(NoEvents)).unwrap();
        rt.block_on(apply(&s, None, &tar));
        rt.block_on(s.rw_layer_create(RwLayerCreate {
            id: "ov".into(),
            parent: Some(diff.clone()),
        }))
        .unwrap();
    }
    {
        let s = Storage::open(root.path(), "vfs", &[], Arc::new(NoEvents)).unwrap();
        assert!(
            rt.block_on(s.layer_stat(LayerStat {
                chain_id: diff.clone()
            }))
            .is_err(),
            "overlay2's layer is hidden"
        );
        assert!(s.rw.ids().is_empty(), "and its containers");
        rt.block_on(apply(&s, None, &layer_tar("g", 5)));
    }
    let s = Storage::open(root.path(), "overlay2", &[], Arc::new(NoEvents)).unwrap();
    assert_eq!(
        rt.block_on(s.layer_stat(LayerStat {
            chain_id: diff.clone()
        }))
        .unwrap()
        .diff_id,
        diff
    );
    assert_eq!(s.rw.ids(), vec!["ov".to_string()]);
    assert_eq!(s.layers.list().len(), 1, "vfs's layer is not seen here");
    assert!(
        root.path().join("storage/vfs/layerdb").is_dir()
            && root.path().join("storage/overlay2/layerdb").is_dir()
    );
}
