//! What a deployment stores: from a loaded Compose project to the [`StackRecord`] the
//! store keeps. `berth up` and `berth run` make one from the files on their host; the
//! git-ops loop will make one from a checkout, so the conversion lives here, on the
//! manager's side, and not in the CLI.
//!
//! Besides the stack itself, a record carries what the containers will read that the
//! stack only names: the digest of every file-sourced secret and config (so that
//! editing one recreates its users, see `orchestrator::spec_hash`), and the values of
//! the variables that `environment:`-sourced ones read.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use spec::task::StackRecord;

/// What the store keeps of a deployment of `stack` from the project `project`
/// (`stack` is the project's, or a part of it: the services `up` names, what `run`
/// depends on). Nothing of an earlier deployment (orphans, one-offs, scale, restarts,
/// stopped services): the API merges those in.
pub fn record_for(project: &spec::Project, stack: spec::Stack) -> StackRecord {
    StackRecord {
        contents: file_contents(&project.stack),
        data: file_data(&project.stack),
        secret_env: secret_environment(&project.stack, &project.environment),
        files: project
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect(),
        project_dir: project.project_dir.display().to_string(),
        ..StackRecord::new(stack)
    }
}

/// A digest of every file-sourced secret and config (`secrets.<key>` or
/// `configs.<key>` -> hex SHA-256), so that editing one recreates the containers that
/// use it (an unreadable file is left to the container's start to report).
pub fn file_contents(stack: &spec::Stack) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (kind, objects) in [("secrets", &stack.secrets), ("configs", &stack.configs)] {
        for (key, o) in objects {
            let Some(bytes) = o.file.as_ref().and_then(|f| std::fs::read(f).ok()) else {
                continue;
            };
            out.insert(format!("{kind}.{key}"), hex::encode(Sha256::digest(&bytes)));
        }
    }
    out
}

/// The content of every file-sourced secret and config (`secrets.<key>` -> base64),
/// which the store keeps so that a task gets it on any node. An unreadable file is
/// left to the container's start to report (it reads the file then).
pub fn file_data(stack: &spec::Stack) -> BTreeMap<String, String> {
    use base64::Engine as _;
    let mut out = BTreeMap::new();
    for (kind, objects) in [("secrets", &stack.secrets), ("configs", &stack.configs)] {
        for (key, o) in objects {
            if let Some(bytes) = o.file.as_ref().and_then(|f| std::fs::read(f).ok()) {
                let text = base64::engine::general_purpose::STANDARD.encode(bytes);
                out.insert(format!("{kind}.{key}"), text);
            }
        }
    }
    out
}

/// The variables `environment:`-sourced secrets and configs read, with their values in
/// `env`; no other variable of `env` is kept (the record is stored and replicated).
pub fn secret_environment(
    stack: &spec::Stack,
    env: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    stack
        .secrets
        .values()
        .chain(stack.configs.values())
        .filter_map(|o| o.environment.as_ref())
        .filter_map(|k| Some((k.clone(), env.get(k)?.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use spec::model::{FileObject, Stack};

    fn stack() -> Stack {
        Stack {
            name: "app".into(),
            services: BTreeMap::new(),
            networks: BTreeMap::new(),
            volumes: BTreeMap::new(),
            secrets: BTreeMap::new(),
            configs: BTreeMap::new(),
            extensions: BTreeMap::new(),
        }
    }

    fn from_file(path: &std::path::Path) -> FileObject {
        FileObject {
            file: Some(path.display().to_string()),
            ..FileObject::default()
        }
    }

    fn from_env(var: &str) -> FileObject {
        FileObject {
            environment: Some(var.into()),
            ..FileObject::default()
        }
    }

    #[test]
    fn a_file_sourced_secret_changes_its_digest_when_the_file_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (secret, config) = (dir.path().join("pw.txt"), dir.path().join("app.conf"));
        std::fs::write(&secret, "hunter2").expect("write");
        std::fs::write(&config, "port = 80").expect("write");
        let mut s = stack();
        s.secrets.insert("pw".into(), from_file(&secret));
        s.configs.insert("conf".into(), from_file(&config));
        // A file that is not there: left to the container's start to report.
        s.secrets
            .insert("gone".into(), from_file(&dir.path().join("missing")));

        let before = file_contents(&s);
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            ["configs.conf", "secrets.pw"]
        );
        assert_eq!(
            before["secrets.pw"],
            hex::encode(Sha256::digest(b"hunter2")),
            "the digest is the file's SHA-256, in hex"
        );

        std::fs::write(&secret, "hunter3").expect("write");
        let after = file_contents(&s);
        assert_ne!(before["secrets.pw"], after["secrets.pw"]);
        assert_eq!(before["configs.conf"], after["configs.conf"]);
    }

    #[test]
    fn environment_sourced_secrets_read_only_the_variables_they_name() {
        let mut s = stack();
        s.secrets.insert("token".into(), from_env("API_TOKEN"));
        s.configs.insert("motd".into(), from_env("MOTD"));
        s.secrets.insert("unset".into(), from_env("NOT_SET"));
        let env: BTreeMap<String, String> = [
            ("API_TOKEN", "s3cret"),
            ("MOTD", "hello"),
            ("HOME", "/root"),
            ("AWS_SECRET_ACCESS_KEY", "do not store me"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();

        let read = secret_environment(&s, &env);
        let expected: BTreeMap<String, String> = [("API_TOKEN", "s3cret"), ("MOTD", "hello")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(read, expected);
    }

    #[test]
    fn a_record_keeps_the_project_files_and_nothing_of_an_earlier_deployment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("pw.txt");
        std::fs::write(&secret, "hunter2").expect("write");
        let mut full = stack();
        full.secrets.insert("pw".into(), from_file(&secret));
        full.secrets.insert("token".into(), from_env("API_TOKEN"));
        let project = spec::Project {
            stack: full.clone(),
            warnings: vec![],
            files: vec![dir.path().join("compose.yaml")],
            project_dir: dir.path().to_path_buf(),
            all_profiles: vec![],
            environment: [("API_TOKEN".to_string(), "t".to_string())].into(),
        };
        // Deploy a part of the project: what it reads still comes from the whole.
        let mut part = full.clone();
        part.secrets.clear();

        let record = record_for(&project, part.clone());
        assert_eq!(record.stack, part);
        assert_eq!(
            record.files,
            [dir.path().join("compose.yaml").display().to_string()]
        );
        assert_eq!(record.project_dir, dir.path().display().to_string());
        assert_eq!(record.contents, file_contents(&full));
        assert_eq!(record.secret_env["API_TOKEN"], "t");
        assert!(record.orphans.is_empty() && record.oneoffs.is_empty());
        assert!(record.scale.is_empty() && record.restarted.is_empty());
        assert!(record.stopped.is_empty());
    }
}
