//! The format of each service's records on disk. Every service folder under the data
//! root carries a `FORMAT` file (`{"format": N, "berth": "<version that wrote it>"}`):
//! a berth that starts migrates older records forward, one step at a time, and refuses
//! records newer than it knows (a downgrade) with a clear message instead of
//! misreading them. The current formats live in [`FORMATS`], one line per service.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The record format each service writes today. Bump a service's number together with
/// a migration from the previous format (see [`open`]).
pub const FORMATS: &[(&str, u32)] =
    &[("images", 1), ("storage", 1), ("runtime", 1), ("network", 1), ("builder", 1), ("swarm", 1)];

/// The format `service` writes, 1 for a folder this table does not name.
pub fn current(service: &str) -> u32 {
    FORMATS.iter().find(|(s, _)| *s == service).map(|(_, f)| *f).unwrap_or(1)
}

pub const FILE: &str = "FORMAT";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub format: u32,
    /// The berth version that wrote the records last.
    pub berth: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error(
        "the {service} records in {} are format {found}, written by berth {by}; this berth ({}) knows formats up to {current}: \
         downgrading is not supported (install berth {by} or newer again, or move {} away to start empty)",
        dir.display(), crate::VERSION, dir.display()
    )]
    Newer { service: String, dir: PathBuf, found: u32, by: String, current: u32 },
    #[error("cannot read {}: {message}", path.display())]
    Unreadable { path: PathBuf, message: String },
    #[error("migrating the {service} records in {} from format {from}: {message}", dir.display())]
    Migration { service: String, dir: PathBuf, from: u32, message: String },
    #[error("no migration of the {service} records from format {from}")]
    NoMigration { service: String, from: u32 },
}

/// A step from format `from` to `from + 1`, run on the service's folder.
pub struct Migration {
    pub from: u32,
    pub run: fn(&Path) -> Result<(), String>,
}

/// The stamp in `dir`, if any.
pub fn read(dir: &Path) -> Result<Option<Stamp>, RecordsError> {
    let path = dir.join(FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| RecordsError::Unreadable { path, message: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RecordsError::Unreadable { path, message: e.to_string() }),
    }
}

fn write(dir: &Path, format: u32) -> Result<(), RecordsError> {
    let path = dir.join(FILE);
    let s = Stamp { format, berth: crate::VERSION.to_string() };
    crate::paths::write_atomic(&path, serde_json::to_string(&s).unwrap().as_bytes())
        .map_err(|e| RecordsError::Unreadable { path, message: e.to_string() })
}

/// Refuse records newer than this berth knows, without changing anything (what
/// `berth up` checks for every service before it starts one).
pub fn check(dir: &Path, service: &str) -> Result<(), RecordsError> {
    check_at(dir, service, current(service))
}

fn check_at(dir: &Path, service: &str, cur: u32) -> Result<(), RecordsError> {
    match read(dir)? {
        Some(s) if s.format > cur => Err(RecordsError::Newer {
            service: service.to_string(),
            dir: dir.to_path_buf(),
            found: s.format,
            by: s.berth,
            current: cur,
        }),
        _ => Ok(()),
    }
}

/// Open `service`'s folder `dir` for this berth: refuse newer records, migrate older
/// ones forward (each step recorded as it completes, so an interrupted migration
/// resumes), stamp the current format. A folder without a stamp but with content holds
/// records from before formats were stamped: format 1.
pub fn open(dir: &Path, service: &str, migrations: &[Migration]) -> Result<(), RecordsError> {
    open_at(dir, service, current(service), migrations)
}

fn open_at(dir: &Path, service: &str, cur: u32, migrations: &[Migration]) -> Result<(), RecordsError> {
    check_at(dir, service, cur)?;
    std::fs::create_dir_all(dir).map_err(|e| RecordsError::Unreadable { path: dir.to_path_buf(), message: e.to_string() })?;
    let mut found = match read(dir)? {
        Some(s) if s.format == cur && s.berth == crate::VERSION => return Ok(()),
        Some(s) => s.format,
        None => {
            let empty = std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(true);
            if empty {
                cur
            } else {
                1
            }
        }
    };
    while found < cur {
        let m = migrations
            .iter()
            .find(|m| m.from == found)
            .ok_or_else(|| RecordsError::NoMigration { service: service.to_string(), from: found })?;
        (m.run)(dir).map_err(|message| RecordsError::Migration {
            service: service.to_string(),
            dir: dir.to_path_buf(),
            from: found,
            message,
        })?;
        found += 1;
        write(dir, found)?;
    }
    write(dir, cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_new_and_old_folders_and_refuses_newer_records() {
        let d = tempfile::tempdir().unwrap();
        let fresh = d.path().join("runtime");
        open(&fresh, "runtime", &[]).unwrap();
        assert_eq!(read(&fresh).unwrap().unwrap().format, current("runtime"));
        // records from before stamps: format 1
        let old = d.path().join("images");
        std::fs::create_dir_all(old.join("x")).unwrap();
        open(&old, "images", &[]).unwrap();
        assert_eq!(read(&old).unwrap().unwrap(), Stamp { format: 1, berth: crate::VERSION.into() });
        // a downgrade: refused, nothing changed
        let text = r#"{"format":7,"berth":"9.9.9"}"#;
        std::fs::write(old.join(FILE), text).unwrap();
        let e = open(&old, "images", &[]).unwrap_err();
        let m = e.to_string();
        assert!(m.starts_with(&format!("the images records in {} are format 7, written by berth 9.9.9; this berth", old.display())), "{m}");
        assert!(m.contains("downgrading is not supported"), "{m}");
        assert!(check(&old, "images").is_err());
        assert_eq!(std::fs::read_to_string(old.join(FILE)).unwrap(), text);
    }

    #[test]
    fn migrates_forward_one_step_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("svc");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(FILE), r#"{"format":1,"berth":"0.0.1"}"#).unwrap();
        fn one(d: &Path) -> Result<(), String> {
            std::fs::write(d.join("step1"), "").map_err(|e| e.to_string())
        }
        fn two(d: &Path) -> Result<(), String> {
            if !d.join("step1").exists() {
                return Err("step 1 missing".into());
            }
            std::fs::write(d.join("step2"), "").map_err(|e| e.to_string())
        }
        fn fails(_: &Path) -> Result<(), String> {
            Err("disk full".into())
        }
        // a failing second step: the first is recorded, the error names the step
        let e = open_at(&dir, "svc", 3, &[Migration { from: 1, run: one }, Migration { from: 2, run: fails }]).unwrap_err();
        assert!(e.to_string().contains("from format 2: disk full"), "{e}");
        assert_eq!(read(&dir).unwrap().unwrap().format, 2);
        // resumed: only the missing step runs
        open_at(&dir, "svc", 3, &[Migration { from: 2, run: two }]).unwrap();
        assert!(dir.join("step2").exists());
        assert_eq!(read(&dir).unwrap().unwrap(), Stamp { format: 3, berth: crate::VERSION.into() });
        // no way from format 3 to 4
        assert!(matches!(open_at(&dir, "svc", 4, &[]), Err(RecordsError::NoMigration { from: 3, .. })));
    }
}
