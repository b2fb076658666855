//! `berth up --dry-run`: asks the daemon what `up` would do (`POST
//! /v1/stacks/NAME/plan`, worked out by `manager::plan` from the same functions `up`
//! runs) and prints it, with the images `up` would pull; changes nothing.

use std::path::Path;
use std::process::ExitCode;

use manager::plan::{Action, Placed, ServicePlan, UpPlan};
use manager::stacks::UpRequest;

use super::write_stdout;
use crate::client::Client;

/// Prints the plan of `req`; with `detailed`, exits 2 when `up` would change something.
pub(super) fn dry_run(
    state_dir: &Path,
    client: &Client,
    req: &UpRequest,
    detailed: bool,
) -> anyhow::Result<ExitCode> {
    let name = &req.record.stack.name;
    let plan: UpPlan = client.call("POST", &format!("/v1/stacks/{name}/plan"), Some(req))?;
    let pulls = images_to_pull(state_dir, &req.record.stack);
    write_stdout(&render(&plan, &pulls))?;
    let changes = plan.changes() || !pulls.is_empty();
    Ok(match (detailed, changes) {
        (true, true) => ExitCode::from(2),
        _ => ExitCode::SUCCESS,
    })
}

/// The images `up` would pull on this host, with the services that use them and why
/// (`missing`, or `pull_policy: always`). A wrong reference is left to `up` to report.
fn images_to_pull(state_dir: &Path, stack: &spec::Stack) -> Vec<(String, String, &'static str)> {
    let store = agent::image::ImageStore::open(state_dir).ok();
    let mut out = Vec::new();
    // Each image looked up once, however many services use it.
    let mut known: std::collections::HashMap<String, bool> = Default::default();
    for (name, svc) in &stack.services {
        let Some(image) = &svc.image else { continue };
        let Ok(reference) = agent::image::Reference::parse(image) else {
            continue;
        };
        let present = *known
            .entry(reference.to_string())
            .or_insert_with(|| store.as_ref().is_some_and(|s| s.image(&reference).is_ok()));
        match svc.pull_policy.as_deref().unwrap_or("missing") {
            "always" => out.push((image.clone(), name.clone(), "pull_policy: always")),
            "never" | "build" => {}
            _ if !present => out.push((image.clone(), name.clone(), "not in the store")),
            _ => {}
        }
    }
    out
}

/// The plan as text: one line per service, then the images to pull.
pub(crate) fn render(plan: &UpPlan, pulls: &[(String, String, &str)]) -> String {
    let mut out = format!(
        "Plan for stack {} (--dry-run: nothing was changed)\n",
        plan.stack
    );
    let width = plan
        .services
        .iter()
        .map(|s| s.service.len())
        .max()
        .unwrap_or(0);
    for sp in &plan.services {
        out.push_str(&format!(
            "  {:<9} {:<width$}  {}\n",
            sp.action.as_str(),
            sp.service,
            describe(sp)
        ));
        for (slot, placed) in &sp.placed {
            let at = match placed {
                Placed::Node(node) => format!("on node {node}"),
                Placed::Pending(why) => format!("pending: {why}"),
            };
            out.push_str(&format!("              {}-{slot}: {at}\n", sp.service));
        }
    }
    for (image, service, why) in pulls {
        out.push_str(&format!("  pull      {image} (for {service}: {why})\n"));
    }
    if !plan.changes() && pulls.is_empty() {
        out.push_str("  nothing to do: the stack runs as the file says\n");
    }
    out
}

fn describe(sp: &ServicePlan) -> String {
    let (from, to) = sp.replicas;
    let slots = |v: &[u32]| {
        v.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = Vec::new();
    match sp.action {
        Action::Create => parts.push(format!("{to} task(s)")),
        Action::Recreate => {
            let why: Vec<String> = sp
                .changed
                .iter()
                .map(|c| match (&c.old, &c.new) {
                    (None, None) => c.path.clone(),
                    (old, new) => format!(
                        "{}: {} -> {}",
                        c.path,
                        old.as_deref().unwrap_or("(none)"),
                        new.as_deref().unwrap_or("(none)")
                    ),
                })
                .collect();
            let why = if why.is_empty() {
                "up --force-recreate, or a container that could not start".to_string()
            } else {
                why.join("; ")
            };
            parts.push(format!(
                "{} of {to} task(s) (slots {}): {why}",
                sp.recreate.len(),
                slots(&sp.recreate)
            ));
            if let Some(rolling) = &sp.rolling {
                parts.push(format!("rolling: {rolling}"));
            }
        }
        Action::Scale => parts.push(format!("{from} -> {to}")),
        Action::Remove => parts.push(format!(
            "{} task(s): no longer in the file (--remove-orphans)",
            sp.remove.len()
        )),
        Action::Orphan => parts
            .push("no longer in the file, kept running (up --remove-orphans removes it)".into()),
        Action::Unchanged => parts.push(format!("{to} task(s)")),
    }
    if sp.action == Action::Recreate && from != to {
        parts.push(format!("and scale {from} -> {to}"));
    }
    if !sp.create.is_empty() && sp.action != Action::Create {
        parts.push(format!("new slots {}", slots(&sp.create)));
    }
    if !sp.remove.is_empty() && sp.action != Action::Remove {
        parts.push(format!("removed slots {}", slots(&sp.remove)));
    }
    if !sp.waits_for.is_empty() {
        parts.push(format!(
            "its new tasks would wait for {}, which will have no task",
            sp.waits_for.join(", ")
        ));
    }
    parts.join(", ")
}
