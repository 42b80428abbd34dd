//! The content store: blobs addressed by digest under `<root>/images/blobs/sha256/<hex>`.
//! Writes go through an ingest (`<root>/images/ingest/<hex>`) that survives an
//! interrupted download, so the next attempt resumes it; commit is fsync, size
//! check, digest check, rename, fsync of the directory. Committed blobs are read-only.

use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Docker's wording for a blob whose bytes do not hash to its digest.
    #[error("filesystem layer verification failed for digest {0}")]
    DigestMismatch(String),
    #[error("unexpected size for blob {digest}: expected {expected} bytes, got {got}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        got: u64,
    },
    #[error("invalid digest {0:?}")]
    InvalidDigest(String),
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The hex part of a `sha256:` digest, checked.
pub fn digest_hex(d: &str) -> Result<&str, ContentError> {
    match d.strip_prefix("sha256:") {
        Some(h) if crate::reference::is_full_hex(h) => Ok(h),
        _ => Err(ContentError::InvalidDigest(d.to_string())),
    }
}

/// Docker's short form of a digest or ID: the first 12 hex characters.
pub fn short_id(d: &str) -> String {
    let h = d.split_once(':').map(|(_, h)| h).unwrap_or(d);
    h.chars().take(12).collect()
}

#[derive(Clone)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl ContentStore {
    /// `root` is the images service's folder (`<data-root>/images`).
    pub fn open(root: &Path) -> io::Result<ContentStore> {
        let blobs = root.join("blobs").join("sha256");
        let ingest = root.join("ingest");
        std::fs::create_dir_all(&blobs)?;
        std::fs::create_dir_all(&ingest)?;
        Ok(ContentStore {
            blobs,
            ingest,
            locks: Arc::default(),
        })
    }

    pub fn path(&self, digest: &str) -> Result<PathBuf, ContentError> {
        Ok(self.blobs.join(digest_hex(digest)?))
    }

    /// Size of a committed blob, if present.
    pub fn size(&self, digest: &str) -> Option<u64> {
        std::fs::metadata(self.path(digest).ok()?)
            .ok()
            .map(|m| m.len())
    }

    pub fn has(&self, digest: &str) -> bool {
        self.size(digest).is_some()
    }

    /// Read a (small) blob whole.
    pub fn read(&self, digest: &str) -> Result<Vec<u8>, ContentError> {
        Ok(std::fs::read(self.path(digest)?)?)
    }

    /// Store `data` as a blob (manifests, configs); verifies `expected` when given.
    pub fn write(&self, data: &[u8], expected: Option<&str>) -> Result<String, ContentError> {
        let d = sha256_digest(data);
        if let Some(e) = expected {
            if e != d {
                return Err(ContentError::DigestMismatch(e.to_string()));
            }
        }
        let path = self.path(&d)?;
        if !path.exists() {
            let tmp = self
                .ingest
                .join(format!(".w-{}-{}", digest_hex(&d)?, rand_suffix()));
            std::fs::write(&tmp, data)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            set_readonly(&tmp)?;
            std::fs::rename(&tmp, &path)?;
            sync_dir(&self.blobs);
        }
        Ok(d)
    }

    pub fn delete(&self, digest: &str) -> Result<(), ContentError> {
        match std::fs::remove_file(self.path(digest)?) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every committed blob's digest.
    pub fn list(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&self.blobs) {
            for e in rd.flatten() {
                if let Some(n) = e.file_name().to_str() {
                    if crate::reference::is_full_hex(n) {
                        v.push(format!("sha256:{n}"));
                    }
                }
            }
        }
        v
    }

    /// One writer per digest at a time: a second pull of the same blob waits for the
    /// first and then finds it committed.
    pub async fn lock(&self, digest: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut l = self.locks.lock().unwrap();
            l.retain(|_, v| Arc::strong_count(v) > 1);
            l.entry(digest.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }

    /// Open (or resume) the ingest of a blob whose digest is known. Hold [`Self::lock`]
    /// for the digest while using it.
    pub async fn ingest(&self, digest: &str, size: Option<u64>) -> Result<Ingest, ContentError> {
        let hex = digest_hex(digest)?;
        let path = self.ingest.join(hex);
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await?;
        let mut existing = file.metadata().await?.len();
        if size.is_some_and(|s| existing > s) {
            // More bytes than the blob has: the partial data is junk.
            file.set_len(0).await?;
            existing = 0;
        }
        Ok(Ingest {
            path,
            file,
            blobs: self.blobs.clone(),
            hasher: Sha256::new(),
            written: 0,
            resume_from: existing,
            replay: None,
            digest: Some(digest.to_string()),
            size,
        })
    }

    /// An ingest of a blob whose digest is learnt at the end (import, push of a new layer).
    pub async fn ingest_unknown(&self) -> Result<Ingest, ContentError> {
        let path = self.ingest.join(format!(".u-{}", rand_suffix()));
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .await?;
        Ok(Ingest {
            path,
            file,
            blobs: self.blobs.clone(),
            hasher: Sha256::new(),
            written: 0,
            resume_from: 0,
            replay: None,
            digest: None,
            size: None,
        })
    }

    /// Remove every ingest (called at start-up for unknown-digest leftovers only).
    pub fn clean_temporary(&self) {
        if let Ok(rd) = std::fs::read_dir(&self.ingest) {
            for e in rd.flatten() {
                if e.file_name().to_str().is_some_and(|n| n.starts_with('.')) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// A blob being written. Bytes already there from an interrupted attempt are
/// replayed first ([`Ingest::replay_chunk`]) so that the hash and any consumer see
/// the whole blob; [`Ingest::offset`] tells where the download resumes.
pub struct Ingest {
    path: PathBuf,
    file: tokio::fs::File,
    blobs: PathBuf,
    hasher: Sha256,
    written: u64,
    resume_from: u64,
    replay: Option<tokio::fs::File>,
    digest: Option<String>,
    size: Option<u64>,
}

impl Ingest {
    /// Bytes already present from an earlier attempt.
    pub fn resume_from(&self) -> u64 {
        self.resume_from
    }

    /// Bytes hashed so far.
    pub fn offset(&self) -> u64 {
        self.written
    }

    /// The next chunk of bytes from the earlier attempt (hashed as it is read), or
    /// None when the replay is done and new bytes may be written.
    pub async fn replay_chunk(&mut self, max: usize) -> Result<Option<Vec<u8>>, ContentError> {
        if self.written >= self.resume_from {
            self.replay = None;
            return Ok(None);
        }
        if self.replay.is_none() {
            self.replay = Some(tokio::fs::File::open(&self.path).await?);
        }
        let want = max.min((self.resume_from - self.written) as usize);
        let mut buf = vec![0u8; want];
        let r = self.replay.as_mut().unwrap();
        r.read_exact(&mut buf).await?;
        self.hasher.update(&buf);
        self.written += want as u64;
        Ok(Some(buf))
    }

    /// Forget the bytes of an earlier attempt (e.g. the server cannot resume).
    pub async fn restart(&mut self) -> Result<(), ContentError> {
        self.file.set_len(0).await?;
        self.hasher = Sha256::new();
        self.written = 0;
        self.resume_from = 0;
        self.replay = None;
        Ok(())
    }

    pub async fn write(&mut self, buf: &[u8]) -> Result<(), ContentError> {
        debug_assert!(self.written >= self.resume_from, "replay before writing");
        self.hasher.update(buf);
        self.file.write_all(buf).await?;
        // tokio's File finishes a write in the background: wait for it, so what an
        // interrupted ingest leaves on disk is what it counted
        self.file.flush().await?;
        self.written += buf.len() as u64;
        Ok(())
    }

    /// The digest of what was written so far would be: only meaningful at the end.
    pub fn digest_so_far(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }

    /// Check and commit; on a digest mismatch the data is removed.
    pub async fn commit(mut self) -> Result<(String, u64), ContentError> {
        self.file.flush().await?;
        let got = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
        if let Some(s) = self.size {
            if s != self.written {
                let d = self.digest.clone().unwrap_or(got);
                let _ = tokio::fs::remove_file(&self.path).await;
                return Err(ContentError::SizeMismatch {
                    digest: d,
                    expected: s,
                    got: self.written,
                });
            }
        }
        if let Some(d) = &self.digest {
            if *d != got {
                let _ = tokio::fs::remove_file(&self.path).await;
                return Err(ContentError::DigestMismatch(d.clone()));
            }
        }
        self.file.sync_all().await?;
        let target = self.blobs.join(digest_hex(&got)?);
        let (path, blobs) = (self.path.clone(), self.blobs.clone());
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            set_readonly(&path)?;
            std::fs::rename(&path, &target)?;
            sync_dir(&blobs);
            Ok(())
        })
        .await
        .map_err(|e| io::Error::other(e.to_string()))??;
        Ok((got, self.written))
    }

    /// Drop the data (a failed or refused blob).
    pub async fn abort(self) {
        let _ = tokio::fs::remove_file(&self.path).await;
    }
}

fn set_readonly(p: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o444))
}

fn sync_dir(p: &Path) {
    if let Ok(d) = std::fs::File::open(p) {
        let _ = d.sync_all();
    }
}

pub fn rand_suffix() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commit_checks_digest_and_size() {
        let d = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(d.path()).unwrap();
        let data = b"hello world".to_vec();
        let dg = sha256_digest(&data);
        let mut i = cs.ingest(&dg, Some(data.len() as u64)).await.unwrap();
        i.write(&data[..5]).await.unwrap();
        i.write(&data[5..]).await.unwrap();
        assert_eq!(i.commit().await.unwrap(), (dg.clone(), 11));
        assert_eq!(cs.read(&dg).unwrap(), data);
        assert!(cs.list().contains(&dg));

        // tampered bytes: refused, nothing kept
        let other = sha256_digest(b"other");
        let mut i = cs.ingest(&other, None).await.unwrap();
        i.write(b"not other").await.unwrap();
        let e = i.commit().await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("filesystem layer verification failed for digest {other}")
        );
        assert!(!cs.has(&other));
        assert_eq!(
            std::fs::read_dir(d.path().join("ingest")).unwrap().count(),
            0
        );

        // wrong size
        let mut i = cs.ingest(&other, Some(3)).await.unwrap();
        i.write(b"other").await.unwrap();
        assert!(matches!(
            i.commit().await.unwrap_err(),
            ContentError::SizeMismatch { .. }
        ));
    }

    #[tokio::test]
    async fn ingest_resumes() {
        let d = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(d.path()).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let dg = sha256_digest(&data);
        {
            let mut i = cs.ingest(&dg, Some(data.len() as u64)).await.unwrap();
            i.write(&data[..100_000]).await.unwrap();
            // interrupted: dropped without commit or abort
        }
        let mut i = cs.ingest(&dg, Some(data.len() as u64)).await.unwrap();
        assert_eq!(i.resume_from(), 100_000);
        let mut replayed = Vec::new();
        while let Some(c) = i.replay_chunk(64 * 1024).await.unwrap() {
            replayed.extend(c);
        }
        assert_eq!(replayed, data[..100_000]);
        i.write(&data[100_000..]).await.unwrap();
        assert_eq!(i.commit().await.unwrap().0, dg);
        assert_eq!(cs.read(&dg).unwrap(), data);
    }

    #[test]
    fn small_blobs_and_ids() {
        let d = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(d.path()).unwrap();
        let dg = cs.write(b"{}", None).unwrap();
        assert_eq!(
            dg,
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert!(cs.write(b"{}", Some(&sha256_digest(b"x"))).is_err());
        assert_eq!(short_id(&dg), "44136fa355b3");
        assert!(cs.path("sha256:../../etc").is_err());
        cs.delete(&dg).unwrap();
        assert!(!cs.has(&dg));
    }
}
