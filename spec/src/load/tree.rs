//! One file, made ready to merge: parsed, interpolated, with relative paths made absolute.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_norway::Value;

use super::files::absolute;
use crate::diag::{index, join, Diagnostics};
use crate::interpolate::interpolate;

/// Reads, parses and finishes `path` (see [`finish`]). `None` when the file cannot be
/// used at all (already reported).
pub(crate) fn load_file(
    path: &Path,
    display: &str,
    base_dir: &Path,
    env: &BTreeMap<String, String>,
    diags: &mut Diagnostics,
) -> Option<Value> {
    let value = read_and_parse(path, None, display, diags)?;
    Some(finish(value, display, base_dir, env, diags))
}

/// Reads (unless `text` is given) and parses a Compose file: one YAML document whose
/// top level is a mapping.
pub(crate) fn read_and_parse(
    path: &Path,
    text: Option<&str>,
    display: &str,
    diags: &mut Diagnostics,
) -> Option<Value> {
    let owned;
    let text = match text {
        Some(t) => t,
        None => match crate::yaml::read_limited(path) {
            Ok(t) => {
                owned = t;
                &owned
            }
            Err(e) => {
                diags.error(display, "", format!("cannot read the file: {e}"));
                return None;
            }
        },
    };
    let value = match crate::yaml::parse(text) {
        Ok(v) => v,
        Err(e) => {
            diags.error(display, "", e);
            return None;
        }
    };
    match &value {
        Value::Mapping(_) => Some(value),
        // An empty override changes nothing (compose-go merges it as an empty mapping);
        // a project whose files are all empty is refused by `parse_all`.
        Value::Null => Some(Value::Mapping(serde_norway::Mapping::new())),
        other => {
            diags.error(
                display,
                "",
                format!(
                    "expected a mapping at the top level (services:, networks: ...), found {}",
                    crate::decode::kind(other)
                ),
            );
            None
        }
    }
}

/// Interpolates a parsed file with `env` and resolves its relative paths against
/// `base_dir`.
pub(crate) fn finish(
    mut value: Value,
    display: &str,
    base_dir: &Path,
    env: &BTreeMap<String, String>,
    diags: &mut Diagnostics,
) -> Value {
    let mut unset = BTreeSet::new();
    interpolate_tree(&mut value, At::Root, display, env, diags, &mut unset);
    resolve_paths(&mut value, base_dir, env.get("HOME").map(String::as_str));
    value
}

/// Interpolates one string on its own (the project `name:`, read before the rest).
pub(crate) fn interpolate_one(
    text: &str,
    path: &str,
    display: &str,
    env: &BTreeMap<String, String>,
    diags: &mut Diagnostics,
) -> Option<String> {
    let lookup = |name: &str| env.get(name).cloned();
    match interpolate(text, &lookup) {
        Ok(done) => Some(done.value),
        Err(e) => {
            diags.error(display, path, e.to_string());
            None
        }
    }
}

/// Where a value sits in the file, as a chain of parents on the stack: most values need
/// no path at all, so it is rendered only when there is something to report.
#[derive(Clone, Copy)]
enum At<'p> {
    Root,
    Key(&'p At<'p>, &'p str),
    Index(&'p At<'p>, usize),
}

impl At<'_> {
    fn render(&self) -> String {
        match self {
            At::Root => String::new(),
            At::Key(parent, key) => join(&parent.render(), key),
            At::Index(parent, i) => index(&parent.render(), *i),
        }
    }
}

/// Interpolates every string value (never keys) in place. Unset variables are warned
/// about once per file, as Compose does.
fn interpolate_tree(
    v: &mut Value,
    at: At,
    file: &str,
    env: &BTreeMap<String, String>,
    diags: &mut Diagnostics,
    unset: &mut BTreeSet<String>,
) {
    match v {
        Value::String(s) => {
            if !s.contains('$') {
                return;
            }
            let lookup = |name: &str| env.get(name).cloned();
            match interpolate(s, &lookup) {
                Ok(done) => {
                    for name in done.unset {
                        if unset.insert(name.clone()) {
                            diags.warn(
                                file,
                                &at.render(),
                                format!("variable {name} is not set; using an empty string"),
                            );
                        }
                    }
                    *s = done.value;
                }
                Err(e) => diags.error(file, &at.render(), e.to_string()),
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_tree(item, At::Index(&at, i), file, env, diags, unset);
            }
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                let key = k.as_str().unwrap_or("?");
                interpolate_tree(item, At::Key(&at, key), file, env, diags, unset);
            }
        }
        Value::Tagged(t) => interpolate_tree(&mut t.value, at, file, env, diags, unset),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Makes the file's relative host paths absolute against `base`: build contexts, env
/// and label files, bind-mount sources, extends files, secret/config files and seccomp profiles
/// (`security_opt: [seccomp=FILE]`). Compose resolves
/// them against the directory of the project (or of the extended/included file), not
/// against wherever the command happens to run.
pub(crate) fn resolve_paths(root: &mut Value, base: &Path, home: Option<&str>) {
    let abs = |p: &str| {
        absolute(base, Path::new(p), home)
            .to_string_lossy()
            .into_owned()
    };
    if let Some(Value::Mapping(services)) = root.get_mut("services") {
        for (_, svc) in services.iter_mut() {
            let Value::Mapping(svc) = svc else { continue };
            match svc.get_mut("build") {
                Some(Value::String(ctx)) if is_local(ctx) => *ctx = abs(ctx),
                Some(Value::Mapping(b)) => {
                    if let Some(Value::String(ctx)) = b.get_mut("context") {
                        if is_local(ctx) {
                            *ctx = abs(ctx);
                        }
                    }
                }
                _ => {}
            }
            if let Some(ef) = svc.get_mut("env_file") {
                let mut fix = |v: &mut Value| match v {
                    Value::String(p) => *p = abs(p),
                    Value::Mapping(m) => {
                        if let Some(Value::String(p)) = m.get_mut("path") {
                            *p = abs(p);
                        }
                    }
                    _ => {}
                };
                match ef {
                    Value::Sequence(items) => items.iter_mut().for_each(&mut fix),
                    other => fix(other),
                }
            }
            // `label_file: a.labels` or a list of them, as env files.
            match svc.get_mut("label_file") {
                Some(Value::String(p)) => *p = abs(p),
                Some(Value::Sequence(items)) => {
                    for item in items {
                        if let Value::String(p) = item {
                            *p = abs(p);
                        }
                    }
                }
                _ => {}
            }
            if let Some(Value::Sequence(vols)) = svc.get_mut("volumes") {
                for vol in vols {
                    match vol {
                        Value::String(spec) => {
                            // Short syntax SOURCE:TARGET[:MODE]; a source starting with
                            // `.` or `~` is a host path (anything else is absolute or a
                            // volume name).
                            if let Some((src, rest)) = spec.split_once(':') {
                                if src.starts_with('.') || src.starts_with('~') {
                                    *spec = format!("{}:{rest}", abs(src));
                                }
                            }
                        }
                        Value::Mapping(m) => {
                            let is_bind = m.get("type").and_then(Value::as_str) == Some("bind");
                            if let (true, Some(Value::String(src))) = (is_bind, m.get_mut("source"))
                            {
                                *src = abs(src);
                            }
                        }
                        _ => {}
                    }
                }
            }
            // `seccomp=PROFILE.json`: a file of the project, like an env file.
            if let Some(Value::Sequence(opts)) = svc.get_mut("security_opt") {
                for opt in opts {
                    let Value::String(text) = opt else { continue };
                    if let Some(("seccomp", v)) = text.split_once(['=', ':']) {
                        if v != "unconfined" && !v.trim_start().starts_with('{') {
                            *text = format!("seccomp={}", abs(v));
                        }
                    }
                }
            }
            if let Some(Value::Mapping(ext)) = svc.get_mut("extends") {
                if let Some(Value::String(f)) = ext.get_mut("file") {
                    *f = abs(f);
                }
            }
        }
    }
    // The "local bind volume" idiom: a named volume whose device is a host directory.
    if let Some(Value::Mapping(volumes)) = root.get_mut("volumes") {
        for (_, vol) in volumes.iter_mut() {
            let Some(Value::Mapping(opts)) = vol.get_mut("driver_opts") else {
                continue;
            };
            let is_bind = opts
                .get("o")
                .and_then(Value::as_str)
                .is_some_and(|o| o.split(',').any(|x| x == "bind"));
            if let (true, Some(Value::String(dev))) = (is_bind, opts.get_mut("device")) {
                *dev = abs(dev);
            }
        }
    }
    for section in ["secrets", "configs"] {
        if let Some(Value::Mapping(items)) = root.get_mut(section) {
            for (_, item) in items.iter_mut() {
                if let Some(Value::String(f)) = item.get_mut("file") {
                    *f = abs(f);
                }
            }
        }
    }
}

/// A build context that is a directory, not a URL Compose would hand to the builder.
fn is_local(ctx: &str) -> bool {
    !(ctx.contains("://") || ctx.starts_with("git@") || ctx.starts_with("github.com/"))
}
