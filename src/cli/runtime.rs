//! `berth runtime ...`: run OCI bundles directly, like runc (plumbing, hidden from
//! help). `run` is foreground: the container shares berth's stdio, and its exit
//! status becomes berth's (128 + n when killed by signal n). `run -d` starts a
//! detached container under its own shim (`agent::shim`), which keeps its logs;
//! `state`, `kill`, `stop`, `logs`, `list` and `delete` work on it from any later
//! berth process.
//!
//! The OCI runtime command line (runtime-spec's runtime.md, as runc speaks it) is the
//! same verbs: `create` (the container is set up, its program waits; its stdio is
//! this process's), `start`, `state` (runtime.md's JSON), `kill`, `delete [--force]`,
//! with runc's global flags before the verb (`--root DIR`; `--log`, `--log-format`,
//! `--debug`, `--systemd-cgroup` are accepted and ignored), so that tools written for
//! runc drive berth unchanged (`agent::shim::oci`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agent::runtime::{self, Bundle};
use agent::shim;
use anyhow::Context;
use clap::{Args, Subcommand};

/// `berth runtime [FLAGS] VERB`: the flags are runc's global ones, which callers
/// written for runc put before the verb.
#[derive(Debug, Args)]
pub struct RuntimeArgs {
    /// Keep the containers' state here (runc's --root) [default: --state-dir]
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Accepted for runc's callers and ignored: errors go to stderr
    #[arg(long, value_name = "FILE", hide = true)]
    log: Option<PathBuf>,
    /// Accepted for runc's callers and ignored
    #[arg(long = "log-format", value_name = "FORMAT", hide = true)]
    log_format: Option<String>,
    /// Accepted for runc's callers and ignored
    #[arg(long, hide = true)]
    debug: bool,
    /// Accepted for runc's callers and ignored (cgroupsPath is a path)
    #[arg(long = "systemd-cgroup", hide = true)]
    systemd_cgroup: bool,
    #[command(subcommand)]
    command: RuntimeCommand,
}

#[derive(Debug, Subcommand)]
pub enum RuntimeCommand {
    /// Run a bundle in the foreground, like `runc run` (-d: detached, with logs)
    Run(RunArgs),
    /// Write a default config.json (Docker's defaults) into the bundle directory
    Spec(SpecArgs),
    /// Create a container from a bundle, its program waiting for `start` (OCI)
    Create(CreateArgs),
    /// Start a created container's program (OCI)
    Start(IdArg),
    /// Print a container's state as JSON (OCI's, with berth's details)
    State(IdArg),
    /// Send a signal to a container's first process
    Kill(KillArgs),
    /// Stop a container: its stop signal, a grace period, then SIGKILL
    Stop(StopArgs),
    /// Remove a stopped container's state and logs (--force: kill it first)
    Delete(DeleteArgs),
    /// List the containers (the state of each as one JSON line)
    List,
    /// Print a container's logs
    Logs(LogsArgs),
    /// Run a command in a running container, like `docker exec`
    Exec(ExecArgs),
    /// The shim itself, started by `create` (internal)
    #[command(hide = true)]
    Shim(ShimArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The bundle directory (config.json and the root filesystem)
    #[arg(long, short = 'b', default_value = ".", value_name = "DIR")]
    bundle: PathBuf,
    /// Write the container's pid (as seen from the host) to this file
    #[arg(long = "pid-file", value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// With process.terminal: the unix socket to send the terminal's master to
    #[arg(long = "console-socket", value_name = "PATH")]
    console_socket: Option<PathBuf>,
    /// Accepted for runc's callers and ignored
    #[arg(long = "no-pivot", hide = true)]
    no_pivot: bool,
    /// Accepted for runc's callers and ignored
    #[arg(long = "no-new-keyring", hide = true)]
    no_new_keyring: bool,
    /// The container id (letters, digits, '_', '.', '-')
    id: String,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Kill the container first if it is created or running
    #[arg(short = 'f', long)]
    force: bool,
    /// The container id
    id: String,
}

#[derive(Debug, Args)]
pub struct IdArg {
    /// The container id
    id: String,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    /// Accepted for runc's callers: the signal goes to the first process, whose end
    /// ends the container (its pid namespace)
    #[arg(short = 'a', long, hide = true)]
    all: bool,
    /// The container id
    id: String,
    /// The signal, by name (TERM, SIGTERM) or number
    #[arg(default_value = "TERM")]
    signal: String,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait after the stop signal before SIGKILL
    #[arg(short = 't', long = "time", default_value_t = 10)]
    time: u64,
    /// The signal to stop with, by name or number
    #[arg(short = 's', long = "signal", default_value = "TERM")]
    signal: String,
    /// The container id
    id: String,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep printing new lines until the container stops
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only the last N lines
    #[arg(long, value_name = "N")]
    tail: Option<usize>,
    /// Print the raw json-file lines instead of the text
    #[arg(long)]
    json: bool,
    /// The container id
    id: String,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Run the command on a new terminal (relayed to this one)
    #[arg(short = 't', long)]
    tty: bool,
    #[command(flatten)]
    overrides: ExecOverrides,
    /// The container id
    id: String,
    /// The command and its arguments
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

/// What an exec changes of the container's process: `runtime exec` and Compose's
/// `exec` take the same flags.
#[derive(Debug, Args)]
pub struct ExecOverrides {
    /// Set an environment variable (KEY=VALUE, or KEY to pass this one's value)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Run as this user (name or uid, with an optional :group)
    #[arg(short = 'u', long = "user", value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// The working directory inside the container
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ShimArgs {
    /// Run as the exec helper (a control socket as stdin) for containers under this state directory
    #[arg(long)]
    exec: bool,
    /// Run the bundle DIR in the foreground as container ID (`berth runtime run`)
    #[arg(long, value_name = "ID", conflicts_with = "exec")]
    run: Option<String>,
    /// The container's state directory (with --exec, the state root; with --run, the bundle)
    dir: PathBuf,
    /// With --run or --exec: the build of berth that asks (this binary must be that build)
    build_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The bundle directory (config.json and the root filesystem)
    #[arg(long, short = 'b', default_value = ".", value_name = "DIR")]
    bundle: PathBuf,
    /// Run detached, under its own shim, which keeps its logs; prints its state once
    /// it runs
    #[arg(short = 'd', long)]
    detach: bool,
    /// With -d: rotate the log file when it reaches this many bytes
    #[arg(long, default_value_t = shim::DEFAULT_LOG_MAX_SIZE, value_name = "BYTES")]
    log_max_size: u64,
    /// With -d: keep at most this many log files
    #[arg(long, default_value_t = shim::DEFAULT_LOG_MAX_FILES, value_name = "N")]
    log_max_files: u32,
    /// With -d: write the container's pid (as seen from the host) to this file
    #[arg(long = "pid-file", value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// The container id (letters, digits, '_', '.', '-')
    id: String,
}

#[derive(Debug, Args)]
pub struct SpecArgs {
    /// Where to write config.json
    #[arg(long, short = 'b', default_value = ".", value_name = "DIR")]
    bundle: PathBuf,
    /// A spec for running without root (not supported yet)
    #[arg(long)]
    rootless: bool,
    /// The command the container runs [default: sh]
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

pub fn run(state_dir: &Path, args: &RuntimeArgs) -> anyhow::Result<ExitCode> {
    let state_dir = args.root.as_deref().unwrap_or(state_dir);
    let cmd = &args.command;
    match cmd {
        RuntimeCommand::Run(args) if args.detach => {
            let opts = shim::CreateOptions {
                log_max_size: args.log_max_size,
                log_max_files: args.log_max_files,
                ..shim::CreateOptions::new(shim_program()?)
            };
            let s = shim::create(state_dir, &args.bundle, &args.id, &opts)?;
            write_pid_file(args.pid_file.as_deref(), &s)?;
            print_json(&s)?;
            Ok(ExitCode::SUCCESS)
        }
        RuntimeCommand::Run(args) => run_bundle(args),
        RuntimeCommand::Spec(args) => write_spec(args),
        RuntimeCommand::Create(args) => oci_create(state_dir, args),
        RuntimeCommand::Start(a) => {
            shim::oci::start(state_dir, &a.id)?;
            Ok(ExitCode::SUCCESS)
        }
        RuntimeCommand::State(a) => {
            let s = shim::state(state_dir, &a.id)?;
            let json = serde_json::to_string_pretty(&shim::oci::state_json(&s))?;
            super::write_stdout(&(json + "\n"))?;
            Ok(ExitCode::SUCCESS)
        }
        RuntimeCommand::Kill(a) => {
            shim::kill(state_dir, &a.id, shim::parse_signal(&a.signal)?)?;
            Ok(ExitCode::SUCCESS)
        }
        RuntimeCommand::Stop(a) => {
            let grace = std::time::Duration::from_secs(a.time);
            let s = shim::stop(state_dir, &a.id, shim::parse_signal(&a.signal)?, grace)?;
            print_json(&s)?;
            Ok(ExitCode::SUCCESS)
        }
        RuntimeCommand::Delete(a) if a.force => {
            shim::oci::delete_force(state_dir, &a.id)?;
            Ok(ExitCode::SUCCESS)
        }
        RuntimeCommand::Delete(a) => {
            shim::delete(state_dir, &a.id)?;
            Ok(ExitCode::SUCCESS)
        }
        RuntimeCommand::List => {
            let mut text = String::new();
            for s in shim::list(state_dir)? {
                text.push_str(&serde_json::to_string(&s)?);
                text.push('\n');
            }
            super::write_stdout(&text)?;
            Ok(ExitCode::SUCCESS)
        }
        RuntimeCommand::Logs(a) => print_logs(state_dir, a),
        RuntimeCommand::Exec(a) => exec_in(state_dir, a),
        RuntimeCommand::Shim(a) => {
            runtime::sealed::reexec_sealed()?;
            let code = if a.exec {
                shim::helper_main(&a.dir, a.build_id.as_deref())
            } else if let Some(id) = &a.run {
                shim::run_main(&a.dir, id, a.build_id.as_deref())
            } else {
                shim::shim_main(&a.dir)
            };
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
    }
}

/// The shim program: `$BERTH_SHIM` (a path, or `builtin` for this binary), else
/// `berth-shim` next to this binary (a small program, see bench/README.md), else this
/// binary as `berth runtime shim`.
pub(super) fn shim_program() -> anyhow::Result<shim::ShimProgram> {
    let chosen = std::env::var_os("BERTH_SHIM");
    if let Some(path) = chosen.as_ref().filter(|p| p.as_os_str() != "builtin") {
        return Ok(shim::ShimProgram::new(path, Vec::new()).sealed()?);
    }
    let me = std::env::current_exe().context("find the berth binary")?;
    let sibling = me.with_file_name("berth-shim");
    // A berth-shim from another build of the agent (a rebuilt berth next to a stale
    // shim) may not speak this berth's protocol: it is used only if it says it was
    // built from the same agent code.
    let fresh = || {
        std::process::Command::new(&sibling)
            .arg("--build-id")
            .output()
            .is_ok_and(|o| {
                o.status.success() && o.stdout.trim_ascii() == agent::BUILD_ID.as_bytes()
            })
    };
    if chosen.is_none() && sibling.is_file() && fresh() {
        return Ok(shim::ShimProgram::new(sibling, Vec::new()).sealed()?);
    }
    Ok(shim::ShimProgram::new(me, vec!["runtime".into(), "shim".into()]).sealed()?)
}

/// The shim program for a single `--run` or `--exec`: berth-shim next to this binary
/// is not asked for its build first (one exec less per call) but told which build it
/// must be, and refuses otherwise; else as [`shim_program`].
fn unchecked_shim_program() -> anyhow::Result<shim::ShimProgram> {
    let me = std::env::current_exe().context("find the berth binary")?;
    let sibling = me.with_file_name("berth-shim");
    if std::env::var_os("BERTH_SHIM").is_none() && sibling.is_file() {
        return Ok(shim::ShimProgram::new(sibling, Vec::new())
            .sealed()?
            .expecting_build(agent::BUILD_ID));
    }
    shim_program()
}

/// `create` as runtime.md defines it: the container exists, set up, and its program
/// waits for `start`. Prints nothing: its stdout is the container's.
fn oci_create(state_dir: &Path, args: &CreateArgs) -> anyhow::Result<ExitCode> {
    let bundle = Bundle::load(&args.bundle)?;
    let terminal = bundle
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    match (terminal, &args.console_socket) {
        (true, None) => anyhow::bail!(
            "container {}: process.terminal needs --console-socket PATH (a unix socket to receive the terminal on), or `berth runtime run` for a terminal here",
            args.id
        ),
        (false, Some(_)) => anyhow::bail!(
            "container {}: --console-socket needs process.terminal: true in config.json",
            args.id
        ),
        _ => {}
    }
    let opts = shim::CreateOptions {
        oci: true,
        console_socket: args.console_socket.clone(),
        ..shim::CreateOptions::new(shim_program()?)
    };
    let s = shim::create(state_dir, &args.bundle, &args.id, &opts)?;
    write_pid_file(args.pid_file.as_deref(), &s)?;
    Ok(ExitCode::SUCCESS)
}

/// runc's `--pid-file`: the pid alone, written atomically (a reader never sees it
/// half-written).
fn write_pid_file(path: Option<&Path>, s: &shim::ContainerState) -> anyhow::Result<()> {
    let Some(path) = path else {
        return Ok(());
    };
    let pid = s.pid.unwrap_or(0);
    // Atomic only: the pid means nothing after a reboot.
    atomic_file::write(
        path,
        pid.to_string().as_bytes(),
        0o644,
        atomic_file::Durability::Atomic,
    )
    .with_context(|| format!("write {}", path.display()))
}

fn print_json(s: &shim::ContainerState) -> anyhow::Result<()> {
    super::write_stdout(&(serde_json::to_string_pretty(s)? + "\n"))?;
    Ok(())
}

fn print_logs(state_dir: &Path, a: &LogsArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let opts = shim::LogOptions {
        follow: a.follow,
        tail: a.tail,
    };
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let mut sink = |e: &shim::LogEntry| -> std::io::Result<()> {
        let result = if a.json {
            let line = serde_json::to_string(e).map_err(std::io::Error::other)? + "\n";
            stdout.write_all(line.as_bytes())
        } else {
            match e.stream {
                shim::Stream::Stdout => stdout.write_all(e.log.as_bytes()),
                shim::Stream::Stderr => stderr.write_all(e.log.as_bytes()),
            }
        };
        match result {
            // `berth runtime logs ID | head`: the reader has what it wanted.
            Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        }
    };
    shim::logs(state_dir, &a.id, opts, &mut sink)?;
    Ok(ExitCode::SUCCESS)
}

/// `berth runtime exec`: exits with the process's status (128 + n if signal n killed
/// it). With `-t` the command gets a terminal of this one's size, relayed with this
/// terminal in raw mode (restored afterwards), resized when this one is.
fn exec_in(state_dir: &Path, a: &ExecArgs) -> anyhow::Result<ExitCode> {
    exec_command(state_dir, &a.id, a.tty, &a.overrides, &a.cmd)
}

/// The `-e` entries of an exec: `KEY=VALUE` as given, `KEY` with this process's value
/// (left out if it has none).
pub(super) fn exec_env(o: &ExecOverrides) -> Vec<String> {
    let mut env = Vec::new();
    for e in &o.env {
        if e.contains('=') {
            env.push(e.clone());
        } else if let Ok(v) = std::env::var(e) {
            env.push(format!("{e}={v}"));
        }
    }
    env
}

/// This terminal's size (rows, columns), 24x80 if it has none.
pub(super) fn terminal_size() -> (u16, u16) {
    use std::os::fd::AsRawFd;
    let size = runtime::window_size(std::io::stdin().as_raw_fd())
        .or_else(|| runtime::window_size(std::io::stdout().as_raw_fd()))
        .unwrap_or(runtime::WindowSize { rows: 24, cols: 80 });
    (size.rows, size.cols)
}

/// Runs a command in running container `id` (shim state under `shim_root`) through
/// the exec helper; returns its exit status. With `tty`, a terminal of the container's
/// own is relayed to this one (raw mode meanwhile, resized with it). Without, the
/// command's stdin, stdout and stderr are pipes this process relays: this terminal
/// never enters the container (`shim::exec` says why).
pub(super) fn exec_command(
    shim_root: &Path,
    id: &str,
    tty: bool,
    o: &ExecOverrides,
    cmd: &[String],
) -> anyhow::Result<ExitCode> {
    use std::os::fd::AsFd;
    let req = shim::ExecRequest {
        args: cmd.to_vec(),
        env: exec_env(o),
        user: o.user.clone(),
        cwd: o.workdir.clone(),
        tty: tty.then(terminal_size),
        timeout_ms: None,
        privileged: false,
    };
    let program = unchecked_shim_program()?;
    if req.tty.is_some() {
        let mut session = shim::exec(&program, shim_root, id, &req, shim::ExecStdio::default())?;
        if let Some(master) = session.take_master() {
            runtime::relay_stdio(&master)?;
        }
        let report = session.wait()?;
        return Ok(ExitCode::from(report.status().clamp(0, 255) as u8));
    }
    let (in_r, in_w) = std::io::pipe()?;
    let (out_r, out_w) = std::io::pipe()?;
    let (err_r, err_w) = std::io::pipe()?;
    let session = shim::exec(
        &program,
        shim_root,
        id,
        &req,
        shim::ExecStdio {
            stdin: Some(in_r.as_fd()),
            stdout: Some(out_w.as_fd()),
            stderr: Some(err_w.as_fd()),
        },
    )?;
    drop((in_r, out_w, err_w));
    // stdin is copied until it ends (then the command sees EOF); the process's exit
    // does not wait for it.
    std::thread::spawn(move || {
        let mut in_w = in_w;
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut in_w);
    });
    let pump = |mut from: std::io::PipeReader, to: fn() -> Box<dyn std::io::Write>| {
        std::thread::spawn(move || {
            let mut to = to();
            let mut buf = [0u8; 16 * 1024];
            loop {
                match std::io::Read::read(&mut from, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
                            break;
                        }
                    }
                }
            }
        })
    };
    let out = pump(out_r, || Box::new(std::io::stdout()));
    let err = pump(err_r, || Box::new(std::io::stderr()));
    let report = session.wait()?;
    // What the command wrote before it exited is in the pipes: drain it. A process it
    // left running in the background may hold them open; do not wait for that one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
    for t in [out, err] {
        while !t.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    Ok(ExitCode::from(report.status().clamp(0, 255) as u8))
}

fn run_bundle(args: &RunArgs) -> anyhow::Result<ExitCode> {
    // The process that clones the container's init must run from a sealed copy of
    // its program (runtime::sealed says why): this one becomes the shim's, which
    // runs the bundle in the foreground with this process's stdio and pid.
    use std::os::unix::process::CommandExt;
    let bundle = std::fs::canonicalize(&args.bundle)
        .with_context(|| format!("bundle {}", args.bundle.display()))?;
    let program = unchecked_shim_program()?;
    let mut cmd = program.command();
    cmd.arg("--run")
        .arg(&args.id)
        .arg(&bundle)
        .arg(agent::BUILD_ID);
    let err = cmd.exec();
    Err(anyhow::anyhow!(
        "run the shim {} for the container: {err}",
        program.program.display()
    ))
}

fn write_spec(args: &SpecArgs) -> anyhow::Result<ExitCode> {
    if args.rootless {
        anyhow::bail!("--rootless: rootless specs are not supported yet; run berth as root");
    }
    let path = args.bundle.join("config.json");
    if path.exists() {
        anyhow::bail!(
            "{} exists already: remove it first (berth does not overwrite a spec)",
            path.display()
        );
    }
    let command = if args.args.is_empty() {
        vec!["sh".to_string()]
    } else {
        args.args.clone()
    };
    let spec = runtime::default_spec(std::path::Path::new("rootfs"), &command)?;
    let json = serde_json::to_string_pretty(&spec)?;
    std::fs::write(&path, json + "\n").with_context(|| format!("write {}", path.display()))?;
    Ok(ExitCode::SUCCESS)
}
