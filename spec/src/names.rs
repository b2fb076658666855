//! The rules for names that become names of host objects and parts of paths: the
//! project (stack) name, and the keys of services, networks, volumes, secrets and
//! configs. The loader applies them to what it reads; the daemon applies them again
//! to whatever an API request carries ([`check_record`]), since a request need not
//! come from the loader: a stack named `../x` would otherwise put files outside the
//! state directory.
//!
//! The rules are Compose's: a project name is lowercase letters, digits, `-` and `_`,
//! starting with a letter or digit; other names are letters, digits, `_`, `.` and
//! `-`, starting with a letter or digit (so never `.` or `..`, and never a `/`).

use std::fmt;

use crate::model::{MountType, Service, Stack};
use crate::task::StackRecord;

/// A name that breaks its rule, with the field it was found in
/// (`services.web.volumes[0].source`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for NameError {}

/// Whether a project name (`-p`, `COMPOSE_PROJECT_NAME`, `name:`, a stack name in
/// the API) is valid; the error suggests a valid one.
pub fn check_project_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        return Ok(());
    }
    let hint = match normalize_project_name(name) {
        n if n.is_empty() => String::new(),
        n => format!(" (for example {n:?})"),
    };
    Err(format!(
        "invalid project name {name:?}: it must contain only lowercase letters, digits, '-' and \
         '_', and start with a letter or digit{hint}"
    ))
}

/// Turns a directory name into a project name, as Compose does: lower case, only
/// `[a-z0-9_-]`, no leading `_` or `-`.
pub fn normalize_project_name(name: &str) -> String {
    let lowered: String = name
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_')
        .collect();
    lowered.trim_start_matches(['-', '_']).to_string()
}

/// Whether `name` may name a service, network, volume, secret, config or container.
pub fn is_resource_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// [`is_resource_name`], as a message.
pub fn check_resource_name(name: &str) -> Result<(), String> {
    if is_resource_name(name) {
        Ok(())
    } else {
        Err(format!(
            "invalid name {name:?}: use letters, digits, '_', '.' and '-', starting with a letter \
             or digit"
        ))
    }
}

fn resource(field: impl Into<String>, name: &str) -> Result<(), NameError> {
    check_resource_name(name).map_err(|message| NameError {
        field: field.into(),
        message,
    })
}

/// Checks every name of a stack that becomes a host name or a path: its name, the keys
/// of its services, networks, volumes, secrets and configs and the names they set,
/// and the names each service refers to.
pub fn check_stack(stack: &Stack) -> Result<(), NameError> {
    check_project_name(&stack.name).map_err(|message| NameError {
        field: "name".into(),
        message,
    })?;
    for (key, service) in &stack.services {
        resource("services", key)?;
        check_service(&format!("services.{key}"), service)?;
    }
    for (key, n) in &stack.networks {
        resource("networks", key)?;
        if !n.name.is_empty() {
            resource(format!("networks.{key}.name"), &n.name)?;
        }
    }
    for (key, v) in &stack.volumes {
        resource("volumes", key)?;
        if !v.name.is_empty() {
            resource(format!("volumes.{key}.name"), &v.name)?;
        }
    }
    for (kind, map) in [("secrets", &stack.secrets), ("configs", &stack.configs)] {
        for (key, o) in map {
            resource(kind, key)?;
            if !o.name.is_empty() {
                resource(format!("{kind}.{key}.name"), &o.name)?;
            }
        }
    }
    Ok(())
}

/// The names one service refers to: its container name, networks, named volumes,
/// secrets and configs. `field` is where the service is (`services.web`).
pub fn check_service(field: &str, service: &Service) -> Result<(), NameError> {
    if let Some(name) = &service.container_name {
        resource(format!("{field}.container_name"), name)?;
    }
    for key in service.networks.keys() {
        resource(format!("{field}.networks"), key)?;
    }
    for (i, m) in service.volumes.iter().enumerate() {
        if let (MountType::Volume, Some(source)) = (m.kind, &m.source) {
            resource(format!("{field}.volumes[{i}].source"), source)?;
        }
    }
    for (kind, list) in [("secrets", &service.secrets), ("configs", &service.configs)] {
        for (i, fm) in list.iter().enumerate() {
            resource(format!("{field}.{kind}[{i}].source"), &fm.source)?;
        }
    }
    Ok(())
}

/// [`check_stack`], and the names of the services a record adds to the stack's:
/// one-off containers and orphans, whose keys name containers too.
pub fn check_record(record: &StackRecord) -> Result<(), NameError> {
    check_stack(&record.stack)?;
    for (kind, map) in [("oneoffs", &record.oneoffs), ("orphans", &record.orphans)] {
        for (key, service) in map {
            resource(kind, key)?;
            check_service(&format!("{kind}.{key}"), service)?;
        }
    }
    for (kind, names) in [
        ("stopped", record.stopped.iter().collect::<Vec<_>>()),
        ("scale", record.scale.keys().collect()),
        ("restarted", record.restarted.keys().collect()),
    ] {
        for name in names {
            resource(kind, name)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(json: serde_json::Value) -> Stack {
        serde_json::from_value(json).expect("a stack")
    }

    #[test]
    fn resource_names() {
        for ok in ["web", "Web_2", "a.b-c", "0"] {
            assert!(is_resource_name(ok), "{ok}");
        }
        for bad in [
            "", ".", "..", "../x", "a/b", "-x", "_x", ".x", "a b", "a\0b", "ü",
        ] {
            assert!(!is_resource_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn project_names() {
        assert!(check_project_name("web_2-x").is_ok());
        for bad in ["", "..", "../x", "a/b", "My", "-x", "a.b"] {
            assert!(check_project_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_name_of_a_stack_that_becomes_a_path_is_checked() {
        use serde_json::json;
        let web = |extra: serde_json::Value| {
            let mut s = json!({"image": "busybox"});
            s.as_object_mut()
                .expect("object")
                .extend(extra.as_object().expect("object").clone());
            s
        };
        let cases = [
            (json!({"name": "../x"}), "name"),
            (
                json!({"name": "s", "services": {"../x": web(json!({}))}}),
                "services",
            ),
            (
                json!({"name": "s", "services": {"web": web(json!({"container_name": "a/b"}))}}),
                "services.web.container_name",
            ),
            (
                json!({"name": "s", "services": {"web": web(json!({"networks": {"..": {}}}))}}),
                "services.web.networks",
            ),
            (
                json!({"name": "s", "services": {"web": web(json!({"volumes": [
                    {"type": "volume", "source": "../../etc", "target": "/x"}
                ]}))}}),
                "services.web.volumes[0].source",
            ),
            (
                json!({"name": "s", "services": {"web": web(json!({"secrets": [
                    {"source": "../k", "target": "/run/secrets/k"}
                ]}))}}),
                "services.web.secrets[0].source",
            ),
            (json!({"name": "s", "volumes": {"..": {}}}), "volumes"),
            (
                json!({"name": "s", "volumes": {"data": {"name": "../../x"}}}),
                "volumes.data.name",
            ),
            (
                json!({"name": "s", "networks": {"n": {"name": "a/b"}}}),
                "networks.n.name",
            ),
            (
                json!({"name": "s", "configs": {"c": {"name": "..", "content": "x"}}}),
                "configs.c.name",
            ),
        ];
        for (json, field) in cases {
            let err = check_stack(&stack(json.clone())).expect_err(&json.to_string());
            assert_eq!(err.field, field, "{json}");
        }
        let fine = json!({"name": "s", "services": {"web": web(json!({"volumes": [
            {"type": "bind", "source": "/srv/../data", "target": "/x"}
        ]}))}, "volumes": {"data": {"name": "s_data"}}});
        check_stack(&stack(fine)).expect("host paths of binds are not names");
    }

    #[test]
    fn a_record_s_one_offs_and_orphans_are_checked_too() {
        let record: StackRecord = serde_json::from_value(serde_json::json!({
            "stack": {"name": "s"},
            "oneoffs": {"../../x-run-1": {"image": "busybox"}},
        }))
        .expect("record");
        assert_eq!(check_record(&record).expect_err("bad").field, "oneoffs");
    }
}
