//! A service's devices made into its container's spec, as Docker makes them:
//! `devices` (a host device node, or every device under a host directory, made at a
//! path of the container with cgroup access `rwm` or less), `device_cgroup_rules`
//! (access to devices the container may create itself), and devices by name through
//! CDI (Container Device Interface) specs: a `devices` entry like
//! `vendor.com/class=name`, `gpus`, and `deploy.resources.reservations.devices`.
//!
//! The host is looked at here, on the node that runs the task: which device a path is,
//! and which CDI specs exist (`/etc/cdi` and `/var/run/cdi`, or the directories of
//! `BERTH_CDI_SPEC_DIRS`, colon-separated).
//!
//! CDI hooks (programs a spec asks the runtime to run on the host, such as NVIDIA's
//! `update-ldcache`) are not run: berth's runtime runs no OCI hooks. The spec's device
//! nodes, mounts, environment and groups are applied; the hooks are logged as skipped.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use ::spec::devices::{DeviceMapping, DeviceRequest, DeviceRule};
use ::spec::model::Service;
use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, Mount};
use serde::Deserialize;

use super::{ContainerContext, ContainerError};

/// What the service's devices add to the spec.
#[derive(Debug, Default)]
pub struct DeviceEdits {
    /// Nodes made in the container's /dev.
    pub nodes: Vec<LinuxDevice>,
    /// cgroup rules allowing them (after the default rules).
    pub rules: Vec<LinuxDeviceCgroup>,
    /// From CDI specs: environment (`KEY=VALUE`, later wins), mounts and groups.
    pub env: Vec<String>,
    pub mounts: Vec<Mount>,
    pub gids: Vec<u32>,
}

impl DeviceEdits {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.rules.is_empty() && self.env.is_empty()
    }
}

/// The default CDI spec directories (the CDI specification's).
const CDI_DIRS: &[&str] = &["/etc/cdi", "/var/run/cdi"];

fn cdi_dirs() -> Vec<PathBuf> {
    match std::env::var("BERTH_CDI_SPEC_DIRS") {
        Ok(v) if !v.is_empty() => v.split(':').map(PathBuf::from).collect(),
        _ => CDI_DIRS.iter().map(PathBuf::from).collect(),
    }
}

/// Everything the service's device attributes add, or an error naming the field.
pub fn edits(service: &Service, ctx: &ContainerContext) -> Result<DeviceEdits, ContainerError> {
    let mut out = DeviceEdits::default();
    let mut cdi_names: Vec<(String, String)> = Vec::new();
    for (i, d) in service.devices.iter().enumerate() {
        let field = format!("devices[{i}]");
        if d.is_cdi() {
            cdi_names.push((field, d.source.clone()));
            continue;
        }
        host_device(d, &mut out).map_err(|e| ctx.field(&field, e))?;
    }
    out.rules
        .extend(service.device_cgroup_rules.iter().map(rule_of));
    let reservations = service
        .deploy
        .as_ref()
        .and_then(|d| d.resources.as_ref())
        .and_then(|r| r.reservations.as_ref())
        .map(|r| r.devices.as_slice())
        .unwrap_or_default();
    let requests = (service.gpus.iter().enumerate())
        .map(|(i, r)| (format!("gpus[{i}]"), r))
        .chain(
            reservations
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("deploy.resources.reservations.devices[{i}]"), r)),
        );
    let mut registry: Option<Cdi> = None;
    for (field, request) in requests {
        let cdi = registry.get_or_insert_with(|| Cdi::load(&cdi_dirs()));
        for name in requested(request, cdi).map_err(|e| ctx.field(&field, e))? {
            cdi_names.push((field.clone(), name));
        }
    }
    if !cdi_names.is_empty() {
        let cdi = registry.get_or_insert_with(|| Cdi::load(&cdi_dirs()));
        cdi.apply(&cdi_names, &mut out)
            .map_err(|(field, e)| ctx.field(field, e))?;
    }
    Ok(out)
}

fn rule_of(r: &DeviceRule) -> LinuxDeviceCgroup {
    let mut c = LinuxDeviceCgroup::default();
    c.set_allow(true);
    c.set_typ(Some(match r.kind {
        'b' => LinuxDeviceType::B,
        'c' => LinuxDeviceType::C,
        _ => LinuxDeviceType::A,
    }));
    c.set_major(r.major);
    c.set_minor(r.minor);
    c.set_access(Some(r.access.clone()));
    c
}

/// The node at `host` (symlinks followed, as Docker does) made at `target`, and its
/// cgroup rule; or every device under a directory, each at its relative place.
fn host_device(d: &DeviceMapping, out: &mut DeviceEdits) -> Result<(), String> {
    let host =
        std::fs::canonicalize(&d.source).map_err(|e| format!("host device {}: {e}", d.source))?;
    let meta = std::fs::metadata(&host).map_err(|e| format!("host device {}: {e}", d.source))?;
    if meta.is_dir() {
        // Docker: every device below the directory, at the same relative path.
        let mut found = 0;
        for entry in walk(&host) {
            let rel = entry.strip_prefix(&host).unwrap_or(&entry);
            let target = Path::new(&d.target).join(rel);
            if let Ok(Some((node, rule))) = node_of(&entry, &target, &d.permissions) {
                out.nodes.push(node);
                out.rules.push(rule);
                found += 1;
            }
        }
        if found == 0 {
            return Err(format!(
                "{} is a directory without device nodes: name a device, like /dev/fuse",
                d.source
            ));
        }
        return Ok(());
    }
    match node_of(&host, Path::new(&d.target), &d.permissions)? {
        Some((node, rule)) => {
            out.nodes.push(node);
            out.rules.push(rule);
            Ok(())
        }
        None => Err(format!(
            "{} is not a device node (neither character nor block device)",
            d.source
        )),
    }
}

/// Every device node of the host's /dev, at the same path: what Docker gives a
/// privileged container (`HostDevices`), less what a container has of its own
/// (pseudo-terminals, shared memory, message queues) and the console.
pub fn host_devices() -> Vec<LinuxDevice> {
    const OWN: &[&str] = &["/dev/pts", "/dev/shm", "/dev/mqueue", "/dev/console"];
    walk(Path::new("/dev"))
        .into_iter()
        .filter(|p| !OWN.iter().any(|o| p.starts_with(o)))
        .filter_map(|p| node_of(&p, &p, "rwm").ok().flatten().map(|(n, _)| n))
        .collect()
}

/// Files under `dir`, depth first, symlinks not followed (bounded, as /dev is small).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() && out.len() < 4096 {
                stack.push(e.path());
            } else if t.is_char_device() || t.is_block_device() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn node_of(
    host: &Path,
    target: &Path,
    access: &str,
) -> Result<Option<(LinuxDevice, LinuxDeviceCgroup)>, String> {
    let meta = std::fs::metadata(host).map_err(|e| format!("{}: {e}", host.display()))?;
    let ft = meta.file_type();
    let typ = if ft.is_char_device() {
        LinuxDeviceType::C
    } else if ft.is_block_device() {
        LinuxDeviceType::B
    } else {
        return Ok(None);
    };
    let rdev = meta.rdev();
    let (major, minor) = (i64::from(libc::major(rdev)), i64::from(libc::minor(rdev)));
    let mut node = LinuxDevice::default();
    node.set_path(target.to_path_buf());
    node.set_typ(typ);
    node.set_major(major);
    node.set_minor(minor);
    node.set_file_mode(Some(meta.mode() & 0o777));
    node.set_uid(Some(meta.uid()));
    node.set_gid(Some(meta.gid()));
    let mut rule = LinuxDeviceCgroup::default();
    rule.set_allow(true);
    rule.set_typ(Some(typ));
    rule.set_major(Some(major));
    rule.set_minor(Some(minor));
    rule.set_access(Some(
        if access.is_empty() { "rwm" } else { access }.to_string(),
    ));
    Ok(Some((node, rule)))
}

/// The qualified CDI names a request stands for.
fn requested(request: &DeviceRequest, cdi: &Cdi) -> Result<Vec<String>, String> {
    if request.driver == "cdi" {
        if request.device_ids.is_empty() {
            return Err("driver cdi needs device_ids: fully qualified CDI names, like vendor.com/class=name".into());
        }
        return Ok(request.device_ids.clone());
    }
    let Some(kind) = request.cdi_kind() else {
        return Err(format!(
            "berth gives devices by kind through CDI: driver {:?} with capabilities {:?} names no CDI kind; use the gpu capability (NVIDIA's nvidia.com/gpu), or driver: cdi with device_ids",
            request.driver, request.capabilities
        ));
    };
    let available = cdi.devices_of(kind);
    if available.is_empty() {
        return Err(format!(
            "this host has no CDI spec for {kind} (looked in {}); for NVIDIA GPUs, write one with `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`",
            cdi.dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    request.select(kind, &available)
}

// ---- CDI specs ----

/// A CDI spec file, the fields berth applies (the CDI specification, v0.3-0.8).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    kind: String,
    #[serde(default)]
    devices: Vec<Device>,
    #[serde(default)]
    container_edits: Edits,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Device {
    name: String,
    #[serde(default)]
    container_edits: Edits,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Edits {
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    device_nodes: Vec<Node>,
    #[serde(default)]
    mounts: Vec<CdiMount>,
    #[serde(default)]
    hooks: Vec<serde_json::Value>,
    #[serde(default)]
    additional_gids: Vec<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Node {
    path: String,
    host_path: Option<String>,
    #[serde(rename = "type")]
    typ: Option<String>,
    major: Option<i64>,
    minor: Option<i64>,
    file_mode: Option<u32>,
    permissions: Option<String>,
    uid: Option<u32>,
    gid: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CdiMount {
    host_path: String,
    container_path: String,
    #[serde(default)]
    options: Vec<String>,
    #[serde(rename = "type")]
    typ: Option<String>,
}

/// The CDI specs found on this host, by kind (a later directory's spec of a kind
/// wins, as the specification orders `/var/run/cdi` over `/etc/cdi`).
struct Cdi {
    dirs: Vec<PathBuf>,
    specs: BTreeMap<String, (PathBuf, Spec)>,
}

impl Cdi {
    fn load(dirs: &[PathBuf]) -> Cdi {
        let mut specs = BTreeMap::new();
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            files.sort();
            for f in files {
                let ext = f.extension().and_then(|e| e.to_str()).unwrap_or_default();
                let parsed: Option<Spec> = match ext {
                    "json" => std::fs::read(&f)
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok()),
                    "yaml" | "yml" => std::fs::read_to_string(&f)
                        .ok()
                        .and_then(|t| serde_norway::from_str(&t).ok()),
                    _ => continue,
                };
                match parsed {
                    Some(spec) => {
                        specs.insert(spec.kind.clone(), (f, spec));
                    }
                    None => eprintln!("berth: CDI spec {} does not parse; skipped", f.display()),
                }
            }
        }
        Cdi {
            dirs: dirs.to_vec(),
            specs,
        }
    }

    fn devices_of(&self, kind: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .specs
            .get(kind)
            .map(|(_, s)| s.devices.iter().map(|d| d.name.clone()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Applies the named devices' edits, and each spec's own edits once.
    fn apply(
        &self,
        names: &[(String, String)],
        out: &mut DeviceEdits,
    ) -> Result<(), (String, String)> {
        let mut spec_edits_done: Vec<&str> = Vec::new();
        for (field, name) in names {
            let (kind, device) = name.split_once('=').unwrap_or((name, ""));
            let Some((file, spec)) = self.specs.get(kind) else {
                return Err((
                    field.clone(),
                    format!(
                        "no CDI spec on this host has devices of kind {kind} (for {name}); looked in {}",
                        self.dirs
                            .iter()
                            .map(|d| d.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            };
            let Some(dev) = spec.devices.iter().find(|d| d.name == device) else {
                return Err((
                    field.clone(),
                    format!(
                        "CDI spec {} has no device {device:?} (it has: {})",
                        file.display(),
                        self.devices_of(kind).join(", ")
                    ),
                ));
            };
            if !spec_edits_done.contains(&kind) {
                spec_edits_done.push(kind);
                apply_edits(&spec.container_edits, out).map_err(|e| (field.clone(), e))?;
            }
            apply_edits(&dev.container_edits, out).map_err(|e| (field.clone(), e))?;
        }
        Ok(())
    }
}

fn apply_edits(e: &Edits, out: &mut DeviceEdits) -> Result<(), String> {
    out.env.extend(e.env.iter().cloned());
    for n in &e.device_nodes {
        let host = PathBuf::from(n.host_path.as_deref().unwrap_or(&n.path));
        let target = PathBuf::from(&n.path);
        if !target.is_absolute() {
            return Err(format!("CDI device node path {} is not absolute", n.path));
        }
        let access = n.permissions.clone().unwrap_or_else(|| "rwm".into());
        match (n.major, n.minor) {
            (Some(major), Some(minor)) => {
                let typ = match n.typ.as_deref() {
                    Some("b") => LinuxDeviceType::B,
                    _ => LinuxDeviceType::C,
                };
                let mut node = LinuxDevice::default();
                node.set_path(target);
                node.set_typ(typ);
                node.set_major(major);
                node.set_minor(minor);
                node.set_file_mode(n.file_mode.or(Some(0o666)));
                node.set_uid(n.uid);
                node.set_gid(n.gid);
                let mut rule = LinuxDeviceCgroup::default();
                rule.set_allow(true);
                rule.set_typ(Some(typ));
                rule.set_major(Some(major));
                rule.set_minor(Some(minor));
                rule.set_access(Some(access));
                out.nodes.push(node);
                out.rules.push(rule);
            }
            _ => match node_of(&host, &target, &access)? {
                Some((mut node, rule)) => {
                    if n.file_mode.is_some() {
                        node.set_file_mode(n.file_mode);
                    }
                    if n.uid.is_some() {
                        node.set_uid(n.uid);
                    }
                    if n.gid.is_some() {
                        node.set_gid(n.gid);
                    }
                    out.nodes.push(node);
                    out.rules.push(rule);
                }
                None => {
                    return Err(format!(
                        "CDI device node {} is not a device on this host",
                        host.display()
                    ))
                }
            },
        }
    }
    for m in &e.mounts {
        if !Path::new(&m.host_path).is_absolute() || !Path::new(&m.container_path).is_absolute() {
            return Err(format!(
                "CDI mount {} -> {}: both paths must be absolute",
                m.host_path, m.container_path
            ));
        }
        let mut mount = Mount::default();
        mount.set_destination(PathBuf::from(&m.container_path));
        mount.set_source(Some(PathBuf::from(&m.host_path)));
        mount.set_typ(Some(m.typ.clone().unwrap_or_else(|| "bind".into())));
        let mut options = m.options.clone();
        if !options.iter().any(|o| o == "bind" || o == "rbind") {
            options.insert(0, "rbind".into());
        }
        mount.set_options(Some(options));
        out.mounts.push(mount);
    }
    if !e.hooks.is_empty() {
        eprintln!(
            "berth: CDI: {} hook(s) skipped: berth's runtime runs no OCI hooks",
            e.hooks.len()
        );
    }
    out.gids.extend(&e.additional_gids);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn cdi_specs_give_nodes_env_and_mounts_of_the_named_devices() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "v.yaml",
            "cdiVersion: 0.6.0\nkind: vendor.com/dev\ncontainerEdits:\n  env: [COMMON=1]\ndevices:\n- name: a\n  containerEdits:\n    env: [A=1]\n    deviceNodes: [{path: /dev/va, type: c, major: 1, minor: 3, permissions: r}]\n    mounts: [{hostPath: /tmp, containerPath: /opt/va, options: [ro]}]\n- name: b\n  containerEdits:\n    deviceNodes: [{path: /dev/vb, hostPath: /dev/null}]\n",
        );
        write(d.path(), "junk.yaml", "not: [a spec");
        let cdi = Cdi::load(&[d.path().to_path_buf()]);
        assert_eq!(cdi.devices_of("vendor.com/dev"), ["a", "b"]);
        let mut out = DeviceEdits::default();
        cdi.apply(
            &[
                ("devices[0]".into(), "vendor.com/dev=a".into()),
                ("devices[1]".into(), "vendor.com/dev=b".into()),
            ],
            &mut out,
        )
        .unwrap();
        assert_eq!(out.env, ["COMMON=1", "A=1"]);
        let paths: Vec<_> = out.nodes.iter().map(|n| n.path().clone()).collect();
        assert_eq!(paths, [PathBuf::from("/dev/va"), PathBuf::from("/dev/vb")]);
        // /dev/null is 1:3, read from the host.
        assert_eq!((out.nodes[1].major(), out.nodes[1].minor()), (1, 3));
        assert_eq!(out.rules[0].access().as_deref(), Some("r"));
        assert_eq!(out.mounts.len(), 1);
        let missing = cdi.apply(
            &[("devices[0]".into(), "vendor.com/dev=c".into())],
            &mut DeviceEdits::default(),
        );
        assert!(missing.unwrap_err().1.contains("has no device \"c\""));
        let no_kind = cdi.apply(
            &[("gpus[0]".into(), "nvidia.com/gpu=0".into())],
            &mut DeviceEdits::default(),
        );
        assert!(no_kind.unwrap_err().1.contains("no CDI spec"));
    }

    #[test]
    fn a_gpu_request_without_a_spec_says_how_to_make_one() {
        let d = tempfile::tempdir().unwrap();
        let cdi = Cdi::load(&[d.path().to_path_buf()]);
        let all = DeviceRequest {
            count: Some(-1),
            capabilities: vec!["gpu".into()],
            ..Default::default()
        };
        let e = requested(&all, &cdi).unwrap_err();
        assert!(e.contains("no CDI spec for nvidia.com/gpu"), "{e}");
        assert!(e.contains("nvidia-ctk cdi generate"), "{e}");
    }

    #[test]
    fn a_host_device_is_read_from_the_host() {
        let mut out = DeviceEdits::default();
        let d = DeviceMapping::parse("/dev/null:/dev/mynull:r").unwrap();
        host_device(&d, &mut out).unwrap();
        assert_eq!(out.nodes[0].path(), Path::new("/dev/mynull"));
        assert_eq!((out.nodes[0].major(), out.nodes[0].minor()), (1, 3));
        assert_eq!(out.rules[0].access().as_deref(), Some("r"));
        let not = DeviceMapping::parse("/etc/hostname").unwrap();
        let e = host_device(&not, &mut DeviceEdits::default()).unwrap_err();
        assert!(e.contains("is not a device node"), "{e}");
    }
}
