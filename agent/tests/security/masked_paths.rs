//! CVE-2025-31133 (runc): masking binds `/dev/null` over each masked file after
//! `pivot_root`. When the container's `/dev` comes from the image or a volume (not the
//! runtime's own tmpfs), its `null` can be a symlink to a host file the container can
//! reach (`/proc/sys/kernel/core_pattern`, or a file of a volume), and every masked
//! path would become a writable bind of that file. The runtime opens `/dev/null` once
//! without following symlinks, checks it is the character device 1:3 and binds it by
//! descriptor; anything else refuses the container.

use std::os::unix::fs::symlink;
use std::path::Path;

use crate::mounts_kit::TestBundle;

/// The message that names the refused step.
const REFUSED: &str = "/dev/null is not the null device";

/// A bundle whose /dev is a bind of a host directory (a volume seeded from the image)
/// holding `null` as made by `make_null`.
fn with_dev_volume(tag: &str, script: &str, make_null: impl FnOnce(&Path)) -> TestBundle {
    let mut b = TestBundle::new(tag, script);
    let dev = b.path().join("devvol");
    std::fs::create_dir(&dev).unwrap();
    make_null(&dev.join("null"));
    b.bind(&dev, "/dev", &["rbind"]);
    b
}

/// CVE-2025-31133, write shape: `dev/null -> /vol/target`, where /vol is a volume (a
/// host directory). Unfixed, `echo > /proc/keys` writes the host's file.
#[test]
fn a_dev_null_symlink_cannot_turn_masked_paths_into_writable_binds_of_a_host_file() {
    let host = tempfile::tempdir().unwrap();
    let target = host.path().join("target");
    std::fs::write(&target, "host-original\n").unwrap();
    let mut b = with_dev_volume(
        "mask-write",
        "for p in /proc/keys /proc/timer_list /proc/kcore; do echo pwned > $p; done; \
         cat /proc/keys",
        |null| symlink("/vol/target", null).unwrap(),
    );
    b.bind(host.path(), "/vol", &["rbind"]);
    let (result, out) = b.run();
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "host-original\n",
        "the container wrote the host's file through a masked path: {out}"
    );
    let err = result.expect_err(&format!("the container ran: {out}"));
    assert!(err.to_string().contains(REFUSED), "{err}");
    assert!(err.to_string().contains("mask /proc/"), "{err}");
}

/// CVE-2025-31133, as published: `dev/null -> /proc/sys/kernel/core_pattern`. Unfixed,
/// every masked file reads (and would write) the host's core_pattern; this attacker
/// only reads it, so the host is safe even where the hole is open.
#[test]
fn a_dev_null_symlink_to_core_pattern_is_refused() {
    let before = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let b = with_dev_volume(
        "mask-core",
        "echo keys=$(cat /proc/keys); echo timers=$(cat /proc/timer_list)",
        |null| symlink("/proc/sys/kernel/core_pattern", null).unwrap(),
    );
    let (result, out) = b.run();
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        before
    );
    assert!(
        !out.contains(&format!("keys={}", before.trim())),
        "a masked file read the host's core_pattern: {out}"
    );
    let err = result.expect_err(&format!("the container ran: {out}"));
    assert!(err.to_string().contains(REFUSED), "{err}");
}

/// Not a symlink but the wrong file: a regular file, or another character device
/// (`zero`, 1:5), where `null` should be. Both are refused before anything is bound.
#[test]
fn a_dev_null_that_is_not_the_null_device_is_refused() {
    type MakeNull = fn(&Path);
    let cases: [(&str, MakeNull); 2] = [
        ("mask-file", |null| {
            std::fs::write(null, "not a device").unwrap()
        }),
        ("mask-zero", |null| {
            nix::sys::stat::mknod(
                null,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(1, 5),
            )
            .unwrap()
        }),
    ];
    for (tag, make) in cases {
        let b = with_dev_volume(tag, "echo ran", make);
        let (result, out) = b.run();
        let err = result.expect_err(&format!("{tag}: the container ran: {out}"));
        assert!(err.to_string().contains(REFUSED), "{tag}: {err}");
    }
}

/// The default container (its /dev the runtime's tmpfs with the host's null device
/// bound in) still masks: masked files are the null device, masked directories empty
/// and read-only.
#[test]
fn default_masks_are_the_null_device_and_empty_read_only_directories() {
    let b = TestBundle::new(
        "mask-default",
        "echo keys=$(stat -c %t:%T /proc/keys) size=$(cat /proc/keys | wc -c); \
         for d in /proc/acpi /sys/firmware; do [ -d $d ] || continue; \
           echo $d entries=$(ls -A $d | wc -l); touch $d/x 2>/dev/null && echo $d writable; done; \
         true",
    );
    let out = b.output();
    assert!(out.contains("keys=1:3 size=0"), "{out}");
    assert!(out.contains("/sys/firmware entries=0"), "{out}");
    assert!(!out.contains("writable"), "{out}");
}
