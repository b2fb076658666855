//! Helpers shared by the spec crate's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use spec::{LoadError, LoadOptions, Project};

/// Options for loading in `dir` with an environment of exactly `env` (no process env).
pub fn options(dir: &Path, env: &[(&str, &str)]) -> LoadOptions {
    LoadOptions {
        working_dir: dir.to_path_buf(),
        environment: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        ..Default::default()
    }
}

/// Loads `files` (as given with `-f`; none means discovery) in `dir`.
pub fn load_files(dir: &Path, files: &[&str], env: &[(&str, &str)]) -> Result<Project, LoadError> {
    let mut opts = options(dir, env);
    opts.files = files.iter().map(PathBuf::from).collect();
    spec::load(&opts)
}

/// Loads one file given as text, as `berth config -f -` would in a directory that does
/// not exist (so nothing is read from disk).
pub fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Project, LoadError> {
    let mut opts = options(Path::new("/nonexistent/berth-test/app"), env);
    opts.files = vec![PathBuf::from("-")];
    opts.stdin_text = Some(text.to_string());
    spec::load(&opts)
}

/// All error lines of a failed load, one per line.
pub fn errors(e: &LoadError) -> String {
    e.errors
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn warnings(p: &Project) -> String {
    p.warnings
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes files (name, text) into a fresh temporary directory.
pub fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, text) in files {
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, text).expect("write");
    }
    dir
}
