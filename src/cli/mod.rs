//! Command-line parsing and dispatch: the clap command tree and, per verb, the call
//! into its module. Each verb lives in its own module (as youki's `commands/`; the
//! services verbs `start`, `stop`, `restart`, `rm`, `pause` and `unpause` share
//! `services`), what several share is in `common`, and the verbs that work on a
//! project get the options common to all of them in [`ProjectArgs`], as in
//! `docker compose`.

mod cluster;
mod common;
mod config;
mod context;
mod daemon;
mod down;
mod events;
mod exec;
mod gitops;
mod image;
mod images;
mod kill;
mod logs;
mod ls;
mod node;
mod plan;
mod port;
mod ps;
mod pull;
mod run;
mod runtime;
mod services;
mod stats;
mod top;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    about = "Run Compose stacks on one host or a cluster, without Docker"
)]
struct Cli {
    #[command(flatten)]
    project: ProjectArgs,
    /// Where berth keeps images, containers and state
    #[arg(
        long,
        global = true,
        env = "BERTH_STATE_DIR",
        default_value = "/var/lib/berth",
        value_name = "DIR"
    )]
    state_dir: PathBuf,
    /// Send verbs to this cluster manager (IP[:PORT]) over mutual TLS instead of the
    /// local daemon
    #[arg(long, global = true, env = "BERTH_HOST", value_name = "ADDR")]
    host: Option<String>,
    /// The admin certificate for --host: a directory with ca.crt, node.crt, node.key
    #[arg(
        long = "tls-dir",
        global = true,
        env = "BERTH_TLS_DIR",
        value_name = "DIR"
    )]
    tls_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// Options that say which project a command works on, as Compose's: accepted before
/// the verb (`berth -f a.yaml config`) and after a verb that works on a project
/// (`berth config -f a.yaml`). They are not global, so that a verb may use `-f` for
/// something else (`logs -f` follows, as in `docker compose -f x.yaml logs -f`).
#[derive(Debug, Clone, Args)]
pub struct ProjectArgs {
    /// Compose file(s), merged in order [default: compose.yaml or docker-compose.yml]
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Project name [default: name: in the file, else the directory name]
    #[arg(short = 'p', long = "project-name", value_name = "NAME")]
    pub project_name: Option<String>,
    /// Enable services of this profile (repeatable; replaces COMPOSE_PROFILES)
    #[arg(long = "profile", value_name = "PROFILE")]
    pub profiles: Vec<String>,
    /// Read variables from this file instead of .env (repeatable; later files win)
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_files: Vec<PathBuf>,
    /// Directory relative paths are resolved against [default: the first file's directory]
    #[arg(long = "project-directory", value_name = "DIR")]
    pub project_directory: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the fully resolved stack, as berth will run it
    Config(config::ConfigArgs),
    /// Manage the local image store (import, load, pull, ls, rm, inspect)
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Create and start the project's containers (and the daemon, if none runs)
    Up(up::UpArgs),
    /// Stop and remove the project's containers (-v: and its named volumes)
    Down(down::DownArgs),
    /// List the project's containers
    Ps(ps::PsArgs),
    /// Show the output of the project's containers
    Logs(logs::LogsArgs),
    /// Stop services (their containers are kept)
    Stop(services::ServicesArgs),
    /// Start stopped services
    Start(services::ServicesArgs),
    /// Restart services (their containers are recreated)
    Restart(services::ServicesArgs),
    /// List the deployed stacks
    Ls(ls::LsArgs),
    /// Send a signal to the services' containers
    Kill(kill::KillArgs),
    /// Remove the services' stopped containers
    Rm(services::ServicesArgs),
    /// Run a command in a running container of a service
    Exec(exec::ExecArgs),
    /// Show the processes of the project's containers
    Top(services::ServicesArgs),
    /// Show CPU and memory use of the project's containers
    Stats(stats::StatsArgs),
    /// Print the host address a container port is published on
    Port(port::PortArgs),
    /// Freeze the services' containers
    Pause(services::ServicesArgs),
    /// Thaw the services' containers
    Unpause(services::ServicesArgs),
    /// Return services to their definition before the last change (by their
    /// rollback_config; containers still running it are kept)
    Rollback(services::ServicesArgs),
    /// Run a one-off container of a service
    Run(run::RunArgs),
    /// Stream the project's container events
    Events(events::EventsArgs),
    /// List the images the project's services use
    Images(images::ImagesArgs),
    /// Pull the images of the project's services
    Pull(pull::PullArgs),
    /// Run the berth daemon in the foreground (berth up starts one when none runs)
    Daemon(daemon::DaemonArgs),
    /// Make a cluster, join one, show it, manage its join tokens
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// List and change the cluster's nodes
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Point verbs at a remote cluster manager, or back at the local daemon
    #[command(subcommand)]
    Context(context::ContextCommand),
    /// Keep the stacks of a directory or a git repository deployed
    #[command(subcommand)]
    Gitops(gitops::GitopsCommand),
    /// Run OCI bundles directly, like runc (plumbing)
    #[command(hide = true)]
    Runtime(runtime::RuntimeArgs),
}

pub fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    context::set_remote(cli.host.clone(), cli.tls_dir.clone(), &cli.state_dir);
    match cli.command {
        Command::Config(args) => config::run(&cli.project.with(&args.project), &args),
        Command::Image(cmd) => image::run(&cli.state_dir, &cmd),
        Command::Runtime(cmd) => runtime::run(&cli.state_dir, &cmd),
        Command::Up(args) => up::up(&cli.state_dir, &cli.project.with(&args.project), &args),
        Command::Down(args) => down::down(&cli.state_dir, &cli.project.with(&args.project), &args),
        Command::Ps(args) => ps::ps(&cli.state_dir, &cli.project.with(&args.project), &args),
        Command::Logs(args) => {
            let mut project = cli.project.clone();
            if args.project_name.is_some() {
                project.project_name = args.project_name.clone();
            }
            logs::logs(&cli.state_dir, &project, &args)
        }
        Command::Stop(args) => services::services_verb(
            &cli.state_dir,
            &cli.project.with(&args.project),
            &args,
            "stop",
        ),
        Command::Start(args) => services::services_verb(
            &cli.state_dir,
            &cli.project.with(&args.project),
            &args,
            "start",
        ),
        Command::Restart(args) => services::services_verb(
            &cli.state_dir,
            &cli.project.with(&args.project),
            &args,
            "restart",
        ),
        Command::Ls(args) => ls::ls(&cli.state_dir, &args),
        Command::Kill(args) => kill::kill(&cli.state_dir, &cli.project.with(&args.project), &args),
        Command::Rm(args) => services::services_verb(
            &cli.state_dir,
            &cli.project.with(&args.project),
            &args,
            "rm",
        ),
        Command::Exec(args) => {
            let mut project = cli.project.clone();
            if args.project_name.is_some() {
                project.project_name = args.project_name.clone();
            }
            exec::exec(&cli.state_dir, &project, &args)
        }
        Command::Port(args) => port::port(&cli.state_dir, &cli.project.with(&args.project), &args),
        Command::Top(args) => top::top(&cli.state_dir, &cli.project.with(&args.project), &args),
        Command::Stats(args) => {
            stats::stats(&cli.state_dir, &cli.project.with(&args.project), &args)
        }
        Command::Pause(args) => services::services_verb(
            &cli.state_dir,
            &cli.project.with(&args.project),
            &args,
            "pause",
        ),
        Command::Unpause(args) => services::services_verb(
            &cli.state_dir,
            &cli.project.with(&args.project),
            &args,
            "unpause",
        ),
        Command::Rollback(args) => services::services_verb(
            &cli.state_dir,
            &cli.project.with(&args.project),
            &args,
            "rollback",
        ),
        Command::Run(args) => run::run(&cli.state_dir, &cli.project.with(&args.project), &args),
        Command::Events(args) => {
            events::events(&cli.state_dir, &cli.project.with(&args.project), &args)
        }
        Command::Images(args) => {
            images::images(&cli.state_dir, &cli.project.with(&args.project), &args)
        }
        Command::Pull(args) => pull::pull(&cli.state_dir, &cli.project.with(&args.project), &args),
        Command::Daemon(args) => daemon::daemon(&cli.state_dir, &args),
        Command::Cluster(cmd) => cluster::cluster(&cli.state_dir, &cmd),
        Command::Node(cmd) => node::node(&cli.state_dir, &cmd),
        Command::Context(cmd) => context::context(&cmd),
        Command::Gitops(cmd) => gitops::gitops(&cli.state_dir, &cmd),
    }
}

impl ProjectArgs {
    /// These options (given before the verb) with those given after it: lists add up,
    /// single values given after the verb win.
    pub fn with(&self, after: &ProjectArgs) -> ProjectArgs {
        fn join<T: Clone>(a: &[T], b: &[T]) -> Vec<T> {
            a.iter().chain(b).cloned().collect()
        }
        ProjectArgs {
            files: join(&self.files, &after.files),
            project_name: after
                .project_name
                .clone()
                .or_else(|| self.project_name.clone()),
            profiles: join(&self.profiles, &after.profiles),
            env_files: join(&self.env_files, &after.env_files),
            project_directory: after
                .project_directory
                .clone()
                .or_else(|| self.project_directory.clone()),
        }
    }

    /// Load options from the command line and this process's environment.
    pub fn load_options(&self, services: &[String]) -> anyhow::Result<spec::LoadOptions> {
        Ok(spec::LoadOptions {
            files: self.files.clone(),
            project_name: self.project_name.clone(),
            project_directory: self.project_directory.clone(),
            env_files: self.env_files.clone(),
            profiles: self.profiles.clone(),
            services: services.to_vec(),
            // Variables that are not valid UTF-8 cannot be referenced from YAML anyway.
            environment: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
            working_dir: std::env::current_dir()?,
            stdin_text: if self.files.iter().any(|f| f.as_os_str() == "-") {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
                Some(text)
            } else {
                None
            },
        })
    }
}

/// Prints a load's diagnostics the way every command does: errors as
/// `berth: <file>: <path>: <message>`, warnings marked as such.
pub fn print_diagnostics(warnings: &[spec::Diagnostic], errors: &[spec::Diagnostic]) {
    let mut text = String::new();
    for w in warnings {
        text.push_str(&format!("berth: warning: {w}\n"));
    }
    for e in errors {
        text.push_str(&format!("berth: {e}\n"));
    }
    write_stderr(&text);
}

/// Writes to standard output. A closed pipe (`berth config | head`) means the reader has
/// what it wanted: not an error, and certainly not a panic as `print!` would make it.
pub fn write_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Writes to standard error; if even that fails there is nobody left to tell.
pub fn write_stderr(text: &str) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}
