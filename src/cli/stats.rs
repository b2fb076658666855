//! `berth stats`: CPU and memory of the project's running containers.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use manager::state::model::State;
use spec::task::Task;

use super::common::{connect, project_name, running_tasks, table};
use super::{write_stdout, ProjectArgs};

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Print one sample and exit (berth stats always does for now)
    #[arg(long)]
    no_stream: bool,
    #[arg(value_name = "SERVICE")]
    services: Vec<String>,
}

/// `stats`: CPU (over a half-second sample) and memory of each running container.
pub fn stats(
    state_dir: &Path,
    project: &ProjectArgs,
    args: &StatsArgs,
) -> anyhow::Result<ExitCode> {
    let name = project_name(project)?;
    let client = connect(state_dir, false)?;
    let state: State = client.call("GET", "/v1/state", None::<&()>)?;
    let tasks = running_tasks(&state, &name, &args.services);
    let sample = |t: &Task| -> Option<(u64, u64)> {
        let v: serde_json::Value = client
            .call("GET", &format!("/v1/tasks/{}/stats", t.id), None::<&()>)
            .ok()?;
        Some((v["cpu_nanos"].as_u64()?, v["memory_bytes"].as_u64()?))
    };
    let first: Vec<Option<(u64, u64)>> = tasks.iter().map(sample).collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let wall = start.elapsed().as_nanos().max(1) as f64;
    let mut rows = vec![["NAME".to_string(), "CPU %".into(), "MEM USAGE".into()]];
    for (t, before) in tasks.iter().zip(first) {
        let (Some((cpu0, _)), Some((cpu1, mem))) = (before, sample(t)) else {
            continue;
        };
        let cpu = cpu1.saturating_sub(cpu0) as f64 / wall * 100.0;
        rows.push([
            t.name(),
            format!("{cpu:.2}%"),
            format!("{:.1}MiB", mem as f64 / 1048576.0),
        ]);
    }
    let _ = args.no_stream;
    write_stdout(&table(&rows))?;
    Ok(ExitCode::SUCCESS)
}
