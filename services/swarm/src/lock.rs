//! Autolock (`docker swarm init --autolock`, `swarm update --autolock`): a manager's
//! keys at rest are sealed with the swarm's unlock key, so a manager that restarts
//! stays locked until `docker swarm unlock` gives the key back (Docker's
//! `AutoLockManagers`).
//!
//! What is sealed is what opens the rest: the JetStream store's encryption key (the
//! store holds the secrets, the CA key, the unlock key itself) and the node's TLS key
//! (the route and leaf ports verify certificates, so the bus passwords in the config
//! are useless without it). While locked neither is on disk in clear: the store key
//! reaches the swarm server through its environment (the config names
//! `$BERTH_SWARM_STORE_KEY`), the TLS key through a memfd the server reads by its
//! /proc path.
//!
//! The unlock key is swarmkit's human-readable form, `SWMKEY-1-` and 32 random bytes
//! in unpadded base64; it lives in the managers-only PKI record of the store, so every
//! manager seals with the same key and follows its rotation.

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Docker's answer while the swarm is locked (503).
pub const ERR_LOCKED: &str = "Swarm is encrypted and needs to be unlocked before it can be used. Please use \"docker swarm unlock\" to unlock it.";
/// Docker's answer to `swarm leave` (without force) while locked (503).
pub const ERR_LEAVE_LOCKED: &str = "Swarm is encrypted and locked. Please unlock it first or use `--force` to ignore this message.";
/// Docker's answer to an unlock key that is not a key (400).
pub const ERR_KEY_STRING: &str = "invalid key string";
/// Docker's answer to the wrong key (401).
pub const ERR_WRONG_KEY: &str = "swarm could not be unlocked: invalid key provided";
/// Docker's answer to unlock when the swarm is not locked (409).
pub const ERR_NOT_LOCKED: &str = "swarm is not locked";

/// The environment variable the swarm server's config reads its store key from.
pub const STORE_KEY_ENV: &str = "BERTH_SWARM_STORE_KEY";

const PREFIX: &str = "SWMKEY-1-";

/// A new unlock key.
pub fn new_unlock_key() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("random");
    format!("{PREFIX}{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(b))
}

/// The key-encryption key of an unlock key, or Docker's "invalid key string".
pub fn kek(unlock_key: &str) -> Result<[u8; 32], &'static str> {
    let raw = unlock_key
        .strip_prefix(PREFIX)
        .and_then(|b| base64::engine::general_purpose::STANDARD_NO_PAD.decode(b).ok())
        .filter(|b| !b.is_empty())
        .ok_or(ERR_KEY_STRING)?;
    // A purpose-bound derivation: the raw key is never used as a cipher key directly.
    let mut h = sha2::Sha256::new();
    h.update(b"berth swarm autolock kek v1\0");
    h.update(&raw);
    Ok(h.finalize().into())
}

/// What autolock seals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sealed {
    pub store_key: String,
    pub node_key_pem: String,
}

/// `Sealed` encrypted with `kek` (ChaCha20-Poly1305, random nonce), base64.
pub fn seal(kek: &[u8; 32], s: &Sealed) -> String {
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, kek).expect("32-byte key"));
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).expect("random");
    let mut buf = serde_json::to_vec(s).expect("serialisable");
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf).expect("seal");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// Open what [`seal`] made; `None` for the wrong key (or a damaged file).
pub fn open(kek: &[u8; 32], sealed: &str) -> Option<Sealed> {
    let raw = base64::engine::general_purpose::STANDARD.decode(sealed).ok()?;
    if raw.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ct) = raw.split_at(NONCE_LEN);
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, kek).ok()?);
    let mut buf = ct.to_vec();
    let plain = key.open_in_place(Nonce::try_assume_unique_for_key(nonce).ok()?, Aad::empty(), &mut buf).ok()?;
    serde_json::from_slice(plain).ok()
}

/// A secret held in memory (a memfd) and handed to the swarm server by path
/// (`/proc/<pid>/fd/<n>`: opening it gives a fresh read of the whole content); never on disk.
#[derive(Debug)]
pub struct SecretFile {
    fd: OwnedFd,
}

impl SecretFile {
    pub fn new(content: &str) -> std::io::Result<SecretFile> {
        // memfd_create: nix's wrapper needs another feature set; the raw call is two lines.
        // SAFETY: a valid NUL-terminated name; the returned fd is owned below.
        let fd = unsafe { libc::memfd_create(c"berth-swarm-key".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut f = std::fs::File::from(fd.try_clone()?);
        std::io::Write::write_all(&mut f, content.as_bytes())?;
        Ok(SecretFile { fd })
    }

    pub fn path(&self) -> std::path::PathBuf {
        format!("/proc/{}/fd/{}", std::process::id(), self.fd.as_raw_fd()).into()
    }

    pub fn read(&self) -> std::io::Result<String> {
        std::fs::read_to_string(self.path())
    }
}

impl PartialEq for SecretFile {
    fn eq(&self, o: &SecretFile) -> bool {
        self.fd.as_raw_fd() == o.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_swarmkits_form_and_seal_what_only_they_open() {
        let k = new_unlock_key();
        assert!(k.starts_with("SWMKEY-1-") && k.len() == 9 + 43, "{k}");
        let kek1 = kek(&k).unwrap();
        let s = Sealed { store_key: "abc".into(), node_key_pem: "-----BEGIN-----".into() };
        let sealed = seal(&kek1, &s);
        assert!(!sealed.contains("abc"));
        assert_eq!(open(&kek1, &sealed), Some(s));
        let other = kek(&new_unlock_key()).unwrap();
        assert_eq!(open(&other, &sealed), None);
        assert_eq!(open(&kek1, "garbage"), None);
    }

    #[test]
    fn malformed_keys_are_dockers_invalid_key_string() {
        for bad in ["", "x", "SWMKEY-1-", "SWMKEY-1-%%%", "SWMKEY-2-dgPdyNhGzE3V/rQM0VoVbskUgig5CtvGTUiq+xDIVkQ"] {
            assert_eq!(kek(bad), Err(ERR_KEY_STRING), "{bad}");
        }
        // a well-formed key that is not the swarm's is refused later (401), not here
        assert!(kek("SWMKEY-1-7c37Cc8654o6p38HnroywCi19pllOnGtbdZEgtKxZu8").is_ok());
    }

    #[test]
    fn a_secret_file_reads_back_by_its_path() {
        let f = SecretFile::new("key material").unwrap();
        assert_eq!(f.read().unwrap(), "key material");
        assert_eq!(std::fs::read_to_string(f.path()).unwrap(), "key material");
    }
}
