//! Layer unpacking on the real kernel, as root: every entry type, the tar-slip corpus
//! (each malicious layer must fail naming its entry and change nothing outside the
//! root), and whiteouts/opaque directories checked through a real overlayfs mount.
//!
//! Writes through a symlink (`a -> /etc` or `a -> ../../..`, then `a/passwd`) resolve
//! inside the layer, as Docker's unpacking does (it extracts in a chroot of the layer
//! directory): in one layer the write lands at `<root>/etc/passwd` or `<root>/passwd`;
//! across layers each layer is unpacked on its own, so the upper layer's `a/passwd`
//! makes a real directory `a` there, which hides the lower symlink in the overlay
//! (Docker's overlay2 gives the same tree). The host's `/etc/passwd` and `/passwd` are
//! checked, with a guard that restores them should the unpacker ever regress.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use agent::image::unpack::unpack;
use tar::{EntryType, Header};

/// One tar entry, with any path (including `..` and absolute ones, which the tar
/// crate's safe setters refuse: the raw header fields are written directly).
enum E<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Char(&'a str, u32, u32),
    Fifo(&'a str),
}

fn header(path: &str, kind: EntryType, size: u64, mode: u32) -> Header {
    let mut h = Header::new_gnu();
    let name = &mut h.as_old_mut().name;
    assert!(path.len() < name.len(), "test path too long: {path}");
    name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(1_600_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn link_header(path: &str, kind: EntryType, target: &str) -> Header {
    let mut h = header(path, kind, 0, 0o777);
    let link = &mut h.as_old_mut().linkname;
    link[..target.len()].copy_from_slice(target.as_bytes());
    h
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (mut h, data): (Header, &[u8]) = match e {
            E::File(p, data) => (
                header(p, EntryType::Regular, data.len() as u64, 0o644),
                data,
            ),
            E::Dir(p) => (header(p, EntryType::Directory, 0, 0o755), b""),
            E::Symlink(p, t) => (link_header(p, EntryType::Symlink, t), b""),
            E::Hard(p, t) => (link_header(p, EntryType::Link, t), b""),
            E::Char(p, major, minor) => {
                let mut h = header(p, EntryType::Char, 0, 0o666);
                h.set_device_major(*major)
                    .expect("building the test fixture");
                h.set_device_minor(*minor)
                    .expect("building the test fixture");
                (h, b"")
            }
            E::Fifo(p) => (header(p, EntryType::Fifo, 0, 0o600), b""),
        };
        h.set_cksum();
        b.append(&h, data).expect("building the test fixture");
    }
    b.into_inner().expect("building the test fixture")
}

/// A temp dir holding the unpack root and, next to it, sentinels a layer must not touch.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("building the test fixture");
        fs::create_dir(dir.path().join("root")).expect("building the test fixture");
        fs::write(dir.path().join("sentinel.txt"), "original").expect("building the test fixture");
        fs::create_dir(dir.path().join("outside")).expect("building the test fixture");
        fs::write(dir.path().join("outside/keep.txt"), "original")
            .expect("building the test fixture");
        Fixture { dir }
    }
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    fn abs(&self, rel: &str) -> String {
        self.dir
            .path()
            .join(rel)
            .to_str()
            .expect("building the test fixture")
            .to_string()
    }
    /// Everything outside the root: path -> (type, mode, size, mtime, content, xattrs).
    fn outside(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        snapshot(self.dir.path(), &self.root(), &mut out);
        // The fixture directory's own mtime changes whenever the test replaces `root`
        // in it; its mode and every entry below it are still compared.
        let meta = fs::symlink_metadata(self.dir.path()).expect("building the test fixture");
        out.insert(
            self.dir.path().to_path_buf(),
            format!("dir {:o}", meta.mode()),
        );
        out
    }
}

fn xattr_names(path: &Path) -> String {
    let c = std::ffi::CString::new(path.to_str().expect("building the test fixture"))
        .expect("test helper");
    let mut buf = vec![0u8; 4096];
    // SAFETY: c is NUL-terminated and buf is a writable buffer of buf.len() bytes.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return String::new();
    }
    String::from_utf8_lossy(&buf[..n as usize]).into_owned()
}

fn snapshot(dir: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let meta = fs::symlink_metadata(dir).expect("building the test fixture");
    out.insert(
        dir.to_path_buf(),
        format!(
            "dir {:o} {} {}",
            meta.mode(),
            meta.mtime(),
            xattr_names(dir)
        ),
    );
    for entry in fs::read_dir(dir).expect("building the test fixture") {
        let path = entry.expect("building the test fixture").path();
        if path == skip {
            continue;
        }
        let meta = fs::symlink_metadata(&path).expect("building the test fixture");
        if meta.is_dir() {
            snapshot(&path, skip, out);
        } else {
            let content = if meta.is_file() {
                fs::read_to_string(&path).expect("building the test fixture")
            } else {
                String::new()
            };
            out.insert(
                path.clone(),
                format!(
                    "{:o} {} {} {} {content} {}",
                    meta.mode(),
                    meta.len(),
                    meta.mtime(),
                    meta.nlink(),
                    xattr_names(&path)
                ),
            );
        }
    }
}

#[test]
fn tar_slip_corpus_fails_and_changes_nothing_outside() {
    let fx = Fixture::new();
    let sentinel = fx.abs("sentinel.txt");
    let outside = fx.abs("outside");
    let tmp = fx.abs("");
    let outside_opq = format!("{outside}/.wh..wh..opq");
    // (what it tries, entries, the entry the error must name, words the error must hold)
    let corpus: Vec<(&str, Vec<E>, &str, &str)> = vec![
        (
            "dot-dot file",
            vec![E::File("../sentinel.txt", b"pwned")],
            "../sentinel.txt",
            "'..'",
        ),
        (
            "dot-dot inside a path",
            vec![E::Dir("a/"), E::File("a/../../sentinel.txt", b"pwned")],
            "a/../../sentinel.txt",
            "'..'",
        ),
        (
            "dot-dot dir",
            vec![E::Dir("../outside/new/")],
            "../outside/new/",
            "'..'",
        ),
        (
            "absolute path",
            vec![E::File(&sentinel, b"pwned")],
            &sentinel,
            "absolute",
        ),
        (
            "write through an absolute symlink",
            vec![
                E::Symlink("esc", &outside),
                E::File("esc/keep.txt", b"pwned"),
            ],
            "esc/keep.txt",
            "not a directory inside the layer",
        ),
        (
            "write through a relative symlink",
            vec![
                E::Symlink("esc", "../outside"),
                E::File("esc/new.txt", b"pwned"),
            ],
            "esc/new.txt",
            "not a directory inside the layer",
        ),
        (
            "symlink chain out of the root",
            vec![
                E::Symlink("a", "b"),
                E::Symlink("b", "c/../../../../outside"),
                E::Dir("c/"),
                E::File("a/new.txt", b"pwned"),
            ],
            "a/new.txt",
            "not a directory inside the layer",
        ),
        (
            "directory through a symlink",
            vec![E::Symlink("esc", &tmp), E::Dir("esc/outside/evil/")],
            "esc/outside/evil/",
            "not a directory inside the layer",
        ),
        (
            "hard link to a host file",
            vec![E::Hard("h", &sentinel)],
            "h",
            "hard link target",
        ),
        (
            "hard link up and out",
            vec![E::Hard("h", "../sentinel.txt")],
            "h",
            "hard link target",
        ),
        (
            "hard link through a symlink",
            vec![E::Symlink("s", &tmp), E::Hard("h", "s/sentinel.txt")],
            "h",
            "hard link target",
        ),
        (
            "whiteout of ../x",
            vec![E::File("../.wh.sentinel.txt", b"")],
            "../.wh.sentinel.txt",
            "'..'",
        ),
        (
            "whiteout named ..",
            vec![E::File(".wh...", b"")],
            ".wh...",
            "whiteout of \"..\"",
        ),
        (
            "whiteout named .",
            vec![E::File(".wh..", b"")],
            ".wh..",
            "whiteout of \".\"",
        ),
        (
            "whiteout through a symlink",
            vec![
                E::Symlink("esc", &outside),
                E::File("esc/.wh.keep.txt", b""),
            ],
            "esc/.wh.keep.txt",
            "not a directory inside the layer",
        ),
        (
            "opaque marker outside",
            vec![E::File("../outside/.wh..wh..opq", b"")],
            "../outside/.wh..wh..opq",
            "'..'",
        ),
        (
            "opaque marker, absolute",
            vec![E::File(&outside_opq, b"")],
            &outside_opq,
            "absolute",
        ),
        (
            "opaque marker through a symlink",
            vec![
                E::Symlink("esc", &outside),
                E::File("esc/.wh..wh..opq", b""),
            ],
            "esc/.wh..wh..opq",
            "not a directory inside the layer",
        ),
        (
            "entry named . as a symlink",
            vec![E::Symlink(".", &outside)],
            ".",
            "layer root itself",
        ),
        (
            "entry named ./ as a file",
            vec![E::File("./", b"pwned")],
            "./",
            "layer root itself",
        ),
        (
            "device named .",
            vec![E::Char(".", 1, 3)],
            ".",
            "layer root itself",
        ),
        ("fifo named ..", vec![E::Fifo("..")], "..", "'..'"),
    ];
    let before = fx.outside();
    for (what, entries, entry, words) in corpus {
        let root = fx.root();
        let err = unpack(&tar_of(&entries)[..], &root).expect_err(what);
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("{entry:?}")),
            "{what}: error does not name {entry:?}: {msg}"
        );
        assert!(msg.contains(words), "{what}: error lacks {words:?}: {msg}");
        assert!(msg.chars().next().unwrap().is_lowercase(), "{what}: {msg}");
        assert_eq!(
            fx.outside(),
            before,
            "{what}: something outside the root changed"
        );
        // A fresh root for the next case.
        fs::remove_dir_all(&root).unwrap();
        fs::create_dir(&root).unwrap();
    }
    assert_eq!(fs::read_to_string(&sentinel).unwrap(), "original");
}

#[test]
fn later_entries_replace_symlinks_instead_of_following_them() {
    let fx = Fixture::new();
    let sentinel = fx.abs("sentinel.txt");
    let outside = fx.abs("outside");
    let before = fx.outside();
    let layer = tar_of(&[
        E::Symlink("f", &sentinel),
        E::File("f", b"inside"),
        E::Symlink("d", &outside),
        E::Dir("d/"),
        E::Symlink("w", &sentinel),
        E::File(".wh.w", b""),
    ]);
    unpack(&layer[..], &fx.root()).unwrap();
    assert_eq!(fs::read_to_string(fx.root().join("f")).unwrap(), "inside");
    assert!(fs::symlink_metadata(fx.root().join("d")).unwrap().is_dir());
    assert!(fs::symlink_metadata(fx.root().join("w"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(fx.outside(), before);
}

#[test]
fn unpacks_every_entry_type_with_metadata() {
    let fx = Fixture::new();
    let mut b = tar::Builder::new(Vec::new());
    fn add(b: &mut tar::Builder<Vec<u8>>, mut h: Header, data: &[u8]) {
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    add(&mut b, header("./", EntryType::Directory, 0, 0o755), b"");
    add(&mut b, header("bin/", EntryType::Directory, 0, 0o711), b"");
    let mut suid = header("bin/tool", EntryType::Regular, 5, 0o4755);
    suid.set_uid(1000);
    suid.set_gid(1001);
    suid.set_mtime(1_234_567_890);
    add(&mut b, suid, b"hello");
    add(
        &mut b,
        link_header("bin/link", EntryType::Symlink, "tool"),
        b"",
    );
    add(
        &mut b,
        link_header("bin/hard", EntryType::Link, "bin/tool"),
        b"",
    );
    add(
        &mut b,
        link_header("bin/abs-hard", EntryType::Link, "/bin/tool"),
        b"",
    );
    let mut null = header("dev/null", EntryType::Char, 0, 0o666);
    null.set_device_major(1).unwrap();
    null.set_device_minor(3).unwrap();
    add(&mut b, null, b"");
    add(&mut b, header("run/fifo", EntryType::Fifo, 0, 0o600), b"");
    b.append_pax_extensions([
        ("SCHILY.xattr.trusted.berth", &b"kept"[..]),
        ("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..]),
    ])
    .unwrap();
    add(
        &mut b,
        header("etc/conf", EntryType::Regular, 2, 0o640),
        b"ok",
    );
    let plain = b.into_inner().unwrap();

    let root = fx.root();
    let unpacked = unpack(&plain[..], &root).unwrap();
    assert_eq!(unpacked.diff_id, agent::image::Digest::of(&plain));

    let tool = fs::metadata(root.join("bin/tool")).unwrap();
    assert_eq!(fs::read(root.join("bin/tool")).unwrap(), b"hello");
    assert_eq!(tool.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(
        (tool.uid(), tool.gid(), tool.mtime()),
        (1000, 1001, 1_234_567_890)
    );
    assert_eq!(tool.nlink(), 3);
    assert_eq!(
        fs::metadata(root.join("bin/hard")).unwrap().ino(),
        tool.ino()
    );
    assert_eq!(
        fs::read_link(root.join("bin/link")).unwrap(),
        Path::new("tool")
    );
    assert_eq!(
        fs::metadata(root.join("bin")).unwrap().permissions().mode() & 0o777,
        0o711
    );
    assert_eq!(
        fs::metadata(root.join("bin")).unwrap().mtime(),
        1_600_000_000
    );
    let null = fs::metadata(root.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    assert!(fs::metadata(root.join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let attrs = xattr_names(&root.join("etc/conf"));
    assert!(attrs.contains("trusted.berth"), "{attrs:?}");
    assert!(
        !attrs.contains("trusted.overlay"),
        "a layer forged overlayfs metadata: {attrs:?}"
    );

    // The same layer compressed: same content, same diff_id.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let zst = zstd::encode_all(&plain[..], 3).unwrap();
    for compressed in [gz.finish().unwrap(), zst] {
        let dir = tempfile::tempdir().unwrap();
        let got = unpack(&compressed[..], dir.path()).unwrap();
        assert_eq!(got.diff_id, unpacked.diff_id);
        assert_eq!(fs::read(dir.path().join("bin/tool")).unwrap(), b"hello");
    }
}

/// Unmounts on drop, so a failing assertion leaves no mount behind.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn whiteouts_and_opaque_dirs_work_in_overlayfs() {
    let dir = tempfile::tempdir().unwrap();
    let (l1, l2, merged) = (
        dir.path().join("l1"),
        dir.path().join("l2"),
        dir.path().join("merged"),
    );
    for d in [&l1, &l2, &merged] {
        fs::create_dir(d).unwrap();
    }
    let layer1 = tar_of(&[
        E::Dir("etc/"),
        E::File("etc/keep", b"1"),
        E::File("etc/gone", b"1"),
        E::Dir("data/"),
        E::File("data/old", b"1"),
        E::File("data/sub/x", b"1"),
        E::Dir("var/"),
        E::File("var/log", b"1"),
    ]);
    let layer2 = tar_of(&[
        E::File("etc/.wh.gone", b""),
        E::Dir("data/"),
        E::File("data/.wh..wh..opq", b""),
        E::File("data/new", b"2"),
        E::File(".wh.var", b""),
        E::File("etc/keep", b"2"),
    ]);
    unpack(&layer1[..], &l1).unwrap();
    unpack(&layer2[..], &l2).unwrap();
    assert!(fs::symlink_metadata(l2.join("etc/gone"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert!(xattr_names(&l2.join("data")).contains("trusted.overlay.opaque"));

    let opts = format!("lowerdir={}:{}", l2.display(), l1.display());
    nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(opts.as_str()),
    )
    .unwrap_or_else(|e| panic!("mount -t overlay -o {opts}: {e}"));
    let _mount = Mount(merged.clone());

    let names = |d: &str| {
        let mut v: Vec<String> = fs::read_dir(merged.join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(""), ["data", "etc"]);
    assert_eq!(names("etc"), ["keep"]);
    assert_eq!(fs::read_to_string(merged.join("etc/keep")).unwrap(), "2");
    assert_eq!(names("data"), ["new"]);
    assert!(!merged.join("data/sub/x").exists());
}

/// Remembers a host file's content and puts it back on drop if a test changed it
/// (removes it if it did not exist), so a regression cannot damage the host.
struct HostFileGuard {
    path: PathBuf,
    before: Option<Vec<u8>>,
}

impl HostFileGuard {
    fn new(path: &str) -> HostFileGuard {
        HostFileGuard {
            path: PathBuf::from(path),
            before: fs::read(path).ok(),
        }
    }
    fn unchanged(&self) -> bool {
        fs::read(&self.path).ok() == self.before
    }
}

impl Drop for HostFileGuard {
    fn drop(&mut self) {
        if !self.unchanged() {
            match &self.before {
                Some(bytes) => {
                    let _ = fs::write(&self.path, bytes);
                }
                None => {
                    let _ = fs::remove_file(&self.path);
                }
            }
        }
    }
}

const PASSWD: &[u8] = b"root:x:0:0:root:/root:/bin/sh\n";

#[test]
fn writes_through_a_symlink_in_the_same_layer_stay_in_the_root() {
    let host_passwd = HostFileGuard::new("/etc/passwd");
    let host_root_passwd = HostFileGuard::new("/passwd");
    let fx = Fixture::new();
    let before = fx.outside();

    // a -> /etc: resolved in the root, the write replaces the layer's own etc/passwd.
    let layer = tar_of(&[
        E::Dir("etc/"),
        E::File("etc/passwd", PASSWD),
        E::Symlink("a", "/etc"),
        E::File("a/passwd", b"written through a\n"),
    ]);
    unpack(&layer[..], &fx.root()).unwrap();
    assert_eq!(
        fs::read(fx.root().join("etc/passwd")).unwrap(),
        b"written through a\n"
    );
    assert_eq!(
        fs::read_link(fx.root().join("a")).unwrap(),
        Path::new("/etc")
    );
    assert!(host_passwd.unchanged(), "the host's /etc/passwd changed");
    assert_eq!(fx.outside(), before);

    // a -> ../../..: `..` stops at the root, so a/passwd is <root>/passwd.
    fs::remove_dir_all(fx.root()).unwrap();
    fs::create_dir(fx.root()).unwrap();
    let layer = tar_of(&[
        E::Symlink("a", "../../.."),
        E::File("a/passwd", b"written through a\n"),
    ]);
    unpack(&layer[..], &fx.root()).unwrap();
    assert_eq!(
        fs::read(fx.root().join("passwd")).unwrap(),
        b"written through a\n"
    );
    assert!(host_root_passwd.unchanged(), "/passwd appeared on the host");
    assert!(host_passwd.unchanged());
    assert_eq!(fx.outside(), before);
}

#[test]
fn writes_through_a_lower_layers_symlink_stay_in_the_upper_layer() {
    let host_passwd = HostFileGuard::new("/etc/passwd");
    let host_root_passwd = HostFileGuard::new("/passwd");
    let fx = Fixture::new();
    let (lower, upper, merged) = (
        fx.root().join("lower"),
        fx.root().join("upper"),
        fx.root().join("merged"),
    );
    for d in [&lower, &upper, &merged] {
        fs::create_dir(d).unwrap();
    }
    let before = fx.outside();
    let layer1 = tar_of(&[
        E::Dir("etc/"),
        E::File("etc/passwd", PASSWD),
        E::Symlink("a", "/etc"),
        E::Symlink("up", "../../.."),
    ]);
    let layer2 = tar_of(&[
        E::File("a/passwd", b"pwned\n"),
        E::File("up/passwd", b"pwned\n"),
    ]);
    unpack(&layer1[..], &lower).unwrap();
    unpack(&layer2[..], &upper).unwrap();
    // The upper layer knows nothing of the lower one's symlinks: real directories.
    for d in ["a", "up"] {
        assert!(fs::symlink_metadata(upper.join(d)).unwrap().is_dir(), "{d}");
        assert_eq!(fs::read(upper.join(d).join("passwd")).unwrap(), b"pwned\n");
    }
    assert_eq!(fs::read(lower.join("etc/passwd")).unwrap(), PASSWD);

    let opts = format!("lowerdir={}:{}", upper.display(), lower.display());
    nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(opts.as_str()),
    )
    .unwrap_or_else(|e| panic!("mount -t overlay -o {opts}: {e}"));
    let mount = Mount(merged.clone());
    // In the image, the directory hides the symlink; the image's /etc/passwd is intact.
    assert_eq!(fs::read(merged.join("etc/passwd")).unwrap(), PASSWD);
    assert!(fs::symlink_metadata(merged.join("a")).unwrap().is_dir());
    assert_eq!(fs::read(merged.join("a/passwd")).unwrap(), b"pwned\n");
    assert!(!merged.join("passwd").exists());
    drop(mount);

    assert!(host_passwd.unchanged(), "the host's /etc/passwd changed");
    assert!(host_root_passwd.unchanged(), "/passwd appeared on the host");
    assert_eq!(fx.outside(), before);
}
