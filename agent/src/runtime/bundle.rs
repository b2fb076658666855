//! An OCI bundle: a directory with `config.json` and a root filesystem. Loading one
//! checks the spec for what berth does not implement, so an unsupported field is an
//! error naming it, never a container silently started without it.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use super::RuntimeError;

/// A loaded bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle directory, absolute.
    pub dir: PathBuf,
    /// The root filesystem, absolute.
    pub rootfs: PathBuf,
    pub spec: Spec,
}

impl Bundle {
    /// Reads `dir/config.json` and checks it.
    pub fn load(dir: &Path) -> Result<Bundle, RuntimeError> {
        let bundle_err = |message: String| RuntimeError::Bundle {
            path: dir.to_path_buf(),
            message,
        };
        let dir = std::path::absolute(dir).map_err(|e| bundle_err(e.to_string()))?;
        let config = dir.join("config.json");
        let text = std::fs::read_to_string(&config)
            .map_err(|e| bundle_err(format!("cannot read config.json: {e}")))?;
        let spec: Spec = serde_json::from_str(&text)
            .map_err(|e| bundle_err(format!("config.json is not a valid OCI runtime spec: {e}")))?;
        Bundle::from_spec(&dir, spec)
    }

    /// A bundle from a spec already in memory (the agent's way).
    pub fn from_spec(dir: &Path, spec: Spec) -> Result<Bundle, RuntimeError> {
        let root = spec.root().as_ref().ok_or_else(|| RuntimeError::Bundle {
            path: dir.to_path_buf(),
            message: "config.json has no root.path".into(),
        })?;
        let rootfs = dir.join(root.path());
        if !rootfs.is_dir() {
            return Err(RuntimeError::Bundle {
                path: dir.to_path_buf(),
                message: format!("root filesystem {} is not a directory", rootfs.display()),
            });
        }
        check_supported(&spec)?;
        Ok(Bundle {
            dir: dir.to_path_buf(),
            rootfs,
            spec,
        })
    }
}

/// Refuses the fields berth does not implement yet.
fn check_supported(spec: &Spec) -> Result<(), RuntimeError> {
    let no = |what: &str, hint: &str| {
        Err(RuntimeError::unsupported(format!(
            "{what} is not supported yet{hint}"
        )))
    };
    check_version(spec.version())?;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| RuntimeError::unsupported("process is missing"))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(RuntimeError::unsupported(
            "process.args is empty: nothing to run",
        ));
    }
    if process
        .apparmor_profile()
        .as_ref()
        .is_some_and(|p| !p.is_empty())
    {
        return no("process.apparmorProfile", "");
    }
    if process
        .selinux_label()
        .as_ref()
        .is_some_and(|p| !p.is_empty())
    {
        return no("process.selinuxLabel", "");
    }
    if process.io_priority().is_some() || process.scheduler().is_some() {
        return no("process.ioPriority / process.scheduler", "");
    }
    if process.user().username().is_some() {
        return no("process.user.username", "; give numeric uid and gid");
    }
    if spec.hooks().as_ref().is_some_and(|h| {
        h.prestart().is_some()
            || h.create_runtime().is_some()
            || h.create_container().is_some()
            || h.start_container().is_some()
            || h.poststart().is_some()
            || h.poststop().is_some()
    }) {
        return no("hooks", "");
    }
    if let Some(linux) = spec.linux() {
        if linux.intel_rdt().is_some() {
            return no("linux.intelRdt", "");
        }
        if linux.personality().is_some() {
            return no("linux.personality", "");
        }
        if linux.time_offsets().is_some() {
            return no("linux.timeOffsets", "");
        }
        if linux.memory_policy().is_some() {
            return no("linux.memoryPolicy", "");
        }
        if linux.net_devices().as_ref().is_some_and(|d| !d.is_empty()) {
            return no("linux.netDevices", "");
        }
        if linux.mount_label().as_ref().is_some_and(|l| !l.is_empty()) {
            return no("linux.mountLabel", "");
        }
    }
    for m in spec.mounts().iter().flatten() {
        if m.uid_mappings().is_some() || m.gid_mappings().is_some() {
            return no("mounts[].uidMappings (idmapped mounts)", "");
        }
    }
    Ok(())
}

/// `ociVersion` must name a 1.x release of the runtime spec (SemVer: `1.2.0`,
/// `1.0.2-dev`), the only major version berth reads; anything else is a config berth
/// cannot know how to read (runtime-spec: invalid values MUST be errors).
fn check_version(version: &str) -> Result<(), RuntimeError> {
    let core = version.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    let numeric = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if parts.len() == 3 && parts.iter().all(numeric) && parts[0] == "1" {
        return Ok(());
    }
    Err(RuntimeError::unsupported(format!(
        "ociVersion {version:?} is not a runtime-spec version berth reads (1.x.y, e.g. \"1.0.2\")"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_command_is_refused_with_a_reason() {
        let mut spec = super::super::default_spec(Path::new("rootfs"), &["sh".into()]).unwrap();
        if let Some(p) = spec.process_mut() {
            p.set_args(Some(Vec::new()));
        }
        let e = check_supported(&spec).unwrap_err().to_string();
        assert!(e.contains("process.args is empty"), "{e}");
    }

    #[test]
    fn oci_versions_are_1_x_y() {
        for ok in ["1.0.0", "1.0.2-dev", "1.2.0", "1.3.0+build"] {
            check_version(ok).unwrap();
        }
        for bad in ["invalid", "", "2.0.0", "1.0", "1.x.0", "01"] {
            let e = check_version(bad).unwrap_err().to_string();
            assert!(e.contains("ociVersion"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_default_spec_is_supported() {
        let spec = super::super::default_spec(Path::new("rootfs"), &["sh".into()]).unwrap();
        check_supported(&spec).unwrap();
    }
}
