//! Class: host devices reached from a container on a cgroup v2 host (issue 17, item
//! 5: "mknod the host's disk and read or write it"; runc and crun close it with the
//! eBPF device filter). A default container keeps CAP_MKNOD and its /dev is a tmpfs without
//! `nodev` (device nodes live there, as in Docker): the device cgroup is the only
//! thing between it and the host's disk. v2 has no devices controller; berth attaches
//! an eBPF `CGROUP_DEVICE` program to each container's cgroup.
//!
//! This machine's hybrid layout enforces v1 device rules, so each test mounts a fresh
//! cgroup2 (the unified hierarchy, the same one every cgroup2 mount shows) in a
//! temporary directory and runs the container with a v2 [`Hierarchy`] rooted there:
//! the container is in no v1 devices cgroup of its own, and only the eBPF filter can
//! stop it. An attacker program then creates a node for the host's root disk and
//! tries to open it.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use agent::runtime::cgroups::{Cgroup, Hierarchy};
use agent::runtime::{self, Bundle, RunOptions, Stdio};
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

const ATTACKER: &str = r#"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

/* Prints "what=0" on success or "what=<errno>". */
static void report(const char *what, const char *name, int ok) {
    printf("%s_%s=%d\n", name, what, ok ? 0 : errno);
}

/* Makes a node for block device major:minor at /dev/<name>, then tries to read its
   first sector (reporting whether it holds the secret) and to open it for writing
   (never writing). */
static void attack_disk(const char *name, unsigned major, unsigned minor, const char *secret) {
    char path[64];
    snprintf(path, sizeof path, "/dev/%s", name);
    report("mknod", name, mknod(path, S_IFBLK | 0600, makedev(major, minor)) == 0);
    int fd = open(path, O_RDONLY);
    report("open_read", name, fd >= 0);
    if (fd >= 0) {
        char sector[512];
        ssize_t n = read(fd, sector, sizeof sector);
        report("read", name, n == (ssize_t)sizeof sector);
        printf("%s_secret=%d\n", name, n > 0 && memcmp(sector, secret, strlen(secret)) == 0);
        close(fd);
    }
    fd = open(path, O_WRONLY);
    report("open_write", name, fd >= 0);
    if (fd >= 0) close(fd);
}

static void try_open(const char *name, const char *path, int flags) {
    int fd = open(path, flags);
    report("open", name, fd >= 0);
    if (fd >= 0) close(fd);
}

/* argv: disk major minor secret root-major root-minor */
int main(int argc, char **argv) {
    if (argc != 6) return 2;
    attack_disk("disk", atoi(argv[1]), atoi(argv[2]), argv[3]);
    attack_disk("root", atoi(argv[4]), atoi(argv[5]), "");
    try_open("null", "/dev/null", O_RDWR);
    try_open("zero", "/dev/zero", O_RDONLY);
    try_open("urandom", "/dev/urandom", O_RDONLY);
    /* A character device the defaults do not allow: the kernel log. */
    report("mknod", "kmsg", mknod("/dev/kmsg", S_IFCHR | 0600, makedev(1, 11)) == 0);
    try_open("kmsg", "/dev/kmsg", O_RDONLY);
    return 0;
}
"#;

/// What a disk of the host holds, for the attacker to find.
const SECRET: &str = "berth-host-disk-secret";

/// A loop device over a temporary file whose first sector starts with [`SECRET`]:
/// a host disk the host itself can read (this machine refuses to open its root disk
/// even to root, so the root disk alone cannot show that the filter decides).
/// Detached when dropped.
struct LoopDisk {
    device: File,
    major: u32,
    minor: u32,
    _dir: tempfile::TempDir,
}

const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;

impl LoopDisk {
    fn new() -> LoopDisk {
        let dir = tempfile::tempdir().unwrap();
        let mut image = vec![0u8; 1 << 20];
        image[..SECRET.len()].copy_from_slice(SECRET.as_bytes());
        std::fs::write(dir.path().join("disk.img"), &image).unwrap();
        let backing = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.path().join("disk.img"))
            .unwrap();
        let control = File::open("/dev/loop-control").unwrap();
        // Another test may take the same free device first: then ask again.
        for _ in 0..20 {
            // SAFETY: a plain ioctl on an open descriptor, no pointer argument.
            let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
            assert!(n >= 0, "{}", std::io::Error::last_os_error());
            let minor = n as u32;
            // Our own node, in case /dev has none for a new device yet.
            let node = dir.path().join(format!("loop{minor}"));
            let _ = std::fs::remove_file(&node);
            nix::sys::stat::mknod(
                &node,
                nix::sys::stat::SFlag::S_IFBLK,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                nix::sys::stat::makedev(7, minor.into()),
            )
            .unwrap();
            let device = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&node)
                .unwrap();
            // SAFETY: LOOP_SET_FD takes the backing file's descriptor as its argument.
            let set = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_SET_FD, backing.as_raw_fd()) };
            if set == 0 {
                return LoopDisk {
                    device,
                    major: 7,
                    minor,
                    _dir: dir,
                };
            }
            let e = std::io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::EBUSY), "LOOP_SET_FD: {e}");
        }
        panic!("no free loop device");
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        // SAFETY: a plain ioctl on an open descriptor, no pointer argument.
        unsafe { libc::ioctl(self.device.as_raw_fd(), LOOP_CLR_FD) };
    }
}

/// A fresh cgroup2 mount in a temporary directory, unmounted when dropped.
struct Cgroup2Mount {
    dir: tempfile::TempDir,
}

impl Cgroup2Mount {
    fn new() -> Cgroup2Mount {
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("cgroup2"),
            dir.path(),
            Some("cgroup2"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        Cgroup2Mount { dir }
    }

    fn hierarchy(&self) -> Hierarchy {
        Hierarchy::V2 {
            root: self.dir.path().to_path_buf(),
        }
    }
}

impl Drop for Cgroup2Mount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The container's cgroup under that mount, removed when dropped (before the mount).
struct CgroupCleanup(Hierarchy, PathBuf);

impl Drop for CgroupCleanup {
    fn drop(&mut self) {
        let _ = Cgroup::open(&self.0, &self.1).delete();
    }
}

/// The host's root filesystem's block device (major, minor): the disk an escape
/// would read.
fn host_root_disk() -> (u32, u32) {
    let path = CString::new(Path::new("/").as_os_str().as_bytes()).unwrap();
    // SAFETY: a zeroed stat is a valid out-buffer; the path is a C string.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    assert_eq!(unsafe { libc::stat(path.as_ptr(), &mut st) }, 0);
    let (major, minor) = (libc::major(st.st_dev), libc::minor(st.st_dev));
    if major != 0 {
        return (major, minor);
    }
    // A root on a virtual filesystem (overlay, tmpfs): the first disk the kernel lists.
    let parts = std::fs::read_to_string("/proc/partitions").unwrap();
    parts
        .lines()
        .skip(2)
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.first()?.parse().ok()?, f.get(1)?.parse().ok()?))
        })
        .expect("no block device on this host")
}

/// How the attacker gets into the container.
#[derive(Clone, Copy, PartialEq)]
enum Entry {
    /// As the container's own program.
    Run,
    /// By `exec` into a running container (`berth exec`, health probes).
    Exec,
}

/// Runs the attacker in a container under a fresh cgroup2 mount, with the spec's
/// device rules `devices` (the default spec's when `None`), and returns its report.
fn attack(
    tag: &str,
    disk: &LoopDisk,
    devices: Option<Vec<LinuxDeviceCgroup>>,
    entry: Entry,
) -> BTreeMap<String, i32> {
    let (root_major, root_minor) = host_root_disk();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    testkit::busybox_rootfs(&rootfs).unwrap();
    testkit::static_c_program(&rootfs, "attacker", ATTACKER).unwrap();
    let args = [
        "/attacker".to_string(),
        disk.major.to_string(),
        disk.minor.to_string(),
        SECRET.to_string(),
        root_major.to_string(),
        root_minor.to_string(),
    ];
    let sleep = ["sleep".to_string(), "60".to_string()];
    let program: &[String] = if entry == Entry::Run { &args } else { &sleep };
    let mut spec = runtime::default_spec(Path::new("rootfs"), program).unwrap();
    let id = testkit::unique_name(tag);
    let linux = spec.linux_mut().as_mut().unwrap();
    linux.set_cgroups_path(Some(PathBuf::from(format!("/{id}"))));
    let resources = linux.resources_mut().as_mut().unwrap();
    // A fresh cgroup2 mount on a hybrid host has no controllers: no pids.max.
    resources.set_pids(None);
    if let Some(devices) = devices {
        resources.set_devices(Some(devices));
    }
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string(&spec).unwrap(),
    )
    .unwrap();

    let mount = Cgroup2Mount::new();
    let _cleanup = CgroupCleanup(mount.hierarchy(), PathBuf::from(&id));
    let out = File::create(dir.path().join("out")).unwrap();
    let stdio = Stdio {
        stdin: None,
        stdout: Some(out.as_fd()),
        stderr: Some(out.as_fd()),
    };
    let bundle = Bundle::load(dir.path()).unwrap();
    let report = match entry {
        Entry::Run => {
            let opts = RunOptions {
                hierarchy: Some(mount.hierarchy()),
                stdio,
                ..RunOptions::default()
            };
            runtime::run(&bundle, &id, &opts).unwrap()
        }
        Entry::Exec => {
            let opts = RunOptions {
                hierarchy: Some(mount.hierarchy()),
                ..RunOptions::default()
            };
            // Killed when dropped, at the end of this block.
            let container = runtime::spawn(&bundle, &id, &opts).unwrap();
            let target = runtime::ExecTarget {
                id: &id,
                pid: container.pid(),
                pid_start: runtime::start_time(container.pid()).unwrap(),
            };
            let exec = runtime::ExecOptions {
                args: args.to_vec(),
                stdio,
                hierarchy: Some(mount.hierarchy()),
                ..runtime::ExecOptions::default()
            };
            runtime::exec(&bundle, target, &exec)
                .unwrap()
                .wait()
                .unwrap()
        }
    };
    let text = std::fs::read_to_string(dir.path().join("out")).unwrap();
    assert_eq!(report.code, Some(0), "the attacker failed: {text}");
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn rule(
    allow: bool,
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut r = LinuxDeviceCgroup::default();
    r.set_allow(allow);
    r.set_typ(Some(typ));
    r.set_major(major);
    r.set_minor(minor);
    r.set_access(Some(access.to_string()));
    r
}

/// A default container may create a node for a host disk (Docker's defaults allow
/// `mknod` of any device) but cannot open it, for reading or writing, nor the host's
/// root disk nor the kernel log; the standard devices still work. With the filter not
/// attached it fails: the attacker opens the disk read-write and reads its secret.
/// (On this machine the root disk and /dev/kmsg refuse even the host's root, so only
/// the loop disk shows the filter at work; on most hosts the root disk would too.)
#[test]
fn default_container_cannot_open_a_host_disk_on_cgroup_v2() {
    let disk = LoopDisk::new();
    let r = attack("devv2-default", &disk, None, Entry::Run);
    let get = |k: &str| *r.get(k).unwrap_or_else(|| panic!("no {k} in {r:?}"));
    assert_eq!(
        get("disk_mknod"),
        0,
        "mknod is allowed, as in Docker: {r:?}"
    );
    assert_eq!(
        get("disk_open_read"),
        libc::EPERM,
        "the disk was opened: {r:?}"
    );
    assert!(!r.contains_key("disk_secret"), "the disk was read: {r:?}");
    assert_eq!(get("disk_open_write"), libc::EPERM, "{r:?}");
    assert_eq!(get("root_mknod"), 0, "{r:?}");
    assert_eq!(
        get("root_open_read"),
        libc::EPERM,
        "the root disk was opened: {r:?}"
    );
    assert_eq!(get("root_open_write"), libc::EPERM, "{r:?}");
    assert_eq!(get("kmsg_mknod"), 0, "{r:?}");
    assert_eq!(get("kmsg_open"), libc::EPERM, "/dev/kmsg was opened: {r:?}");
    for dev in ["null", "zero", "urandom"] {
        assert_eq!(
            get(&format!("{dev}_open")),
            0,
            "/dev/{dev} must work: {r:?}"
        );
    }
}

/// The filter decides, per device and per access: a spec that gives the container
/// the disk read-only lets it read the secret, and still not open the disk for
/// writing nor touch anything else.
#[test]
fn a_device_the_spec_allows_can_be_opened_on_cgroup_v2() {
    let disk = LoopDisk::new();
    let devices = vec![
        rule(false, LinuxDeviceType::A, None, None, "rwm"),
        rule(
            true,
            LinuxDeviceType::B,
            Some(disk.major.into()),
            Some(disk.minor.into()),
            "r",
        ),
    ];
    let r = attack("devv2-allowed", &disk, Some(devices), Entry::Run);
    let get = |k: &str| *r.get(k).unwrap_or_else(|| panic!("no {k} in {r:?}"));
    assert_eq!(get("disk_open_read"), 0, "{r:?}");
    assert_eq!(get("disk_secret"), 1, "{r:?}");
    assert_eq!(get("disk_open_write"), libc::EPERM, "{r:?}");
    assert_eq!(get("kmsg_open"), libc::EPERM, "{r:?}");
    assert_eq!(get("null_open"), 0, "{r:?}");
}

/// A process exec'd into the container (`berth exec`, a health probe) joins its
/// cgroup before it runs, and so its filter: the same attack fails the same way.
#[test]
fn an_exec_process_cannot_open_a_host_disk_on_cgroup_v2() {
    let disk = LoopDisk::new();
    let r = attack("devv2-exec", &disk, None, Entry::Exec);
    let get = |k: &str| *r.get(k).unwrap_or_else(|| panic!("no {k} in {r:?}"));
    assert_eq!(get("disk_mknod"), 0, "{r:?}");
    assert_eq!(
        get("disk_open_read"),
        libc::EPERM,
        "the disk was opened: {r:?}"
    );
    assert_eq!(get("disk_open_write"), libc::EPERM, "{r:?}");
    assert_eq!(get("null_open"), 0, "{r:?}");
}

/// Never unfiltered: a container whose device filter cannot be attached is refused,
/// with the step that failed, and nothing of it runs. A v2 "hierarchy" that is a plain
/// directory (holding the one file cgroup creation reads) makes the real
/// BPF_PROG_ATTACH fail after a real BPF_PROG_LOAD succeeded.
#[test]
fn a_container_whose_filter_cannot_be_attached_is_refused() {
    let fake_root = tempfile::tempdir().unwrap();
    std::fs::write(fake_root.path().join("cgroup.controllers"), "").unwrap();
    let dir = tempfile::tempdir().unwrap();
    testkit::busybox_rootfs(&dir.path().join("rootfs")).unwrap();
    let args = ["touch".to_string(), "/ran".to_string()];
    let mut spec = runtime::default_spec(Path::new("rootfs"), &args).unwrap();
    let id = testkit::unique_name("devv2-refused");
    let linux = spec.linux_mut().as_mut().unwrap();
    linux.set_cgroups_path(Some(PathBuf::from(format!("/{id}"))));
    linux.resources_mut().as_mut().unwrap().set_pids(None);
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string(&spec).unwrap(),
    )
    .unwrap();
    let opts = RunOptions {
        hierarchy: Some(Hierarchy::V2 {
            root: fake_root.path().to_path_buf(),
        }),
        ..RunOptions::default()
    };
    let e = runtime::run(&Bundle::load(dir.path()).unwrap(), &id, &opts)
        .expect_err("the container ran without its device filter")
        .to_string();
    assert!(
        e.contains("attach the device filter (bpf BPF_PROG_ATTACH)"),
        "{e}"
    );
    assert!(!dir.path().join("rootfs/ran").exists(), "the program ran");
    assert!(
        !fake_root.path().join(&id).exists(),
        "the refused cgroup is removed"
    );
}
