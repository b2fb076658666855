//! `extends`: a service built on another service, in the same file or another one.
//!
//! The base service is resolved first (it may itself extend another), then the local
//! definition is merged onto it with the usual override rules. Resolutions are memoized
//! per (file, service), so long chains stay linear, and a chain that comes back to a
//! service it started from is reported as a cycle.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_norway::Value;

use super::files::display_name;
use super::tree::load_file;
use crate::decode::{decode_project, Cx};
use crate::diag::Diagnostics;
use crate::merge::merge;

/// Longest extends chain followed before giving up; real files use two or three links.
const MAX_DEPTH: usize = 64;

pub(crate) struct Extends<'a> {
    pub env: &'a BTreeMap<String, String>,
    pub working_dir: &'a Path,
    /// Other files named by `extends.file`, loaded once each.
    files: HashMap<PathBuf, Option<Value>>,
    resolved: HashMap<(PathBuf, String), Option<Value>>,
}

impl<'a> Extends<'a> {
    pub fn new(env: &'a BTreeMap<String, String>, working_dir: &'a Path) -> Self {
        Extends {
            env,
            working_dir,
            files: HashMap::new(),
            resolved: HashMap::new(),
        }
    }

    /// Resolves `extends` for every service of the file `root` (at `path`).
    pub fn apply(&mut self, root: &mut Value, path: &Path, display: &str, diags: &mut Diagnostics) {
        let names: Vec<String> = match root.get("services") {
            Some(Value::Mapping(m)) => m
                .iter()
                .filter(|(_, svc)| svc.get("extends").is_some())
                .filter_map(|(k, _)| k.as_str().map(str::to_string))
                .collect(),
            _ => return,
        };
        // Resolve everything against the file as written, then write the results back.
        let mut done = Vec::with_capacity(names.len());
        for name in names {
            let mut chain = Vec::new();
            if let Some(v) = self.resolve(root, path, display, &name, &mut chain, diags) {
                done.push((name, v));
            }
        }
        if let Some(Value::Mapping(services)) = root.get_mut("services") {
            for (name, v) in done {
                services.insert(Value::from(name), v);
            }
        }
    }

    fn resolve(
        &mut self,
        root: &Value,
        path: &Path,
        display: &str,
        name: &str,
        chain: &mut Vec<(PathBuf, String)>,
        diags: &mut Diagnostics,
    ) -> Option<Value> {
        let key = (path.to_path_buf(), name.to_string());
        if let Some(done) = self.resolved.get(&key) {
            return done.clone();
        }
        let svc_path = format!("services.{name}");
        if chain.contains(&key) || chain.len() > MAX_DEPTH {
            let mut names: Vec<&str> = chain.iter().map(|(_, n)| n.as_str()).collect();
            names.push(name);
            diags.error(
                display,
                &svc_path,
                format!("extends cycle: {}", names.join(" -> ")),
            );
            return None;
        }
        let svc = root.get("services").and_then(|s| s.get(name)).cloned()?;
        let Some(ext) = svc.get("extends").cloned() else {
            self.resolved.insert(key, Some(svc.clone()));
            return Some(svc);
        };
        let ext_path = format!("{svc_path}.extends");
        let (base_name, base_file) = match &ext {
            Value::String(s) => (s.clone(), None),
            Value::Mapping(m) => {
                let service = m.get("service").and_then(Value::as_str).map(str::to_string);
                let file = m.get("file").and_then(Value::as_str).map(PathBuf::from);
                let unknown: Vec<String> = m
                    .keys()
                    .filter_map(Value::as_str)
                    .filter(|k| !matches!(*k, "service" | "file"))
                    .map(str::to_string)
                    .collect();
                for k in unknown {
                    diags.error(
                        display,
                        &format!("{ext_path}.{k}"),
                        "unknown attribute; extends takes service and file",
                    );
                }
                match service {
                    Some(s) => (s, file),
                    None => {
                        diags.error(display, &ext_path, "extends needs service: <name>");
                        return None;
                    }
                }
            }
            _ => {
                diags.error(
                    display,
                    &ext_path,
                    "expected a service name or a mapping with service and file",
                );
                return None;
            }
        };

        chain.push(key.clone());
        let base = match base_file {
            None => {
                let base = self.resolve(root, path, display, &base_name, chain, diags);
                let defined = root
                    .get("services")
                    .and_then(|s| s.get(&base_name))
                    .is_some();
                if base.is_none() && !defined {
                    diags.error(
                        display,
                        &ext_path,
                        format!("service {base_name:?} not found in {display}"),
                    );
                }
                base
            }
            Some(file) => {
                let other = self.other_file(&file, diags);
                let shown = display_name(&file, self.working_dir);
                match other {
                    Some(other_root)
                        if other_root
                            .get("services")
                            .is_some_and(|s| s.get(&base_name).is_some()) =>
                    {
                        self.resolve(&other_root, &file, &shown, &base_name, chain, diags)
                    }
                    Some(_) => {
                        diags.error(
                            display,
                            &ext_path,
                            format!("service {base_name:?} not found in {shown}"),
                        );
                        None
                    }
                    None => {
                        diags.error(display, &ext_path, format!("cannot load {shown}"));
                        None
                    }
                }
            }
        };
        chain.pop();

        let merged = base.map(|base| {
            let mut local = svc.clone();
            if let Value::Mapping(m) = &mut local {
                m.remove("extends");
            }
            let mut base = base;
            if let Value::Mapping(m) = &mut base {
                m.remove("extends");
            }
            merge(base, local, &["services", name]).unwrap_or(Value::Null)
        });
        self.resolved.insert(key, merged.clone());
        merged
    }

    fn other_file(&mut self, file: &Path, diags: &mut Diagnostics) -> Option<Value> {
        if let Some(v) = self.files.get(file) {
            return v.clone();
        }
        let shown = display_name(file, self.working_dir);
        let dir = file.parent().unwrap_or(Path::new("/"));
        // Relative paths in an extended file are relative to that file, as in Compose.
        let v = load_file(file, &shown, dir, self.env, diags);
        if let Some(v) = &v {
            // Checked on its own so that its mistakes name it, not the extending file.
            let lookup = |name: &str| self.env.get(name).cloned();
            let mut cx = Cx {
                file: &shown,
                diags,
                env: &lookup,
                fragment: true,
            };
            decode_project(&mut cx, v);
        }
        self.files.insert(file.to_path_buf(), v.clone());
        v
    }
}
