//! Fetching a remote git repository into a local cache, and checking out the fetched
//! commit's tree as plain files for the loader to read.
//!
//! Git is gitoxide (`gix`), in process: no `git` program is run. https is gitoxide's
//! own client (over reqwest and rustls). ssh is the exception: gitoxide has no ssh
//! client of its own and runs the `ssh` program (OpenSSH) to carry the git protocol, as
//! git itself does, so an ssh remote needs `ssh` installed on the host. A repository on
//! this machine (`file://` or a path) is read in place, not fetched: gitoxide's file
//! transport would run git's `upload-pack` to serve it. `docs/decisions.md` has the
//! measurements behind the choice of gitoxide over libgit2.
//!
//! A cache directory belongs to one remote and holds:
//! - `repo.git`, a bare repository kept between calls, so that a later fetch transfers
//!   only the objects it lacks (none for a local repository, whose objects are read
//!   where they are);
//! - `trees/<commit>`, the checked out trees, each written to a temporary directory and
//!   renamed into place, so a reader never sees half a tree; the newest few are kept;
//! - `lock`, held for the whole of a sync, so two syncs of one cache never interleave.
//!
//! [`sync`] blocks on the network and the disk: async code calls it from
//! `spawn_blocking`.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

mod checkout;

use gix::bstr::ByteSlice as _;
use gix::protocol::transport::client::blocking_io::Transport;

/// How many checked out trees a cache keeps: the current one and a few before it, so a
/// reader still working on the previous tree when a new one lands does not lose it.
const KEEP_TREES: usize = 3;

/// The local ref the fetched commit is kept under. Keeping it makes the next fetch tell
/// the remote what the cache already has, so only new objects are sent.
const FETCHED_REF: &str = "refs/berth/fetched";

/// The user name sent with a token. GitHub wants `x-access-token` for app tokens and
/// accepts anything for personal tokens, as do Gitea and GitLab; a URL that names a user
/// (`https://oauth2@gitlab.example/...`) sends that one instead.
const TOKEN_USER: &str = "x-access-token";

/// Seconds to wait for a connection before giving up, so a remote that never answers
/// makes a sync fail instead of hanging the controller.
const CONNECT_TIMEOUT_SECS: u32 = 30;

/// A git repository to follow.
#[derive(Clone, PartialEq, Eq)]
pub struct Remote {
    /// `file:///path`, a plain local path, `https://host/path`, `ssh://[user@]host[:port]/path`
    /// or scp-like `user@host:path`.
    pub url: String,
    /// The branch to follow (`main` or `refs/heads/main`); `None` follows the remote's HEAD.
    pub branch: Option<String>,
    pub auth: Auth,
}

// The URL may carry a password or a token: Debug shows it redacted.
impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("url", &redact_url(&self.url))
            .field("branch", &self.branch)
            .field("auth", &self.auth)
            .finish()
    }
}

/// How to authenticate to the remote. Only the paths are held here: the token and the
/// key are read when needed and never kept in this value, so Debug shows nothing secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    None,
    /// A file holding an access token, sent as the password of HTTP basic auth (https only).
    TokenFile(PathBuf),
    /// A private key file for ssh (ssh only).
    SshKey(PathBuf),
}

/// A commit's tree, checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkout {
    /// The commit's id, in hex.
    pub commit: String,
    /// The tree's files; no `.git` inside.
    pub dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{url}: {reason}; use file:///path, a local path, https://host/path, ssh://user@host/path or user@host:path")]
    Url { url: String, reason: String },
    #[error("{url}: {reason}")]
    AuthMismatch { url: String, reason: String },
    #[error("cannot read the token file {}: {reason}", path.display())]
    TokenFile { path: PathBuf, reason: String },
    #[error("cannot use the ssh key {}: {reason}", path.display())]
    SshKey { path: PathBuf, reason: String },
    #[error(
        "branch {branch:?} is not a valid branch name; give a name like main or refs/heads/main"
    )]
    BranchName { branch: String },
    #[error("cannot use the git cache {}: {source}; check that berth may write there", path.display())]
    Cache { path: PathBuf, source: io::Error },
    #[error("fetching {url}: {reason}; {hint}")]
    Fetch {
        url: String,
        reason: String,
        hint: String,
    },
    #[error("{url} has no branch {branch:?} (branches: {}); check the branch name", list_or_none(.branches))]
    BranchMissing {
        url: String,
        branch: String,
        branches: Vec<String>,
    },
    #[error("{url} has no commits on its default branch (its HEAD is unborn or missing); push a commit or name a branch")]
    NoHead { url: String },
    #[error("checking out {commit} of {url}: {reason}")]
    Checkout {
        url: String,
        commit: String,
        reason: String,
    },
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// Fetches the branch (default: the remote's HEAD) into the cache under `cache_dir` (a
/// local repository is read in place) and checks out its tree into
/// `cache_dir/trees/<commit>`, reusing one already there.
///
/// The checked out commit is the remote's current one even when it does not descend from
/// the last one fetched: a force-push that rewinds the branch is followed. Trees older than
/// the newest few are removed.
pub fn sync(remote: &Remote, cache_dir: &Path) -> Result<Checkout, RemoteError> {
    let target = Target::new(remote)?;
    let credentials = Credentials::read(&remote.auth, &target)?;
    let refspec = match &remote.branch {
        Some(branch) => format!("+{}:{FETCHED_REF}", branch_ref(branch)?),
        None => format!("+HEAD:{FETCHED_REF}"),
    };

    let cache_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RemoteError::Cache { path, source }
    };
    fs::create_dir_all(cache_dir).map_err(cache_err(cache_dir))?;
    let lock_path = cache_dir.join("lock");
    let lock = File::create(&lock_path).map_err(cache_err(&lock_path))?;
    lock.lock().map_err(cache_err(&lock_path))?;

    let (repo, commit) = if target.scheme == Scheme::File {
        let repo = open_local(&target)?;
        let commit = resolve_local(&repo, &target, remote.branch.as_deref())?;
        (repo, commit)
    } else {
        let repo = open_cache(&cache_dir.join("repo.git"), &credentials)?;
        let commit = fetch(
            &repo,
            &target,
            &remote.auth,
            &credentials,
            &refspec,
            remote.branch.as_deref(),
        )?;
        (repo, commit)
    };

    let trees = cache_dir.join("trees");
    fs::create_dir_all(&trees).map_err(cache_err(&trees))?;
    let hex = commit.to_string();
    let dir = trees.join(&hex);
    if dir.is_dir() {
        // Marks it as the newest, so pruning keeps it.
        checkout::touch(&dir).map_err(cache_err(&dir))?;
    } else {
        checkout::check_out(&repo, commit, &trees, &dir).map_err(|reason| {
            RemoteError::Checkout {
                url: target.redacted.clone(),
                commit: hex.clone(),
                reason: credentials.scrub(&reason),
            }
        })?;
    }
    checkout::prune(&trees, &dir).map_err(cache_err(&trees))?;
    drop(lock);
    Ok(Checkout { commit: hex, dir })
}

/// The kinds of URL berth fetches from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    File,
    Http,
    Https,
    Ssh,
    Git,
}

/// A remote's URL, understood.
struct Target {
    scheme: Scheme,
    /// What gitoxide is given: the URL, with a local path made absolute.
    url: String,
    /// For messages: the URL without its password or token.
    redacted: String,
    /// The user named in an http(s) URL, and its password if it has one.
    user: Option<String>,
    password: Option<String>,
}

impl Target {
    fn new(remote: &Remote) -> Result<Target, RemoteError> {
        let raw = remote.url.trim();
        let redacted = redact_url(raw);
        let bad = |reason: &str| RemoteError::Url {
            url: redacted.clone(),
            reason: reason.to_owned(),
        };
        if raw.is_empty() {
            return Err(bad("the URL is empty"));
        }
        let (scheme, url) = if let Some((scheme, _)) = raw.split_once("://") {
            let scheme = match scheme.to_ascii_lowercase().as_str() {
                "file" => Scheme::File,
                "http" => Scheme::Http,
                "https" => Scheme::Https,
                "ssh" | "git+ssh" | "ssh+git" => Scheme::Ssh,
                "git" => Scheme::Git,
                other => return Err(bad(&format!("berth cannot fetch over {other}://"))),
            };
            (scheme, raw.to_owned())
        } else if is_scp_like(raw) {
            (Scheme::Ssh, raw.to_owned())
        } else {
            // A local path; made absolute so it means the same whatever the current
            // directory is when the fetch runs.
            let path = std::path::absolute(raw).map_err(|e| bad(&e.to_string()))?;
            let path = path
                .to_str()
                .ok_or_else(|| bad("the path is not valid UTF-8"))?
                .to_owned();
            (Scheme::File, path)
        };
        let (user, password) = match scheme {
            Scheme::Http | Scheme::Https => userinfo(&url),
            _ => (None, None),
        };
        Ok(Target {
            scheme,
            url,
            redacted,
            user,
            password,
        })
    }

    /// What to check when a fetch fails, for this kind of remote.
    fn hint(&self, auth: &Auth) -> String {
        match (self.scheme, auth) {
            (Scheme::File, _) => "check that the path is a git repository berth may read".into(),
            (Scheme::Http | Scheme::Https, Auth::TokenFile(path)) => format!(
                "check the URL, and that the token in {} is valid and may read the repository",
                path.display()
            ),
            (Scheme::Http | Scheme::Https, _) => {
                "check the URL; a private repository needs a token file".into()
            }
            (Scheme::Ssh, Auth::SshKey(path)) => format!(
                "check the URL, that {} is a key the server accepts for this repository, and \
                 that the host's key is in the known_hosts of the user berth runs as \
                 (ssh-keyscan HOST >> ~/.ssh/known_hosts)",
                path.display()
            ),
            (Scheme::Ssh, _) => "check the URL; an ssh remote needs a private key file".into(),
            (Scheme::Git, _) => "check the URL and that the git daemon is reachable".into(),
        }
    }
}

/// Whether `url` is git's scp-like form, `[user@]host:path`: a colon before any slash.
fn is_scp_like(url: &str) -> bool {
    match url.find(':') {
        Some(colon) => colon > 0 && !url[..colon].contains('/'),
        None => false,
    }
}

/// The user and password of an `scheme://[user[:password]@]host/...` URL.
fn userinfo(url: &str) -> (Option<String>, Option<String>) {
    let Some((_, rest)) = url.split_once("://") else {
        return (None, None);
    };
    let authority = rest.split('/').next().unwrap_or_default();
    match authority
        .rsplit_once('@')
        .map(|(userinfo, _host)| userinfo.split_once(':'))
    {
        Some(Some((user, password))) => (Some(user.to_owned()), Some(password.to_owned())),
        Some(None) => (authority.rsplit_once('@').map(|(u, _)| u.to_owned()), None),
        None => (None, None),
    }
}

/// `url` fit for a message or a log: an http(s) URL's user and password are replaced by
/// `***` (a token may be given as the user alone), an ssh URL keeps its user but not a
/// password.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let lower = scheme.to_ascii_lowercase();
    let userinfo = if lower == "http" || lower == "https" {
        "***".to_owned()
    } else {
        match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***"),
            None => userinfo.to_owned(),
        }
    };
    format!("{scheme}://{userinfo}@{host}{path}")
}

/// `refs/heads/<branch>` for a branch name, or the name itself if it is a full ref.
/// Refuses what would change the refspec's meaning or is never a valid ref.
fn branch_ref(branch: &str) -> Result<String, RemoteError> {
    let invalid = branch.is_empty()
        || branch.starts_with(['-', '/', '+'])
        || branch.ends_with(['/', '.'])
        || branch.contains("..")
        || branch.contains("@{")
        || branch.contains("//")
        || branch.ends_with(".lock")
        || branch
            .chars()
            .any(|c| c.is_ascii_control() || c.is_whitespace() || ":?*[\\^~".contains(c));
    if invalid {
        return Err(RemoteError::BranchName {
            branch: branch.to_owned(),
        });
    }
    Ok(if branch.starts_with("refs/") {
        branch.to_owned()
    } else {
        format!("refs/heads/{branch}")
    })
}

/// The secrets of one sync, read from the files `Auth` names, and what is needed to keep
/// them out of messages.
struct Credentials {
    /// User and password for HTTP basic auth.
    basic: Option<(String, Secret)>,
    /// The `core.sshCommand` that makes `ssh` use the key and nothing else.
    ssh_command: Option<String>,
    /// Strings that must never appear in a message.
    secrets: Vec<Secret>,
}

/// A string that Debug never shows.
#[derive(Clone)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Credentials {
    fn read(auth: &Auth, target: &Target) -> Result<Credentials, RemoteError> {
        let mismatch = |reason: &str| RemoteError::AuthMismatch {
            url: target.redacted.clone(),
            reason: reason.to_owned(),
        };
        // A password written in the URL is a secret too, and is used when no token
        // file is given.
        let mut secrets: Vec<Secret> = target.password.iter().cloned().map(Secret).collect();
        if let (Some(user), None) = (&target.user, &target.password) {
            // A lone user in an http(s) URL may be a token.
            secrets.push(Secret(user.clone()));
        }
        let url_basic = match (&target.user, &target.password) {
            (Some(user), Some(password)) => Some((user.clone(), Secret(password.clone()))),
            _ => None,
        };
        match auth {
            Auth::None => Ok(Credentials {
                basic: url_basic,
                ssh_command: None,
                secrets,
            }),
            Auth::TokenFile(path) => {
                match target.scheme {
                    Scheme::Https => {}
                    Scheme::Http => {
                        return Err(mismatch(
                            "a token would cross the network unencrypted over http://; use https://",
                        ))
                    }
                    _ => {
                        return Err(mismatch(
                            "a token file authenticates only https:// remotes; use an https URL, or an ssh key for an ssh remote",
                        ))
                    }
                }
                let token = read_token(path)?;
                let user = target.user.clone().unwrap_or_else(|| TOKEN_USER.to_owned());
                secrets.push(token.clone());
                Ok(Credentials {
                    basic: Some((user, token)),
                    ssh_command: None,
                    secrets,
                })
            }
            Auth::SshKey(path) => {
                if target.scheme != Scheme::Ssh {
                    return Err(mismatch(
                        "an ssh key authenticates only ssh:// and user@host:path remotes; use a token file for https",
                    ));
                }
                check_key(path)?;
                Ok(Credentials {
                    basic: None,
                    ssh_command: Some(ssh_command(path)?),
                    secrets,
                })
            }
        }
    }

    /// `message` with every secret replaced by `***`.
    fn scrub(&self, message: &str) -> String {
        let mut out = message.to_owned();
        for Secret(secret) in &self.secrets {
            if !secret.is_empty() {
                out = out.replace(secret.as_str(), "***");
            }
        }
        out
    }
}

/// The token in `path`, without the line end an editor adds.
fn read_token(path: &Path) -> Result<Secret, RemoteError> {
    let err = |reason: String| RemoteError::TokenFile {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = fs::read(path).map_err(|e| err(e.to_string()))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| err("it is not text; write the access token into it".into()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(err("it is empty; write the access token into it".into()));
    }
    if token.contains(['\n', '\r']) {
        return Err(err(
            "it holds more than one line; write only the access token into it".into(),
        ));
    }
    Ok(Secret(token.to_owned()))
}

/// Refuses a key `ssh` would not be able to use, with a message better than ssh's.
fn check_key(path: &Path) -> Result<(), RemoteError> {
    let err = |reason: String| RemoteError::SshKey {
        path: path.to_path_buf(),
        reason,
    };
    let meta = fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("it is not a file".into()));
    }
    // ssh itself refuses a private key others may read.
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(err(format!(
            "others may read it (mode {:o}) and ssh refuses such a key; chmod 600 it",
            meta.permissions().mode() & 0o777
        )));
    }
    Ok(())
}

/// The ssh command line that uses exactly this key: no agent, no other identity, no
/// prompt (a daemon has no one to answer it), and the host's key checked against
/// known_hosts as usual.
fn ssh_command(key: &Path) -> Result<String, RemoteError> {
    let key = std::path::absolute(key).map_err(|e| RemoteError::SshKey {
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    let key = key.to_str().ok_or_else(|| RemoteError::SshKey {
        path: key.clone(),
        reason: "the path is not valid UTF-8".into(),
    })?;
    Ok(format!(
        "ssh -i {} -o IdentitiesOnly=yes -o IdentityAgent=none -o BatchMode=yes -o ConnectTimeout={CONNECT_TIMEOUT_SECS}",
        shell_quote(key)
    ))
}

/// `s` as one shell word: gitoxide runs a command with arguments through `sh -c`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Opens the cache's bare repository, making it on first use.
///
/// The repository is opened isolated: the user's and the system's git configuration
/// (credential helpers, `insteadOf` rewrites, an `sshCommand`) and `GIT_*` variables
/// would otherwise change what a daemon fetches and how, behind its back.
fn open_cache(git_dir: &Path, credentials: &Credentials) -> Result<gix::Repository, RemoteError> {
    let cache_err = |e: gix::Error| RemoteError::Cache {
        path: git_dir.to_path_buf(),
        source: io::Error::other(error_chain(&e)),
    };
    if !git_dir.join("HEAD").is_file() {
        // A directory left by an init that did not finish is made again.
        if git_dir.exists() {
            fs::remove_dir_all(git_dir).map_err(|source| RemoteError::Cache {
                path: git_dir.to_path_buf(),
                source,
            })?;
        }
        gix::init_bare(git_dir).map_err(cache_err)?;
    }
    let mut overrides = vec![format!(
        "gitoxide.http.connectTimeout={}",
        u64::from(CONNECT_TIMEOUT_SECS) * 1000
    )];
    if let Some(command) = &credentials.ssh_command {
        overrides.push(format!("core.sshCommand={command}"));
        // Says which program it is, so gitoxide passes OpenSSH's options without first
        // running the command to find out.
        overrides.push("ssh.variant=ssh".to_owned());
    }
    let options = gix::open::Options::isolated().config_overrides(overrides);
    gix::open_opts(git_dir, options).map_err(cache_err)
}

/// Opens a repository on this machine to read in place: its objects are already on this
/// disk, so there is nothing to fetch. (gitoxide's file:// transport would run the `git`
/// program's `upload-pack` to serve them; reading them directly needs no git installed.)
fn open_local(target: &Target) -> Result<gix::Repository, RemoteError> {
    let path = target.url.strip_prefix("file://").unwrap_or(&target.url);
    gix::open_opts(path, gix::open::Options::isolated()).map_err(|e| RemoteError::Fetch {
        url: target.redacted.clone(),
        reason: error_chain(&e),
        hint: target.hint(&Auth::None),
    })
}

/// The commit a local repository's branch (or HEAD) points to now.
fn resolve_local(
    repo: &gix::Repository,
    target: &Target,
    branch: Option<&str>,
) -> Result<gix::ObjectId, RemoteError> {
    let read_err = |e: gix::Error| RemoteError::Fetch {
        url: target.redacted.clone(),
        reason: error_chain(&e),
        hint: target.hint(&Auth::None),
    };
    let commit = match branch {
        Some(branch) => {
            let name = branch_ref(branch)?;
            let Some(mut reference) = repo.try_find_reference(name.as_str()).map_err(read_err)?
            else {
                let branches = repo
                    .references()
                    .and_then(|refs| {
                        Ok(refs
                            .local_branches()?
                            .filter_map(Result::ok)
                            .map(|r| r.name().shorten().to_str_lossy().into_owned())
                            .collect())
                    })
                    .unwrap_or_default();
                return Err(RemoteError::BranchMissing {
                    url: target.redacted.clone(),
                    branch: branch.to_owned(),
                    branches,
                });
            };
            reference.peel_to_commit().map_err(read_err)?
        }
        None => {
            let mut head = repo.head().map_err(read_err)?;
            if head.is_unborn() {
                return Err(RemoteError::NoHead {
                    url: target.redacted.clone(),
                });
            }
            head.peel_to_commit().map_err(read_err)?
        }
    };
    Ok(commit.id)
}

/// Fetches `refspec` and returns the commit the remote's ref points to now.
fn fetch(
    repo: &gix::Repository,
    target: &Target,
    auth: &Auth,
    credentials: &Credentials,
    refspec: &str,
    branch: Option<&str>,
) -> Result<gix::ObjectId, RemoteError> {
    let fetch_err = |e: gix::Error| RemoteError::Fetch {
        url: target.redacted.clone(),
        reason: credentials.scrub(&error_chain(&e).replace(&target.url, &target.redacted)),
        hint: target.hint(auth),
    };
    let remote = repo
        .remote_at(target.url.as_str())
        .and_then(|r| r.with_refspecs(Some(refspec), gix::remote::Direction::Fetch))
        .map_err(fetch_err)?
        .with_fetch_tags(gix::remote::fetch::Tags::None);
    let connection = connect(&remote, credentials).map_err(fetch_err)?;
    let prepare = connection
        .prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(fetch_err)?;
    let ref_map = prepare.ref_map();
    let Some(commit) = ref_map
        .mappings
        .iter()
        .find_map(|m| m.remote.as_id().map(|id| id.to_owned()))
    else {
        return Err(match branch {
            Some(branch) => RemoteError::BranchMissing {
                url: target.redacted.clone(),
                branch: branch.to_owned(),
                branches: list_branches(repo, target, credentials),
            },
            None => RemoteError::NoHead {
                url: target.redacted.clone(),
            },
        });
    };
    prepare
        .receive(gix::progress::Discard, &AtomicBool::new(false))
        .map_err(fetch_err)?;
    // A branch may point at an annotated tag: the tree is the commit's it names.
    let commit = repo
        .find_object(commit)
        .and_then(|object| object.peel_to_commit())
        .map_err(fetch_err)?;
    Ok(commit.id)
}

/// Connects for fetching, with credentials that are always ours: gitoxide would
/// otherwise run git's credential helpers, or prompt on a terminal a daemon does not have.
fn connect<'r, 'repo>(
    remote: &'r gix::Remote<'repo>,
    credentials: &Credentials,
) -> Result<gix::remote::Connection<'r, 'static, 'repo, Box<dyn Transport + Send>>, gix::Error> {
    let basic = credentials.basic.clone();
    let connection = remote.connect(gix::remote::Direction::Fetch)?;
    Ok(connection.with_credentials(move |action| match action {
        gix::credentials::helper::Action::Get(ctx) => match &basic {
            Some((user, Secret(password))) => Ok(Some(gix::credentials::protocol::Outcome {
                credentials: gix::sec::identity::Credentials::UsernamePassword {
                    username: user.clone(),
                    password: password.clone(),
                    oauth_refresh_token: None,
                },
                next: ctx.into(),
            })),
            None => Ok(None),
        },
        gix::credentials::helper::Action::Store(_) | gix::credentials::helper::Action::Erase(_) => {
            Ok(None)
        }
    }))
}

/// The remote's branch names, for the message that a branch is missing; none if they
/// cannot be listed (the message is then still right, only less helpful).
fn list_branches(
    repo: &gix::Repository,
    target: &Target,
    credentials: &Credentials,
) -> Vec<String> {
    let listed = repo
        .remote_at(target.url.as_str())
        .and_then(|r| {
            r.with_refspecs(
                Some("refs/heads/*:refs/heads/*"),
                gix::remote::Direction::Fetch,
            )
        })
        .and_then(|remote| {
            let (ref_map, _handshake) = connect(&remote, credentials)?
                .ref_map(gix::progress::Discard, Default::default())?;
            Ok(ref_map
                .remote_refs
                .iter()
                .filter_map(|r| r.unpack().0.strip_prefix(b"refs/heads/"))
                .map(|name| name.to_str_lossy().into_owned())
                .collect())
        });
    listed.unwrap_or_default()
}

/// An error and its causes on one line, as `a: b: c`.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Wrappers often repeat their cause's text.
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials_in_urls() {
        let cases = [
            (
                "https://user:s3cret@example.com/a.git",
                "https://***@example.com/a.git",
            ),
            (
                "https://ghp_token@example.com/a.git",
                "https://***@example.com/a.git",
            ),
            ("HTTP://u:p@h:8080/x", "HTTP://***@h:8080/x"),
            ("https://example.com/a.git", "https://example.com/a.git"),
            ("ssh://git@example.com/a.git", "ssh://git@example.com/a.git"),
            (
                "ssh://git:pw@example.com/a.git",
                "ssh://git:***@example.com/a.git",
            ),
            ("git@example.com:a/b.git", "git@example.com:a/b.git"),
            ("/srv/repo.git", "/srv/repo.git"),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    #[test]
    fn debug_of_a_remote_hides_the_url_password() {
        let remote = Remote {
            url: "https://x:hunter2@example.com/r.git".into(),
            branch: None,
            auth: Auth::TokenFile("/run/secrets/token".into()),
        };
        let debug = format!("{remote:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("/run/secrets/token"), "{debug}");
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "Secret(***)");
    }

    #[test]
    fn classifies_urls() {
        let scheme = |url: &str| {
            Target::new(&Remote {
                url: url.into(),
                branch: None,
                auth: Auth::None,
            })
            .map(|t| t.scheme)
        };
        assert_eq!(scheme("file:///srv/r.git").ok(), Some(Scheme::File));
        assert_eq!(scheme("/srv/r.git").ok(), Some(Scheme::File));
        assert_eq!(scheme("relative/r.git").ok(), Some(Scheme::File));
        assert_eq!(scheme("https://h/r.git").ok(), Some(Scheme::Https));
        assert_eq!(scheme("ssh://git@h:2222/r.git").ok(), Some(Scheme::Ssh));
        assert_eq!(scheme("git@h:r.git").ok(), Some(Scheme::Ssh));
        assert_eq!(scheme("h:r.git").ok(), Some(Scheme::Ssh));
        assert_eq!(scheme("./a:b").ok(), Some(Scheme::File));
        let err = scheme("ftp://h/r.git").unwrap_err().to_string();
        assert!(err.contains("cannot fetch over ftp://"), "{err}");
        assert!(scheme("").is_err());
    }

    #[test]
    fn a_local_path_is_made_absolute() {
        let target = Target::new(&Remote {
            url: "some/repo.git".into(),
            branch: None,
            auth: Auth::None,
        })
        .unwrap();
        assert!(Path::new(&target.url).is_absolute(), "{}", target.url);
    }

    #[test]
    fn branch_names() {
        assert_eq!(branch_ref("main").unwrap(), "refs/heads/main");
        assert_eq!(branch_ref("feature/x").unwrap(), "refs/heads/feature/x");
        assert_eq!(branch_ref("refs/heads/dev").unwrap(), "refs/heads/dev");
        for bad in [
            "", "a:b", "+main", "a b", "a..b", "*", "-x", "main/", "x.lock", "a^",
        ] {
            assert!(branch_ref(bad).is_err(), "{bad:?}");
        }
    }

    fn target(url: &str) -> Target {
        Target::new(&Remote {
            url: url.into(),
            branch: None,
            auth: Auth::None,
        })
        .unwrap()
    }

    fn token_file(content: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, content).unwrap();
        (dir, path)
    }

    #[test]
    fn a_token_is_sent_as_basic_auth_password() {
        let (_dir, path) = token_file("tok-123\n");
        let creds = Credentials::read(&Auth::TokenFile(path), &target("https://h/r.git")).unwrap();
        let (user, Secret(password)) = creds.basic.clone().unwrap();
        assert_eq!(
            (user.as_str(), password.as_str()),
            ("x-access-token", "tok-123")
        );
        assert_eq!(creds.scrub("bad tok-123 here"), "bad *** here");
        assert!(creds.ssh_command.is_none());
    }

    #[test]
    fn a_user_in_the_url_goes_with_the_token() {
        let (_dir, path) = token_file("tok");
        let creds =
            Credentials::read(&Auth::TokenFile(path), &target("https://oauth2@h/r.git")).unwrap();
        assert_eq!(creds.basic.unwrap().0, "oauth2");
    }

    #[test]
    fn a_password_in_the_url_is_used_and_scrubbed() {
        let creds = Credentials::read(&Auth::None, &target("https://u:pw-xyz@h/r.git")).unwrap();
        let (user, Secret(password)) = creds.basic.clone().unwrap();
        assert_eq!((user.as_str(), password.as_str()), ("u", "pw-xyz"));
        assert_eq!(creds.scrub("x pw-xyz y"), "x *** y");
    }

    #[test]
    fn token_files_that_are_refused() {
        let (_d1, empty) = token_file(" \n");
        let err = Credentials::read(&Auth::TokenFile(empty), &target("https://h/r"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("is empty"), "{err}");
        let (_d2, two) = token_file("a\nb\n");
        let err = Credentials::read(&Auth::TokenFile(two), &target("https://h/r"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("more than one line") && !err.contains("a\nb"),
            "{err}"
        );
        let err = Credentials::read(
            &Auth::TokenFile("/nonexistent/token".into()),
            &target("https://h/r"),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("/nonexistent/token"), "{err}");
    }

    #[test]
    fn auth_must_fit_the_url() {
        let (_dir, path) = token_file("tok");
        let token = Auth::TokenFile(path);
        for url in ["ssh://h/r", "git@h:r", "file:///r", "http://127.0.0.1/r"] {
            let err = Credentials::read(&token, &target(url))
                .err()
                .unwrap()
                .to_string();
            assert!(
                !err.contains("tok\n") && err.contains("token"),
                "{url}: {err}"
            );
        }
        let key = Auth::SshKey("/k".into());
        let err = Credentials::read(&key, &target("https://h/r"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("ssh key"), "{err}");
    }

    #[test]
    fn an_ssh_key_becomes_an_ssh_command_using_only_it() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("it's key");
        fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Credentials::read(&Auth::SshKey(key.clone()), &target("git@h:r"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("chmod 600") && !err.contains("BEGIN"), "{err}");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        let creds = Credentials::read(&Auth::SshKey(key.clone()), &target("git@h:r")).unwrap();
        let command = creds.ssh_command.unwrap();
        let quoted = format!("-i '{}'", key.display().to_string().replace('\'', r"'\''"));
        assert!(
            command.starts_with("ssh ") && command.contains(&quoted),
            "{command}"
        );
        assert!(command.contains("IdentitiesOnly=yes") && command.contains("BatchMode=yes"));
        assert!(creds.basic.is_none());
    }
}
