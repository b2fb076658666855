//! A real OCI distribution registry for tests: Debian's `docker-registry`, started on
//! a free loopback port with its storage in a temporary directory, optionally behind
//! htpasswd basic authentication, and stopped when the handle is dropped.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = "/usr/bin/docker-registry";

/// A running registry; dropping it stops the process and removes its storage.
#[derive(Debug)]
pub struct Registry {
    /// `127.0.0.1:PORT`, the registry's host part in image references.
    pub addr: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl Registry {
    /// A registry that anyone may pull from and push to.
    pub fn start() -> io::Result<Registry> {
        Registry::launch(None)
    }

    /// A registry that demands `user`/`password` (basic authentication).
    pub fn start_with_basic_auth(user: &str, password: &str) -> io::Result<Registry> {
        Registry::launch(Some((user, password)))
    }

    fn launch(auth: Option<(&str, &str)>) -> io::Result<Registry> {
        if !Path::new(BINARY).is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "docker-registry not found: apt-get install -y docker-registry (.ci/run does)",
            ));
        }
        let dir = tempfile::tempdir()?;
        let mut last_error = None;
        // The port is picked free, then handed over; another process can take it in
        // between, so a failed start is retried on a new port.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let addr = format!("127.0.0.1:{port}");
            let mut config = format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            );
            if let Some((user, password)) = auth {
                let hash = bcrypt::hash(password, 4).map_err(io::Error::other)?;
                std::fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n"))?;
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                    dir.path().join("htpasswd").display()
                ));
            }
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config)?;
            let mut child = Command::new(BINARY)
                .arg("serve")
                .arg(&config_path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            // Wait for it to listen: this is a readiness wait, not a speed check.
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if TcpStream::connect(&addr).is_ok() {
                    return Ok(Registry { addr, child, dir });
                }
                if let Ok(Some(status)) = child.try_wait() {
                    last_error = Some(io::Error::other(format!(
                        "docker-registry exited: {status}"
                    )));
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("docker-registry did not start")))
    }

    /// Pushes image `tag` of the OCI layout at `layout` to `<addr>/<repo_tag>` with skopeo.
    pub fn push_layout(
        &self,
        layout: &Path,
        tag: &str,
        repo_tag: &str,
        creds: Option<(&str, &str)>,
    ) -> io::Result<()> {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if let Some((user, password)) = creds {
            cmd.arg(format!("--dest-creds={user}:{password}"));
        }
        let out = cmd
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo_tag}", self.addr))
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "skopeo copy failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// The registry's storage directory (to count what was stored).
    pub fn storage(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
