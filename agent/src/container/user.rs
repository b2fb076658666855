//! `user:` as Docker reads it: `name`, `uid`, `name:group`, `uid:gid` (and mixes),
//! resolved against the image's own /etc/passwd and /etc/group, which are opened
//! inside the container's rootfs (a symlink to the host's /etc/passwd resolves to the
//! rootfs's own file, or to nothing).

use std::os::fd::AsFd;
use std::path::Path;

use super::inroot;

/// The identity the container's process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: every group of /etc/group that lists the user by name.
    pub additional_gids: Vec<u32>,
    /// The home directory from /etc/passwd, for `HOME`.
    pub home: Option<String>,
}

/// The user database files are small; a larger one is not a user database.
const LIMIT: u64 = 4 << 20;

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f.get(5).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

fn read(root: impl AsFd, path: &str) -> Result<Option<String>, String> {
    match inroot::read_file(root, Path::new(path), LIMIT) {
        Ok(bytes) => Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned())),
        Err(e) => Err(format!("cannot read the image's {path}: {e}")),
    }
}

/// Resolves `spec` (`user[:group]`) in the rootfs opened as `root`. The reason of an
/// error is a sentence for the user (the caller adds the service and field).
pub fn resolve(root: impl AsFd, spec: &str) -> Result<ResolvedUser, String> {
    let root = root.as_fd();
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || group.is_some_and(str::is_empty) {
        return Err(format!(
            "{spec:?} is not a user: use name, uid, name:group or uid:gid"
        ));
    }
    let passwd = read(root, "/etc/passwd")?;
    let users = passwd.as_deref().map(parse_passwd).unwrap_or_default();
    let entry = match user.parse::<u32>() {
        Ok(uid) => users.iter().find(|e| e.uid == uid),
        Err(_) => users.iter().find(|e| e.name == user),
    };
    let (uid, mut gid, name, home) = match (entry, user.parse::<u32>()) {
        (Some(e), _) => (e.uid, e.gid, Some(e.name.as_str()), Some(e.home.clone())),
        // A numeric uid the image does not list runs as that uid in group 0 (Docker).
        (None, Ok(uid)) => (uid, 0, None, None),
        (None, Err(_)) if passwd.is_none() => {
            return Err(format!(
                "user {user:?} cannot be resolved: the image has no /etc/passwd; give a numeric uid"
            ))
        }
        (None, Err(_)) => {
            return Err(format!(
                "user {user:?} not found in the image's /etc/passwd"
            ))
        }
    };
    let groups_text = read(root, "/etc/group")?;
    let groups = groups_text.as_deref().map(parse_group).unwrap_or_default();
    if let Some(group) = group {
        gid = match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => match groups.iter().find(|g| g.name == group) {
                Some(g) => g.gid,
                None => {
                    return Err(format!(
                        "group {group:?} not found in the image's /etc/group"
                    ))
                }
            },
        };
    }
    let mut additional_gids: Vec<u32> = match name {
        Some(name) => groups
            .iter()
            .filter(|g| g.members.iter().any(|m| m == name))
            .map(|g| g.gid)
            .collect(),
        None => Vec::new(),
    };
    additional_gids.retain(|g| *g != gid);
    additional_gids.sort_unstable();
    additional_gids.dedup();
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home: home.filter(|h| !h.is_empty()),
    })
}

/// A `uid`/`gid` of a secret or config: numeric, or a name from the image.
pub fn resolve_id(root: impl AsFd, value: &str, group: bool) -> Result<u32, String> {
    if let Ok(n) = value.parse::<u32>() {
        return Ok(n);
    }
    if group {
        let text = read(root, "/etc/group")?.unwrap_or_default();
        parse_group(&text)
            .iter()
            .find(|g| g.name == value)
            .map(|g| g.gid)
            .ok_or_else(|| format!("group {value:?} not found in the image's /etc/group"))
    } else {
        let text = read(root, "/etc/passwd")?.unwrap_or_default();
        parse_passwd(&text)
            .iter()
            .find(|u| u.name == value)
            .map(|u| u.uid)
            .ok_or_else(|| format!("user {value:?} not found in the image's /etc/passwd"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs(passwd: &str, group: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), passwd).unwrap();
        std::fs::write(dir.path().join("etc/group"), group).unwrap();
        dir
    }

    #[test]
    fn user_specs_resolve_like_docker() {
        let dir = rootfs(
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
            "root:x:0:\napp:x:1000:\nstaff:x:50:app,other\nwheel:x:10:root\n",
        );
        let root = inroot::open_root(dir.path()).unwrap();
        let show = |spec: &str| match resolve(&root, spec) {
            Ok(u) => format!("{}:{} {:?} {:?}", u.uid, u.gid, u.additional_gids, u.home),
            Err(e) => format!("error: {e}"),
        };
        let cases = [
            ("app", "1000:1000 [50] Some(\"/home/app\")"),
            ("1000", "1000:1000 [50] Some(\"/home/app\")"),
            ("app:staff", "1000:50 [] Some(\"/home/app\")"),
            ("app:7", "1000:7 [50] Some(\"/home/app\")"),
            ("4242", "4242:0 [] None"),
            ("4242:4243", "4242:4243 [] None"),
            ("root", "0:0 [10] Some(\"/root\")"),
            (
                "appp",
                "error: user \"appp\" not found in the image's /etc/passwd",
            ),
            (
                "app:nogroup",
                "error: group \"nogroup\" not found in the image's /etc/group",
            ),
            (
                "app:",
                "error: \"app:\" is not a user: use name, uid, name:group or uid:gid",
            ),
        ];
        for (spec, expected) in cases {
            assert_eq!(show(spec), expected, "{spec}");
        }
    }

    #[test]
    fn a_missing_passwd_allows_only_numeric_users() {
        let dir = tempfile::tempdir().unwrap();
        let root = inroot::open_root(dir.path()).unwrap();
        assert_eq!(resolve(&root, "12:34").unwrap().uid, 12);
        let e = resolve(&root, "app").unwrap_err();
        assert!(e.contains("no /etc/passwd"), "{e}");
    }
}
