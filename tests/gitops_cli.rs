//! Git-ops end to end: a real daemon keeps the stacks of a real directory deployed
//! (inotify, real containers), through the CLI a user types.

#[path = "stack/fixture.rs"]
mod fixture;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fixture::Fixture;
use serde_json::Value;

/// A fixture with a source directory beside its project, and stack names unique to it.
struct Gitops {
    f: Fixture,
    /// Prefix of this test's stack names.
    p: String,
}

impl Gitops {
    fn new(tag: &str) -> Gitops {
        let mut f = Fixture::new(tag, "services: {}\n");
        std::fs::create_dir_all(f.tmp.path().join("src")).expect("src dir");
        f.start_daemon();
        let p = format!("g{}{}", std::process::id() % 100_000, tag.len());
        Gitops { f, p }
    }

    fn src(&self) -> PathBuf {
        self.f.tmp.path().join("src")
    }

    fn stack(&self, s: &str) -> String {
        format!("{}{s}", self.p)
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.src().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        // As an editor saves: a temporary file renamed over the old one.
        let tmp = path.with_extension("swp~");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
    }

    /// `gitops status --format json`, by stack name.
    fn status(&self) -> Vec<Value> {
        let out = self.f.ok(&["gitops", "status", "--format", "json"]);
        serde_json::from_str(&out).expect("status json")
    }

    fn stack_status(&self, s: &str) -> Option<Value> {
        let name = self.stack(s);
        self.status()
            .into_iter()
            .find(|v| v["stack"] == name.as_str())
    }

    /// Waits until stack `s`'s status satisfies `cond`; returns it.
    fn wait_status(&self, s: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let st = self.stack_status(s);
            if let Some(v) = st.as_ref().filter(|v| cond(v)) {
                return v.clone();
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {what} of stack {s}: {st:#?}\ndaemon log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.f.tmp.path().join("daemon.log")).unwrap_or_default()
    }

    /// The running containers of stack `s`: (name, id).
    fn running(&self, s: &str) -> Vec<(String, String)> {
        let name = self.stack(s);
        let out = self.f.ok(&["-p", &name, "ps", "--format", "json"]);
        let rows: Vec<Value> = serde_json::from_str(&out).expect("ps json");
        rows.iter()
            .filter(|r| r["State"] == "running")
            .map(|r| {
                (
                    r["Name"].as_str().unwrap_or_default().to_string(),
                    r["ID"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    fn wait_running(
        &self,
        s: &str,
        what: &str,
        cond: impl Fn(&[(String, String)]) -> bool,
    ) -> Vec<(String, String)> {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.running(s);
            if cond(&r) {
                return r;
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {what} of stack {s}: {r:?}\nstatus: {:#?}\ndaemon log:\n{}",
                self.stack_status(s),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn runs(&self, s: &str) -> Vec<Value> {
        self.stack_status(s)
            .and_then(|v| v["runs"].as_array().cloned())
            .unwrap_or_default()
    }
}

fn service(env: &str) -> String {
    format!(
        "services:\n  web:\n    image: busybox:local\n    command: [sleep, '100000']\n    \
         stop_grace_period: 1s\n    environment:\n      MODE: {env}\n"
    )
}

fn result(v: &Value) -> &str {
    v["result"].as_str().unwrap_or_default()
}

#[test]
fn a_watched_directory_converges_reports_and_owns_only_what_it_deployed() {
    let g = Gitops::new("gitops");
    let (a, b, c) = (g.stack("a"), g.stack("b"), g.stack("c"));
    g.write(&format!("{a}.yaml"), &service("one"));
    let src = g.src();
    let added = g.f.berth(&[
        "gitops",
        "add",
        src.to_str().expect("utf-8"),
        "--name",
        "src",
    ]);
    assert!(
        added.status.success(),
        "{}{}",
        String::from_utf8_lossy(&added.stdout),
        String::from_utf8_lossy(&added.stderr)
    );
    // `add` waits for the first sync and shows it.
    let shown = String::from_utf8_lossy(&added.stdout);
    assert!(shown.contains(&a) && shown.contains("synced"), "{shown}");
    let first = g.wait_running("a", "its container", |r| r.len() == 1);
    let st = g.wait_status("a", "health", |v| v["health"] == "healthy");
    assert_eq!(st["path"], format!("{a}.yaml"));
    assert_eq!(g.runs("a").len(), 1, "one deployment: {:#?}", g.runs("a"));

    // A change is deployed, saying why.
    g.write(&format!("{a}.yaml"), &service("two"));
    let second = g.wait_running("a", "the recreated container", |r| {
        r.len() == 1 && r[0].1 != first[0].1
    });
    let runs = g.runs("a");
    let last = runs.last().expect("a run");
    assert_eq!(last["action"], "deploy");
    let why = last["reasons"].to_string();
    assert!(
        why.contains("services.web") && why.contains("environment.MODE"),
        "{why}"
    );
    // The variable's value is not shown: it may be a secret.
    assert!(!why.contains("two"), "{why}");

    // A folder stack, with its own .env.
    g.write(
        &format!("{b}/compose.yaml"),
        "services:\n  app:\n    image: busybox:${IMAGE_TAG}\n    command: [sleep, '100000']\n    stop_grace_period: 1s\n",
    );
    g.write(&format!("{b}/.env"), "IMAGE_TAG=local\n");
    g.wait_running("b", "the folder stack", |r| r.len() == 1);
    let b_first = g.running("b");

    // An image that cannot be had is reported as the loader's errors are, and the
    // stack is not deployed.
    let d = g.stack("d");
    g.write(
        &format!("{d}.yaml"),
        "services:\n  web:\n    image: nowhere/missing:1\n    pull_policy: never\n",
    );
    let st = g.wait_status("d", "failed", |v| result(v) == "failed");
    let err = st["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("services.web.image") && err.contains("never"),
        "{err}"
    );
    assert!(g.running("d").is_empty());
    std::fs::remove_file(src.join(format!("{d}.yaml"))).expect("rm");

    // Files that are not stacks change nothing.
    let runs_a = g.runs("a").len();
    g.write("README.md", "# stacks\n");
    g.write("docs/notes.yaml", "not: a stack\n");
    g.write(".hidden/x.yaml", "services: [\n");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(g.runs("a").len(), runs_a, "{:#?}", g.runs("a"));
    assert_eq!(g.running("a"), second);
    assert_eq!(g.running("b"), b_first);
    assert!(g.stack_status("docs").is_none() && g.stack_status("README").is_none());

    // A file that does not load keeps its stack running and says why; others go on.
    g.write(
        &format!("{a}.yaml"),
        "services:\n  web:\n    image: busybox:local\n    ports: [\"not-a-port\"]\n",
    );
    let st = g.wait_status("a", "invalid", |v| result(v) == "invalid");
    let err = st["error"].as_str().unwrap_or_default();
    assert!(
        err.contains(&format!("{a}.yaml")) && err.contains("services.web.ports"),
        "the loader's message, with file and path: {err}"
    );
    assert_eq!(
        g.running("a"),
        second,
        "the last good deployment keeps running"
    );
    assert_eq!(g.running("b"), b_first);
    // Fixed back to what runs: synced, nothing recreated.
    g.write(&format!("{a}.yaml"), &service("two"));
    g.wait_status("a", "synced", |v| result(v) == "synced");
    assert_eq!(g.running("a"), second);

    // A stack made by hand is neither adopted nor changed.
    g.f.write_compose(&service("by-hand"));
    g.f.ok(&["-p", &c, "up", "-d"]);
    let by_hand = g.running("c");
    g.write(&format!("{c}.yaml"), &service("from-git"));
    let st = g.wait_status("c", "conflict", |v| result(v) == "conflict");
    assert!(
        st["error"].as_str().unwrap_or_default().contains("by hand"),
        "{st:#?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(g.running("c"), by_hand);

    // A container killed behind berth's back is put back, with a run saying so.
    let pid = g.f.container_pid(&second[0].1);
    // SAFETY: kill(2) with a pid and a signal number touches no memory of ours.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill");
    g.wait_running("a", "the container back", |r| {
        r.len() == 1 && r[0].1 != second[0].1
    });
    let runs = g.runs("a");
    let last = runs.last().expect("a run");
    assert_eq!(last["action"], "redeploy", "{runs:#?}");
    assert!(last["reasons"].to_string().contains("behind berth's back"));

    // `berth down` by hand on a git-ops stack: deployed again.
    g.f.ok(&["-p", &a, "down"]);
    g.wait_running("a", "the stack back after down", |r| r.len() == 1);

    // A stack deleted from the source is pruned (one of two: not a mass delete).
    std::fs::remove_file(src.join(format!("{a}.yaml"))).expect("rm");
    g.wait_running("a", "the prune", |r| r.is_empty());
    // The hand-made stack of the conflict is not the source's to prune.
    std::fs::remove_file(src.join(format!("{c}.yaml"))).expect("rm");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(g.running("c"), by_hand);

    // Emptying the source holds the prune until confirmed.
    std::fs::remove_dir_all(src.join(&b)).expect("rm");
    let st = g.wait_status("b", "held", |v| result(v) == "held");
    assert!(
        st["error"]
            .as_str()
            .unwrap_or_default()
            .contains("--confirm-prune"),
        "{st:#?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        g.running("b"),
        b_first,
        "a held prune leaves the stack running"
    );

    // The daemon killed: sources and status survive.
    // `sync` says so, and fails: the held prune needs the user.
    let out = g.f.berth(&["gitops", "sync", "src"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("held"));
    let mut f = g.f;
    f.kill_daemon();
    f.start_daemon();
    let g = Gitops { f, p: g.p };
    assert_eq!(result(&g.stack_status("b").expect("b's status")), "held");
    let ls = g.f.ok(&["gitops", "ls"]);
    assert!(
        ls.contains("src") && ls.contains(src.to_str().expect("utf-8")),
        "{ls}"
    );

    let out = g.f.berth(&["gitops", "sync", "src", "--confirm-prune"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    g.wait_running("b", "the confirmed prune", |r| r.is_empty());
    assert_eq!(g.running("c"), by_hand, "never pruned: not the source's");
}

#[test]
fn rollback_pins_a_revision_and_suspend_leaves_a_stack_alone() {
    let g = Gitops::new("gitops-pin");
    let a = g.stack("a");
    g.write(&format!("{a}.yaml"), &service("one"));
    let src = g.src();
    g.f.ok(&[
        "gitops",
        "add",
        src.to_str().expect("utf-8"),
        "--name",
        "pins",
    ]);
    g.wait_running("a", "first", |r| r.len() == 1);
    // The directory becomes a git checkout: status follows its commit, and says dirty
    // once a file differs from it.
    git(&src, &["init", "-q"]);
    git(&src, &["add", "-A"]);
    git(&src, &["commit", "-q", "-m", "one"]);
    let head = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(&src)
        .output()
        .expect("git rev-parse")
        .stdout;
    let head = String::from_utf8_lossy(&head).trim().to_string();
    let commit = || -> Value {
        let out = g.f.ok(&["gitops", "ls", "--format", "json"]);
        let sources: Vec<Value> = serde_json::from_str(&out).expect("json");
        sources[0]["last"]["commit"].clone()
    };
    let end = Instant::now() + Duration::from_secs(10);
    while commit() != head.as_str() {
        assert!(
            Instant::now() < end,
            "the commit never showed: {}",
            commit()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    g.wait_status("a", "clean", |v| v["dirty"] == false);
    g.write(&format!("{a}.yaml"), &service("two"));
    g.wait_status("a", "dirty", |v| v["dirty"] == true);
    g.wait_status("a", "second revision", |v| {
        v["revisions"].as_array().is_some_and(|r| r.len() == 2)
    });
    let mode = |g: &Gitops| {
        let out =
            g.f.berth(&["-p", &a, "exec", "-T", "web", "sh", "-c", "echo $MODE"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let wait_mode = |g: &Gitops, want: &str| {
        let end = Instant::now() + Duration::from_secs(30);
        while mode(g) != want {
            assert!(
                Instant::now() < end,
                "MODE never became {want}: {}",
                g.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_mode(&g, "two");

    // Rolled back: the earlier revision runs, pinned, and a new commit does not undo it.
    g.f.ok(&["gitops", "rollback", &a]);
    wait_mode(&g, "one");
    g.write(&format!("{a}.yaml"), &service("three"));
    let st = g.wait_status("a", "pinned, source ahead", |v| {
        result(v) == "pinned; source ahead"
    });
    assert!(st["pinned"].is_string());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(mode(&g), "one");
    g.f.ok(&["gitops", "unpin", &a]);
    wait_mode(&g, "three");

    // Suspended: changes and drift are left alone until resumed.
    g.f.ok(&["gitops", "suspend", &a]);
    g.write(&format!("{a}.yaml"), &service("four"));
    g.wait_status("a", "suspended", |v| result(v) == "suspended");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(mode(&g), "three");
    g.f.ok(&["gitops", "resume", &a]);
    wait_mode(&g, "four");

    // The plan of an unchanged source says so; `gitops rm` keeps the stack running.
    let plan = g.f.ok(&["gitops", "plan", "pins"]);
    assert!(plan.contains(&a) && plan.contains("synced"), "{plan}");
    g.f.ok(&["gitops", "rm", "pins"]);
    assert_eq!(g.running("a").len(), 1);
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// POSTs `body` to the webhook listener with `headers`; the status code.
fn post_hook(
    addr: std::net::SocketAddr,
    path: &str,
    body: &[u8],
    headers: &[(&str, String)],
) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the webhook listener");
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    s.write_all(body).expect("write body");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// GitHub's `X-Hub-Signature-256` of `body`, computed by openssl (an implementation
/// that is not berth's).
fn openssl_signature(secret: &str, body: &[u8], dir: &std::path::Path) -> String {
    let file = dir.join("body.json");
    std::fs::write(&file, body).expect("body");
    let out = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", secret, "-r"])
        .arg(&file)
        .output()
        .expect("run openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    format!("sha256={}", text.split_whitespace().next().expect("digest"))
}

#[test]
fn a_remote_repository_follows_pushes_and_signed_webhooks_and_opens_sops_files() {
    let mut f = Fixture::new("gitops-remote", "services: {}\n");
    let tmp = f.tmp.path().to_path_buf();
    let p = format!("r{}", std::process::id() % 100_000);
    let (web, vault) = (format!("{p}web"), format!("{p}vault"));
    // A bare repository and a clone to push from.
    std::fs::create_dir_all(tmp.join("repo.git")).expect("mkdir");
    git(&tmp.join("repo.git"), &["init", "--bare", "-q"]);
    git(&tmp, &["clone", "-q", "repo.git", "work"]);
    let work = tmp.join("work");
    let commit = |file: &str, text: &str, msg: &str| {
        let path = work.join(file);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, text).expect("write");
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", msg]);
        git(&work, &["push", "-q", "origin", "HEAD:main"]);
    };
    commit(&format!("{web}.yaml"), &service("one"), "web one");
    // A folder stack whose env file SOPS encrypted (with the test's age key).
    let sops = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("gitops/tests/sops");
    let encrypted = std::fs::read_to_string(sops.join("encrypted/app.env")).expect("fixture");
    commit(&format!("{vault}/app.env"), &encrypted, "secrets");
    commit(
        &format!("{vault}/compose.yaml"),
        "services:\n  app:\n    image: busybox:local\n    command: [sleep, '100000']\n    stop_grace_period: 1s\n    env_file: app.env\n",
        "vault",
    );
    let secret = "hook-secret-1";
    std::fs::write(tmp.join("hook.secret"), format!("{secret}\n")).expect("secret");
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().expect("addr")
    };
    f.start_daemon_env(&[("BERTH_GITOPS_WEBHOOK_LISTEN", &addr.to_string())]);
    let url = format!("file://{}", tmp.join("repo.git").display());
    let key = sops.join("keys/key.txt");
    let out = f.berth(&[
        "gitops",
        "add",
        "--git",
        &url,
        "--name",
        "remote",
        "--interval",
        "1h",
        "--webhook-secret-file",
        tmp.join("hook.secret").to_str().expect("utf-8"),
        "--age-key-file",
        key.to_str().expect("utf-8"),
    ]);
    let log =
        |f: &Fixture| std::fs::read_to_string(f.tmp.path().join("daemon.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        log(&f)
    );
    let g = Gitops { f, p: p.clone() };
    let env_of = |stack: &str, svc: &str, var: &str| {
        let out = g.f.berth(&[
            "-p",
            stack,
            "exec",
            "-T",
            svc,
            "sh",
            "-c",
            &format!("echo ${var}"),
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let wait_env = |stack: &str, svc: &str, var: &str, want: &str| {
        let end = Instant::now() + Duration::from_secs(30);
        while env_of(stack, svc, var) != want {
            assert!(
                Instant::now() < end,
                "{stack} {var} never became {want}: {}",
                g.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_env(&web, "web", "MODE", "one");
    // The SOPS file was opened with the source's key...
    wait_env(&vault, "app", "DB_PASSWORD", "s3cr3t-p@ss=word");
    let st = g.stack_status("vault").expect("vault status");
    assert_eq!(st["commit"].as_str().map(str::len), Some(40), "{st:#?}");

    // A push is not seen before the interval (an hour) without a webhook; a wrong
    // signature is refused and changes nothing; a right one syncs at once.
    commit(&format!("{web}.yaml"), &service("two"), "web two");
    let body = br#"{"ref":"refs/heads/main"}"#;
    let hook = "/v1/gitops/hook/remote";
    let wrong = openssl_signature("not-the-secret", body, &tmp);
    assert_eq!(
        post_hook(addr, hook, body, &[("X-Hub-Signature-256", wrong)]),
        401
    );
    assert_eq!(post_hook(addr, hook, body, &[]), 401, "unsigned");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(env_of(&web, "web", "MODE"), "one");
    let right = openssl_signature(secret, body, &tmp);
    assert_eq!(
        post_hook(addr, hook, body, &[("X-Hub-Signature-256", right.clone())]),
        202
    );
    wait_env(&web, "web", "MODE", "two");

    // A force-push that rewinds the branch is followed.
    git(&work, &["reset", "-q", "--hard", "HEAD~1"]);
    git(&work, &["push", "-q", "-f", "origin", "HEAD:main"]);
    assert_eq!(
        post_hook(addr, hook, body, &[("X-Hub-Signature-256", right.clone())]),
        202
    );
    wait_env(&web, "web", "MODE", "one");

    // A commit that touches no stack's files recreates nothing.
    let runs = (g.runs("web").len(), g.runs("vault").len());
    commit("README.md", "# stacks\n", "docs");
    g.f.ok(&["gitops", "sync", "remote"]);
    assert_eq!((g.runs("web").len(), g.runs("vault").len()), runs);

    // No secret value in status, plan, or the daemon's log.
    let mut seen = g.f.ok(&["gitops", "status", "--format", "json"]);
    seen.push_str(&g.f.ok(&["gitops", "status", &vault]));
    seen.push_str(&g.f.ok(&["gitops", "plan", "remote"]));
    seen.push_str(&g.log());
    for plain in ["s3cr3t-p@ss=word", "pässwörd", secret] {
        assert!(!seen.contains(plain), "{plain:?} shown:\n{seen}");
    }

    // Removed with --prune: its stacks go with it.
    let out = g.f.berth(&["gitops", "rm", "remote", "--prune"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains(&web) && said.contains(&vault), "{said}");
    assert!(g.running("web").is_empty() && g.running("vault").is_empty());
    assert!(g.f.ok(&["gitops", "ls", "--format", "json"]).trim() == "[]");
}
