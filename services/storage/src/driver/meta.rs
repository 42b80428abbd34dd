//! The snapshot keyspace every driver shares: one JSON file per snapshot under
//! `<home>/snapshots/`, named by the hex of its key, written by atomic rename.
//! An in-memory copy answers lookups; the files are the truth after a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{DriverError, Info, Kind, Result};

pub struct MetaStore {
    dir: PathBuf,
    map: Mutex<HashMap<String, Info>>,
}

impl MetaStore {
    /// Load every record. Two records for one directory id are the two halves of an
    /// interrupted commit (the committed one was written first): the active one goes.
    pub fn open(dir: PathBuf) -> Result<MetaStore> {
        std::fs::create_dir_all(&dir)
            .map_err(DriverError::io(format!("creating {}", dir.display())))?;
        let mut map: HashMap<String, Info> = HashMap::new();
        let mut by_id: HashMap<String, String> = HashMap::new();
        for e in std::fs::read_dir(&dir)
            .map_err(DriverError::io(format!("reading {}", dir.display())))?
        {
            let e = e.map_err(DriverError::io("reading snapshot records"))?;
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                let _ = std::fs::remove_file(&p); // a temporary file of an interrupted write
                continue;
            }
            let info: Info = match crate::util::read_json(&p) {
                Ok(i) => i,
                Err(err) => {
                    tracing::warn!(path = %p.display(), error = %err, "dropping unreadable snapshot record");
                    let _ = std::fs::remove_file(&p);
                    continue;
                }
            };
            if let Some(other) = by_id.get(&info.id).cloned() {
                let keep_new = info.kind == Kind::Committed;
                let drop = if keep_new {
                    other.clone()
                } else {
                    info.name.clone()
                };
                let _ = std::fs::remove_file(dir.join(file_name(&drop)));
                if keep_new {
                    map.remove(&other);
                } else {
                    continue;
                }
            }
            by_id.insert(info.id.clone(), info.name.clone());
            map.insert(info.name.clone(), info);
        }
        Ok(MetaStore {
            dir,
            map: Mutex::new(map),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(file_name(key))
    }

    pub fn get(&self, key: &str) -> Result<Info> {
        self.map
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .ok_or_else(|| DriverError::NotFound(key.into()))
    }

    pub fn all(&self) -> Vec<Info> {
        self.map.lock().unwrap().values().cloned().collect()
    }

    pub fn ids(&self) -> std::collections::HashSet<String> {
        self.map
            .lock()
            .unwrap()
            .values()
            .map(|i| i.id.clone())
            .collect()
    }

    /// Reserve `info.name` for a new snapshot: fails if the key exists or the
    /// parent is missing or not committed. The record is persisted by [`Self::persist`].
    pub fn reserve(&self, info: &Info) -> Result<()> {
        let mut m = self.map.lock().unwrap();
        if m.contains_key(&info.name) {
            return Err(DriverError::AlreadyExists(info.name.clone()));
        }
        if let Some(p) = &info.parent {
            match m.get(p) {
                None => return Err(DriverError::NotFound(p.clone())),
                Some(pi) if pi.kind != Kind::Committed => {
                    return Err(DriverError::Invalid(format!(
                        "parent snapshot {p} is not committed"
                    )))
                }
                _ => {}
            }
        }
        m.insert(info.name.clone(), info.clone());
        Ok(())
    }

    /// Drop a reservation whose creation failed.
    pub fn unreserve(&self, key: &str) {
        self.map.lock().unwrap().remove(key);
    }

    pub fn persist(&self, info: &Info) -> Result<()> {
        crate::util::write_json(&self.path(&info.name), info, false).map_err(DriverError::io(
            format!("writing snapshot record {}", info.name),
        ))
    }

    /// Active `key` becomes committed `name` (optionally attached to `parent`).
    pub fn commit(&self, name: &str, key: &str, parent: Option<String>) -> Result<Info> {
        let info = {
            let mut m = self.map.lock().unwrap();
            let cur = m
                .get(key)
                .cloned()
                .ok_or_else(|| DriverError::NotFound(key.into()))?;
            if cur.kind != Kind::Active {
                return Err(DriverError::Invalid(format!(
                    "snapshot {key} is not active"
                )));
            }
            if name != key && m.contains_key(name) {
                return Err(DriverError::AlreadyExists(name.into()));
            }
            if let Some(p) = &parent {
                if cur.parent.is_some() {
                    return Err(DriverError::Invalid(format!(
                        "snapshot {key} already has a parent"
                    )));
                }
                match m.get(p) {
                    Some(pi) if pi.kind == Kind::Committed => {}
                    Some(_) => {
                        return Err(DriverError::Invalid(format!(
                            "parent snapshot {p} is not committed"
                        )))
                    }
                    None => return Err(DriverError::NotFound(p.clone())),
                }
            }
            let mut info = cur.clone();
            info.name = name.to_string();
            info.kind = Kind::Committed;
            if parent.is_some() {
                info.parent = parent;
            }
            m.remove(key);
            m.insert(name.to_string(), info.clone());
            info
        };
        // New record first, old one second: a crash in between leaves two records for
        // one id, which `open` resolves in favour of the committed one.
        self.persist(&info)?;
        if name != key {
            let _ = std::fs::remove_file(self.path(key));
        }
        Ok(info)
    }

    /// Remove `key` from the keyspace if it has no children; answers its record.
    pub fn remove(&self, key: &str) -> Result<Info> {
        let info = {
            let mut m = self.map.lock().unwrap();
            let info = m
                .get(key)
                .cloned()
                .ok_or_else(|| DriverError::NotFound(key.into()))?;
            if m.values().any(|i| i.parent.as_deref() == Some(key)) {
                return Err(DriverError::InUse(format!(
                    "cannot remove snapshot {key}: it has children"
                )));
            }
            m.remove(key);
            info
        };
        match std::fs::remove_file(self.path(key)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(DriverError::Io {
                    context: format!("removing snapshot record {key}"),
                    source: e,
                })
            }
        }
        Ok(info)
    }

    /// The committed ancestors of `key`, nearest first.
    pub fn ancestors(&self, key: &str) -> Result<Vec<Info>> {
        let m = self.map.lock().unwrap();
        let mut out = Vec::new();
        let mut cur = m
            .get(key)
            .ok_or_else(|| DriverError::NotFound(key.into()))?
            .parent
            .clone();
        while let Some(p) = cur {
            let i = m.get(&p).ok_or_else(|| DriverError::NotFound(p.clone()))?;
            cur = i.parent.clone();
            out.push(i.clone());
        }
        Ok(out)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn file_name(key: &str) -> String {
    format!("{}.json", hex::encode(key.as_bytes()))
}
