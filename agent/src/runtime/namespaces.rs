//! Namespaces: which ones the container gets new (flags to `clone(2)`), which existing
//! ones it joins (a `path` in the spec, opened by the parent and `setns(2)`-ed by the
//! child), and the cgroup namespace, which the child unshares only once the parent has
//! put it in its cgroup (so the container's cgroup is its `/`).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};

use super::RuntimeError;

/// What the spec asks of namespaces, ready for the parent to act on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NamespacePlan {
    /// `CLONE_NEW*` flags for the clone.
    pub clone_flags: libc::c_int,
    /// Existing namespaces to join: path and `CLONE_NEW*` type.
    pub join: Vec<(PathBuf, libc::c_int)>,
    /// Unshare a cgroup namespace after being placed in the cgroup.
    pub cgroup: bool,
    /// A new user namespace (uid/gid maps written by the parent).
    pub user: bool,
    /// A new network namespace (so /sys may be mounted fresh).
    pub new_net: bool,
    /// An existing pid namespace to start in (Kubernetes' shared process namespace,
    /// Docker's `--pid container:X`). Not in `join`: a `setns` moves only the
    /// caller's future children, so the parent enters it around the clone.
    pub pid_join: Option<PathBuf>,
}

fn flag(typ: LinuxNamespaceType) -> Result<libc::c_int, RuntimeError> {
    use LinuxNamespaceType as T;
    Ok(match typ {
        T::Pid => libc::CLONE_NEWPID,
        T::Mount => libc::CLONE_NEWNS,
        T::Uts => libc::CLONE_NEWUTS,
        T::Ipc => libc::CLONE_NEWIPC,
        T::Network => libc::CLONE_NEWNET,
        T::User => libc::CLONE_NEWUSER,
        T::Cgroup => libc::CLONE_NEWCGROUP,
        T::Time => {
            return Err(RuntimeError::unsupported(
                "linux.namespaces: the time namespace is not supported yet",
            ))
        }
    })
}

/// Plans the namespaces of `namespaces` (the spec's `linux.namespaces`).
pub fn plan(namespaces: &[LinuxNamespace]) -> Result<NamespacePlan, RuntimeError> {
    let mut plan = NamespacePlan::default();
    for ns in namespaces {
        let typ = ns.typ();
        let flag = flag(typ)?;
        match ns.path() {
            Some(path) => {
                match typ {
                    LinuxNamespaceType::Pid => {
                        plan.pid_join = Some(path.clone());
                        continue;
                    }
                    LinuxNamespaceType::Mount | LinuxNamespaceType::User => {
                        return Err(RuntimeError::unsupported(format!(
                            "linux.namespaces: joining an existing {typ:?} namespace is not supported yet"
                        )))
                    }
                    _ => {}
                }
                plan.join.push((path.clone(), flag));
            }
            None if typ == LinuxNamespaceType::Cgroup => plan.cgroup = true,
            None => {
                plan.clone_flags |= flag;
                plan.user |= typ == LinuxNamespaceType::User;
                plan.new_net |= typ == LinuxNamespaceType::Network;
            }
        }
    }
    if plan.pid_join.is_some() && plan.clone_flags & libc::CLONE_NEWPID != 0 {
        return Err(RuntimeError::unsupported(
            "linux.namespaces: two pid namespaces (one with a path, one without); keep one",
        ));
    }
    if plan.clone_flags & libc::CLONE_NEWNS == 0 {
        return Err(RuntimeError::unsupported(
            "linux.namespaces: berth needs a mount namespace (add {\"type\": \"mount\"})",
        ));
    }
    Ok(plan)
}

/// The prefix of the annotations that name the process a joined namespace must belong
/// to: `berth.join-owner.<net|pid|ipc|uts|cgroup>` = `<pid>:<start time>`, the start
/// time as [`super::start_time`] reads it. A pid is recycled once its process is
/// reaped; a namespace opened while the pid still has that start time is that
/// process's, and the open descriptor keeps it (the agent sets these when a container
/// joins another's namespace).
pub const JOIN_OWNER_ANNOTATION: &str = "berth.join-owner.";

/// The `/proc/<pid>/ns/` name of a `CLONE_NEW*` flag.
fn proc_name(flag: libc::c_int) -> &'static str {
    match flag {
        libc::CLONE_NEWNET => "net",
        libc::CLONE_NEWPID => "pid",
        libc::CLONE_NEWIPC => "ipc",
        libc::CLONE_NEWUTS => "uts",
        libc::CLONE_NEWCGROUP => "cgroup",
        libc::CLONE_NEWUSER => "user",
        _ => "mnt",
    }
}

/// Checks, once `path` is open, that it is the namespace the owner annotation of its
/// kind names (if there is one): the path is that pid's, and the pid still has the
/// recorded start time.
pub(crate) fn check_owner(
    annotations: Option<&HashMap<String, String>>,
    flag: libc::c_int,
    path: &Path,
) -> Result<(), RuntimeError> {
    let name = proc_name(flag);
    let Some(owner) = annotations.and_then(|a| a.get(&format!("{JOIN_OWNER_ANNOTATION}{name}")))
    else {
        return Ok(());
    };
    let parsed = owner
        .split_once(':')
        .and_then(|(p, s)| Some((p.parse::<i32>().ok()?, s.parse::<u64>().ok()?)));
    let Some((pid, start)) = parsed else {
        return Err(RuntimeError::unsupported(format!(
            "annotation {JOIN_OWNER_ANNOTATION}{name}: {owner:?} is not <pid>:<start time>"
        )));
    };
    if path != Path::new(&format!("/proc/{pid}/ns/{name}")) {
        return Err(RuntimeError::unsupported(format!(
            "namespace {}: not the {name} namespace of process {pid}, which the annotation \
             {JOIN_OWNER_ANNOTATION}{name} names",
            path.display()
        )));
    }
    if super::start_time(pid) != Some(start) {
        return Err(RuntimeError::unsupported(format!(
            "namespace {}: the container whose namespace it was is gone",
            path.display()
        )));
    }
    Ok(())
}

/// Opens the namespaces to join, in the spec's order, for the child's `setns`; each is
/// checked against its owner annotation (`annotations`, the spec's) once open.
pub fn open_joins(
    plan: &NamespacePlan,
    annotations: Option<&HashMap<String, String>>,
) -> Result<Vec<(OwnedFd, libc::c_int)>, RuntimeError> {
    plan.join
        .iter()
        .map(|(path, flag)| {
            let file = std::fs::File::open(path)
                .map_err(|e| RuntimeError::io(format!("namespace {}", path.display()), e))?;
            check_owner(annotations, *flag, path)?;
            Ok((OwnedFd::from(file), *flag))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(typ: LinuxNamespaceType, path: Option<&str>) -> LinuxNamespace {
        let mut n = LinuxNamespace::default();
        n.set_typ(typ);
        n.set_path(path.map(PathBuf::from));
        n
    }

    #[test]
    fn new_and_joined_namespaces() {
        use LinuxNamespaceType as T;
        let plan = plan(&[
            ns(T::Pid, None),
            ns(T::Mount, None),
            ns(T::Network, Some("/run/netns/x")),
            ns(T::Cgroup, None),
        ])
        .unwrap();
        assert_eq!(plan.clone_flags, libc::CLONE_NEWPID | libc::CLONE_NEWNS);
        assert_eq!(
            plan.join,
            vec![(PathBuf::from("/run/netns/x"), libc::CLONE_NEWNET)]
        );
        assert!(plan.cgroup && !plan.user && !plan.new_net);
        assert_eq!(plan.pid_join, None);
    }

    /// A pid namespace with a path is entered around the clone, not `setns`-ed by
    /// the child (which would move only its children).
    #[test]
    fn a_joined_pid_namespace_is_planned_apart() {
        use LinuxNamespaceType as T;
        let plan = plan(&[ns(T::Mount, None), ns(T::Pid, Some("/proc/1/ns/pid"))]).unwrap();
        assert_eq!(plan.pid_join, Some(PathBuf::from("/proc/1/ns/pid")));
        assert_eq!(plan.clone_flags, libc::CLONE_NEWNS);
        assert!(plan.join.is_empty());
    }

    #[test]
    fn a_joined_namespace_must_belong_to_its_annotated_owner() {
        let me = std::process::id() as i32;
        let start = crate::runtime::start_time(me).unwrap();
        let path = PathBuf::from(format!("/proc/{me}/ns/net"));
        let annotate =
            |v: String| Some(HashMap::from([(format!("{JOIN_OWNER_ANNOTATION}net"), v)]));
        let net = libc::CLONE_NEWNET;
        check_owner(None, net, &path).unwrap();
        check_owner(annotate(format!("{me}:{start}")).as_ref(), net, &path).unwrap();
        // A recycled pid has another start time.
        let e = check_owner(annotate(format!("{me}:{}", start + 1)).as_ref(), net, &path);
        assert!(e.unwrap_err().to_string().contains("is gone"));
        // Not the annotated process's namespace.
        let e = check_owner(annotate(format!("1:{start}")).as_ref(), net, &path);
        assert!(e.unwrap_err().to_string().contains("not the net namespace"));
    }

    #[test]
    fn unsupported_joins_are_errors() {
        use LinuxNamespaceType as T;
        let e = plan(&[ns(T::Mount, Some("/proc/1/ns/mnt"))]).unwrap_err();
        assert!(e.to_string().contains("Mount namespace"), "{e}");
        let e = plan(&[
            ns(T::Mount, None),
            ns(T::Pid, None),
            ns(T::Pid, Some("/proc/1/ns/pid")),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("two pid namespaces"), "{e}");
        let e = plan(&[ns(T::Pid, None)]).unwrap_err();
        assert!(e.to_string().contains("mount namespace"), "{e}");
    }
}
