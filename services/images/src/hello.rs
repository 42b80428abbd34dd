//! The embedded `hello-world` image: one layer holding berth's tiny static hello
//! program (assembled by build.rs), `CMD ["/hello"]`. Installed when
//! `docker.io/library/hello-world` cannot be pulled because no registry is
//! reachable, so `docker run hello-world` works on an offline node.

use bus_schema::storage::LayerApply;
use bus_schema::stream::{ByteChunk, MAX_CHUNK};
use bus_schema::BusError;

use crate::content::{sha256_digest, short_id};
use crate::manifest::{self, Descriptor, Manifest};
use crate::progress::{message_id, status_id, Progress};
use crate::reference::Reference;
use crate::service::Images;
use crate::store::{BlobRef, ImageMeta, LayerMeta};

/// The program: writes the hello message to stdout and exits 0.
pub const HELLO_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hello"));

/// Fixed so that the image ID is the same on every node.
const CREATED: &str = "2024-01-01T00:00:00Z";

pub fn is_hello_world(r: &Reference) -> bool {
    r.domain == crate::reference::DEFAULT_DOMAIN
        && r.path == "library/hello-world"
        && r.digest.is_none()
        && r.tag.as_deref().is_none_or(|t| t == "latest")
}

/// The layer: a tar with `/hello`, mode 0755, owned by root, mtime fixed.
pub fn layer_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_path("hello").unwrap();
    h.set_size(HELLO_ELF.len() as u64);
    h.set_mode(0o755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1704067200);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, HELLO_ELF).unwrap();
    b.into_inner().unwrap()
}

/// The config for a layer whose diff ID is `diff_id`.
pub fn config(diff_id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/hello"],
            "WorkingDir": "/"
        },
        "created": CREATED,
        "history": [
            {"created": CREATED, "created_by": "COPY hello / # berth embedded hello-world", "comment": "berth"},
            {"created": CREATED, "created_by": "CMD [\"/hello\"]", "empty_layer": true}
        ],
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]}
    }))
    .unwrap()
}

impl Images {
    /// Install the embedded image as `r` (hello-world:latest), with pull-like output.
    pub(crate) async fn install_hello<P: Progress>(
        &self,
        r: &Reference,
        out: &mut P,
    ) -> Result<(), BusError> {
        let tar = layer_tar();
        let diff_id = sha256_digest(&tar);
        let cfg = config(&diff_id);
        let blob = self.content.write(&tar, None)?;
        let m = Manifest {
            schema_version: 2,
            media_type: Some(manifest::OCI_MANIFEST.into()),
            config: Descriptor {
                media_type: manifest::OCI_CONFIG.into(),
                digest: sha256_digest(&cfg),
                size: cfg.len() as i64,
                ..Default::default()
            },
            layers: vec![Descriptor {
                media_type: manifest::OCI_LAYER.into(),
                digest: blob.clone(),
                size: tar.len() as i64,
                ..Default::default()
            }],
            annotations: None,
        };
        let mraw = serde_json::to_vec(&m).map_err(|e| BusError::internal(e.to_string()))?;
        let mdigest = self.content.write(&mraw, None)?;
        let sid = short_id(&blob);
        out.send(message_id(
            "Pulling from library/hello-world",
            r.tag.as_deref().unwrap_or("latest"),
        ))
        .await?;
        let applied = match self.layers.stat(&diff_id).await? {
            Some(_) => {
                let i = self.layers.retain(&diff_id).await?;
                out.send(status_id("Already exists", &sid)).await?;
                bus_schema::storage::LayerApplied {
                    chain_id: i.chain_id,
                    diff_id: i.diff_id,
                    size: i.size,
                }
            }
            None => {
                out.send(status_id("Pulling fs layer", &sid)).await?;
                let (rd, mut wr) = self
                    .layers
                    .apply(LayerApply {
                        parent: None,
                        media_type: manifest::OCI_LAYER.into(),
                        compressed_digest: Some(blob.clone()),
                        diff_id: Some(diff_id.clone()),
                    })
                    .await?;
                for c in tar.chunks(MAX_CHUNK) {
                    wr.send(ByteChunk(c.to_vec())).await?;
                }
                wr.end().await?;
                let a = crate::layers::applied(rd).await?;
                out.send(status_id("Pull complete", &sid)).await?;
                a
            }
        };
        let meta = ImageMeta {
            layers: vec![LayerMeta {
                diff_id: applied.diff_id.clone(),
                chain_id: applied.chain_id.clone(),
                size: applied.size,
                blob: Some(BlobRef {
                    digest: blob,
                    media_type: manifest::OCI_LAYER.into(),
                    size: tar.len() as u64,
                    sources: vec![],
                }),
            }],
            manifest: Some(mdigest.clone()),
            ..Default::default()
        };
        let _g = self.refs_lock.lock().await;
        let (_, updated) = self.commit_image(&cfg, meta, &[r.clone()]).await?;
        drop(_g);
        self.finish_pull(r, &mdigest, updated, out).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_prints_the_message() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("hello");
        std::fs::write(&p, HELLO_ELF).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let o = std::process::Command::new(&p).output().unwrap();
        assert!(o.status.success());
        assert_eq!(
            String::from_utf8(o.stdout).unwrap(),
            "\nHello from Docker!\nThis message shows that your installation appears to be working correctly.\n\n"
        );
        assert!(HELLO_ELF.len() < 512, "{}", HELLO_ELF.len());
    }

    #[test]
    fn image_is_deterministic() {
        assert_eq!(layer_tar(), layer_tar());
        let r = Reference::parse_normalized("hello-world")
            .unwrap()
            .with_default_tag();
        assert!(is_hello_world(&r));
        assert!(!is_hello_world(
            &Reference::parse_normalized("hello-world:linux").unwrap()
        ));
        let c: crate::manifest::ImageConfigFile =
            serde_json::from_slice(&config("sha256:x")).unwrap();
        assert_eq!(c.config.unwrap().cmd.unwrap(), vec!["/hello"]);
    }
}
