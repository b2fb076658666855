//! The fixture the remote tests share: a bare "origin" repository and a work clone,
//! made with the `git` program (the code under test never runs git; only these do).

// Each test binary uses part of it; helpers may unwrap (a panic fails the test).
#![allow(dead_code, clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use gitops::remote::{Auth, Remote};

/// A bare "origin" repository and a work clone to commit and push from.
pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub origin: PathBuf,
    pub work: PathBuf,
    pub cache: PathBuf,
}

/// Runs git with no user or system configuration, so the fixtures are the same on any
/// machine; returns its trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=berth", "-c", "user.email=berth@test"])
        .args(["-c", "protocol.file.allow=always"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("the tests need the git program to make fixture repositories");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let origin = dir.path().join("origin.git");
        let work = dir.path().join("work");
        let cache = dir.path().join("cache");
        git(
            dir.path(),
            &["init", "-q", "--bare", "-b", "main", "origin.git"],
        );
        git(dir.path(), &["init", "-q", "-b", "main", "work"]);
        git(
            &work,
            &["remote", "add", "origin", origin.to_str().unwrap()],
        );
        Fixture {
            _dir: dir,
            origin,
            work,
            cache,
        }
    }

    /// Writes `files` into the work tree, commits everything and returns the commit id.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (path, content) in files {
            let path = self.work.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
        }
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        git(&self.work, &["rev-parse", "HEAD"])
    }

    pub fn push(&self, refspec: &str) {
        git(&self.work, &["push", "-q", "-f", "origin", refspec]);
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.origin.display())
    }

    pub fn remote(&self, branch: Option<&str>) -> Remote {
        Remote {
            url: self.url(),
            branch: branch.map(str::to_owned),
            auth: Auth::None,
        }
    }

    pub fn trees(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.cache.join("trees"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }
}

pub fn read(dir: &Path, path: &str) -> String {
    fs::read_to_string(dir.join(path)).unwrap()
}
