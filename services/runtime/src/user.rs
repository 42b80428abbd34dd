//! `-u user[:group]` and `--group-add`, resolved inside the container's rootfs as
//! Docker does: /etc/passwd and /etc/group of the image, numeric ids accepted as they
//! are, supplementary groups from the user's memberships. Files are read with their
//! path resolved by the kernel inside the rootfs (a running container may be swapping
//! /etc/passwd for a link to the host's while an exec looks it up).

use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NoUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    NoGroup(String),
    #[error("Unable to find group {0}")]
    NoGroupAdd(String),
    #[error("invalid user {0:?}")]
    Invalid(String),
}

struct Passwd {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct Group {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn read_in_rootfs(rootfs: &Path, path: &str) -> String {
    berth_fsutil::read_in_root(rootfs, path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

fn parse_passwd(text: &str) -> Vec<Passwd> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(Passwd {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f.get(5).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<Group> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            Some(Group {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolves `user` ("", "name", "uid", "name:group", "uid:gid", ...) and `group_add`
/// in `rootfs`.
pub fn resolve(rootfs: &Path, user: &str, group_add: &[String]) -> Result<ExecUser, UserError> {
    let passwd = parse_passwd(&read_in_rootfs(rootfs, "/etc/passwd"));
    let groups = parse_group(&read_in_rootfs(rootfs, "/etc/group"));
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let mut out = ExecUser {
        uid: 0,
        gid: 0,
        additional_gids: vec![],
        home: "/".into(),
    };
    let mut name = String::from("root");
    let numeric_u = u.parse::<u32>().ok();
    if u.is_empty() {
        if let Some(p) = passwd.iter().find(|p| p.uid == 0) {
            out.gid = p.gid;
            out.home = p.home.clone();
            name = p.name.clone();
        }
    } else if let Some(p) = passwd
        .iter()
        .find(|p| p.name == u || (numeric_u == Some(p.uid) && !passwd.iter().any(|q| q.name == u)))
    {
        out.uid = p.uid;
        out.gid = p.gid;
        out.home = p.home.clone();
        name = p.name.clone();
    } else if let Some(uid) = numeric_u {
        out.uid = uid;
        name = String::new();
    } else {
        if u.contains(|c: char| c.is_whitespace()) {
            return Err(UserError::Invalid(user.into()));
        }
        return Err(UserError::NoUser(u.into()));
    }
    match g {
        Some(g) if !g.is_empty() => {
            let numeric_g = g.parse::<u32>().ok();
            match groups.iter().find(|x| x.name == g) {
                Some(x) => out.gid = x.gid,
                None => match numeric_g {
                    Some(gid) => out.gid = gid,
                    None => return Err(UserError::NoGroup(g.into())),
                },
            }
        }
        _ => {
            // Supplementary groups only when no group is given explicitly.
            if !name.is_empty() {
                for x in &groups {
                    if x.members.iter().any(|m| *m == name) && !out.additional_gids.contains(&x.gid)
                    {
                        out.additional_gids.push(x.gid);
                    }
                }
            }
        }
    }
    // the primary group is a supplementary group too, as in Moby since 20.10.18
    // (CVE-2022-36109: without it, a file's group-deny bits could be bypassed by
    // dropping the group); `id` prints `groups=5678` for `-u 1234:5678`
    out.additional_gids.retain(|g| *g != out.gid);
    out.additional_gids.insert(0, out.gid);
    for ga in group_add {
        let gid = match groups.iter().find(|x| x.name == *ga) {
            Some(x) => x.gid,
            None => ga
                .parse::<u32>()
                .map_err(|_| UserError::NoGroupAdd(ga.clone()))?,
        };
        if !out.additional_gids.contains(&gid) {
            out.additional_gids.push(gid);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1001:U:/home/user:/bin/sh\n# comment\n2000:x:3000:3000::/:/bin/sh\n").unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nusers:x:1001:\nextra:x:2000:user,other\naudio:x:29:user\n",
        )
        .unwrap();
        d
    }

    #[test]
    fn names_and_numbers() {
        let r = rootfs();
        let p = r.path();
        assert_eq!(
            resolve(p, "", &[]).unwrap(),
            ExecUser {
                uid: 0,
                gid: 0,
                additional_gids: vec![0],
                home: "/root".into()
            }
        );
        let u = resolve(p, "user", &[]).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.additional_gids.clone()),
            (1000, 1001, vec![1001, 2000, 29])
        );
        assert_eq!(u.home, "/home/user");
        let u = resolve(p, "1000", &[]).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1001));
        // An explicit group: it is the only supplementary group.
        let u = resolve(p, "user:extra", &[]).unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (1000, 2000, vec![2000]));
        let u = resolve(p, "4242:4343", &[]).unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (4242, 4343, vec![4343]));
        let u = resolve(p, "4242", &["29".into()]).unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (4242, 0, vec![0, 29]));
        // A user named like a number wins over the uid.
        let u = resolve(p, "2000", &[]).unwrap();
        assert_eq!(u.uid, 3000);
        let u = resolve(p, "root", &["audio".into(), "777".into()]).unwrap();
        assert_eq!(u.additional_gids, vec![0, 29, 777]);
    }

    #[test]
    fn errors_read_like_docker() {
        let r = rootfs();
        assert_eq!(
            resolve(r.path(), "nope", &[]).unwrap_err().to_string(),
            "unable to find user nope: no matching entries in passwd file"
        );
        assert_eq!(
            resolve(r.path(), "user:nope", &[]).unwrap_err().to_string(),
            "unable to find group nope: no matching entries in group file"
        );
        assert!(resolve(r.path(), "root", &["nogroup".into()]).is_err());
    }

    #[test]
    fn symlinks_stay_in_the_rootfs() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        // /etc/passwd -> /etc/shadow-like absolute link: resolved inside the rootfs,
        // where the target is missing, so the host's file is never read.
        std::os::unix::fs::symlink("/etc/hostname", d.path().join("etc/passwd")).unwrap();
        assert!(
            resolve(d.path(), "root", &[]).is_err()
                || resolve(d.path(), "root", &[]).unwrap().uid == 0
        );
        std::os::unix::fs::symlink("../../../../../etc/group", d.path().join("etc/group")).unwrap();
        assert_eq!(
            resolve(d.path(), "0", &["root".into()]).unwrap_err(),
            UserError::NoGroupAdd("root".into())
        );
    }
}
