//! `gitops::remote::sync` against real repositories, made with the `git` program in
//! temporary directories (the code under test never runs git; only these fixtures do).

// Test helpers may unwrap: a panic is how a test reports failure.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use gitops::remote::{sync, Auth, Remote, RemoteError};

mod common;

use common::{git, read, Fixture};

#[test]
fn clones_then_fetches_new_commits() {
    let f = Fixture::new();
    let first = f.commit(
        &[
            ("web.yaml", "services: {web: {image: nginx}}\n"),
            ("db/compose.yaml", "services: {db: {image: postgres}}\n"),
            ("bin/hook.sh", "#!/bin/sh\n"),
        ],
        "first",
    );
    fs::set_permissions(
        f.work.join("bin/hook.sh"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("db/compose.yaml", f.work.join("link.yaml")).unwrap();
    let second = f.commit(&[], "executable and symlink");
    assert_ne!(first, second);
    f.push("main");

    let checkout = sync(&f.remote(None), &f.cache).unwrap();
    assert_eq!(checkout.commit, second);
    assert_eq!(checkout.dir, f.cache.join("trees").join(&second));
    assert_eq!(
        read(&checkout.dir, "db/compose.yaml"),
        "services: {db: {image: postgres}}\n"
    );
    assert!(!checkout.dir.join(".git").exists());
    let mode = fs::metadata(checkout.dir.join("bin/hook.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "mode {mode:o}");
    let link = checkout.dir.join("link.yaml");
    assert!(fs::symlink_metadata(&link).unwrap().is_symlink());
    assert_eq!(fs::read_link(&link).unwrap(), Path::new("db/compose.yaml"));

    // Nothing new: the same tree, reused.
    let again = sync(&f.remote(None), &f.cache).unwrap();
    assert_eq!(again, checkout);

    let third = f.commit(
        &[("web.yaml", "services: {web: {image: caddy}}\n")],
        "caddy",
    );
    f.push("main");
    let checkout = sync(&f.remote(Some("main")), &f.cache).unwrap();
    assert_eq!(checkout.commit, third);
    assert_eq!(
        read(&checkout.dir, "web.yaml"),
        "services: {web: {image: caddy}}\n"
    );
    assert_eq!(f.trees(), {
        let mut want = vec![second, third];
        want.sort();
        want
    });
}

#[test]
fn a_force_push_that_rewinds_the_branch_is_followed() {
    let f = Fixture::new();
    let a = f.commit(&[("s.yaml", "a\n")], "a");
    let b = f.commit(&[("s.yaml", "b\n")], "b");
    f.push("main");
    assert_eq!(sync(&f.remote(None), &f.cache).unwrap().commit, b);

    // Back to a: an ancestor of what was fetched.
    f.push(&format!("{a}:refs/heads/main"));
    let checkout = sync(&f.remote(None), &f.cache).unwrap();
    assert_eq!(checkout.commit, a);
    assert_eq!(read(&checkout.dir, "s.yaml"), "a\n");

    // And to a commit that does not descend from b.
    git(&f.work, &["reset", "-q", "--hard", &a]);
    let c = f.commit(&[("s.yaml", "c\n")], "c");
    f.push("main");
    let checkout = sync(&f.remote(None), &f.cache).unwrap();
    assert_eq!(checkout.commit, c);
    assert_eq!(read(&checkout.dir, "s.yaml"), "c\n");
}

#[test]
fn follows_a_named_branch_or_the_remotes_head() {
    let f = Fixture::new();
    let main = f.commit(&[("s.yaml", "main\n")], "main");
    f.push("main");
    git(&f.work, &["checkout", "-q", "-b", "dev"]);
    let dev = f.commit(&[("s.yaml", "dev\n")], "dev");
    f.push("dev");

    assert_eq!(sync(&f.remote(None), &f.cache).unwrap().commit, main);
    let checkout = sync(&f.remote(Some("dev")), &f.cache).unwrap();
    assert_eq!(checkout.commit, dev);
    assert_eq!(read(&checkout.dir, "s.yaml"), "dev\n");
    let full = sync(&f.remote(Some("refs/heads/dev")), &f.cache).unwrap();
    assert_eq!(full.commit, dev);

    // The default branch is whatever the remote's HEAD names.
    git(&f.origin, &["symbolic-ref", "HEAD", "refs/heads/dev"]);
    assert_eq!(sync(&f.remote(None), &f.cache).unwrap().commit, dev);
}

#[test]
fn a_plain_local_path_is_a_remote() {
    let f = Fixture::new();
    let head = f.commit(&[("s.yaml", "x\n")], "x");
    f.push("main");
    let remote = Remote {
        url: f.origin.display().to_string(),
        branch: None,
        auth: Auth::None,
    };
    assert_eq!(sync(&remote, &f.cache).unwrap().commit, head);
}

#[test]
fn a_missing_branch_is_named_with_the_branches_there_are() {
    let f = Fixture::new();
    f.commit(&[("s.yaml", "x\n")], "x");
    f.push("main");
    let err = sync(&f.remote(Some("nope")), &f.cache).unwrap_err();
    assert!(
        matches!(&err, RemoteError::BranchMissing { branch, branches, .. }
            if branch == "nope" && branches == &["main".to_owned()]),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&f.url()) && message.contains("\"nope\"") && message.contains("main"),
        "{message}"
    );
}

#[test]
fn an_empty_remote_has_no_head_to_follow() {
    let f = Fixture::new();
    let err = sync(&f.remote(None), &f.cache).unwrap_err();
    assert!(matches!(err, RemoteError::NoHead { .. }), "{err:?}");
    assert!(err.to_string().contains("push a commit"), "{err}");
}

#[test]
fn a_nonexistent_repository_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for url in [
        format!("file://{}/nowhere.git", dir.path().display()),
        format!("{}/nowhere.git", dir.path().display()),
    ] {
        let remote = Remote {
            url: url.clone(),
            branch: None,
            auth: Auth::None,
        };
        let err = sync(&remote, &dir.path().join("cache")).unwrap_err();
        assert!(matches!(err, RemoteError::Fetch { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("nowhere.git"), "{message}");
        assert!(
            message.contains("check that the path is a git repository"),
            "{message}"
        );
    }
}

#[test]
fn only_the_newest_trees_are_kept() {
    let f = Fixture::new();
    let mut commits = Vec::new();
    for i in 0..5 {
        commits.push(f.commit(&[("s.yaml", &format!("{i}\n"))], &format!("{i}")));
        f.push("main");
        let checkout = sync(&f.remote(None), &f.cache).unwrap();
        assert_eq!(checkout.commit, commits[i]);
        assert!(checkout.dir.is_dir());
    }
    let mut want = commits[2..].to_vec();
    want.sort();
    assert_eq!(f.trees(), want);
}

#[test]
fn a_key_for_an_unreachable_ssh_host_fails_without_showing_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id_ed25519");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status();
    let Ok(status) = status else {
        // FIXME: the ssh test needs OpenSSH's ssh-keygen; without it only the unit tests
        // of the ssh command line run.
        eprintln!("ssh-keygen is not installed; skipping the ssh fixture");
        return;
    };
    assert!(status.success());
    let key_text = fs::read_to_string(&key).unwrap();
    // Port 9 on loopback: nothing listens there, so ssh fails at once.
    let remote = Remote {
        url: "ssh://git@127.0.0.1:9/srv/stacks.git".into(),
        branch: None,
        auth: Auth::SshKey(key.clone()),
    };
    let err = sync(&remote, &dir.path().join("cache")).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, RemoteError::Fetch { .. }), "{err:?}");
    assert!(
        message.contains("ssh://git@127.0.0.1:9/srv/stacks.git"),
        "{message}"
    );
    assert!(message.contains("known_hosts"), "{message}");
    let secret_line = key_text.lines().nth(1).unwrap();
    assert!(!message.contains(secret_line), "{message}");
}
