//! File operations inside a root filesystem that comes from an image: every path is
//! resolved with `openat2(RESOLVE_IN_ROOT)` from the root's directory fd, so absolute
//! symlinks and `..` in the image stay inside it, and trees are walked from directory
//! fds one name at a time with no symlink followed.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use nix::unistd::{Gid, Uid};

/// The directory fd a root's paths are resolved from.
pub fn open_root(root: &Path) -> io::Result<OwnedFd> {
    nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
}

/// `path` (absolute or relative, as in the container) without its leading `/`.
fn relative(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::RootDir))
        .collect()
}

/// Opens `path` as the container would see it: resolved inside `root`.
pub fn open(root: impl AsFd, path: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    let rel = relative(path);
    let rel = if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel
    };
    let root = root.as_fd();
    let how = || {
        OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
    };
    // The kernel answers EAGAIN when a rename or mount anywhere on the system raced
    // with a `..` in the path (it cannot then prove the walk stayed inside): retry.
    let mut attempts = 0;
    loop {
        match openat2(root, &rel, how()) {
            Err(Errno::EAGAIN) if attempts < 128 => attempts += 1,
            result => return result,
        }
    }
}

/// Reads the regular file `path` inside `root`, at most `limit` bytes; `None` if it
/// does not exist. A FIFO or device there is refused (opened non-blocking, then
/// checked), so an image cannot make the agent hang or read a host device.
pub fn read_file(root: impl AsFd, path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let fd = match open(
        root,
        path,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let file = std::fs::File::from(fd);
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a regular file", path.display()),
        ));
    }
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// Creates the directory `path` inside `root` and its missing parents (owned by root,
/// mode 0755), like `mkdir -p` run in the container; an existing one is kept.
pub fn mkdir_all(root: impl AsFd, path: &Path) -> io::Result<()> {
    let root = root.as_fd();
    let mut prefix = PathBuf::new();
    for comp in relative(path).components() {
        let Component::Normal(name) = comp else {
            // `.` and `..` are resolved by openat2 on the way; they create nothing.
            prefix.push(comp);
            continue;
        };
        let parent = open(root, &prefix, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
        prefix.push(name);
        match open(root, &prefix, OFlag::O_PATH | OFlag::O_DIRECTORY) {
            Ok(_) => continue,
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
        // A single name in a directory fd: mkdirat does not follow a final symlink.
        match nix::sys::stat::mkdirat(&parent, name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
        open(root, &prefix, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
    }
    Ok(())
}

/// Copies the directory tree of `src` into the (empty) directory `dst`, keeping
/// modes, owners and symlinks as they are (never following one), as Docker seeds a new
/// volume from the image. Devices, FIFOs and sockets are skipped.
pub fn copy_tree(src: impl AsFd, dst: impl AsFd) -> io::Result<()> {
    let (src, dst) = (src.as_fd(), dst.as_fd());
    let read_fd = nix::fcntl::openat(
        src,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut dir = nix::dir::Dir::from_fd(read_fd)?;
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    for name in names {
        let st = fstatat(src, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
        let mode = Mode::from_bits_truncate(st.st_mode & 0o7777);
        let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        let owner = (
            Some(Uid::from_raw(st.st_uid)),
            Some(Gid::from_raw(st.st_gid)),
        );
        let nofollow = OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        if kind == SFlag::S_IFDIR {
            nix::sys::stat::mkdirat(dst, name.as_os_str(), Mode::from_bits_truncate(0o700))?;
            let from = nix::fcntl::openat(
                src,
                name.as_os_str(),
                OFlag::O_PATH | OFlag::O_DIRECTORY | nofollow,
                Mode::empty(),
            )?;
            let to = nix::fcntl::openat(
                dst,
                name.as_os_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | nofollow,
                Mode::empty(),
            )?;
            copy_tree(&from, &to)?;
            nix::unistd::fchown(&to, owner.0, owner.1)?;
            nix::sys::stat::fchmod(&to, mode)?;
        } else if kind == SFlag::S_IFREG {
            let from = nix::fcntl::openat(
                src,
                name.as_os_str(),
                OFlag::O_RDONLY | nofollow,
                Mode::empty(),
            )?;
            let to = nix::fcntl::openat(
                dst,
                name.as_os_str(),
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | nofollow,
                Mode::from_bits_truncate(0o600),
            )?;
            let (mut from, mut to) = (std::fs::File::from(from), std::fs::File::from(to));
            io::copy(&mut from, &mut to)?;
            nix::unistd::fchown(&to, owner.0, owner.1)?;
            nix::sys::stat::fchmod(&to, mode)?;
        } else if kind == SFlag::S_IFLNK {
            let target = nix::fcntl::readlinkat(src, name.as_os_str())?;
            nix::unistd::symlinkat(target.as_os_str(), dst, name.as_os_str())?;
            nix::unistd::fchownat(
                dst,
                name.as_os_str(),
                owner.0,
                owner.1,
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )?;
        }
    }
    Ok(())
}
