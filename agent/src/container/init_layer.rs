//! The init layer: the mount points every container has (`/proc`, `/dev`, `/sys`, and
//! for a container on a network `/etc/hosts` and `/etc/resolv.conf`), made once under
//! `<state>/init/` and shared, read-only, by every container as its **lowest** overlay
//! layer (Docker has a per-container "init layer" for the same reason).
//!
//! Why: an image without these paths (busybox-static, `scratch` images) otherwise has
//! the runtime create them in every container's rootfs, and each creation through
//! overlayfs is a copy-up plus a temporary file and a rename in the container's work
//! dir: six new inodes per container (and as many deleted at `down`). On ext4 without
//! a journal, every inode allocation scans past the inodes deleted in the last minute
//! (`recently_deleted`), so after a `down` these creations were about a tenth of the
//! CPU time of `up -d` of 50 services (`perf record -a -g`).
//!
//! Why the lowest layer is safe: every image layer sits above it, so whatever the
//! image has at these paths (a file, a symlink, a whiteout, an opaque directory) wins
//! exactly as before; the init layer only fills in what the image lacks, with what the
//! runtime would have created there (root-owned, directories 0755, empty files 0644).
//! A path it cannot provide (say `/etc` is a symlink in the image) the runtime still
//! creates, as before. Its content depends only on `network_files`, so there are two
//! of them at most.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `<state>/init/{base,net}`, made on first use: the lower dir to put under the
/// image's layers. `network_files`: the container gets `/etc/hosts` and
/// `/etc/resolv.conf` bind-mounted, so the layer has empty files there.
pub fn ensure(state_dir: &Path, network_files: bool) -> io::Result<PathBuf> {
    let parent = state_dir.join("init");
    let name = if network_files { "net" } else { "base" };
    let dir = parent.join(name);
    if dir.is_dir() {
        return Ok(dir);
    }
    fs::create_dir_all(&parent)?;
    // Built aside and renamed into place, so a layer in use is always complete; many
    // containers may start at once, hence a name of this thread's own.
    let tmp = parent.join(format!(
        ".{name}.{}.{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = fs::remove_dir_all(&tmp);
    let built = build(&tmp, network_files).and_then(|()| fs::rename(&tmp, &dir));
    match built {
        Ok(()) => Ok(dir),
        // Another thread (or process) renamed its own first: same content.
        Err(_) if dir.is_dir() => {
            let _ = fs::remove_dir_all(&tmp);
            Ok(dir)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
    // No fsync: after a power loss the layer may lack an entry (or be gone, and is
    // made again); the runtime then creates that mount point in the container's own
    // upper dir, as it does for any image. Nothing depends on it being durable.
}

fn build(root: &Path, network_files: bool) -> io::Result<()> {
    let mut dirs = fs::DirBuilder::new();
    dirs.mode(0o755);
    dirs.create(root)?;
    let mut subdirs = vec!["proc", "dev", "sys"];
    if network_files {
        subdirs.push("etc");
    }
    for d in subdirs {
        let p = root.join(d);
        dirs.create(&p)?;
        // Not the umask's choice: the runtime's mkdirat(0755) in a process whose
        // umask is 022 gives this.
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
    }
    fs::set_permissions(root, fs::Permissions::from_mode(0o755))?;
    if network_files {
        for f in ["etc/hosts", "etc/resolv.conf"] {
            let p = root.join(f);
            fs::File::create(&p)?;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_mount_points_and_is_made_once() {
        let tmp = tempfile::tempdir().unwrap();
        let base = ensure(tmp.path(), false).unwrap();
        for d in ["proc", "dev", "sys"] {
            let m = fs::symlink_metadata(base.join(d)).unwrap();
            assert!(m.is_dir(), "{d}");
            assert_eq!(m.permissions().mode() & 0o7777, 0o755, "{d}");
        }
        assert!(
            !base.join("etc").exists(),
            "no network files without a network"
        );

        let net = ensure(tmp.path(), true).unwrap();
        assert_ne!(net, base);
        for f in ["etc/hosts", "etc/resolv.conf"] {
            let m = fs::symlink_metadata(net.join(f)).unwrap();
            assert!(m.is_file() && m.len() == 0, "{f}");
            assert_eq!(m.permissions().mode() & 0o7777, 0o644, "{f}");
        }
        // The second call finds it, and leaves no temporary dir behind.
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        let before = inode(&net);
        assert_eq!(ensure(tmp.path(), true).unwrap(), net);
        assert_eq!(inode(&net), before);
        let names: Vec<_> = fs::read_dir(tmp.path().join("init"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn concurrent_first_uses_all_get_the_complete_layer() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| ensure(tmp.path(), true).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for d in &dirs {
            assert_eq!(d, &dirs[0]);
        }
        assert!(dirs[0].join("etc/resolv.conf").is_file());
        assert_eq!(fs::read_dir(tmp.path().join("init")).unwrap().count(), 1);
    }
}
