//! The pattern of CVE-2025-52881 (runc): the runtime writes sysctls
//! (`/proc/sys/...`) and `oom_score_adj` (`/proc/self/oom_score_adj`) through the
//! container's `/proc` by path, as root, before the container's program runs. When
//! `/proc` is a volume, or a file in it has something bound over it, those writes land
//! in whatever file is there: a host file. The runtime writes only into a file of the
//! kernel's procfs, reached from the root of a procfs mount without crossing a mount
//! or following a magic link, and refuses the container otherwise.

use oci_spec::runtime::Mount;

use crate::mounts_kit::TestBundle;

const REFUSED: &str = "not a file of the kernel's procfs";

/// A bundle whose /proc is a volume (a host directory) holding `rel`, a host file
/// with a known content.
fn with_proc_volume(tag: &str, rel: &str) -> (TestBundle, std::path::PathBuf) {
    let mut b = TestBundle::new(tag, "echo ran");
    let fake = b.path().join("procvol");
    let file = fake.join(rel);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, "host-original\n").unwrap();
    b.bind(&fake, "/proc", &["rbind"]);
    (b, file)
}

fn set_sysctl(b: &mut TestBundle, key: &str, value: &str) {
    b.linux()
        .set_sysctl(Some([(key.to_string(), value.to_string())].into()));
}

/// A sysctl written into a /proc volume: unfixed, the runtime writes "1" into the
/// host's file.
#[test]
fn a_sysctl_is_not_written_through_a_proc_volume() {
    let (mut b, file) = with_proc_volume("sysctl-vol", "sys/net/ipv4/ip_forward");
    set_sysctl(&mut b, "net.ipv4.ip_forward", "1");
    let (result, out) = b.run();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "host-original\n",
        "the runtime wrote a sysctl into a host file: {out}"
    );
    let err = result.expect_err(&format!("the container ran: {out}"));
    assert!(err.to_string().contains(REFUSED), "{err}");
    assert!(err.to_string().contains("net/ipv4/ip_forward"), "{err}");
}

/// A host file bound over the sysctl's file in the real procfs: unfixed, the write
/// goes through the bind into the host's file.
#[test]
fn a_sysctl_is_not_written_through_a_bind_over_its_file() {
    let host = tempfile::tempdir().unwrap();
    let file = host.path().join("target");
    std::fs::write(&file, "host-original\n").unwrap();
    let mut b = TestBundle::new("sysctl-bind", "echo ran");
    b.bind(&file, "/proc/sys/net/ipv4/ip_forward", &["bind"]);
    set_sysctl(&mut b, "net.ipv4.ip_forward", "1");
    let (result, out) = b.run();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "host-original\n",
        "the runtime wrote a sysctl into a host file: {out}"
    );
    let err = result.expect_err(&format!("the container ran: {out}"));
    assert!(err.to_string().contains(REFUSED), "{err}");
}

/// `oom_score_adj` written into a /proc volume: unfixed, "500" lands in the host's
/// file.
#[test]
fn oom_score_adj_is_not_written_through_a_proc_volume() {
    let (mut b, file) = with_proc_volume("oom-vol", "self/oom_score_adj");
    b.spec
        .process_mut()
        .as_mut()
        .unwrap()
        .set_oom_score_adj(Some(500));
    let (result, out) = b.run();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "host-original\n",
        "the runtime wrote oom_score_adj into a host file: {out}"
    );
    let err = result.expect_err(&format!("the container ran: {out}"));
    assert!(err.to_string().contains(REFUSED), "{err}");
    assert!(err.to_string().contains("oom_score_adj"), "{err}");
}

/// /proc as a symlink in the image (to a directory the image controls) with no /proc
/// mount: refused the same way.
#[test]
fn oom_score_adj_is_not_written_through_a_proc_symlink() {
    let mut b = TestBundle::new("oom-link", "echo ran");
    let fake = b.rootfs().join("fakeproc/self");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(fake.join("oom_score_adj"), "image-original\n").unwrap();
    let proc = b.rootfs().join("proc");
    let _ = std::fs::remove_dir(&proc);
    std::os::unix::fs::symlink("/fakeproc", &proc).unwrap();
    b.spec
        .mounts_mut()
        .as_mut()
        .unwrap()
        .retain(|m: &Mount| m.destination() != std::path::Path::new("/proc"));
    b.spec
        .process_mut()
        .as_mut()
        .unwrap()
        .set_oom_score_adj(Some(500));
    let (result, out) = b.run();
    assert_eq!(
        std::fs::read_to_string(fake.join("oom_score_adj")).unwrap(),
        "image-original\n",
        "{out}"
    );
    let err = result.expect_err(&format!("the container ran: {out}"));
    assert!(err.to_string().contains("oom_score_adj"), "{err}");
}

/// With the kernel's procfs at /proc, both writes happen (the checks refuse only what
/// is not procfs).
#[test]
fn sysctls_and_oom_score_adj_reach_the_real_procfs() {
    let mut b = TestBundle::new(
        "proc-ok",
        "echo forward=$(cat /proc/sys/net/ipv4/ip_forward) oom=$(cat /proc/self/oom_score_adj)",
    );
    set_sysctl(&mut b, "net.ipv4.ip_forward", "1");
    b.spec
        .process_mut()
        .as_mut()
        .unwrap()
        .set_oom_score_adj(Some(500));
    let out = b.output();
    assert!(out.contains("forward=1 oom=500"), "{out}");
}
