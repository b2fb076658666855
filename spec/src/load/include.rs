//! `include`: other Compose projects whose resources become part of this one.
//!
//! Each entry is loaded as a project of its own (its own directory, `.env` and files,
//! with its own includes), and its services, networks, volumes, secrets and configs are
//! added to the including file. A name defined on both sides is merged, the including
//! file's definition over the included one, as compose-go does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_norway::Value;

use super::files::{absolute, display_name, project_env, SourceFile};
use super::{LoadCtx, Tree};
use crate::diag::{index, Diagnostics};
use crate::origin::Origin;

/// Deeper include chains than this are almost certainly a cycle through symlinks.
const MAX_DEPTH: usize = 16;

/// Adds the resources of every included project to `root`; returns where the added
/// services came from.
pub(crate) fn apply(
    root: &mut Value,
    display: &str,
    base_dir: &Path,
    cx: &mut LoadCtx,
    diags: &mut Diagnostics,
) -> Option<Origin> {
    let include = match root.as_mapping_mut().and_then(|m| m.remove("include")) {
        None | Some(Value::Null) => return None,
        Some(v) => v,
    };
    let Value::Sequence(entries) = include else {
        diags.error(
            display,
            "include",
            "expected a list of files or include entries",
        );
        return None;
    };
    let mut origin = Origin::default();
    for (i, entry) in entries.iter().enumerate() {
        let path = index("include", i);
        let Some(spec) = parse_entry(entry, &path, display, base_dir, diags) else {
            continue;
        };
        let Some(included) = load_included(&spec, &path, display, cx, diags) else {
            continue;
        };
        origin.absorb(included.origin);
        add_resources(root, included.value);
    }
    Some(origin)
}

struct IncludeSpec {
    files: Vec<SourceFile>,
    project_dir: PathBuf,
    env_files: Vec<PathBuf>,
}

fn parse_entry(
    entry: &Value,
    path: &str,
    display: &str,
    base: &Path,
    diags: &mut Diagnostics,
) -> Option<IncludeSpec> {
    let strings = |v: Option<&Value>| -> Option<Vec<String>> {
        match v {
            None => Some(Vec::new()),
            Some(Value::String(s)) => Some(vec![s.clone()]),
            Some(Value::Sequence(items)) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect(),
            Some(_) => None,
        }
    };
    let (paths, project_dir, env_files) = match entry {
        Value::String(s) => (vec![s.clone()], None, Vec::new()),
        Value::Mapping(m) => {
            for k in m.keys().filter_map(Value::as_str) {
                if !matches!(k, "path" | "project_directory" | "env_file") {
                    diags.error(
                        display,
                        &format!("{path}.{k}"),
                        "unknown attribute; include takes path, project_directory and env_file",
                    );
                }
            }
            let Some(paths) = strings(m.get("path")).filter(|p| !p.is_empty()) else {
                diags.error(
                    display,
                    path,
                    "an include entry needs path: <file or list of files>",
                );
                return None;
            };
            let Some(env) = strings(m.get("env_file")) else {
                diags.error(
                    display,
                    &format!("{path}.env_file"),
                    "expected a file or a list of files",
                );
                return None;
            };
            let dir = m
                .get("project_directory")
                .and_then(Value::as_str)
                .map(str::to_string);
            (paths, dir, env)
        }
        _ => {
            diags.error(display, path, "expected a file path or a mapping with path");
            return None;
        }
    };
    let files: Vec<SourceFile> = paths
        .iter()
        .map(|p| {
            let abs = absolute(base, Path::new(p), None);
            SourceFile {
                display: p.clone(),
                path: abs,
                text: None,
            }
        })
        .collect();
    let project_dir = match project_dir {
        Some(d) => absolute(base, Path::new(&d), None),
        None => files[0]
            .path
            .parent()
            .unwrap_or(Path::new("/"))
            .to_path_buf(),
    };
    let env_files = env_files
        .iter()
        .map(|e| absolute(base, Path::new(e), None))
        .collect();
    Some(IncludeSpec {
        files,
        project_dir,
        env_files,
    })
}

fn load_included(
    spec: &IncludeSpec,
    path: &str,
    display: &str,
    cx: &mut LoadCtx,
    diags: &mut Diagnostics,
) -> Option<Tree> {
    for f in &spec.files {
        if !f.path.is_file() {
            diags.error(
                display,
                path,
                format!("included file {} not found", f.display),
            );
            return None;
        }
    }
    let key = spec.files[0].path.clone();
    if cx.include_chain.contains(&key) || cx.include_chain.len() >= MAX_DEPTH {
        diags.error(
            display,
            path,
            format!("include cycle: {} includes itself", spec.files[0].display),
        );
        return None;
    }
    // The included project reads its own .env (or env_file), but the including project's
    // variables win, as in Compose: the parent decides, the include supplies defaults.
    let mut env = match project_env(
        &spec.env_files,
        &spec.project_dir,
        cx.working_dir,
        &BTreeMap::new(),
    ) {
        Ok(env) => env,
        Err(e) => {
            for d in e.errors {
                diags.error(display, path, d.to_string());
            }
            return None;
        }
    };
    env.extend(cx.parent_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let files: Vec<SourceFile> = spec
        .files
        .iter()
        .map(|f| SourceFile {
            display: display_name(&f.path, cx.working_dir),
            path: f.path.clone(),
            text: None,
        })
        .collect();
    let parsed = super::parse_all(&files, diags);
    cx.include_chain.push(key);
    let tree = super::load_tree(parsed, &spec.project_dir, &env, cx, diags);
    cx.include_chain.pop();
    tree
}

/// Adds `included`'s resources to `root`; what `root` (or an earlier include) already
/// defines wins, as compose-go merges them.
fn add_resources(root: &mut Value, included: Value) {
    let Value::Mapping(included) = included else {
        return;
    };
    let Some(root) = root.as_mapping_mut() else {
        return;
    };
    for (section, items) in included {
        let Some(name) = section.as_str() else {
            continue;
        };
        if !matches!(
            name,
            "services" | "networks" | "volumes" | "secrets" | "configs"
        ) {
            continue;
        }
        let Value::Mapping(items) = items else {
            continue;
        };
        let target = root
            .entry(section.clone())
            .or_insert_with(|| Value::Mapping(Default::default()));
        if target.is_null() {
            *target = Value::Mapping(Default::default());
        }
        let Some(target) = target.as_mapping_mut() else {
            continue;
        };
        for (k, v) in items {
            // The same definition on both sides (a shared external network, say) is
            // one resource, not a conflict.
            if target.get(&k) == Some(&v) {
                continue;
            }
            // Defined here too: the local definition is an override of the included
            // one, as in compose-go (so `!override` and `!reset` work on it).
            if let Some(local) = target.remove(&k) {
                let key = k.as_str().unwrap_or_default().to_string();
                if let Some(merged) = crate::merge::merge(v, local, &[name, &key]) {
                    target.insert(k, merged);
                }
                continue;
            }
            target.insert(k, v);
        }
    }
}
