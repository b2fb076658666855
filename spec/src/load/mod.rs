//! Loading a Compose project: from command-line options to a validated [`Stack`].
//!
//! The pipeline, in order:
//! 1. find the files (`-f`, `COMPOSE_FILE`, or discovery) and the project directory;
//! 2. build the environment (`.env` or `--env-file`, overridden by the process's);
//! 3. per file: parse (bounded), interpolate values, make paths absolute, resolve
//!    `extends` and `include`, and decode it alone so that its mistakes carry its name;
//! 4. merge the files with Compose's override rules and decode the result;
//! 5. name the project, attach default networks, name host objects;
//! 6. apply profiles, then validate references, cycles and conflicts.
//!
//! Nothing here reads the process environment or the working directory by itself: both
//! come in [`LoadOptions`], so tests (and the daemon) load projects deterministically.

mod extends;
mod files;
mod include;
mod tree;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_norway::Value;

use crate::decode::{decode_project, Cx};
use crate::diag::{Diagnostic, Diagnostics, LoadError};
use crate::merge::{merge, strip_tags};
use crate::model::{Network, ServiceNetwork, Stack};
use crate::origin::Origin;

pub use files::DEFAULT_FILES;
use files::{
    check_project_name, env_file_choice, find_files, layered_env, normalize_project_name,
    SourceFile,
};

/// What to load, as the command line and the caller's environment say.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `-f` files, in order; empty means `COMPOSE_FILE` or discovery.
    pub files: Vec<PathBuf>,
    /// `-p`.
    pub project_name: Option<String>,
    /// `--project-directory`; default: the directory of the first file.
    pub project_directory: Option<PathBuf>,
    /// `--env-file`, in order (later files win); default: `COMPOSE_ENV_FILES` from
    /// `environment`, else the `.env` of the working directory, then of the project
    /// directory (unless `COMPOSE_DISABLE_ENV_FILE` is true).
    pub env_files: Vec<PathBuf>,
    /// `--profile`; `COMPOSE_PROFILES` adds to these.
    pub profiles: Vec<String>,
    /// Services named on the command line: they are enabled whatever their profiles.
    pub services: Vec<String>,
    /// The process environment (overrides `.env`).
    pub environment: BTreeMap<String, String>,
    /// Where relative `-f` paths and the file search start.
    pub working_dir: PathBuf,
    /// The text of the file named `-` (standard input, read by the caller).
    pub stdin_text: Option<String>,
}

/// A loaded project.
#[derive(Debug, Clone)]
pub struct Project {
    pub stack: Stack,
    /// Problems that did not stop the load (unset variables, unsupported attributes).
    pub warnings: Vec<Diagnostic>,
    /// The files that made the project, absolute.
    pub files: Vec<PathBuf>,
    pub project_dir: PathBuf,
    /// Every profile named by any service, enabled or not (for `config --profiles`).
    pub all_profiles: Vec<String>,
    /// The project's environment: the process environment over `.env` (or
    /// `--env-file`), with `COMPOSE_PROJECT_NAME`; what `environment:`-sourced secrets
    /// and configs read.
    pub environment: BTreeMap<String, String>,
}

/// State shared by a load and the loads of the projects it includes.
pub(crate) struct LoadCtx<'a> {
    pub working_dir: &'a Path,
    /// The environment of the top-level project (process environment over its `.env`,
    /// with `COMPOSE_PROJECT_NAME`): included projects inherit it.
    pub parent_env: &'a BTreeMap<String, String>,
    pub include_chain: Vec<PathBuf>,
}

/// The merged tree of a set of files.
pub(crate) struct Tree {
    pub value: Value,
    pub origin: Origin,
    /// Whether each file was decoded on its own (so its diagnostics are already in,
    /// under its own name); if not, decoding the merged tree reports everything.
    pub checked_each: bool,
}

/// Loads, merges, normalizes and validates a project.
pub fn load(opts: &LoadOptions) -> Result<Project, LoadError> {
    let wd = &opts.working_dir;
    // COMPOSE_FILE may come from the .env of the working directory, as in Compose; read
    // it before the files are known. That directory is docker compose's first guess:
    // --project-directory, else the first -f file's directory, else the working one.
    let choice = env_file_choice(&opts.env_files, &opts.environment)?;
    let (env_files, default_env) = match &choice {
        Some(files) => (files.as_slice(), true),
        None => (&[][..], false),
    };
    let early_dir = match (&opts.project_directory, opts.files.first()) {
        (Some(d), _) => files::absolute(wd, d, None),
        (None, Some(f)) if f.as_os_str() != "-" => {
            let f = files::absolute(wd, f, None);
            f.parent().map_or_else(|| wd.clone(), Path::to_path_buf)
        }
        _ => wd.clone(),
    };
    let early_dirs: Vec<&Path> = if default_env {
        vec![&early_dir]
    } else {
        Vec::new()
    };
    let early_env = layered_env(env_files, &early_dirs, wd, &opts.environment)?;
    let mut files = find_files(&opts.files, wd, &early_env)?;
    for f in files.iter_mut().filter(|f| f.display == "-") {
        f.text = Some(opts.stdin_text.clone().unwrap_or_default());
    }
    let project_dir = match &opts.project_directory {
        Some(d) => files::absolute(wd, d, None),
        None => files[0]
            .path
            .parent()
            .unwrap_or(Path::new("/"))
            .to_path_buf(),
    };
    // The project directory's .env adds what the first one did not set.
    let dirs: Vec<&Path> = if default_env {
        vec![&early_dir, &project_dir]
    } else {
        Vec::new()
    };
    let mut env = layered_env(env_files, &dirs, wd, &opts.environment)?;

    let mut diags = Diagnostics::default();
    let parsed = parse_all(&files, &mut diags);
    if diags.has_errors() {
        return Err(LoadError::from_diagnostics(diags));
    }
    // The name is decided before interpolation so that files can use
    // ${COMPOSE_PROJECT_NAME}, as in Compose.
    let main_file = files[0].display.clone();
    let name = project_name(opts, &env, &parsed, &project_dir, &mut diags);
    env.insert("COMPOSE_PROJECT_NAME".to_string(), name.clone());

    let mut cx = LoadCtx {
        working_dir: wd,
        parent_env: &env,
        include_chain: Vec::new(),
    };
    cx.include_chain.push(files[0].path.clone());
    let tree = load_tree(parsed, &project_dir, &env, &mut cx, &mut diags);
    let Some(tree) = tree.filter(|_| !diags.has_errors()) else {
        return Err(LoadError::from_diagnostics(diags));
    };

    // Decode the merged tree. When each file was checked on its own, its problems are
    // in already under its own name; only what the combination adds is new here.
    let lookup = |name: &str| env.get(name).cloned();
    let mut merged_diags = Diagnostics::default();
    let decoded = {
        let mut cxd = Cx {
            file: &main_file,
            diags: &mut merged_diags,
            env: &lookup,
            fragment: false,
        };
        decode_project(&mut cxd, &tree.value)
    };
    diags.extend(if tree.checked_each {
        merged_diags.errors_only()
    } else {
        merged_diags
    });
    let Some(decoded) = decoded.filter(|_| !diags.has_errors()) else {
        return Err(LoadError::from_diagnostics(diags));
    };

    let mut stack = decoded;
    stack.name = name;
    normalize(&mut stack);
    // Before profiles, so that a reference to a disabled service is reported as a
    // dependency on it is.
    let implicit = crate::references::add_implicit_dependencies(
        &mut stack,
        &tree.origin,
        &main_file,
        &mut diags,
    );

    // --profile replaces COMPOSE_PROFILES, as in Compose.
    let profiles: BTreeSet<String> = if opts.profiles.is_empty() {
        let list = env
            .get("COMPOSE_PROFILES")
            .map(String::as_str)
            .unwrap_or_default();
        list.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect()
    } else {
        opts.profiles.iter().cloned().collect()
    };
    let all_profiles: BTreeSet<String> = stack
        .services
        .values()
        .flat_map(|s| s.profiles.iter().cloned())
        .collect();
    crate::profiles::apply(
        &mut stack,
        &profiles,
        &opts.services,
        &tree.origin,
        &implicit,
        &main_file,
        &mut diags,
    );
    crate::validate::validate(&stack, &tree.origin, &main_file, &mut diags);

    if diags.has_errors() {
        return Err(LoadError::from_diagnostics(diags));
    }
    Ok(Project {
        stack,
        warnings: diags.into_vec(),
        files: files.into_iter().map(|f| f.path).collect(),
        project_dir,
        all_profiles: all_profiles.into_iter().collect(),
        environment: env,
    })
}

/// Reads and parses each file; the ones that fail are reported and left out.
/// Files that are all empty make no project, as in compose-go.
pub(crate) fn parse_all(files: &[SourceFile], diags: &mut Diagnostics) -> Vec<(SourceFile, Value)> {
    let parsed: Vec<(SourceFile, Value)> = files
        .iter()
        .filter_map(|f| {
            let value = tree::read_and_parse(&f.path, f.text.as_deref(), &f.display, diags)?;
            Some((f.clone(), value))
        })
        .collect();
    let empty = |v: &Value| v.as_mapping().is_some_and(|m| m.is_empty());
    if parsed.len() == files.len() && parsed.iter().all(|(_, v)| empty(v)) {
        if let Some(first) = files.first() {
            let what = if files.len() > 1 {
                "the files are all empty"
            } else {
                "the file is empty"
            };
            diags.error(
                &first.display,
                "",
                format!("{what}; a Compose file needs at least a services: section"),
            );
        }
    }
    parsed
}

/// Steps 3 and 4 for a set of parsed files: each one finished, then all merged.
pub(crate) fn load_tree(
    files: Vec<(SourceFile, Value)>,
    project_dir: &Path,
    env: &BTreeMap<String, String>,
    cx: &mut LoadCtx,
    diags: &mut Diagnostics,
) -> Option<Tree> {
    // Decode each file on its own when a problem could otherwise be blamed on the wrong
    // file: several files, an included project, or files brought in by include or
    // extends. A lone plain file is decoded once, as the merged project.
    let brings_files = |v: &Value| {
        v.get("include").is_some()
            || v.get("services")
                .and_then(Value::as_mapping)
                .is_some_and(|m| {
                    m.values()
                        .any(|s| s.get("extends").and_then(|e| e.get("file")).is_some())
                })
    };
    let checked_each =
        files.len() > 1 || cx.include_chain.len() > 1 || files.iter().any(|(_, v)| brings_files(v));

    let mut merged: Option<Value> = None;
    let mut origin = Origin::default();
    let mut ext = extends::Extends::new(env, cx.working_dir);
    for (f, value) in files {
        let mut value = tree::finish(value, &f.display, project_dir, env, diags);
        origin.record(&value, &f.display, checked_each);
        if checked_each {
            // Fragment mode: an override file may hold half a secret or a service
            // without an image; completeness is checked on the merged project.
            let lookup = |name: &str| env.get(name).cloned();
            let mut cxd = Cx {
                file: &f.display,
                diags,
                env: &lookup,
                fragment: true,
            };
            decode_project(&mut cxd, &value);
        }
        if let Some(included) = include::apply(&mut value, &f.display, project_dir, cx, diags) {
            origin.absorb(included);
        }
        ext.apply(&mut value, &f.path, &f.display, diags);
        merged = Some(match merged {
            None => value,
            Some(base) => merge(base, value, &[]).unwrap_or(Value::Null),
        });
    }
    Some(Tree {
        value: strip_tags(merged?)?,
        origin,
        checked_each,
    })
}

/// `-p`, then `COMPOSE_PROJECT_NAME`, then `name:` (the last file's), then the project
/// directory's name. Names given explicitly must be valid; the others are normalized.
fn project_name(
    opts: &LoadOptions,
    env: &BTreeMap<String, String>,
    parsed: &[(SourceFile, Value)],
    project_dir: &Path,
    diags: &mut Diagnostics,
) -> String {
    let explicit = [
        (opts.project_name.as_deref(), "-p"),
        (
            env.get("COMPOSE_PROJECT_NAME").map(String::as_str),
            "COMPOSE_PROJECT_NAME",
        ),
    ];
    for (name, source) in explicit {
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            continue;
        };
        if let Err(e) = check_project_name(name) {
            diags.error("", "", format!("{source}: {e}"));
        }
        return name.to_string();
    }
    let from_file = parsed.iter().rev().find_map(|(f, v)| {
        let text = v.get("name").and_then(Value::as_str)?;
        tree::interpolate_one(text, "name", &f.display, env, diags).filter(|n| !n.is_empty())
    });
    let (raw, source) = match from_file {
        Some(n) => (n, "the name: attribute"),
        None => {
            let dir = project_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
            (dir.unwrap_or_default(), "the project directory's name")
        }
    };
    let name = normalize_project_name(&raw);
    if name.is_empty() {
        diags.error(
            "",
            "",
            format!("cannot make a project name from {source} ({raw:?}); set one with -p or name:"),
        );
    }
    name
}

/// What Compose adds to every project: the `default` network for services that name no
/// network, and host names for networks, volumes, secrets and configs.
fn normalize(stack: &mut Stack) {
    let mut uses_default = false;
    for svc in stack.services.values_mut() {
        // `network_mode` replaces networking altogether; such a service joins no network.
        if svc.networks.is_empty() && svc.network_mode.is_none() {
            svc.networks
                .insert("default".to_string(), ServiceNetwork::default());
        }
        uses_default |= svc.networks.contains_key("default");
    }
    if uses_default && !stack.networks.contains_key("default") {
        stack
            .networks
            .insert("default".to_string(), Network::default());
    }
    let project = stack.name.clone();
    let host_name = |key: &str, name: &mut String, external: bool| {
        if name.is_empty() {
            *name = if external {
                key.to_string()
            } else {
                format!("{project}_{key}")
            };
        }
    };
    for (k, n) in stack.networks.iter_mut() {
        host_name(k, &mut n.name, n.external);
    }
    for (k, v) in stack.volumes.iter_mut() {
        host_name(k, &mut v.name, v.external);
    }
    for (k, s) in stack.secrets.iter_mut().chain(stack.configs.iter_mut()) {
        host_name(k, &mut s.name, s.external);
    }
}
