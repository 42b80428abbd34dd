//! Registry and image formats: Docker schema2 and OCI manifests, manifest lists and
//! OCI indexes, and the image config (only the fields berth reads; the config's raw
//! bytes are kept as they are, since its digest is the image ID).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// What a pull accepts, in the order Docker lists them.
pub const ACCEPT: &[&str] = &[DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX];

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<HashMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// A schema2/OCI image manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<HashMap<String, String>>,
}

/// A manifest list / OCI index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<HashMap<String, String>>,
}

/// What a manifest body turned out to be.
pub enum Parsed {
    Manifest(Manifest),
    Index(Index),
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("unsupported manifest format: {0}")]
    Unsupported(String),
    #[error("invalid manifest: {0}")]
    Invalid(String),
}

/// Parse a manifest body by its media type (from the Content-Type or the body).
pub fn parse(content_type: &str, body: &[u8]) -> Result<Parsed, FormatError> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| FormatError::Invalid(e.to_string()))?;
    let mt = v
        .get("mediaType")
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| {
            content_type
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        });
    let is_index = match mt.as_str() {
        DOCKER_LIST | OCI_INDEX => true,
        DOCKER_MANIFEST | OCI_MANIFEST => false,
        DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED => {
            return Err(FormatError::Unsupported(
                "schema 1 manifests are no longer supported (Docker Image manifest version 2, schema 1)".into(),
            ))
        }
        // An OCI body without a media type: tell by its fields.
        _ if v.get("manifests").is_some() => true,
        _ if v.get("config").is_some() => false,
        other => return Err(FormatError::Unsupported(other.to_string())),
    };
    if is_index {
        serde_json::from_value(v)
            .map(Parsed::Index)
            .map_err(|e| FormatError::Invalid(e.to_string()))
    } else {
        serde_json::from_value(v)
            .map(Parsed::Manifest)
            .map_err(|e| FormatError::Invalid(e.to_string()))
    }
}

/// `os/arch[/variant]` with Docker's normalisation (x86_64 -> amd64, aarch64 -> arm64).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Wanted {
    pub fn host() -> Wanted {
        Wanted {
            os: "linux".into(),
            arch: "amd64".into(),
            variant: None,
        }
    }

    pub fn parse(s: &str) -> Result<Wanted, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || format!("\"{s}\": unknown operating system or architecture: invalid argument");
        let (os, arch, variant) = match parts.as_slice() {
            [os] => (*os, "amd64", None),
            [os, arch] => (*os, *arch, None),
            [os, arch, v] => (*os, *arch, Some(*v)),
            _ => return Err(bad()),
        };
        if os.is_empty() || arch.is_empty() {
            return Err(bad());
        }
        let (arch, mut variant) =
            normalize_arch(&arch.to_lowercase(), variant.map(str::to_lowercase));
        if arch == "arm64" && variant.as_deref() == Some("v8") {
            variant = None;
        }
        Ok(Wanted {
            os: os.to_lowercase(),
            arch,
            variant,
        })
    }

    pub fn matches(&self, p: &Platform) -> bool {
        let (arch, variant) = normalize_arch(&p.architecture, p.variant.clone());
        if p.os != self.os || arch != self.arch {
            return false;
        }
        match (&self.variant, &variant) {
            (None, _) => true,
            (Some(w), Some(v)) => w == v,
            (Some(w), None) => arch == "arm64" && w == "v8",
        }
    }
}

impl std::fmt::Display for Wanted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

fn normalize_arch(arch: &str, variant: Option<String>) -> (String, Option<String>) {
    match arch {
        "i386" => ("386".into(), None),
        "x86_64" | "x86-64" => ("amd64".into(), None),
        "aarch64" => ("arm64".into(), variant.filter(|v| v != "8" && v != "v8")),
        "arm64" => ("arm64".into(), variant.filter(|v| v != "8" && v != "v8")),
        "armhf" => ("arm".into(), Some("v7".into())),
        "armel" => ("arm".into(), Some("v6".into())),
        "arm" => ("arm".into(), Some(variant.unwrap_or_else(|| "v7".into()))),
        a => (a.to_string(), variant),
    }
}

/// Pick the manifest for `want` from an index, skipping attestations. Among several
/// matches, the first without a variant constraint wins (Docker's order).
pub fn select<'a>(index: &'a Index, want: &Wanted) -> Option<&'a Descriptor> {
    index
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| want.matches(p)))
}

/// The image config fields berth reads. The raw bytes stay authoritative.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<bus_schema::docker::ImageConfig>,
    #[serde(default)]
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub typ: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// Docker's chain IDs: `chain(L1) = diff(L1)`, `chain(Ln) = sha256(chain(Ln-1) + " " + diff(Ln))`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let c = match out.last() {
            None => d.clone(),
            Some(p) => crate::content::sha256_digest(format!("{p} {d}").as_bytes()),
        };
        out.push(c);
    }
    out
}

/// The media type storage needs for a layer blob, from its magic bytes (archives
/// may hold gzip, zstd or plain tars whatever their names say).
pub fn sniff_layer_type(head: &[u8]) -> &'static str {
    if head.starts_with(&[0x1f, 0x8b]) {
        OCI_LAYER_GZIP
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        OCI_LAYER_ZSTD
    } else {
        OCI_LAYER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_like_docker() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        assert_eq!(
            c[1],
            crate::content::sha256_digest(format!("{a} {b}").as_bytes())
        );
    }

    #[test]
    fn platforms() {
        let w = Wanted::parse("linux/arm64/v8").unwrap();
        assert_eq!(w.to_string(), "linux/arm64");
        assert!(w.matches(&Platform {
            architecture: "arm64".into(),
            os: "linux".into(),
            variant: Some("v8".into()),
            ..Default::default()
        }));
        assert!(Wanted::host().matches(&Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            ..Default::default()
        }));
        assert!(!Wanted::host().matches(&Platform {
            architecture: "arm".into(),
            os: "linux".into(),
            ..Default::default()
        }));
        assert!(Wanted::parse("linux/").is_err());
        let idx = Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: vec![
                Descriptor {
                    digest: "a".into(),
                    platform: Some(Platform {
                        architecture: "unknown".into(),
                        os: "unknown".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Descriptor {
                    digest: "b".into(),
                    platform: Some(Platform {
                        architecture: "arm".into(),
                        os: "linux".into(),
                        variant: Some("v7".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Descriptor {
                    digest: "c".into(),
                    platform: Some(Platform {
                        architecture: "amd64".into(),
                        os: "linux".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ],
            annotations: None,
        };
        assert_eq!(select(&idx, &Wanted::host()).unwrap().digest, "c");
        assert_eq!(
            select(&idx, &Wanted::parse("linux/arm/v7").unwrap())
                .unwrap()
                .digest,
            "b"
        );
        assert!(select(&idx, &Wanted::parse("linux/s390x").unwrap()).is_none());
    }

    #[test]
    fn parses_by_media_type() {
        let m = br#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:x","size":1},"layers":[]}"#;
        assert!(matches!(
            parse("application/vnd.oci.image.manifest.v1+json", m).unwrap(),
            Parsed::Manifest(_)
        ));
        let i = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(parse("", i).unwrap(), Parsed::Index(_)));
        assert!(parse(DOCKER_SCHEMA1_SIGNED, br#"{"schemaVersion":1}"#).is_err());
    }
}
