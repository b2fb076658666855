//! Profiles: services that run only when asked for.
//!
//! A service with no `profiles` is always enabled; one with profiles is enabled when one
//! of them is active (`--profile`, `COMPOSE_PROFILES`) or when it is named on the command
//! line, which also activates its profiles, as Compose does. A required dependency on a
//! disabled service is an error that says which profile would enable it; a dependency
//! marked `required: false` is dropped.

use std::collections::BTreeSet;

use crate::diag::Diagnostics;
use crate::model::Stack;
use crate::origin::Origin;
use crate::references::Implicit;

pub(crate) fn apply(
    stack: &mut Stack,
    active: &BTreeSet<String>,
    named: &[String],
    origin: &Origin,
    implicit: &Implicit,
    main_file: &str,
    diags: &mut Diagnostics,
) {
    let mut active = active.clone();
    for name in named {
        match stack.services.get(name) {
            Some(svc) => active.extend(svc.profiles.iter().cloned()),
            None => {
                let known: Vec<&str> = stack.services.keys().map(String::as_str).collect();
                let hint = crate::decode::suggest(name, &known)
                    .map(|s| format!("; did you mean {s:?}?"))
                    .unwrap_or_default();
                diags.error("", "", format!("no such service: {name}{hint}"));
            }
        }
    }
    let all = active.contains("*");
    let enabled: BTreeSet<String> = stack
        .services
        .iter()
        .filter(|(name, svc)| {
            svc.profiles.is_empty()
                || all
                || named.contains(name)
                || svc.profiles.iter().any(|p| active.contains(p))
        })
        .map(|(name, _)| name.clone())
        .collect();

    for name in &enabled {
        let Some(svc) = stack.services.get(name) else {
            continue;
        };
        let mut dropped = Vec::new();
        for (dep, how) in &svc.depends_on {
            if enabled.contains(dep) {
                continue;
            }
            let Some(target) = stack.services.get(dep) else {
                continue;
            };
            // Dropped either way: optional, or reported here (and not again as undefined).
            dropped.push(dep.clone());
            if !how.required {
                continue;
            }
            let profiles = target.profiles.join(", ");
            // A dependency made by links, volumes_from or service:X is reported where
            // that reference is written.
            match implicit.get(&(name.clone(), dep.clone())) {
                Some((file, path)) => diags.error(
                    file,
                    path,
                    format!(
                        "service {dep:?} is disabled by its profiles ({profiles}); enable one \
                         with --profile"
                    ),
                ),
                None => diags.error(
                    origin.file(name, "depends_on").unwrap_or(main_file),
                    &format!("services.{name}.depends_on.{dep}"),
                    format!(
                        "service {dep:?} is disabled by its profiles ({profiles}); enable one \
                         with --profile, or mark the dependency required: false"
                    ),
                ),
            }
        }
        if let Some(svc) = stack.services.get_mut(name) {
            for dep in dropped {
                svc.depends_on.remove(&dep);
            }
        }
    }
    stack.services.retain(|name, _| enabled.contains(name));
}
