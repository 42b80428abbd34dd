//! `-v` / `--mount` / `--tmpfs` parsing into a typed mount, with Moby's rules and
//! error messages (moby `volume/mounts/linux_parser.go`, docker/cli `opts/mount.go`).
//! Pure functions, no I/O: the runtime resolves volumes and checks host paths.
//!
//! * [`parse_volume_flag`]: a `HostConfig.Binds` entry (`-v src:dst:mode`).
//! * [`from_api`]: a `HostConfig.Mounts` entry (what the CLI sends for `--mount`).
//! * [`parse_mount_flag`]: the `--mount` CSV syntax itself (`type=volume,src=v,dst=/d`).
//! * [`parse_tmpfs_flag`]: a `HostConfig.Tmpfs` entry (`/run` -> `rw,size=64m`).
//! * [`tmpfs_options`], [`validate_volume_name`], [`DEFAULT_PROPAGATION`].

use std::collections::HashMap;

use bus_schema::docker;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    Bind,
    Volume,
    Tmpfs,
}

impl MountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MountKind::Bind => "bind",
            MountKind::Volume => "volume",
            MountKind::Tmpfs => "tmpfs",
        }
    }
}

/// One mount, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub kind: MountKind,
    /// Bind: absolute host path. Volume: its name, empty for an anonymous volume.
    /// Tmpfs: empty.
    pub source: String,
    /// Absolute path in the container.
    pub destination: String,
    pub read_only: bool,
    /// The raw mode of a `-v` spec (`ro,z`), empty otherwise.
    pub mode: String,
    /// Bind propagation (`rprivate` unless given); None for volumes and tmpfs.
    pub propagation: Option<String>,
    /// SELinux relabel request (`z` or `Z`), if any.
    pub relabel: Option<String>,
    /// Volumes: copy the image's content at the destination into an empty volume.
    pub copy_data: bool,
    pub volume_driver: Option<String>,
    pub volume_labels: HashMap<String, String>,
    pub volume_options: HashMap<String, String>,
    pub volume_subpath: Option<String>,
    /// Tmpfs mount options as mount(2) data (`size=64m,mode=1777`), plus `ro`.
    pub tmpfs_options: Vec<String>,
    /// `-v` creates a missing host directory; `--mount type=bind` requires it to exist.
    pub create_host_path: bool,
}

pub const DEFAULT_PROPAGATION: &str = "rprivate";
const PROPAGATION_MODES: &[&str] = &[
    "private", "rprivate", "shared", "rshared", "slave", "rslave",
];
const RW_MODES: &[&str] = &["rw", "ro"];
const LABEL_MODES: &[&str] = &["z", "Z"];
const CONSISTENCY_MODES: &[&str] = &["consistent", "cached", "delegated"];
const COPY_MODES: &[&str] = &["nocopy"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MountSpecError(pub String);

impl From<MountSpecError> for bus_schema::BusError {
    fn from(e: MountSpecError) -> Self {
        bus_schema::BusError::invalid(e.0)
    }
}

fn err(m: impl Into<String>) -> MountSpecError {
    MountSpecError(m.into())
}

fn invalid_spec(raw: &str) -> MountSpecError {
    err(format!("invalid volume specification: '{raw}'"))
}

fn config_err(kind: &str, m: impl std::fmt::Display) -> MountSpecError {
    err(format!("invalid mount config for type \"{kind}\": {m}"))
}

/// Moby's `linuxValidMountMode`.
pub fn valid_mode(mode: &str) -> bool {
    if mode.is_empty() {
        return true;
    }
    let (mut rw, mut label, mut prop, mut copy, mut cons) = (0, 0, 0, 0, 0);
    for o in mode.split(',') {
        if RW_MODES.contains(&o) {
            rw += 1;
        } else if LABEL_MODES.contains(&o) {
            label += 1;
        } else if PROPAGATION_MODES.contains(&o) {
            prop += 1;
        } else if COPY_MODES.contains(&o) {
            copy += 1;
        } else if CONSISTENCY_MODES.contains(&o) {
            cons += 1;
        } else {
            return false;
        }
    }
    rw <= 1 && label <= 1 && prop <= 1 && copy <= 1 && cons <= 1
}

fn mode_has(mode: &str, set: &[&str]) -> Option<String> {
    mode.split(',')
        .find(|o| set.contains(o))
        .map(str::to_string)
}

fn is_abs(p: &str) -> bool {
    p.starts_with('/')
}

pub use berth_rules::path::clean as clean_path;

fn validate_target(kind: &str, target: &str) -> Result<(), MountSpecError> {
    if target.is_empty() {
        return Err(config_err(kind, "field Target must not be empty"));
    }
    if clean_path(target) == "/" {
        return Err(config_err(
            kind,
            "invalid specification: destination can't be '/'",
        ));
    }
    if !is_abs(target) {
        return Err(config_err(
            kind,
            format!("invalid mount path: '{target}' mount path must be absolute"),
        ));
    }
    Ok(())
}

/// A local volume name (Moby's local driver rule), with Moby's messages.
pub fn validate_volume_name(name: &str) -> Result<(), MountSpecError> {
    if name.len() < 2 {
        return Err(err(
            "volume name is too short, names should be at least two alphanumeric characters",
        ));
    }
    let b = name.as_bytes();
    let ok = b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if !ok {
        return Err(err(format!(
            "\"{name}\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path"
        )));
    }
    Ok(())
}

/// A `-v` / `HostConfig.Binds` entry: `dst`, `src:dst`, or `src:dst:mode`.
pub fn parse_volume_flag(
    raw: &str,
    volume_driver: Option<&str>,
) -> Result<MountSpec, MountSpecError> {
    let arr: Vec<&str> = raw.split(':').collect();
    if arr.first().is_none_or(|a| a.is_empty()) {
        return Err(invalid_spec(raw));
    }
    let (source, target, mode) = match arr.as_slice() {
        [t] => ("", *t, ""),
        [s, t] => {
            if valid_mode(t) {
                // `/foo:rw` is a destination and a mode: volumes cannot carry a mode alone.
                return Err(invalid_spec(raw));
            }
            (*s, *t, "")
        }
        [s, t, m] => (*s, *t, *m),
        _ => return Err(invalid_spec(raw)),
    };
    if !valid_mode(mode) {
        return Err(err(format!("invalid mode: {mode}")));
    }
    let kind = if is_abs(source) {
        MountKind::Bind
    } else {
        MountKind::Volume
    };
    let read_only = mode.split(',').any(|m| m == "ro");
    let nocopy = mode_has(mode, COPY_MODES).is_some();
    let propagation = mode_has(mode, PROPAGATION_MODES);
    let kname = kind.as_str();
    validate_target(kname, target)?;
    let mut spec = MountSpec {
        kind,
        source: source.to_string(),
        destination: clean_path(target),
        read_only,
        mode: mode.to_string(),
        propagation: None,
        relabel: mode_has(mode, LABEL_MODES),
        copy_data: true,
        volume_driver: None,
        volume_labels: HashMap::new(),
        volume_options: HashMap::new(),
        volume_subpath: None,
        tmpfs_options: vec![],
        create_host_path: true,
    };
    match kind {
        MountKind::Bind => {
            if nocopy {
                return Err(config_err(
                    kname,
                    "field VolumeOptions must not be specified",
                ));
            }
            spec.source = clean_path(source);
            spec.propagation = Some(propagation.unwrap_or_else(|| DEFAULT_PROPAGATION.to_string()));
            spec.copy_data = false;
        }
        MountKind::Volume => {
            if propagation.is_some() {
                return Err(config_err(kname, "field BindOptions must not be specified"));
            }
            if !source.is_empty() {
                validate_volume_name(source)?;
            } else if read_only {
                return Err(config_err(
                    kname,
                    "must not set ReadOnly mode when using anonymous volumes",
                ));
            }
            spec.copy_data = !nocopy;
            spec.volume_driver = volume_driver.filter(|d| !d.is_empty()).map(str::to_string);
        }
        MountKind::Tmpfs => unreachable!(),
    }
    Ok(spec)
}

/// A `HostConfig.Mounts` entry, validated as Moby's `validateMountConfig` does.
pub fn from_api(m: &docker::Mount) -> Result<MountSpec, MountSpecError> {
    let kind = match m.typ {
        Some(docker::MountType::BIND) => MountKind::Bind,
        Some(docker::MountType::VOLUME) | None => MountKind::Volume,
        Some(docker::MountType::TMPFS) => MountKind::Tmpfs,
        Some(other) => return Err(config_err(&other.to_string(), "mount type unknown")),
    };
    let kname = kind.as_str();
    let target = m.target.clone().unwrap_or_default();
    validate_target(kname, &target)?;
    let source = m.source.clone().unwrap_or_default();
    let read_only = m.read_only.unwrap_or(false);
    let mut spec = MountSpec {
        kind,
        source: source.clone(),
        destination: clean_path(&target),
        read_only,
        mode: String::new(),
        propagation: None,
        relabel: None,
        copy_data: kind == MountKind::Volume,
        volume_driver: None,
        volume_labels: HashMap::new(),
        volume_options: HashMap::new(),
        volume_subpath: None,
        tmpfs_options: vec![],
        create_host_path: false,
    };
    match kind {
        MountKind::Bind => {
            if source.is_empty() {
                return Err(config_err(kname, "field Source must not be empty"));
            }
            if m.volume_options.is_some() {
                return Err(config_err(
                    kname,
                    "field VolumeOptions must not be specified",
                ));
            }
            if m.tmpfs_options.is_some() {
                return Err(config_err(
                    kname,
                    "field TmpfsOptions must not be specified",
                ));
            }
            if !is_abs(&source) {
                return Err(config_err(
                    kname,
                    format!("invalid mount path: '{source}' mount path must be absolute"),
                ));
            }
            spec.source = clean_path(&source);
            let mut prop = DEFAULT_PROPAGATION.to_string();
            if let Some(b) = &m.bind_options {
                if let Some(p) = b.propagation {
                    let p = p.to_string();
                    if !p.is_empty() {
                        if !PROPAGATION_MODES.contains(&p.as_str()) {
                            return Err(config_err(
                                kname,
                                format!("invalid propagation mode: {p}"),
                            ));
                        }
                        prop = p;
                    }
                }
                spec.create_host_path = b.create_mountpoint.unwrap_or(false);
            }
            spec.propagation = Some(prop);
        }
        MountKind::Volume => {
            if m.bind_options.is_some() {
                return Err(config_err(kname, "field BindOptions must not be specified"));
            }
            if m.tmpfs_options.is_some() {
                return Err(config_err(
                    kname,
                    "field TmpfsOptions must not be specified",
                ));
            }
            let anonymous = source.is_empty();
            if !anonymous {
                validate_volume_name(&source).map_err(|e| config_err(kname, e.0))?;
            }
            if let Some(v) = &m.volume_options {
                spec.copy_data = !v.no_copy.unwrap_or(false);
                spec.volume_labels = v.labels.clone().unwrap_or_default();
                if let Some(d) = &v.driver_config {
                    spec.volume_driver = d.name.clone().filter(|n| !n.is_empty());
                    spec.volume_options = d.options.clone().unwrap_or_default();
                }
                if let Some(sp) = v.subpath.as_ref().filter(|s| !s.is_empty()) {
                    if anonymous {
                        return Err(config_err(
                            kname,
                            "must not set Subpath when using anonymous volumes",
                        ));
                    }
                    if is_abs(sp) || sp.split('/').any(|c| c == "..") {
                        return Err(config_err(
                            kname,
                            "subpath must be a relative path within the volume",
                        ));
                    }
                    spec.volume_subpath = Some(sp.clone());
                }
            }
            if read_only && anonymous {
                return Err(config_err(
                    kname,
                    "must not set ReadOnly mode when using anonymous volumes",
                ));
            }
        }
        MountKind::Tmpfs => {
            if m.bind_options.is_some() {
                return Err(config_err(kname, "field BindOptions must not be specified"));
            }
            if m.volume_options.is_some() {
                return Err(config_err(
                    kname,
                    "field VolumeOptions must not be specified",
                ));
            }
            if !source.is_empty() {
                return Err(config_err(kname, "field Source must not be specified"));
            }
            let (size, mode) = match &m.tmpfs_options {
                Some(t) => (t.size_bytes.unwrap_or(0), t.mode.unwrap_or(0)),
                None => (0, 0),
            };
            if size < 0 {
                return Err(config_err(kname, "invalid tmpfs size"));
            }
            spec.tmpfs_options = tmpfs_options(size, mode as u32, read_only);
            if let Some(extra) = m.tmpfs_options.as_ref().and_then(|t| t.options.as_ref()) {
                for kv in extra {
                    match kv.as_slice() {
                        [k] => spec.tmpfs_options.push(k.clone()),
                        [k, v] => spec.tmpfs_options.push(format!("{k}={v}")),
                        _ => return Err(config_err(kname, "invalid tmpfs option")),
                    }
                }
            }
        }
    }
    Ok(spec)
}

/// Moby's `ConvertTmpfsOptions`: `ro`, `mode=<octal>`, `size=<n>[kmg]`.
pub fn tmpfs_options(size_bytes: i64, mode: u32, read_only: bool) -> Vec<String> {
    let mut o = Vec::new();
    if read_only {
        o.push("ro".to_string());
    }
    if mode != 0 {
        o.push(format!("mode={mode:o}"));
    }
    if size_bytes != 0 {
        let mut size = size_bytes;
        let mut suffix = "";
        for (s, d) in [("g", 1i64 << 30), ("m", 1 << 20), ("k", 1 << 10)] {
            if size % d == 0 {
                size /= d;
                suffix = s;
                break;
            }
        }
        o.push(format!("size={size}{suffix}"));
    }
    o
}

/// A `HostConfig.Tmpfs` entry: destination and its options (`rw,noexec,size=64m`).
pub fn parse_tmpfs_flag(destination: &str, options: &str) -> Result<MountSpec, MountSpecError> {
    validate_target("tmpfs", destination)?;
    let opts: Vec<String> = options
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let read_only = opts.iter().any(|o| o == "ro");
    Ok(MountSpec {
        kind: MountKind::Tmpfs,
        source: String::new(),
        destination: clean_path(destination),
        read_only,
        mode: options.to_string(),
        propagation: None,
        relabel: None,
        copy_data: false,
        volume_driver: None,
        volume_labels: HashMap::new(),
        volume_options: HashMap::new(),
        volume_subpath: None,
        tmpfs_options: opts,
        create_host_path: false,
    })
}

fn parse_bool(k: &str, v: &str) -> Result<bool, MountSpecError> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" => Ok(true),
        "0" | "f" | "false" => Ok(false),
        _ => Err(err(format!("invalid value for {k}: {v}"))),
    }
}

/// Human sizes as the CLI reads `tmpfs-size` (`64m`, `1g`, bytes without suffix).
pub fn parse_size(s: &str) -> Result<i64, MountSpecError> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = t[i..].to_ascii_lowercase();
            let m: i64 = match unit.trim_end_matches('b').trim_end_matches('i') {
                "" => 1,
                "k" => 1 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                "t" => 1 << 40,
                _ => return Err(err(format!("invalid size: '{s}'"))),
            };
            (&t[..i], m)
        }
        None => (t, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| err(format!("invalid size: '{s}'")))?;
    Ok((n * mult as f64) as i64)
}

/// The `--mount` CSV syntax (docker/cli `opts.MountOpt.Set`), then [`from_api`].
pub fn parse_mount_flag(value: &str) -> Result<MountSpec, MountSpecError> {
    let mut m = docker::Mount::default();
    let mut vol = docker::MountVolumeOptions::default();
    let mut bind = docker::MountBindOptions::default();
    let mut tmpfs = docker::MountTmpfsOptions::default();
    let (mut has_vol, mut has_bind, mut has_tmpfs) = (false, false, false);
    for field in value.split(',').filter(|f| !f.is_empty()) {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.to_string())),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        let need = |v: Option<String>| {
            v.ok_or_else(|| err(format!("invalid field '{field}' must be a key=value pair")))
        };
        match k.as_str() {
            "readonly" | "ro" => {
                m.read_only = Some(match v {
                    None => true,
                    Some(v) => parse_bool(&k, &v)?,
                })
            }
            "volume-nocopy" => {
                has_vol = true;
                vol.no_copy = Some(match v {
                    None => true,
                    Some(v) => parse_bool(&k, &v)?,
                })
            }
            "bind-nonrecursive" => {
                has_bind = true;
                bind.non_recursive = Some(match v {
                    None => true,
                    Some(v) => parse_bool(&k, &v)?,
                })
            }
            "type" => {
                m.typ = Some(match need(v)?.to_ascii_lowercase().as_str() {
                    "bind" => docker::MountType::BIND,
                    "volume" => docker::MountType::VOLUME,
                    "tmpfs" => docker::MountType::TMPFS,
                    "npipe" => docker::MountType::NPIPE,
                    "cluster" => docker::MountType::CLUSTER,
                    "image" => docker::MountType::IMAGE,
                    other => return Err(err(format!("invalid mount type: {other}"))),
                })
            }
            "source" | "src" => m.source = Some(need(v)?),
            "target" | "dst" | "destination" => m.target = Some(need(v)?),
            "consistency" => m.consistency = Some(need(v)?),
            "bind-propagation" => {
                has_bind = true;
                let p = need(v)?;
                bind.propagation = Some(match p.as_str() {
                    "private" => docker::MountBindOptionsPropagationEnum::PRIVATE,
                    "rprivate" => docker::MountBindOptionsPropagationEnum::RPRIVATE,
                    "shared" => docker::MountBindOptionsPropagationEnum::SHARED,
                    "rshared" => docker::MountBindOptionsPropagationEnum::RSHARED,
                    "slave" => docker::MountBindOptionsPropagationEnum::SLAVE,
                    "rslave" => docker::MountBindOptionsPropagationEnum::RSLAVE,
                    _ => return Err(err(format!("invalid propagation mode: {p}"))),
                });
            }
            "volume-driver" => {
                has_vol = true;
                vol.driver_config.get_or_insert_with(Default::default).name = Some(need(v)?);
            }
            "volume-label" => {
                has_vol = true;
                let kv = need(v)?;
                let (a, b) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
                vol.labels
                    .get_or_insert_with(HashMap::new)
                    .insert(a.to_string(), b.to_string());
            }
            "volume-opt" => {
                has_vol = true;
                let kv = need(v)?;
                let (a, b) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
                let dc = vol.driver_config.get_or_insert_with(Default::default);
                dc.options
                    .get_or_insert_with(HashMap::new)
                    .insert(a.to_string(), b.to_string());
            }
            "volume-subpath" => {
                has_vol = true;
                vol.subpath = Some(need(v)?);
            }
            "tmpfs-size" => {
                has_tmpfs = true;
                tmpfs.size_bytes = Some(parse_size(&need(v)?)?);
            }
            "tmpfs-mode" => {
                has_tmpfs = true;
                let s = need(v)?;
                tmpfs.mode = Some(
                    i64::from_str_radix(&s, 8)
                        .map_err(|_| err(format!("invalid value for {k}: {s}")))?,
                );
            }
            _ => return Err(err(format!("unexpected key '{k}' in '{field}'"))),
        }
    }
    if m.typ.is_none() {
        m.typ = Some(docker::MountType::VOLUME);
    }
    if m.target.as_deref().unwrap_or("").is_empty() {
        return Err(err("target is required"));
    }
    let kind = m.typ.unwrap();
    if has_vol && kind != docker::MountType::VOLUME {
        return Err(err(format!(
            "cannot mix 'volume-*' options with mount type '{kind}'"
        )));
    }
    if has_bind && kind != docker::MountType::BIND {
        return Err(err(format!(
            "cannot mix 'bind-*' options with mount type '{kind}'"
        )));
    }
    if has_tmpfs && kind != docker::MountType::TMPFS {
        return Err(err(format!(
            "cannot mix 'tmpfs-*' options with mount type '{kind}'"
        )));
    }
    if has_vol {
        m.volume_options = Some(vol);
    }
    if has_bind {
        m.bind_options = Some(bind);
    }
    if has_tmpfs {
        m.tmpfs_options = Some(tmpfs);
    }
    from_api(&m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_flags() {
        let s = parse_volume_flag("data:/var/lib/data", None).unwrap();
        assert_eq!(
            (
                s.kind,
                s.source.as_str(),
                s.destination.as_str(),
                s.read_only,
                s.copy_data
            ),
            (MountKind::Volume, "data", "/var/lib/data", false, true)
        );
        let s = parse_volume_flag("/srv/x:/x:ro,rshared", None).unwrap();
        assert_eq!(
            (s.kind, s.read_only, s.propagation.as_deref()),
            (MountKind::Bind, true, Some("rshared"))
        );
        let s = parse_volume_flag("/srv/x/:/x/", None).unwrap();
        assert_eq!(
            (
                s.source.as_str(),
                s.destination.as_str(),
                s.propagation.as_deref()
            ),
            ("/srv/x", "/x", Some("rprivate"))
        );
        let s = parse_volume_flag("/anon", Some("local")).unwrap();
        assert_eq!(
            (s.kind, s.source.as_str(), s.volume_driver.as_deref()),
            (MountKind::Volume, "", Some("local"))
        );
        assert!(!parse_volume_flag("v1:/d:nocopy", None).unwrap().copy_data);
        assert_eq!(
            parse_volume_flag("v1:/d:z", None)
                .unwrap()
                .relabel
                .as_deref(),
            Some("z")
        );
    }

    #[test]
    fn volume_flag_errors_as_moby() {
        let e = |s: &str| parse_volume_flag(s, None).unwrap_err().0;
        assert_eq!(e(""), "invalid volume specification: ''");
        assert_eq!(e(":/x"), "invalid volume specification: ':/x'");
        assert_eq!(e("/foo:rw"), "invalid volume specification: '/foo:rw'");
        assert_eq!(e("a:b:c:d"), "invalid volume specification: 'a:b:c:d'");
        assert_eq!(e("v1:/d:rx"), "invalid mode: rx");
        assert_eq!(e("v1:/d:ro,rw"), "invalid mode: ro,rw");
        assert_eq!(e("v1:/"), "invalid mount config for type \"volume\": invalid specification: destination can't be '/'");
        assert_eq!(e("v1:rel"), "invalid mount config for type \"volume\": invalid mount path: 'rel' mount path must be absolute");
        assert_eq!(
            e("/h:/c:nocopy"),
            "invalid mount config for type \"bind\": field VolumeOptions must not be specified"
        );
        assert!(e("x/y:/d").contains("includes invalid characters for a local volume name"));
    }

    #[test]
    fn api_mounts() {
        let m = docker::Mount {
            typ: Some(docker::MountType::TMPFS),
            target: Some("/run".into()),
            tmpfs_options: Some(docker::MountTmpfsOptions {
                size_bytes: Some(64 << 20),
                mode: Some(0o1777),
                options: None,
            }),
            ..Default::default()
        };
        assert_eq!(
            from_api(&m).unwrap().tmpfs_options,
            vec!["mode=1777", "size=64m"]
        );
        let m = docker::Mount {
            typ: Some(docker::MountType::BIND),
            target: Some("/x".into()),
            ..Default::default()
        };
        assert_eq!(
            from_api(&m).unwrap_err().0,
            "invalid mount config for type \"bind\": field Source must not be empty"
        );
        let m = docker::Mount {
            typ: Some(docker::MountType::TMPFS),
            source: Some("x".into()),
            target: Some("/x".into()),
            ..Default::default()
        };
        assert_eq!(
            from_api(&m).unwrap_err().0,
            "invalid mount config for type \"tmpfs\": field Source must not be specified"
        );
    }

    #[test]
    fn mount_flags() {
        let s =
            parse_mount_flag("type=volume,source=v1,target=/data,volume-nocopy,volume-label=a=b")
                .unwrap();
        assert_eq!(
            (
                s.source.as_str(),
                s.copy_data,
                s.volume_labels.get("a").map(String::as_str)
            ),
            ("v1", false, Some("b"))
        );
        let s =
            parse_mount_flag("type=bind,src=/h,dst=/c,readonly,bind-propagation=rslave").unwrap();
        assert_eq!(
            (s.read_only, s.propagation.as_deref(), s.create_host_path),
            (true, Some("rslave"), false)
        );
        let s = parse_mount_flag("type=tmpfs,dst=/t,tmpfs-size=1g").unwrap();
        assert_eq!(s.tmpfs_options, vec!["size=1g"]);
        assert_eq!(
            parse_mount_flag("src=v1").unwrap_err().0,
            "target is required"
        );
        assert!(parse_mount_flag("type=bind,src=/a,dst=/b,volume-nocopy")
            .unwrap_err()
            .0
            .contains("cannot mix"));
        assert_eq!(
            parse_mount_flag("type=volume,dst=/d,bogus=1")
                .unwrap_err()
                .0,
            "unexpected key 'bogus' in 'bogus=1'"
        );
    }

    #[test]
    fn names() {
        assert!(validate_volume_name("ab").is_ok());
        assert!(validate_volume_name("a").is_err());
        assert!(validate_volume_name("_ab").is_err());
        assert!(validate_volume_name("a.b-c_d").is_ok());
    }
}
