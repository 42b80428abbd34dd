//! Mounts of a container: `-v`/`--mount`/`--tmpfs` and the image's VOLUMEs, planned
//! at create (volumes created through storage), acquired at start, released at rm.

use berth_bus::storage::StorageApi as _;
use std::collections::HashMap;
use std::sync::Arc;

use bus_schema::storage::{VolumeAcquire, VolumeCreate, VolumeReleaseRef, VolumeRemove};
use bus_schema::{docker, BusError};

use crate::engine::Runtime;
use crate::state::MountRecord;

use berth_mountspec::{MountKind, MountSpec};

fn record(m: MountSpec) -> MountRecord {
    let anonymous = m.kind == MountKind::Volume && m.source.is_empty();
    MountRecord {
        typ: m.kind.as_str().into(),
        name: if m.kind == MountKind::Volume { m.source.clone() } else { String::new() },
        source: if m.kind == MountKind::Bind { m.source.clone() } else { String::new() },
        destination: m.destination,
        driver: if m.kind == MountKind::Volume { m.volume_driver.clone().unwrap_or_else(|| "local".into()) } else { String::new() },
        mode: m.mode,
        rw: !m.read_only,
        propagation: m.propagation.unwrap_or_default(),
        options: m.tmpfs_options,
        anonymous,
        copy_image_content: m.copy_data,
        subpath: m.volume_subpath,
    }
}

fn spec_err(e: berth_mountspec::MountSpecError) -> BusError {
    BusError::invalid(e.to_string())
}

/// Parse one `-v` bind string: `src:dst[:opts]` or `dst` (anonymous volume); its
/// volume is made by `volume_driver` (`--volume-driver`, HostConfig.VolumeDriver) when
/// it does not exist, as Moby's ParseMountRaw.
pub fn parse_bind(spec: &str, volume_driver: Option<&str>) -> Result<MountRecord, BusError> {
    berth_mountspec::parse_volume_flag(spec, volume_driver).map(record).map_err(spec_err)
}

/// `--mount` (HostConfig.Mounts).
pub fn from_mount(m: &docker::Mount) -> Result<MountRecord, BusError> {
    let spec = berth_mountspec::from_api(m).map_err(spec_err)?;
    if spec.kind == MountKind::Bind && !std::path::Path::new(&spec.source).exists() {
        return Err(BusError::invalid(format!(
            "invalid mount config for type \"bind\": bind source path does not exist: {}",
            spec.source
        )));
    }
    Ok(record(spec))
}

use berth_rules::path::clean;

/// Every mount of a new container; named and anonymous volumes are created now.
pub async fn plan<D: crate::deps::Deps>(
    rt: &Arc<Runtime<D>>,
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
    // `--volume-driver` applies to `-v` and the image's VOLUMEs, not to `--mount`
    // (which names its own `volume-driver=`), as in Moby's registerMountPoints
    let volume_driver = hc.volume_driver.as_deref().filter(|d| !d.is_empty());
    for b in hc.binds.clone().unwrap_or_default() {
        push(parse_bind(&b, volume_driver)?, &mut out)?;
    }
    for m in hc.mounts.clone().unwrap_or_default() {
        push(from_mount(&m)?, &mut out)?;
    }
    for (dst, opts) in hc.tmpfs.clone().unwrap_or_default() {
        push(record(berth_mountspec::parse_tmpfs_flag(&dst, &opts).map_err(spec_err)?), &mut out)?;
    }
    for v in config.volumes.clone().unwrap_or_default() {
        if !out.iter().any(|m| m.destination == clean(&v)) {
            push(parse_bind(&v, volume_driver)?, &mut out)?;
        }
    }
    // create volumes and missing bind sources
    for m in out.iter_mut() {
        match m.typ.as_str() {
            "volume" => {
                let vol = rt
                    .storage
                    .volume_create(VolumeCreate {
                        name: if m.anonymous { None } else { Some(m.name.clone()) },
                        driver: if m.driver.is_empty() { "local".into() } else { m.driver.clone() },
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
                if !vol.driver.is_empty() {
                    m.driver = vol.driver.clone();
                }
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
pub async fn acquire<D: crate::deps::Deps>(rt: &Arc<Runtime<D>>, id: &str, mounts: &mut [MountRecord]) -> Result<(), BusError> {
    for m in mounts.iter_mut().filter(|m| m.typ == "volume") {
        // a path inside the container's rootfs: storage resolves it in the RW layer
        let copy_from = if m.copy_image_content { Some(m.destination.clone()) } else { None };
        let got = rt
            .storage
            .volume_acquire(VolumeAcquire {
                name: m.name.clone(),
                container_id: id.to_string(),
                copy_from,
                destination: Some(m.destination.clone()),
                read_only: !m.rw,
                propagation: if m.propagation.is_empty() { None } else { Some(m.propagation.clone()) },
            })
            .await?;
        m.source = got.path;
    }
    Ok(())
}

/// At exit: a plugin's volumes are unmounted (the container keeps its references).
pub async fn unmount<D: crate::deps::Deps>(rt: &Arc<Runtime<D>>, id: &str, mounts: &[MountRecord]) {
    for m in mounts.iter().filter(|m| m.typ == "volume") {
        let _ = rt.storage.volume_release_ref(VolumeReleaseRef { name: m.name.clone(), container_id: id.to_string(), unmount_only: true }).await;
    }
}

/// At rm: drop the container's references; with `remove_anonymous`, remove its
/// anonymous volumes too (`docker rm -v`).
pub async fn release<D: crate::deps::Deps>(rt: &Arc<Runtime<D>>, id: &str, mounts: &[MountRecord], remove_anonymous: bool) {
    for m in mounts.iter().filter(|m| m.typ == "volume") {
        let _ = rt.storage.volume_release_ref(VolumeReleaseRef { name: m.name.clone(), container_id: id.to_string(), unmount_only: false }).await;
        if remove_anonymous && m.anonymous {
            let _ = rt.storage.volume_remove(VolumeRemove { name: m.name.clone(), force: false }).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn binds() {
        let m = parse_bind("/host/x:/data:ro", None).unwrap();
        assert_eq!((m.typ.as_str(), m.source.as_str(), m.destination.as_str(), m.rw), ("bind", "/host/x", "/data", false));
        let v = parse_bind("myvol:/data", None).unwrap();
        assert_eq!((v.typ.as_str(), v.name.as_str(), v.rw), ("volume", "myvol", true));
        let a = parse_bind("/data", None).unwrap();
        assert!(a.anonymous);
        assert!(parse_bind("x:relative", None).is_err());
        assert!(parse_bind("/a:/b:bogus", None).is_err());
        assert!(parse_bind("a:b:c:d", None).is_err());
        // --volume-driver names the driver of -v volumes, not of binds
        assert_eq!(parse_bind("myvol:/data", Some("vp")).unwrap().driver, "vp");
        assert_eq!(parse_bind("/data", Some("vp")).unwrap().driver, "vp");
        assert_eq!(parse_bind("/host/x:/data", Some("vp")).unwrap().driver, "");
        assert_eq!(parse_bind("myvol:/data", None).unwrap().driver, "local");
    }
}
