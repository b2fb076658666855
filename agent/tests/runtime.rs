//! The runtime on the real kernel, as root: each test builds a busybox bundle with the
//! default spec in a temporary directory, runs it through `agent::runtime::run`, and
//! checks what the container saw (its output) and how it ended.
//!
//! The library removes the container's cgroup and kills what is left of it even when
//! a run fails; `CgroupCleanup` repeats that when a test panics half-way. Mounts live
//! in the container's own mount namespace and vanish with it.

// The helpers below are test code too: a panic is how they report failure
// (clippy.toml allows unwrap in #[test] functions, not in the helpers they call).
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use agent::runtime::{self, Bundle, ExitReport, RunOptions, RuntimeError, Stdio};
use oci_spec::runtime::{
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceType, LinuxPidsBuilder, Mount, Spec,
};

/// A busybox bundle in a temporary directory, with its own container id.
struct TestBundle {
    dir: tempfile::TempDir,
    id: String,
    spec: Spec,
}

impl TestBundle {
    fn new(tag: &str, script: &str) -> TestBundle {
        let dir = tempfile::tempdir().unwrap();
        testkit::busybox_rootfs(&dir.path().join("rootfs")).unwrap();
        let args = ["sh".to_string(), "-c".to_string(), script.to_string()];
        let mut spec = runtime::default_spec(Path::new("rootfs"), &args).unwrap();
        let id = testkit::unique_name(tag);
        // A top-level cgroup of its own, removed by the test's guard: tests leave no
        // shared `berth/` parent behind.
        spec.linux_mut()
            .as_mut()
            .unwrap()
            .set_cgroups_path(Some(PathBuf::from(format!("/{id}"))));
        TestBundle { dir, id, spec }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self) {
        let json = serde_json::to_string_pretty(&self.spec).unwrap();
        std::fs::write(self.path().join("config.json"), json).unwrap();
    }

    /// Runs the container; returns how it ended and what it wrote to stdout and stderr.
    fn run(&self) -> (Result<ExitReport, RuntimeError>, String) {
        self.write();
        let _cleanup = testkit::CgroupGuard(self.id.clone());
        let out_path = self.path().join("output");
        let out = File::create(&out_path).unwrap();
        let bundle = Bundle::load(self.path()).unwrap();
        let opts = RunOptions {
            stdio: Stdio {
                stdin: None,
                stdout: Some(out.as_fd()),
                stderr: Some(out.as_fd()),
            },
            ..RunOptions::default()
        };
        let result = runtime::run(&bundle, &self.id, &opts);
        (result, std::fs::read_to_string(out_path).unwrap())
    }

    /// Runs the container and expects it to exit 0.
    fn output(&self) -> String {
        let (result, out) = self.run();
        let report = result.unwrap_or_else(|e| panic!("{e}\noutput:\n{out}"));
        assert_eq!(report.status(), 0, "output:\n{out}");
        out
    }

    fn linux(&mut self) -> &mut oci_spec::runtime::Linux {
        self.spec.linux_mut().as_mut().unwrap()
    }
}

#[test]
fn the_container_sees_only_its_own_processes_hostname_and_mounts() {
    let mut b = TestBundle::new(
        "isolation",
        "echo procs: $(ls /proc | grep -c '^[0-9]'); ps -o pid,args | tail -n +2; \
         echo host: $(hostname); cat /proc/self/mounts",
    );
    b.spec.set_hostname(Some("isolated-box".into()));
    let out = b.output();
    // sh (pid 1), the subshell, ls and grep: the host's processes are not there.
    let procs: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("procs: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    assert!((2..=5).contains(&procs), "{out}");
    assert!(
        out.lines().any(|l| l.trim_start().starts_with("1 sh -c")),
        "{out}"
    );
    assert!(out.contains("host: isolated-box\n"), "{out}");
    let mount_points: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| p.starts_with('/'))
        .collect();
    // /sys/fs/cgroup is the container's own cgroup (tests/security/cgroup_view.rs
    // checks that no other is visible), not the host's hierarchy.
    assert!(
        !mount_points
            .iter()
            .any(|p| p.starts_with("/sys/fs/cgroup/unified")),
        "the host's cgroup hierarchy is visible:\n{out}"
    );
    for host_only in ["/work", "/boot", "/run"] {
        assert!(
            !mount_points.iter().any(|p| p.starts_with(host_only)),
            "{host_only} visible:\n{out}"
        );
    }
    assert!(
        !out.contains(&b.path().display().to_string()),
        "bundle path leaked:\n{out}"
    );
}

#[test]
fn exit_codes_propagate() {
    let b = TestBundle::new("exit3", "exit 3");
    let (result, out) = b.run();
    let report = result.unwrap();
    assert_eq!((report.code, report.status()), (Some(3), 3), "{out}");
    assert!(!report.oom_killed);
}

#[test]
fn a_container_killed_by_a_signal_reports_128_plus_n() {
    let b = TestBundle::new("signal", "echo started; sleep 100");
    // The init of a pid namespace ignores every signal it has no handler for, except
    // SIGKILL sent from outside: find the container through its cgroup and kill it.
    // The container's own cgroup: under the pids controller (v1) or the unified root (v2).
    let candidates: Vec<PathBuf> = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
        .iter()
        .map(|root| PathBuf::from(root).join(&b.id).join("cgroup.procs"))
        .collect();
    let killer = std::thread::spawn(move || {
        for _ in 0..3000 {
            let text = candidates
                .iter()
                .find_map(|p| std::fs::read_to_string(p).ok());
            if let Some(text) = text {
                if let Some(pid) = text.lines().next().and_then(|l| l.parse::<i32>().ok()) {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    // SAFETY: sending a signal to a process id; no memory is involved.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    return true;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        false
    });
    let (result, out) = b.run();
    assert!(killer.join().unwrap(), "never saw the container's process");
    let report = result.unwrap();
    assert_eq!(report.signal, Some(libc::SIGKILL), "{out}");
    assert_eq!(report.status(), 137);
}

#[test]
fn a_memory_hog_is_oom_killed_and_reported() {
    let mut b = TestBundle::new(
        "oom",
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
    );
    let memory = LinuxMemoryBuilder::default()
        .limit(32i64 << 20)
        .build()
        .unwrap();
    b.linux()
        .resources_mut()
        .as_mut()
        .unwrap()
        .set_memory(Some(memory));
    let (result, out) = b.run();
    let report = result.unwrap();
    assert!(report.oom_killed, "{report:?} {out}");
    assert_ne!(report.status(), 0, "{out}");
    assert!(!out.contains("survived"), "{out}");
}

#[test]
fn a_fork_loop_cannot_exceed_the_pids_limit() {
    let mut b = TestBundle::new(
        "pids",
        "i=0; while [ $i -lt 40 ]; do sleep 60 & i=$((i+1)); echo started $i; done",
    );
    let pids = LinuxPidsBuilder::default().limit(10i64).build().unwrap();
    b.linux()
        .resources_mut()
        .as_mut()
        .unwrap()
        .set_pids(Some(pids));
    let (result, out) = b.run();
    let report = result.unwrap();
    // The shell (pid 1) counts: at most 9 more processes, then fork fails.
    let started = out
        .lines()
        .filter_map(|l| l.strip_prefix("started "))
        .filter_map(|n| n.trim().parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    assert!(
        started <= 9,
        "{started} processes started under a limit of 10:\n{out}"
    );
    assert!(out.contains("can't fork"), "{out}");
    assert_ne!(report.status(), 0, "{out}");
}

#[test]
fn the_default_container_is_hardened_like_docker() {
    let b = TestBundle::new(
        "hardened",
        "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; \
         for p in /proc/kcore /proc/keys /proc/timer_list; do \
           [ -e $p ] && echo masked $p $(cat $p | wc -c); done; \
         echo 1 > /proc/sys/kernel/domainname && echo sysctl-writable; \
         echo fds: $(ls /proc/self/fd | tr '\\n' ' ')",
    );
    let out = b.output();
    assert!(out.contains("CapEff:\t00000000a80425fb"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("masked /proc/keys 0"), "{out}");
    for line in out.lines().filter(|l| l.starts_with("masked ")) {
        assert!(line.ends_with(" 0"), "{line}");
    }
    assert!(!out.contains("sysctl-writable"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    // 0, 1, 2 and the directory ls itself opened.
    assert!(out.contains("fds: 0 1 2 3\n"), "{out}");
}

#[test]
fn a_bind_mount_onto_a_symlink_lands_inside_the_root() {
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("berth-sentinel"), "inside").unwrap();
    let mut b = TestBundle::new("symlink", "cat /etc/berth-sentinel; ls /etc");
    // In the image, /data points at /etc: an absolute symlink that, followed on the
    // host, would mount over the host's /etc.
    std::os::unix::fs::symlink("/etc", b.path().join("rootfs/data")).unwrap();
    let mut m = Mount::default();
    m.set_destination("/data".into());
    m.set_typ(Some("bind".into()));
    m.set_source(Some(source.path().to_path_buf()));
    m.set_options(Some(vec!["rbind".into(), "ro".into()]));
    b.spec.mounts_mut().as_mut().unwrap().push(m);
    let out = b.output();
    assert!(out.starts_with("inside"), "{out}");
    assert!(!Path::new("/etc/berth-sentinel").exists());
}

#[test]
fn rlimit_nofile_is_clamped_to_the_host_hard_limit() {
    let b = TestBundle::new("nofile", "echo soft $(ulimit -n) hard $(ulimit -Hn)");
    let out = b.output();
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    let want = lim.rlim_max.min(runtime::spec::DEFAULT_NOFILE);
    assert_eq!(out.trim(), format!("soft {want} hard {want}"), "{out}");
}

#[test]
fn joining_a_network_namespace_by_path() {
    let mut b = TestBundle::new("netns", "ls /sys/class/net | sort | tr '\\n' ' '");
    let mut ns = LinuxNamespace::default();
    ns.set_typ(LinuxNamespaceType::Network);
    ns.set_path(Some("/proc/self/ns/net".into()));
    let namespaces = b.linux().namespaces_mut().as_mut().unwrap();
    namespaces.retain(|n| n.typ() != LinuxNamespaceType::Network);
    namespaces.push(ns);
    let out = b.output();
    let mut host: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    host.sort();
    assert_eq!(out.trim(), host.join(" "));
}

/// In the host's UTS namespace (`uts: host`) a hostname would rename the host: refused.
#[test]
fn a_hostname_without_a_uts_namespace_of_its_own_is_refused() {
    let before = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let mut b = TestBundle::new("hostuts", "hostname");
    b.spec.set_hostname(Some("renamed-host".into()));
    let namespaces = b.linux().namespaces_mut().as_mut().unwrap();
    namespaces.retain(|n| n.typ() != LinuxNamespaceType::Uts);
    let (result, out) = b.run();
    let e = result.unwrap_err().to_string();
    assert!(e.contains("hostname needs a uts namespace"), "{e}\n{out}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        before
    );
    // Without a hostname it runs, with the host's name.
    b.spec.set_hostname(None);
    assert_eq!(b.output(), before);
}

/// A namespace joined by `/proc/<pid>/ns/...` must be the one of the process its owner
/// annotation names, with that start time: a recycled pid is refused.
#[test]
fn a_joined_namespace_of_a_gone_process_is_refused() {
    let me = std::process::id();
    let start = runtime::start_time(me as i32).unwrap();
    let mut b = TestBundle::new("joinowner", "true");
    let mut ns = LinuxNamespace::default();
    ns.set_typ(LinuxNamespaceType::Network);
    ns.set_path(Some(format!("/proc/{me}/ns/net").into()));
    let namespaces = b.linux().namespaces_mut().as_mut().unwrap();
    namespaces.retain(|n| n.typ() != LinuxNamespaceType::Network);
    namespaces.push(ns);
    let owner = format!("{}net", runtime::JOIN_OWNER_ANNOTATION);
    b.spec.set_annotations(Some(
        [(owner.clone(), format!("{me}:{}", start + 1))].into(),
    ));
    let (result, _) = b.run();
    let e = result.unwrap_err().to_string();
    assert!(e.contains("is gone"), "{e}");
    b.spec
        .set_annotations(Some([(owner, format!("{me}:{start}"))].into()));
    b.output();
}

#[test]
fn the_same_bundle_runs_under_runc() {
    if which("runc").is_none() {
        panic!("runc not found: install Debian's runc (.ci/run does)");
    }
    let mut b = TestBundle::new(
        "runc",
        "echo hello from $(hostname); grep CapEff /proc/self/status",
    );
    // runc does not clamp rlimits: give it what this host allows.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    let nofile = oci_spec::runtime::PosixRlimitBuilder::default()
        .typ(oci_spec::runtime::PosixRlimitType::RlimitNofile)
        .hard(lim.rlim_max)
        .soft(lim.rlim_max)
        .build()
        .unwrap();
    b.spec
        .process_mut()
        .as_mut()
        .unwrap()
        .set_rlimits(Some(vec![nofile]));
    b.write();
    let state = b.path().join("runc-state");
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(&state)
        .args(["run", "--bundle"])
        .arg(b.path())
        .arg(&b.id)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let _ = std::process::Command::new("runc")
        .arg("--root")
        .arg(&state)
        .args(["delete", "--force", &b.id])
        .output();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "runc failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("hello from berth"), "{text}");
    assert!(text.contains("CapEff:\t00000000a80425fb"), "{text}");
}

#[test]
fn unsupported_fields_fail_clearly() {
    let mut b = TestBundle::new("apparmor", "true");
    b.spec
        .process_mut()
        .as_mut()
        .unwrap()
        .set_apparmor_profile(Some("docker-default".to_string()));
    b.write();
    let err = Bundle::load(b.path()).unwrap_err().to_string();
    assert!(err.contains("process.apparmorProfile"), "{err}");
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

#[test]
fn a_container_with_a_terminal_gets_a_pty_of_its_own_devpts() {
    // `read` proves input reaches it; the echo after it, that output comes back.
    let mut b = TestBundle::new(
        "terminal",
        "tty; stty size; read line; echo got=$line; echo owner=$(stat -c %u:%g $(tty))",
    );
    // A user other than root owns its terminal.
    let mut user = oci_spec::runtime::User::default();
    user.set_uid(1000);
    user.set_gid(1000);
    b.spec.process_mut().as_mut().unwrap().set_user(user);
    b.spec
        .process_mut()
        .as_mut()
        .unwrap()
        .set_terminal(Some(true));
    b.spec
        .process_mut()
        .as_mut()
        .unwrap()
        .set_console_size(Some(
            oci_spec::runtime::BoxBuilder::default()
                .height(33u64)
                .width(101u64)
                .build()
                .unwrap(),
        ));
    b.write();
    let _cleanup = testkit::CgroupGuard(b.id.clone());
    let bundle = Bundle::load(b.path()).unwrap();
    let mut container = runtime::spawn(&bundle, &b.id, &RunOptions::default()).unwrap();
    let master = container.take_console().expect("a terminal");
    let mut term = File::from(master);
    term.write_all(b"hello-tty\n").unwrap();
    let mut out = Vec::new();
    // EIO once the last process on the terminal is gone.
    let _ = term.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).to_string();
    let report = container.wait().unwrap();
    assert_eq!(report.code, Some(0), "{out}");
    // The slave is in the container's own devpts instance (the host's has many).
    assert!(out.contains("/dev/pts/0"), "{out}");
    assert!(out.contains("33 101"), "{out}");
    assert!(out.contains("got=hello-tty"), "{out}");
    assert!(out.contains("owner=1000:1000"), "{out}");
}

#[test]
fn spawn_returns_once_the_program_runs_and_wait_reports_and_cleans_up() {
    let b = TestBundle::new(
        "spawn",
        "while [ ! -e /tmp/go ]; do sleep 0.01; done; exit 7",
    );
    b.write();
    let _cleanup = testkit::CgroupGuard(b.id.clone());
    let bundle = Bundle::load(b.path()).unwrap();
    let container = runtime::spawn(&bundle, &b.id, &RunOptions::default()).unwrap();
    let pid = container.pid();
    // spawn returned after execve: the process is busybox, not a copy of this test.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(exe.ends_with("busybox"), "{exe:?}");
    let cgroup = Path::new("/sys/fs/cgroup/pids").join(&b.id);
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
    std::fs::write(format!("/proc/{pid}/root/tmp/go"), "").unwrap();
    let report = container.wait().unwrap();
    assert_eq!((report.code, report.signal), (Some(7), None));
    assert!(!cgroup.exists());
}

#[test]
fn a_user_namespace_maps_root_inside_to_an_unprivileged_uid_outside() {
    use oci_spec::runtime::LinuxIdMappingBuilder;
    let mut b = TestBundle::new(
        "userns",
        "cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g; stat -c %u /bin/busybox; \
         echo ready; while [ ! -e /tmp/go ]; do sleep 0.01; done",
    );
    let map = || {
        vec![LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(100_000u32)
            .size(65_536u32)
            .build()
            .unwrap()]
    };
    let linux = b.linux();
    let mut namespaces = linux.namespaces().clone().unwrap();
    namespaces.push(
        oci_spec::runtime::LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::User)
            .build()
            .unwrap(),
    );
    linux.set_namespaces(Some(namespaces));
    linux.set_uid_mappings(Some(map()));
    linux.set_gid_mappings(Some(map()));
    b.write();
    let _cleanup = testkit::CgroupGuard(b.id.clone());
    let out_path = b.path().join("output");
    let out = File::create(&out_path).unwrap();
    let bundle = Bundle::load(b.path()).unwrap();
    let opts = RunOptions {
        stdio: Stdio {
            stdin: None,
            stdout: Some(out.as_fd()),
            stderr: Some(out.as_fd()),
        },
        ..RunOptions::default()
    };
    let container = runtime::spawn(&bundle, &b.id, &opts).unwrap();
    let pid = container.pid();
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&out_path)
        .unwrap()
        .contains("ready")
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "{}",
            std::fs::read_to_string(&out_path).unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Seen from the host, the container's root is uid 100000, not root.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().collect::<Vec<_>>(),
        ["Uid:", "100000", "100000", "100000", "100000"]
    );
    // exec joins the user namespace too: root inside, uid 100000 outside.
    let exec_out_path = b.path().join("exec-output");
    let exec_out = File::create(&exec_out_path).unwrap();
    let target = runtime::ExecTarget {
        id: &b.id,
        pid,
        pid_start: runtime::start_time(pid).unwrap(),
    };
    let exec_opts = runtime::ExecOptions {
        args: vec![
            "sh".into(),
            "-c".into(),
            "id -u; grep Uid /proc/self/uid_map /proc/self/status".into(),
        ],
        stdio: Stdio {
            stdin: None,
            stdout: Some(exec_out.as_fd()),
            stderr: Some(exec_out.as_fd()),
        },
        ..runtime::ExecOptions::default()
    };
    let p = runtime::exec(&bundle, target, &exec_opts).unwrap();
    let exec_pid = p.pid();
    let host_view = std::fs::read_to_string(format!("/proc/{exec_pid}/status")).unwrap_or_default();
    assert_eq!(p.wait().unwrap().status(), 0);
    let exec_text = std::fs::read_to_string(&exec_out_path).unwrap();
    assert!(exec_text.starts_with("0\n"), "{exec_text}");
    if let Some(uid) = host_view.lines().find(|l| l.starts_with("Uid:")) {
        assert!(uid.contains("100000"), "{uid}");
    }
    std::fs::write(format!("/proc/{pid}/root/tmp/go"), "").unwrap();
    let report = container.wait().unwrap();
    let text = std::fs::read_to_string(&out_path).unwrap();
    assert_eq!(report.status(), 0, "{text}");
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    // Inside: the mapping, root, and the host's root-owned files as the overflow uid.
    assert_eq!(lines[0], ["0", "100000", "65536"], "{text}");
    assert_eq!(lines[1], ["0", "100000", "65536"], "{text}");
    assert_eq!(lines[2], ["0"], "{text}");
    assert_eq!(lines[3], ["0"], "{text}");
    assert_eq!(lines[4], ["65534"], "{text}");
}
