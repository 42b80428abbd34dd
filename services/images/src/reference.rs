//! Docker's image references (`distribution/reference`): parsing, normalisation
//! (`busybox` is `docker.io/library/busybox`), familiar forms and Docker's messages.

use std::fmt;

pub const DEFAULT_DOMAIN: &str = "docker.io";
pub const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
pub const OFFICIAL_REPO_PREFIX: &str = "library/";
pub const DEFAULT_TAG: &str = "latest";
const NAME_TOTAL_LENGTH_MAX: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    #[error("invalid reference format")]
    InvalidFormat,
    #[error("invalid reference format: repository name ({0}) must be lowercase")]
    NameNotCanonical(String),
    #[error("invalid repository name ({0}), cannot specify 64-byte hexadecimal strings")]
    HexName(String),
    #[error("repository name must have at least one component")]
    NameEmpty,
    #[error("repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters")]
    NameTooLong,
    #[error("invalid checksum digest format")]
    InvalidDigest,
    #[error("invalid checksum digest length")]
    InvalidDigestLength,
    #[error("unsupported digest algorithm")]
    UnsupportedDigest,
}

/// A fully qualified reference: `domain/path[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    pub domain: String,
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    /// Docker's `ParseNormalizedNamed`: what a user types, made fully qualified.
    pub fn parse_normalized(s: &str) -> Result<Reference, RefError> {
        if is_full_hex(s) {
            return Err(RefError::HexName(s.to_string()));
        }
        let (domain, remainder) = split_docker_domain(s);
        let name_part = remainder.split(['@', ':']).next().unwrap_or("");
        if name_part.to_lowercase() != name_part {
            return Err(RefError::NameNotCanonical(name_part.to_string()));
        }
        Reference::parse(&format!("{domain}/{remainder}"))
    }

    /// Docker's `ParseNamed` on an already qualified string (`domain/path...`).
    pub fn parse(s: &str) -> Result<Reference, RefError> {
        if s.is_empty() {
            return Err(RefError::NameEmpty);
        }
        let (rest, digest) = match s.split_once('@') {
            Some((a, d)) => (a, Some(parse_digest(d)?)),
            None => (s, None),
        };
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(RefError::InvalidFormat);
            }
        }
        if name.is_empty() {
            return Err(RefError::NameEmpty);
        }
        if name.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(RefError::NameTooLong);
        }
        let (domain, path) = name.split_once('/').ok_or(RefError::InvalidFormat)?;
        if !valid_domain(domain) || !path.split('/').all(valid_path_component) {
            return Err(RefError::InvalidFormat);
        }
        Ok(Reference {
            domain: domain.to_string(),
            path: path.to_string(),
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// `busybox`, `user/app`, `127.0.0.1:5000/x`.
    pub fn familiar_name(&self) -> String {
        if self.domain == DEFAULT_DOMAIN {
            match self.path.strip_prefix(OFFICIAL_REPO_PREFIX) {
                Some(p) if !p.contains('/') => p.to_string(),
                _ => self.path.clone(),
            }
        } else {
            self.name()
        }
    }

    /// `busybox:latest`, `busybox@sha256:...`.
    pub fn familiar_string(&self) -> String {
        self.with_name(self.familiar_name())
    }

    fn with_name(&self, mut s: String) -> String {
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }

    /// Docker's `TagNameOnly`: add `:latest` when neither tag nor digest is given.
    pub fn with_default_tag(mut self) -> Reference {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some(DEFAULT_TAG.to_string());
        }
        self
    }

    pub fn is_name_only(&self) -> bool {
        self.tag.is_none() && self.digest.is_none()
    }

    /// The name with only this tag.
    pub fn tagged(&self, tag: &str) -> Reference {
        Reference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: Some(tag.to_string()),
            digest: None,
        }
    }

    /// The name with only this digest.
    pub fn digested(&self, digest: &str) -> Reference {
        Reference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: None,
            digest: Some(digest.to_string()),
        }
    }

    /// The name alone.
    pub fn name_only(&self) -> Reference {
        Reference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: None,
            digest: None,
        }
    }

    /// Path as Docker prints it in "Pulling from library/busybox".
    pub fn remote_path(&self) -> &str {
        &self.path
    }
}

impl fmt::Display for Reference {
    /// The fully qualified string (`docker.io/library/busybox:latest`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.with_name(self.name()))
    }
}

/// A reference or an image ID, as `docker inspect`/`rmi`/`tag` accept them
/// (Docker's `ParseAnyReference`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyRef {
    /// `sha256:<64 hex>` or 64 hex.
    Id(String),
    Named(Reference),
}

pub fn parse_any(s: &str) -> Result<AnyRef, RefError> {
    if is_full_hex(s) {
        return Ok(AnyRef::Id(format!("sha256:{s}")));
    }
    if let Some(h) = s.strip_prefix("sha256:") {
        if is_full_hex(h) {
            return Ok(AnyRef::Id(s.to_string()));
        }
        return Err(RefError::InvalidDigestLength);
    }
    Reference::parse_normalized(s).map(AnyRef::Named)
}

/// Docker's `splitDockerDomain`.
fn split_docker_domain(name: &str) -> (String, String) {
    let (mut domain, mut remainder) = match name.find('/') {
        Some(i) => {
            let first = &name[..i];
            if !first.contains(['.', ':']) && first != "localhost" && first.to_lowercase() == first
            {
                (DEFAULT_DOMAIN.to_string(), name.to_string())
            } else {
                (first.to_string(), name[i + 1..].to_string())
            }
        }
        None => (DEFAULT_DOMAIN.to_string(), name.to_string()),
    };
    if domain == LEGACY_DEFAULT_DOMAIN {
        domain = DEFAULT_DOMAIN.to_string();
    }
    if domain == DEFAULT_DOMAIN && !remainder.contains('/') {
        remainder = format!("{OFFICIAL_REPO_PREFIX}{remainder}");
    }
    (domain, remainder)
}

pub fn is_full_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A short or full lowercase hex string (a possible image ID prefix).
pub fn is_hex_prefix(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `algorithm:hex`, checked as the digest package does.
pub fn parse_digest(d: &str) -> Result<String, RefError> {
    // What the reference grammar refuses is a format error; the digest package's
    // own checks come after.
    let (alg, hex) = d.split_once(':').ok_or(RefError::InvalidFormat)?;
    let alg_ok = !alg.is_empty()
        && alg.split(['-', '_', '+', '.']).all(|c| {
            let mut ch = c.chars();
            ch.next().is_some_and(|x| x.is_ascii_alphabetic())
                && ch.all(|x| x.is_ascii_alphanumeric())
        });
    if !alg_ok || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(RefError::InvalidFormat);
    }
    match alg {
        "sha256" if hex.len() != 64 => Err(RefError::InvalidDigestLength),
        "sha256" if !is_full_hex(hex) => Err(RefError::InvalidDigest),
        "sha256" => Ok(d.to_string()),
        "sha384" | "sha512" => Err(RefError::UnsupportedDigest),
        _ => Err(RefError::UnsupportedDigest),
    }
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        // [ipv6]:port
        match rest.split_once(']') {
            Some((h, p)) => {
                if h.is_empty()
                    || !h
                        .bytes()
                        .all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.')
                {
                    return false;
                }
                match p {
                    "" => return true,
                    p => match p.strip_prefix(':') {
                        Some(port) => {
                            return !port.is_empty() && port.bytes().all(|c| c.is_ascii_digit())
                        }
                        None => return false,
                    },
                }
            }
            None => return false,
        }
    } else {
        match d.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
        })
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() {
        return false;
    }
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        // a separator: '.', '_', '__', or any number of '-'
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        Reference::parse_normalized(s).unwrap().to_string()
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(n("busybox"), "docker.io/library/busybox");
        assert_eq!(n("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(n("user/app"), "docker.io/user/app");
        assert_eq!(n("index.docker.io/library/x"), "docker.io/library/x");
        assert_eq!(n("docker.io/busybox"), "docker.io/library/busybox");
        assert_eq!(n("localhost/x"), "localhost/x");
        assert_eq!(n("localhost:5000/x"), "localhost:5000/x");
        assert_eq!(n("localhost:5000/x/y:t"), "localhost:5000/x/y:t");
        assert_eq!(n("127.0.0.1:5000/a/b:v1"), "127.0.0.1:5000/a/b:v1");
        assert_eq!(n("quay.io/org/img"), "quay.io/org/img");
        assert_eq!(n("[::1]:5000/x"), "[::1]:5000/x");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(n(&format!("x@{d}")), format!("docker.io/library/x@{d}"));
        assert_eq!(n(&format!("x:t@{d}")), format!("docker.io/library/x:t@{d}"));
        let r = Reference::parse_normalized("busybox")
            .unwrap()
            .with_default_tag();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.familiar_string(), "busybox:latest");
        assert_eq!(
            Reference::parse_normalized("user/app:1")
                .unwrap()
                .familiar_string(),
            "user/app:1"
        );
        assert_eq!(
            Reference::parse_normalized("docker.io/library/a/b")
                .unwrap()
                .familiar_name(),
            "library/a/b"
        );
        assert_eq!(
            Reference::parse_normalized("localhost:5000/x:1")
                .unwrap()
                .familiar_string(),
            "localhost:5000/x:1"
        );
    }

    #[test]
    fn refuses_like_docker() {
        assert_eq!(
            Reference::parse_normalized("BusyBox")
                .unwrap_err()
                .to_string(),
            "invalid reference format: repository name (library/BusyBox) must be lowercase"
        );
        // an uppercase first component is a registry host, as in Docker
        assert_eq!(n("Foo/bar"), "Foo/bar");
        assert!(Reference::parse_normalized("foo/Bar").is_err());
        assert_eq!(
            Reference::parse_normalized("a..b").unwrap_err().to_string(),
            "invalid reference format"
        );
        assert_eq!(
            Reference::parse_normalized("x:").unwrap_err(),
            RefError::InvalidFormat
        );
        assert_eq!(
            Reference::parse_normalized("x:-t").unwrap_err(),
            RefError::InvalidFormat
        );
        assert_eq!(
            Reference::parse_normalized("x@sha256:abc").unwrap_err(),
            RefError::InvalidFormat
        );
        assert_eq!(
            Reference::parse_normalized(&format!("x@sha256:{}", "a".repeat(40))).unwrap_err(),
            RefError::InvalidDigestLength
        );
        assert!(Reference::parse_normalized("").is_err());
        assert!(Reference::parse_normalized("x/").is_err());
        assert!(Reference::parse_normalized("-x").is_err());
        assert_eq!(
            Reference::parse_normalized(&"a".repeat(64))
                .unwrap_err()
                .to_string(),
            format!(
                "invalid repository name ({}), cannot specify 64-byte hexadecimal strings",
                "a".repeat(64)
            )
        );
        assert!(Reference::parse_normalized(&format!("x:{}", "t".repeat(129))).is_err());
        assert!(Reference::parse_normalized(&"x/".repeat(200)).is_err());
    }

    #[test]
    fn separators() {
        for ok in ["a", "a.b", "a_b", "a__b", "a-b", "a---b", "a1.b2-c3"] {
            assert!(valid_path_component(ok), "{ok}");
        }
        for bad in ["", "a.", ".a", "a___b", "a..b", "a_", "A", "a-"] {
            assert!(!valid_path_component(bad), "{bad}");
        }
    }

    #[test]
    fn any_reference() {
        let h = "b".repeat(64);
        assert_eq!(parse_any(&h).unwrap(), AnyRef::Id(format!("sha256:{h}")));
        assert_eq!(
            parse_any(&format!("sha256:{h}")).unwrap(),
            AnyRef::Id(format!("sha256:{h}"))
        );
        assert!(matches!(parse_any("abc").unwrap(), AnyRef::Named(_)));
    }
}
