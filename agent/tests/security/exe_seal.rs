//! CVE-2019-5736 (runc's host binary overwrite): no process berth puts into a
//! container reaches a writable host binary through `/proc/PID/exe`.
//!
//! The attack: a container process opens `/proc/PID/exe` of a process berth runs in
//! the container (berth's init as PID 1, a probe or exec before its execve, or the
//! host binary run inside as the interpreter of a `#!/proc/self/exe` script), keeps
//! the descriptor, and writes the binary through `/proc/self/fd/N` once nothing runs
//! it any more: the next run of it on the host is the attacker's, as root.
//!
//! Each test starts its container under a private copy of `berth-shim` (never the
//! binary in use) that is not sealed on disk, so that the copy's identity and bytes
//! are what the attacker must not reach. The container gets CAP_SYS_PTRACE where the
//! test is about the seal itself (non-dumpability alone would otherwise hide the
//! file); without it, the process must not be openable at all.
//!
//! Also the fixture for `exec_fds.rs` and `exec_tty.rs`: [`Target`], a running busybox
//! container with the static attacker (`attacker.c`) at `/attacker`.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use agent::runtime::{self, ExitReport};
use agent::shim::{self, CreateOptions, ExecRequest, ExecSession, ExecStdio, ShimProgram};
use oci_spec::runtime::Capability;

/// The static attacker, compiled once per test process.
pub fn attacker() -> &'static Path {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("security-attacker-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        testkit::static_c_program(&dir, "attacker", include_str!("attacker.c")).unwrap()
    })
}

/// `key=value` lines of the attacker's report: the value of the first `key`.
pub fn field<'a>(report: &'a str, key: &str) -> Option<&'a str> {
    report
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// What a test container looks like.
#[derive(Default)]
pub struct Options {
    /// berth's init as PID 1 (Compose's `init: true`).
    pub init: bool,
    /// Capabilities beyond Docker's default set.
    pub extra_caps: Vec<Capability>,
    /// The host's dynamic loader and C library in the rootfs, so that a host binary
    /// (berth-shim) can run inside, as it would in a glibc-based image.
    pub glibc: bool,
    /// Files to add: (path in the rootfs, contents, mode).
    pub files: Vec<(&'static str, Vec<u8>, u32)>,
}

/// A running container under a private, unsealed copy of berth-shim.
pub struct Target {
    pub id: String,
    /// The exec helper's program: a sealed copy of `shim_copy`.
    pub program: ShimProgram,
    /// The copy of berth-shim on disk that the shim was started from (unsealed: it
    /// seals itself) and the exec helper's sealed copy was made of.
    pub shim_copy: PathBuf,
    state: tempfile::TempDir,
    out: tempfile::TempDir,
    _cgroup: testkit::CgroupGuard,
    _bundle: tempfile::TempDir,
    _shim_dir: tempfile::TempDir,
}

impl Target {
    pub fn start(tag: &str, opts: Options) -> Target {
        let shim_dir = tempfile::tempdir().unwrap();
        let shim_copy = shim_dir.path().join("berth-shim");
        std::fs::copy(env!("CARGO_BIN_EXE_berth-shim"), &shim_copy).unwrap();

        let bundle = tempfile::tempdir().unwrap();
        let root = bundle.path().join("rootfs");
        testkit::busybox_rootfs(&root).unwrap();
        std::fs::copy(attacker(), root.join("attacker")).unwrap();
        if opts.glibc {
            copy_libraries(&shim_copy, &root);
        }
        for (path, contents, mode) in &opts.files {
            let p = root.join(path.trim_start_matches('/'));
            std::fs::write(&p, contents).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        let args = ["sleep".to_string(), "1000".to_string()];
        let mut spec = runtime::default_spec(Path::new("rootfs"), &args).unwrap();
        let id = testkit::unique_name(tag);
        spec.linux_mut()
            .as_mut()
            .unwrap()
            .set_cgroups_path(Some(PathBuf::from(format!("/{id}"))));
        if opts.init {
            spec.set_annotations(Some(
                [(runtime::INIT_ANNOTATION.to_string(), "true".to_string())].into(),
            ));
        }
        if !opts.extra_caps.is_empty() {
            let process = spec.process_mut().as_mut().unwrap();
            let mut caps = process.capabilities().clone().unwrap();
            let add = |set: Option<oci_spec::runtime::Capabilities>| {
                let mut set = set.unwrap_or_default();
                set.extend(opts.extra_caps.iter().copied());
                Some(set)
            };
            caps.set_bounding(add(caps.bounding().clone()));
            caps.set_effective(add(caps.effective().clone()));
            caps.set_permitted(add(caps.permitted().clone()));
            process.set_capabilities(Some(caps));
        }
        std::fs::write(
            bundle.path().join("config.json"),
            serde_json::to_string(&spec).unwrap(),
        )
        .unwrap();
        // The shim starts from the plain copy (and must seal itself); execs go through
        // a sealed one, as the daemon's and the CLI's do.
        let plain = ShimProgram::new(shim_copy.clone(), Vec::new());
        let target = Target {
            id: id.clone(),
            program: plain.clone().sealed().unwrap(),
            shim_copy,
            state: tempfile::tempdir().unwrap(),
            out: tempfile::tempdir().unwrap(),
            _cgroup: testkit::CgroupGuard(id),
            _bundle: bundle,
            _shim_dir: shim_dir,
        };
        let create = CreateOptions::new(plain);
        shim::create(
            target.state.path(),
            target._bundle.path(),
            &target.id,
            &create,
        )
        .unwrap();
        target
    }

    pub fn state(&self) -> &Path {
        self.state.path()
    }

    /// Runs `args` in the container through the exec helper; returns how it ended and
    /// what it wrote (stdout and stderr).
    pub fn exec(&self, args: &[&str]) -> (ExitReport, String) {
        let path = self.out.path().join(format!("out-{}", rand_suffix()));
        let out = File::create(&path).unwrap();
        let session = self.start_exec(
            args,
            ExecStdio {
                stdin: None,
                stdout: Some(out.as_fd()),
                stderr: Some(out.as_fd()),
            },
        );
        let report = session.wait().unwrap();
        (report, std::fs::read_to_string(path).unwrap())
    }

    pub fn start_exec(&self, args: &[&str], stdio: ExecStdio) -> ExecSession {
        let req = ExecRequest {
            args: args.iter().map(|a| a.to_string()).collect(),
            timeout_ms: Some(60_000),
            ..ExecRequest::default()
        };
        shim::exec(&self.program, self.state(), &self.id, &req, stdio).unwrap()
    }

    /// The container's first process, as seen from the host.
    pub fn init_pid(&self) -> i32 {
        shim::state(self.state(), &self.id).unwrap().pid.unwrap()
    }

    /// The first 64 KiB and the length of the shim's copy on disk: what an overwrite
    /// (the exploit writes the ELF header) would change.
    pub fn shim_fingerprint(&self) -> (Vec<u8>, u64) {
        let bytes = std::fs::read(&self.shim_copy).unwrap();
        (
            bytes[..bytes.len().min(64 * 1024)].to_vec(),
            bytes.len() as u64,
        )
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Ok(s) = shim::state(self.state(), &self.id) {
            let _ = shim::kill(self.state(), &self.id, libc::SIGKILL);
            let _ = shim::wait(self.state(), &self.id, Some(Duration::from_secs(10)));
            if s.shim_pid > 0 {
                // SAFETY: signalling the shim this test started, if it is still there.
                unsafe { libc::kill(s.shim_pid, libc::SIGKILL) };
            }
        }
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Copies the shared libraries `program` needs (as `ldd` lists them) into `root` at
/// the same paths.
fn copy_libraries(program: &Path, root: &Path) {
    let out = std::process::Command::new("ldd")
        .arg(program)
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        if let Some(path) = path {
            let dest = root.join(path.strip_prefix("/").unwrap());
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(&path, &dest).unwrap();
        }
    }
}

/// Asserts that what the attacker's `try_exe` reached is not the host's copy and
/// could not be changed, and that the copy on disk is intact.
fn assert_sealed(t: &Target, report: &str, before: &(Vec<u8>, u64)) {
    let host = std::fs::metadata(&t.shim_copy).unwrap();
    assert_eq!(field(report, "open"), Some("ok"), "{report}");
    let same_file = field(report, "dev") == Some(&host.dev().to_string())
        && field(report, "ino") == Some(&host.ino().to_string());
    assert!(!same_file, "the attacker holds the host's binary: {report}");
    assert!(
        field(report, "readlink").is_some_and(|l| l.starts_with("/memfd:")),
        "{report}"
    );
    let seals: i32 = field(report, "seals").unwrap().parse().unwrap();
    let required = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    assert_eq!(seals & required, required, "{report}");
    assert_ne!(field(report, "write"), Some("ok"), "{report}");
    assert_ne!(field(report, "truncate"), Some("ok"), "{report}");
    assert_eq!(
        &t.shim_fingerprint(),
        before,
        "the shim's copy on disk changed"
    );
}

/// With `init: true`, PID 1 is berth's init, a clone of the shim that never execs:
/// a container process with CAP_SYS_PTRACE reaches its `/proc/1/exe`, which must be
/// a sealed copy, never the host's binary.
#[test]
fn cve_2019_5736_pid1_of_an_init_container_runs_a_sealed_copy() {
    let t = Target::start(
        "seal-init",
        Options {
            init: true,
            extra_caps: vec![Capability::SysPtrace],
            ..Options::default()
        },
    );
    let before = t.shim_fingerprint();
    let (_, report) = t.exec(&["/attacker", "exe", "1"]);
    assert_sealed(&t, &report, &before);
    // And the shim itself, on the host, runs the sealed copy too.
    let shim_pid = shim::state(t.state(), &t.id).unwrap().shim_pid;
    let link = std::fs::read_link(format!("/proc/{shim_pid}/exe")).unwrap();
    assert!(link.to_string_lossy().starts_with("/memfd:"), "{link:?}");
}

/// Without CAP_SYS_PTRACE (Docker's default set), berth's init is not dumpable: its
/// exe, descriptors and environment cannot be opened at all.
#[test]
fn cve_2019_5736_berths_init_is_not_dumpable() {
    let t = Target::start(
        "seal-dump",
        Options {
            init: true,
            ..Options::default()
        },
    );
    let (_, report) = t.exec(&["/attacker", "exe", "1"]);
    assert_eq!(
        field(&report, "open"),
        Some("Permission denied"),
        "{report}"
    );
    let (_, report) = t.exec(&["/attacker", "proc", "1"]);
    // The numbers of its descriptors may be listed, never what they are.
    assert_eq!(
        field(&report, "fd_links"),
        Some("Permission denied"),
        "{report}"
    );
    assert_eq!(
        field(&report, "environ"),
        Some("Permission denied"),
        "{report}"
    );
    // The host sees it as non-dumpable too (its /proc files belong to root, mode 0).
    let status = std::fs::read_to_string(format!("/proc/{}/status", t.init_pid())).unwrap();
    assert!(status.contains("Name:\tberth-init"), "{status}");
}

/// The CVE's own route: a script whose interpreter is `#!/proc/self/exe` makes the
/// kernel run, inside the container, whatever program the exec'ing process was
/// cloned from. Here that program (the exec helper) stays inside, blocked on its
/// stdin, while the attacker opens its exe: it must be the sealed copy.
#[test]
fn cve_2019_5736_proc_self_exe_as_an_interpreter_runs_a_sealed_copy() {
    let t = Target::start(
        "seal-shebang",
        Options {
            extra_caps: vec![Capability::SysPtrace],
            glibc: true,
            files: vec![("/evil", b"#!/proc/self/exe --exec\n".to_vec(), 0o755)],
            ..Options::default()
        },
    );
    let before = t.shim_fingerprint();
    let (stdin_r, stdin_w) = std::io::pipe().unwrap();
    let null = File::options().write(true).open("/dev/null").unwrap();
    let evil = t.start_exec(
        &["/evil"],
        ExecStdio {
            stdin: Some(stdin_r.as_fd()),
            stdout: Some(null.as_fd()),
            stderr: Some(null.as_fd()),
        },
    );
    let (_, report) = t.exec(&["/attacker", "find-exe", "--exec /evil", "20000"]);
    let found: i32 = field(&report, "found").unwrap().parse().unwrap();
    assert!(found > 0, "the host program never ran inside: {report}");
    assert_sealed(&t, &report, &before);
    drop(stdin_w);
    let _ = evil.wait();
}
