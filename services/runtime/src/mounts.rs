//! Mounts of a container: `-v`/`--mount`/`--tmpfs` and the image's VOLUMEs, planned
//! at create (volumes created through storage), acquired at start, released at rm.

use std::collections::HashMap;
use std::sync::Arc;

use bus_schema::storage::{VolumeAcquire, VolumeCreate, VolumeReleaseRef, VolumeRemove};
use bus_schema::{docker, BusError};

use crate::engine::Runtime;
use crate::state::MountRecord;

const PROPAGATIONS: &[&str] = &["shared", "rshared", "slave", "rslave", "private", "rprivate"];

/// Parse one `-v` bind string: `src:dst[:opts]` or `dst` (anonymous volume).
pub fn parse_bind(spec: &str) -> Result<MountRecord, BusError> {
    let bad = || BusError::invalid(format!("invalid volume specification: '{spec}'"));
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, opts) = match parts.as_slice() {
        [d] => ("", *d, ""),
        [s, d] => (*s, *d, ""),
        [s, d, o] => (*s, *d, *o),
        _ => return Err(bad()),
    };
    if !dst.starts_with('/') {
        return Err(BusError::invalid(format!(
            "invalid volume specification: '{spec}': invalid mount config for type \"volume\": invalid mount path: '{dst}' mount path must be absolute"
        )));
    }
    if dst == "/" {
        return Err(BusError::invalid(format!("invalid volume specification: '{spec}': invalid mount config for type \"bind\": invalid specification: destination can't be '/'")));
    }
    let mut rw = true;
    let mut propagation = String::new();
    let mut nocopy = false;
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => rw = false,
            "rw" => rw = true,
            "z" | "Z" => {}
            "nocopy" => nocopy = true,
            p if PROPAGATIONS.contains(&p) => propagation = p.to_string(),
            _ => return Err(BusError::invalid(format!("invalid mode: {o}"))),
        }
    }
    let is_bind = src.starts_with('/');
    if !src.is_empty() && !is_bind && !valid_volume_name(src) {
        return Err(BusError::invalid(format!(
            "create {src}: \"{src}\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path"
        )));
    }
    Ok(MountRecord {
        typ: if is_bind { "bind" } else { "volume" }.into(),
        name: if is_bind { String::new() } else { src.to_string() },
        source: if is_bind { clean(src) } else { String::new() },
        destination: clean(dst),
        driver: if is_bind { String::new() } else { "local".into() },
        mode: opts.to_string(),
        rw,
        propagation: if is_bind && propagation.is_empty() { "rprivate".into() } else { propagation },
        options: Vec::new(),
        anonymous: src.is_empty(),
        copy_image_content: !is_bind && !nocopy,
    })
}

fn valid_volume_name(n: &str) -> bool {
    crate::names::valid(n)
}

fn clean(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            x => out.push(x),
        }
    }
    format!("/{}", out.join("/"))
}

/// `--mount` (HostConfig.Mounts).
pub fn from_mount(m: &docker::Mount) -> Result<MountRecord, BusError> {
    let typ = m.typ.map(|t| t.to_string()).unwrap_or_else(|| "volume".into());
    let target = m.target.clone().unwrap_or_default();
    if target.is_empty() {
        return Err(BusError::invalid(format!("invalid mount config for type \"{typ}\": field Target must not be empty")));
    }
    let src = m.source.clone().unwrap_or_default();
    let ro = m.read_only.unwrap_or(false);
    let mut rec = MountRecord {
        typ: typ.clone(),
        name: String::new(),
        source: String::new(),
        destination: clean(&target),
        driver: String::new(),
        mode: String::new(),
        rw: !ro,
        propagation: String::new(),
        options: Vec::new(),
        anonymous: false,
        copy_image_content: false,
    };
    match typ.as_str() {
        "bind" => {
            if src.is_empty() {
                return Err(BusError::invalid("invalid mount config for type \"bind\": field Source must not be empty"));
            }
            if !std::path::Path::new(&src).exists() {
                return Err(BusError::invalid(format!(
                    "invalid mount config for type \"bind\": bind source path does not exist: {src}"
                )));
            }
            rec.source = clean(&src);
            rec.propagation = m
                .bind_options
                .as_ref()
                .and_then(|b| b.propagation.map(|p| p.to_string()))
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "rprivate".into());
        }
        "volume" => {
            rec.name = src.clone();
            rec.driver = "local".into();
            rec.anonymous = src.is_empty();
            rec.copy_image_content = !m.volume_options.as_ref().and_then(|v| v.no_copy).unwrap_or(false);
            rec.mode = "z".into();
        }
        "tmpfs" => {
            if !src.is_empty() {
                return Err(BusError::invalid("invalid mount config for type \"tmpfs\": field Source must not be specified"));
            }
            if let Some(t) = &m.tmpfs_options {
                if let Some(s) = t.size_bytes.filter(|s| *s > 0) {
                    rec.options.push(format!("size={s}"));
                }
                if let Some(md) = t.mode.filter(|m| *m > 0) {
                    rec.options.push(format!("mode={md:o}"));
                }
            }
        }
        other => return Err(BusError::invalid(format!("mount type unknown: {other}"))),
    }
    Ok(rec)
}

/// Every mount of a new container; named and anonymous volumes are created now.
pub async fn plan(
    rt: &Arc<Runtime>,
    _id: &str,
    config: &docker::ContainerConfig,
    hc: &docker::HostConfig,
) -> Result<Vec<MountRecord>, BusError> {
    let mut out: Vec<MountRecord> = Vec::new();
    let push = |m: MountRecord, out: &mut Vec<MountRecord>| -> Result<(), BusError> {
        if out.iter().any(|x| x.destination == m.destination) {
            return Err(BusError::invalid(format!("Duplicate mount point: {}", m.destination)));
        }
        out.push(m);
        Ok(())
    };
    for b in hc.binds.clone().unwrap_or_default() {
        push(parse_bind(&b)?, &mut out)?;
    }
    for m in hc.mounts.clone().unwrap_or_default() {
        push(from_mount(&m)?, &mut out)?;
    }
    for (dst, opts) in hc.tmpfs.clone().unwrap_or_default() {
        let mut rec = from_mount(&docker::Mount {
            target: Some(dst.clone()),
            typ: Some(docker::MountType::TMPFS),
            ..Default::default()
        })?;
        rec.options = opts.split(',').filter(|o| !o.is_empty()).map(str::to_string).collect();
        if rec.options.iter().any(|o| o == "ro") {
            rec.rw = false;
        }
        push(rec, &mut out)?;
    }
    for v in config.volumes.clone().unwrap_or_default() {
        if !out.iter().any(|m| m.destination == clean(&v)) {
            push(parse_bind(&v)?, &mut out)?;
        }
    }
    // create volumes and missing bind sources
    for m in out.iter_mut() {
        match m.typ.as_str() {
            "volume" => {
                let vol = rt
                    .bus
                    .request(&VolumeCreate {
                        name: if m.anonymous { None } else { Some(m.name.clone()) },
                        driver: "local".into(),
                        driver_opts: HashMap::new(),
                        labels: if m.anonymous {
                            HashMap::from([("com.docker.volume.anonymous".into(), String::new())])
                        } else {
                            HashMap::new()
                        },
                        anonymous: m.anonymous,
                    })
                    .await?;
                m.name = vol.name.clone();
                m.source = vol.mountpoint.clone();
            }
            "bind" => {
                if !std::path::Path::new(&m.source).exists() {
                    std::fs::create_dir_all(&m.source)
                        .map_err(|e| BusError::invalid(format!("error while creating mount source path '{}': {e}", m.source)))?;
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// At start: acquire volumes (copying image content into empty ones); returns the
/// mounts with host sources for the spec.
pub async fn acquire(rt: &Arc<Runtime>, id: &str, rootfs: &str, mounts: &mut [MountRecord]) -> Result<(), BusError> {
    for m in mounts.iter_mut().filter(|m| m.typ == "volume") {
        let copy_from = if m.copy_image_content { Some(format!("{rootfs}{}", m.destination)) } else { None };
        let got = rt
            .bus
            .request(&VolumeAcquire { name: m.name.clone(), container_id: id.to_string(), copy_from })
            .await?;
        m.source = got.path;
    }
    Ok(())
}

/// At rm: drop the container's references; with `remove_anonymous`, remove its
/// anonymous volumes too (`docker rm -v`).
pub async fn release(rt: &Arc<Runtime>, id: &str, mounts: &[MountRecord], remove_anonymous: bool) {
    for m in mounts.iter().filter(|m| m.typ == "volume") {
        let _ = rt.bus.request(&VolumeReleaseRef { name: m.name.clone(), container_id: id.to_string() }).await;
        if remove_anonymous && m.anonymous {
            let _ = rt.bus.request(&VolumeRemove { name: m.name.clone(), force: false }).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn binds() {
        let m = parse_bind("/host/x:/data:ro").unwrap();
        assert_eq!((m.typ.as_str(), m.source.as_str(), m.destination.as_str(), m.rw), ("bind", "/host/x", "/data", false));
        let v = parse_bind("myvol:/data").unwrap();
        assert_eq!((v.typ.as_str(), v.name.as_str(), v.rw), ("volume", "myvol", true));
        let a = parse_bind("/data").unwrap();
        assert!(a.anonymous);
        assert!(parse_bind("x:relative").is_err());
        assert!(parse_bind("/a:/b:bogus").is_err());
        assert!(parse_bind("a:b:c:d").is_err());
        assert_eq!(clean("/a/./b/../c/"), "/a/c");
    }
}
