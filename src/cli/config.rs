//! `berth config`: print the resolved stack in Compose's canonical long form, like
//! `docker compose config`, so a user sees exactly what berth will run.

use std::collections::BTreeSet;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use super::{print_diagnostics, write_stdout, ProjectArgs};

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Only check the files; print nothing but problems
    #[arg(short, long)]
    quiet: bool,
    /// Print the service names, one per line
    #[arg(long = "services", id = "list_services")]
    services: bool,
    /// Print the volume names, one per line
    #[arg(long = "volumes", id = "list_volumes")]
    volumes: bool,
    /// Print the profile names, one per line
    #[arg(long = "profiles", id = "list_profiles")]
    profiles: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Yaml)]
    format: Format,
    /// Show only these services (and what they depend on)
    #[arg(value_name = "SERVICE")]
    only: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Yaml,
    Json,
}

pub fn run(project: &ProjectArgs, args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let opts = project.load_options(&args.only)?;
    let mut loaded = match spec::load(&opts) {
        Ok(p) => p,
        Err(e) => {
            print_diagnostics(&e.warnings, &e.errors);
            return Ok(ExitCode::FAILURE);
        }
    };
    print_diagnostics(&loaded.warnings, &[]);
    if !args.only.is_empty() {
        keep_with_dependencies(&mut loaded.stack, &args.only);
    }
    let stack = &loaded.stack;
    if args.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    if args.services || args.volumes || args.profiles {
        let mut lines: Vec<&str> = Vec::new();
        if args.services {
            lines.extend(stack.services.keys().map(String::as_str));
        }
        if args.volumes {
            lines.extend(stack.volumes.keys().map(String::as_str));
        }
        if args.profiles {
            lines.extend(loaded.all_profiles.iter().map(String::as_str));
        }
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        write_stdout(&text)?;
        return Ok(ExitCode::SUCCESS);
    }
    let text = match args.format {
        Format::Yaml => spec::canonical::to_yaml(stack)?,
        Format::Json => spec::canonical::to_json(stack)?,
    };
    write_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// Keeps the named services and, transitively, the services they depend on.
pub(super) fn keep_with_dependencies(stack: &mut spec::Stack, names: &[String]) {
    let mut keep: BTreeSet<String> = BTreeSet::new();
    let mut todo: Vec<String> = names.to_vec();
    while let Some(name) = todo.pop() {
        if let Some(svc) = stack.services.get(&name) {
            todo.extend(
                svc.depends_on
                    .keys()
                    .filter(|d| !keep.contains(*d))
                    .cloned(),
            );
        }
        keep.insert(name);
    }
    stack.services.retain(|name, _| keep.contains(name));
}
