//! The file corpora: `tests/data/invalid/*.yaml` must fail with the messages their
//! `# expect:` lines name; `tests/data/valid/*.yaml` and the stacks in `examples/compose`
//! must load, and their canonical form (`berth config`) must load back to the same stack.

mod common;

use std::path::{Path, PathBuf};

use common::{errors, load_files as load_file, options};

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn data_dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(sub)
}

/// The environment the corpora are loaded with: enough for their required variables.
const ENV: &[(&str, &str)] = &[
    ("HOME", "/home/tester"),
    ("DB_PASSWORD", "s3cret"),
    ("API_TOKEN", "t0ken"),
];

#[test]
fn invalid_files_fail_with_their_expected_messages() {
    let dir = data_dir("invalid");
    let files = yaml_files(&dir);
    assert!(
        files.len() >= 20,
        "the invalid corpus is missing: {}",
        dir.display()
    );
    let mut failures = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("read");
        let expects: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect:"))
            .map(str::trim)
            .collect();
        assert!(
            !expects.is_empty(),
            "{} has no # expect: line",
            path.display()
        );
        let name = path
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        match load_file(&dir, &[&name], ENV) {
            Ok(_) => failures.push(format!("{name}: loaded without error")),
            Err(e) => {
                let got = errors(&e);
                for want in expects {
                    if !got.contains(want) {
                        failures.push(format!(
                            "{name}: expected {want:?} in:\n  {}",
                            got.replace('\n', "\n  ")
                        ));
                    }
                }
                // Every error names the file it is about (or the flag/service involved).
                for d in &e.errors {
                    if d.file.is_empty() && d.path.is_empty() {
                        failures.push(format!("{name}: error without a file or path: {d}"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Loads `files` in `dir`, prints the canonical form, loads that back (as `-f -` in the
/// same directory with the same environment) and checks it is the same stack.
fn round_trip(dir: &Path, files: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    let project = load_file(dir, files, env).map_err(|e| errors(&e))?;
    let text = spec::canonical::to_yaml(&project.stack).map_err(|e| e.to_string())?;
    let mut opts = options(dir, env);
    opts.files = vec![PathBuf::from("-")];
    opts.stdin_text = Some(text.clone());
    let again = spec::load(&opts)
        .map_err(|e| format!("canonical form does not load:\n{}\n{text}", errors(&e)))?;
    if again.stack != project.stack {
        let text2 = spec::canonical::to_yaml(&again.stack).unwrap_or_default();
        return Err(format!(
            "round trip changed the stack:\n--- first\n{text}\n--- second\n{text2}"
        ));
    }
    // The JSON form is YAML too, and loads back the same way.
    let json = spec::canonical::to_json(&project.stack).map_err(|e| e.to_string())?;
    opts.stdin_text = Some(json);
    let from_json =
        spec::load(&opts).map_err(|e| format!("JSON form does not load: {}", errors(&e)))?;
    if from_json.stack != project.stack {
        return Err("JSON round trip changed the stack".into());
    }
    Ok(())
}

#[test]
fn valid_files_load_and_round_trip() {
    let dir = data_dir("valid");
    let files = yaml_files(&dir);
    assert!(
        files.len() >= 10,
        "the valid corpus is missing: {}",
        dir.display()
    );
    let mut failures = Vec::new();
    for path in files {
        let name = path
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        if let Err(e) = round_trip(&dir, &[&name], ENV) {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[test]
fn examples_load_and_round_trip() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/compose");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("examples/compose")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("compose.yaml").is_file())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 4, "examples missing in {}", root.display());
    let mut failures = Vec::new();
    for dir in dirs {
        // No -f: discovery finds compose.yaml and compose.override.yaml, as for a user.
        if let Err(e) = round_trip(&dir, &[], ENV) {
            failures.push(format!("{}: {e}", dir.display()));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}
