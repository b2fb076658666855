//! `security_opt:` entries, as Docker reads them (`docker run --security-opt`).
//!
//! A seccomp profile named by file is read by the loader and carried inline, as the
//! Docker CLI sends it to its daemon (`seccomp={...json...}`): the stack then holds
//! the profile itself, so a cluster node that has no such file gets it, the spec hash
//! changes when the profile does, and `berth config` prints something that loads back.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One `security_opt` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SecurityOpt {
    /// `no-new-privileges[:true|:false]` (also with `=`).
    NoNewPrivileges(bool),
    /// `seccomp=unconfined`: no filter at all.
    SeccompUnconfined,
    /// `seccomp=PROFILE`: Docker's profile format, as compact JSON.
    Seccomp(String),
    /// `apparmor=PROFILE`.
    AppArmor(String),
    /// `label=...`: an SELinux option (`user:`, `role:`, `type:`, `level:`, `disable`).
    Label(String),
    /// `systempaths=unconfined`: /proc and /sys without masked or read-only paths.
    SystemPathsUnconfined,
}

/// The options Docker knows, for the error about any other.
pub const KNOWN: &str = "no-new-privileges[:true|false], seccomp=unconfined, seccomp=PROFILE.json, apparmor=PROFILE, label=..., systempaths=unconfined";

impl SecurityOpt {
    /// Parses an entry whose seccomp profile, if any, is inline JSON already (a file
    /// name is the loader's to read: see `decode::service`). Docker accepts `:` or `=`
    /// between key and value (`:` is the older form).
    pub fn parse(text: &str) -> Result<SecurityOpt, String> {
        let (key, value) = match text.find(['=', ':']) {
            Some(i) => (&text[..i], Some(&text[i + 1..])),
            None => (text, None),
        };
        let unknown = || format!("unknown security option {text:?}; known: {KNOWN}");
        Ok(match (key, value) {
            ("no-new-privileges", None) => SecurityOpt::NoNewPrivileges(true),
            ("no-new-privileges", Some(v)) => match v {
                "true" => SecurityOpt::NoNewPrivileges(true),
                "false" => SecurityOpt::NoNewPrivileges(false),
                _ => {
                    return Err(format!(
                        "invalid no-new-privileges value {v:?}: use true or false"
                    ))
                }
            },
            ("seccomp", Some("unconfined")) => SecurityOpt::SeccompUnconfined,
            ("seccomp", Some(v)) if v.trim_start().starts_with('{') => {
                SecurityOpt::Seccomp(check_seccomp_profile(v)?)
            }
            ("seccomp", Some(v)) if !v.is_empty() => {
                return Err(format!(
                    "seccomp profile {v:?} was not read: give the path of a JSON file"
                ))
            }
            ("apparmor", Some(v)) if !v.is_empty() => SecurityOpt::AppArmor(v.to_string()),
            ("label", Some(v)) if !v.is_empty() => SecurityOpt::Label(v.to_string()),
            ("systempaths", Some("unconfined")) => SecurityOpt::SystemPathsUnconfined,
            ("systempaths", Some(v)) => {
                return Err(format!(
                    "invalid systempaths value {v:?}: the only value is unconfined"
                ))
            }
            _ => return Err(unknown()),
        })
    }
}

impl fmt::Display for SecurityOpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecurityOpt::NoNewPrivileges(b) => write!(f, "no-new-privileges:{b}"),
            SecurityOpt::SeccompUnconfined => f.write_str("seccomp=unconfined"),
            SecurityOpt::Seccomp(json) => write!(f, "seccomp={json}"),
            SecurityOpt::AppArmor(p) => write!(f, "apparmor={p}"),
            SecurityOpt::Label(l) => write!(f, "label={l}"),
            SecurityOpt::SystemPathsUnconfined => f.write_str("systempaths=unconfined"),
        }
    }
}

impl TryFrom<String> for SecurityOpt {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        SecurityOpt::parse(&s)
    }
}

impl From<SecurityOpt> for String {
    fn from(o: SecurityOpt) -> String {
        o.to_string()
    }
}

/// What a service's `security_opt` list asks for, the last entry of a kind winning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityOpts {
    /// `None`: the default, which for Docker is off.
    pub no_new_privileges: Option<bool>,
    /// `None`: the runtime's default profile (Docker's).
    pub seccomp: Option<Seccomp>,
    pub apparmor: Option<String>,
    pub label: Option<String>,
    pub systempaths_unconfined: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seccomp {
    Unconfined,
    /// Docker's profile format, as JSON.
    Profile(String),
}

impl SecurityOpts {
    pub fn of(list: &[SecurityOpt]) -> SecurityOpts {
        let mut out = SecurityOpts::default();
        for o in list {
            match o {
                SecurityOpt::NoNewPrivileges(b) => out.no_new_privileges = Some(*b),
                SecurityOpt::SeccompUnconfined => out.seccomp = Some(Seccomp::Unconfined),
                SecurityOpt::Seccomp(p) => out.seccomp = Some(Seccomp::Profile(p.clone())),
                SecurityOpt::AppArmor(p) => out.apparmor = Some(p.clone()),
                SecurityOpt::Label(l) => out.label = Some(l.clone()),
                SecurityOpt::SystemPathsUnconfined => out.systempaths_unconfined = true,
            }
        }
        out
    }
}

/// Docker's profile, as far as berth checks it at load: the agent turns it into the
/// OCI `linux.seccomp` its runtime compiles (`agent::container::seccomp`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerProfile {
    default_action: String,
    #[serde(default)]
    syscalls: Vec<DockerSyscall>,
}

#[derive(Debug, Deserialize)]
struct DockerSyscall {
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    name: Option<String>,
    action: String,
}

/// Seccomp actions as libseccomp spells them (Docker's and OCI's names).
const ACTIONS: &[&str] = &[
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_LOG",
];

/// Checks a profile in Docker's format and returns it as compact JSON.
pub fn check_seccomp_profile(text: &str) -> Result<String, String> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("the seccomp profile is not valid JSON: {e}"))?;
    let profile: DockerProfile = serde_json::from_value(value.clone()).map_err(|e| {
        format!("the seccomp profile is not in Docker's format (defaultAction, syscalls: [{{names, action, args}}]): {e}")
    })?;
    let action = |a: &str, what: &str| {
        if ACTIONS.contains(&a) {
            Ok(())
        } else {
            Err(format!(
                "the seccomp profile's {what} has an unknown action {a:?}; known: {}",
                ACTIONS.join(", ")
            ))
        }
    };
    // berth's runtime has no seccomp agent to hand notifications to: refused now
    // rather than when a container starts.
    if names_notify(&value) {
        return Err(
            "the seccomp profile uses SCMP_ACT_NOTIFY or listenerPath, which berth's runtime does not support (no seccomp agent)".to_string(),
        );
    }
    action(&profile.default_action, "defaultAction")?;
    for (i, s) in profile.syscalls.iter().enumerate() {
        action(&s.action, &format!("syscalls[{i}]"))?;
        if s.names.is_empty() && s.name.is_none() {
            return Err(format!(
                "the seccomp profile's syscalls[{i}] names no system call"
            ));
        }
    }
    serde_json::to_string(&value).map_err(|e| e.to_string())
}

fn names_notify(profile: &serde_json::Value) -> bool {
    let notify =
        |v: &serde_json::Value| v.get("action").and_then(|a| a.as_str()) == Some("SCMP_ACT_NOTIFY");
    profile.get("listenerPath").is_some()
        || profile.get("defaultAction").and_then(|a| a.as_str()) == Some("SCMP_ACT_NOTIFY")
        || profile
            .get("syscalls")
            .and_then(|s| s.as_array())
            .is_some_and(|rules| rules.iter().any(notify))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_and_print_back() {
        for (text, printed) in [
            ("no-new-privileges", "no-new-privileges:true"),
            ("no-new-privileges:true", "no-new-privileges:true"),
            ("no-new-privileges=true", "no-new-privileges:true"),
            ("no-new-privileges:false", "no-new-privileges:false"),
            ("seccomp=unconfined", "seccomp=unconfined"),
            ("seccomp:unconfined", "seccomp=unconfined"),
            (
                r#"seccomp={"defaultAction": "SCMP_ACT_ALLOW"}"#,
                r#"seccomp={"defaultAction":"SCMP_ACT_ALLOW"}"#,
            ),
            ("apparmor=unconfined", "apparmor=unconfined"),
            ("label=type:svirt_apache_t", "label=type:svirt_apache_t"),
            ("label:disable", "label=disable"),
            ("systempaths=unconfined", "systempaths=unconfined"),
        ] {
            let o = SecurityOpt::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(o.to_string(), printed, "{text}");
            assert_eq!(SecurityOpt::parse(printed), Ok(o), "{printed}");
        }
    }

    #[test]
    fn mistakes_are_explained() {
        for (text, want) in [
            ("no-new-privilege", "known: no-new-privileges"),
            ("no-new-privileges:yes", "use true or false"),
            ("systempaths=confined", "only value is unconfined"),
            ("seccomp", "known:"),
            (r#"seccomp={"syscalls": []}"#, "Docker's format"),
            (
                r#"seccomp={"defaultAction": "DENY"}"#,
                "unknown action \"DENY\"",
            ),
            (
                r#"seccomp={"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]}"#,
                "names no system call",
            ),
            ("seccomp={", "not valid JSON"),
            (
                r#"seccomp={"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}"#,
                "does not support (no seccomp agent)",
            ),
        ] {
            let e = SecurityOpt::parse(text).expect_err(text);
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
