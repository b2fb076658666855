//! A busybox container for the mount, /proc and cgroup tests: the default spec in a
//! temporary bundle, a top-level cgroup of its own (removed even when a test fails),
//! and helpers to play the attacker's part in its mounts.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use agent::runtime::cgroups::Hierarchy;
use agent::runtime::{self, Bundle, ExitReport, RunOptions, RuntimeError, Stdio};
use oci_spec::runtime::{Linux, Mount, Spec};

pub struct TestBundle {
    dir: tempfile::TempDir,
    pub id: String,
    pub spec: Spec,
    /// The cgroup layout to run with; `None` detects this host's.
    pub hierarchy: Option<Hierarchy>,
}

impl TestBundle {
    /// A bundle whose container runs `sh -c script`.
    pub fn new(tag: &str, script: &str) -> TestBundle {
        let dir = tempfile::tempdir().unwrap();
        testkit::busybox_rootfs(&dir.path().join("rootfs")).unwrap();
        let args = ["sh".to_string(), "-c".to_string(), script.to_string()];
        let mut spec = runtime::default_spec(Path::new("rootfs"), &args).unwrap();
        let id = testkit::unique_name(tag);
        spec.linux_mut()
            .as_mut()
            .unwrap()
            .set_cgroups_path(Some(PathBuf::from(format!("/{id}"))));
        TestBundle {
            dir,
            id,
            spec,
            hierarchy: None,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    pub fn linux(&mut self) -> &mut Linux {
        self.spec.linux_mut().as_mut().unwrap()
    }

    /// Replaces the mount at `dest` (or adds one) with a bind of the host path `source`.
    pub fn bind(&mut self, source: &Path, dest: &str, options: &[&str]) {
        let mut m = Mount::default();
        m.set_destination(dest.into());
        m.set_typ(Some("bind".into()));
        m.set_source(Some(source.to_path_buf()));
        m.set_options(Some(options.iter().map(|o| o.to_string()).collect()));
        self.set_mount(m);
    }

    /// Replaces the mount at the same destination, or adds it at the end.
    pub fn set_mount(&mut self, m: Mount) {
        let mounts = self.spec.mounts_mut().get_or_insert_with(Vec::new);
        match mounts
            .iter_mut()
            .find(|x| x.destination() == m.destination())
        {
            Some(slot) => *slot = m,
            None => mounts.push(m),
        }
    }

    /// Runs the container; returns how it ended and what it wrote to stdout and stderr.
    pub fn run(&self) -> (Result<ExitReport, RuntimeError>, String) {
        let json = serde_json::to_string_pretty(&self.spec).unwrap();
        std::fs::write(self.path().join("config.json"), json).unwrap();
        let _cleanup = testkit::CgroupGuard(self.id.clone());
        let out_path = self.path().join("output");
        let out = File::create(&out_path).unwrap();
        let bundle = Bundle::load(self.path()).unwrap();
        let opts = RunOptions {
            hierarchy: self.hierarchy.clone(),
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
    pub fn output(&self) -> String {
        let (result, out) = self.run();
        let report = result.unwrap_or_else(|e| panic!("{e}\noutput:\n{out}"));
        assert_eq!(report.status(), 0, "output:\n{out}");
        out
    }
}
