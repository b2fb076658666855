//! Which files make a project, what it is called, and the environment it is read with.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::diag::LoadError;

/// File names Compose looks for, in order of preference.
pub const DEFAULT_FILES: &[&str] = &[
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];
const OVERRIDE_FILES: &[&str] = &[
    "compose.override.yaml",
    "compose.override.yml",
    "docker-compose.override.yaml",
    "docker-compose.override.yml",
];

/// A file of the project: its absolute path and the name to show the user.
#[derive(Debug, Clone)]
pub(crate) struct SourceFile {
    pub path: PathBuf,
    pub display: String,
    /// The file's text when it does not come from disk (`-f -`, tests, fuzzing).
    pub text: Option<String>,
}

/// Joins a relative path onto `base` and removes `.` and `..` lexically: the way Compose
/// makes paths absolute. (Symlinks are resolved later, inside their root, by whoever
/// opens the path.)
pub(crate) fn absolute(base: &Path, p: &Path, home: Option<&str>) -> PathBuf {
    let text = p.to_string_lossy();
    let joined = match (text.strip_prefix('~'), home) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
            PathBuf::from(format!("{home}{rest}"))
        }
        _ if p.is_absolute() => p.to_path_buf(),
        _ => base.join(p),
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Name to show for a file: relative to the working directory when it is inside it.
pub(crate) fn display_name(path: &Path, working_dir: &Path) -> String {
    path.strip_prefix(working_dir)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// The project's files: `-f` files, else `COMPOSE_FILE`, else the first default file
/// found in the working directory or one of its parents, plus its override file.
pub(crate) fn find_files(
    explicit: &[PathBuf],
    working_dir: &Path,
    env: &BTreeMap<String, String>,
) -> Result<Vec<SourceFile>, LoadError> {
    let from_env: Vec<PathBuf> = match env.get("COMPOSE_FILE") {
        Some(list) if explicit.is_empty() && !list.is_empty() => {
            let sep = env
                .get("COMPOSE_PATH_SEPARATOR")
                .map(String::as_str)
                .unwrap_or(":");
            list.split(sep)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect()
        }
        _ => Vec::new(),
    };
    let named = if explicit.is_empty() {
        &from_env
    } else {
        explicit
    };
    if !named.is_empty() {
        return named
            .iter()
            .map(|p| {
                let path = absolute(working_dir, p, None);
                // `-` is standard input, read by the caller.
                if p.as_os_str() != "-" && !path.is_file() {
                    return Err(LoadError::single(
                        &p.to_string_lossy(),
                        "",
                        "no such file; check the path given with -f or COMPOSE_FILE",
                    ));
                }
                Ok(SourceFile {
                    display: p.to_string_lossy().into_owned(),
                    path,
                    text: None,
                })
            })
            .collect();
    }
    let mut dir = Some(working_dir);
    while let Some(d) = dir {
        if let Some(main) = DEFAULT_FILES
            .iter()
            .map(|f| d.join(f))
            .find(|p| p.is_file())
        {
            let mut files = vec![main];
            if let Some(o) = OVERRIDE_FILES
                .iter()
                .map(|f| d.join(f))
                .find(|p| p.is_file())
            {
                files.push(o);
            }
            return Ok(files
                .into_iter()
                .map(|path| SourceFile {
                    display: display_name(&path, working_dir),
                    path,
                    text: None,
                })
                .collect());
        }
        dir = d.parent();
    }
    Err(LoadError::single(
        "",
        "",
        format!(
            "no Compose file found in {} or its parents (looked for {}); name one with -f",
            working_dir.display(),
            DEFAULT_FILES.join(", ")
        ),
    ))
}

/// An included project's environment: its `env_file`s, or the `.env` of its directory.
pub(crate) fn project_env(
    env_files: &[PathBuf],
    project_dir: &Path,
    working_dir: &Path,
    process_env: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, LoadError> {
    layered_env(env_files, &[project_dir], working_dir, process_env)
}

/// Where the top-level project's environment comes from, before the files are known:
/// `--env-file`, else `COMPOSE_ENV_FILES` (comma-separated, as docker compose reads
/// it), else the default `.env` files unless `COMPOSE_DISABLE_ENV_FILE` is true. Both
/// variables come from the process environment only, as in docker compose. `None`:
/// no default `.env`.
pub(crate) fn env_file_choice(
    env_files: &[PathBuf],
    process_env: &BTreeMap<String, String>,
) -> Result<Option<Vec<PathBuf>>, LoadError> {
    if !env_files.is_empty() {
        return Ok(Some(env_files.to_vec()));
    }
    if let Some(list) = process_env.get("COMPOSE_ENV_FILES") {
        let files: Vec<PathBuf> = (list.split(','))
            .filter(|f| !f.is_empty())
            .map(PathBuf::from)
            .collect();
        if !files.is_empty() {
            return Ok(Some(files));
        }
    }
    match process_env
        .get("COMPOSE_DISABLE_ENV_FILE")
        .map(String::as_str)
    {
        // Go's strconv.ParseBool, which compose-go reads it with.
        None | Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(Some(Vec::new())),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(None),
        Some(other) => Err(LoadError::single(
            "",
            "",
            format!("COMPOSE_DISABLE_ENV_FILE={other:?}: expected true or false"),
        )),
    }
}

/// The environment files are interpolated with, as docker compose builds it: the
/// process environment, over the `env_files` given (later files winning) or, with none
/// given, over the `.env` of each of `dirs` (the working directory's, then the project
/// directory's: a variable set by an earlier one is kept, as compose-go's
/// `Mapping.Merge` does). A default `.env` that is missing or a directory is skipped.
pub(crate) fn layered_env(
    env_files: &[PathBuf],
    dirs: &[&Path],
    working_dir: &Path,
    process_env: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, LoadError> {
    let explicit = !env_files.is_empty();
    let files: Vec<PathBuf> = if explicit {
        env_files
            .iter()
            .map(|p| absolute(working_dir, p, None))
            .collect()
    } else {
        let mut files: Vec<PathBuf> = Vec::new();
        for d in dirs {
            let f = d.join(".env");
            if !files.contains(&f) {
                files.push(f);
            }
        }
        files
    };
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for file in files {
        let shown = display_name(&file, working_dir);
        if !explicit && file.is_dir() {
            continue;
        }
        let text = match crate::yaml::read_limited(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => continue,
            Err(e) => {
                return Err(LoadError::single(
                    &shown,
                    "",
                    format!("cannot read env file: {e}"),
                ))
            }
        };
        let lookup = |name: &str| process_env.get(name).or_else(|| env.get(name)).cloned();
        let pairs = crate::dotenv::parse(&text, &lookup)
            .map_err(|e| LoadError::single(&shown, "", e.to_string()))?;
        if explicit {
            env.extend(pairs);
        } else {
            for (k, v) in pairs {
                env.entry(k).or_insert(v);
            }
        }
    }
    env.extend(process_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(env)
}

pub(crate) use crate::names::{check_project_name, normalize_project_name};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names() {
        for (dir, want) in [
            ("My App", "myapp"),
            ("_hidden-Thing.v2", "hidden-thingv2"),
            ("ünïcode", "ncode"),
            ("123", "123"),
        ] {
            assert_eq!(normalize_project_name(dir), want, "{dir}");
        }
        assert!(check_project_name("web_2-x").is_ok());
        let err = check_project_name("My App").unwrap_err();
        assert!(err.contains("\"myapp\""), "{err}");
        assert!(check_project_name("-x").is_err());
        assert!(check_project_name("").is_err());
    }

    #[test]
    fn absolute_paths() {
        let base = Path::new("/srv/app");
        for (p, want) in [
            ("./data", "/srv/app/data"),
            ("data/../logs", "/srv/app/logs"),
            ("../../../../etc", "/etc"),
            ("/abs/x", "/abs/x"),
            ("~/x", "/home/u/x"),
            ("~", "/home/u"),
            ("~user/x", "/srv/app/~user/x"),
        ] {
            assert_eq!(
                absolute(base, Path::new(p), Some("/home/u")),
                PathBuf::from(want),
                "{p}"
            );
        }
    }
}
