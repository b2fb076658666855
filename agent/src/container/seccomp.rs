//! A seccomp profile in Docker's format (`security_opt: [seccomp=PROFILE.json]`) made
//! into the OCI `linux.seccomp` that berth's runtime compiles, as moby's
//! `profiles/seccomp` does: `archMap` becomes `architectures`, `name` becomes
//! `names`, and a rule applies only where its `includes`/`excludes` (capabilities,
//! architectures) say so for this container.

use oci_spec::runtime::LinuxSeccomp;
use serde_json::Value;

/// The architecture this agent runs on, in libseccomp's spelling.
fn native_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "SCMP_ARCH_X86_64",
        "aarch64" => "SCMP_ARCH_AARCH64",
        "x86" => "SCMP_ARCH_X86",
        "arm" => "SCMP_ARCH_ARM",
        "riscv64" => "SCMP_ARCH_RISCV64",
        "s390x" => "SCMP_ARCH_S390X",
        "powerpc64" => "SCMP_ARCH_PPC64LE",
        _ => "",
    }
}

/// `profile` (Docker's JSON, checked by the loader) for a container whose bounding
/// set is `caps` (`CAP_*` names). The error is a sentence for the user.
pub fn to_oci(profile: &str, caps: &[String]) -> Result<LinuxSeccomp, String> {
    let mut v: Value = serde_json::from_str(profile)
        .map_err(|e| format!("the seccomp profile is not valid JSON: {e}"))?;
    let obj = v
        .as_object_mut()
        .ok_or("the seccomp profile is not a JSON object")?;
    obj.remove("comment");
    if let Some(arch_map) = obj.remove("archMap") {
        let listed = obj
            .get("architectures")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        if listed {
            return Err(
                "the seccomp profile has both architectures and archMap; keep one".to_string(),
            );
        }
        let mut arches = Vec::new();
        for entry in arch_map.as_array().into_iter().flatten() {
            arches.extend(entry.get("architecture").cloned());
            if let Some(Value::Array(sub)) = entry.get("subArchitectures") {
                arches.extend(sub.iter().cloned());
            }
        }
        obj.insert("architectures".into(), Value::Array(arches));
    }
    if let Some(rules) = obj.remove("syscalls") {
        let mut kept = Vec::new();
        for (i, mut rule) in rules
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let r = rule
                .as_object_mut()
                .ok_or_else(|| format!("the seccomp profile's syscalls[{i}] is not an object"))?;
            r.remove("comment");
            if let Some(name) = r.remove("name") {
                let has_names = r
                    .get("names")
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty());
                if has_names {
                    return Err(format!(
                        "the seccomp profile's syscalls[{i}] has both name and names; keep names"
                    ));
                }
                r.insert("names".into(), Value::Array(vec![name]));
            }
            let includes = r.remove("includes");
            let excludes = r.remove("excludes");
            if applies(includes.as_ref(), excludes.as_ref(), caps) {
                kept.push(rule);
            }
        }
        obj.insert("syscalls".into(), Value::Array(kept));
    }
    serde_json::from_value(v).map_err(|e| format!("the seccomp profile does not convert: {e}"))
}

/// Docker's filter: every `includes` condition must hold and no `excludes` one may.
/// `minKernel` is taken as met: berth's runtime needs a newer kernel than any
/// profile's rules name.
fn applies(includes: Option<&Value>, excludes: Option<&Value>, caps: &[String]) -> bool {
    let list = |filter: Option<&Value>, key: &str| -> Vec<String> {
        filter
            .and_then(|f| f.get(key))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let arch = native_arch();
    let (inc_caps, inc_arches) = (list(includes, "caps"), list(includes, "arches"));
    let (exc_caps, exc_arches) = (list(excludes, "caps"), list(excludes, "arches"));
    inc_caps.iter().all(|c| caps.contains(c))
        && (inc_arches.is_empty() || inc_arches.iter().any(|a| a == arch))
        && !exc_caps.iter().any(|c| caps.contains(c))
        && !exc_arches.iter().any(|a| a == arch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_profile_becomes_oci() {
        let profile = r#"{
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
            "syscalls": [
                {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "comment": "io"},
                {"name": "mkdir", "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
                 "args": [{"index": 1, "value": 511, "op": "SCMP_CMP_EQ"}]},
                {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["chown"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN"]}}
            ]
        }"#;
        let oci = to_oci(profile, &["CAP_CHOWN".to_string()]).expect("converts");
        let json = serde_json::to_value(&oci).expect("serializes");
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(json["architectures"][1], "SCMP_ARCH_X86");
        let names: Vec<&Value> = json["syscalls"]
            .as_array()
            .expect("syscalls")
            .iter()
            .map(|r| &r["names"])
            .collect();
        // mount needs CAP_SYS_ADMIN, which the container lacks; chown is for those
        // without it.
        assert_eq!(
            names,
            [
                &serde_json::json!(["read", "write"]),
                &serde_json::json!(["mkdir"]),
                &serde_json::json!(["chown"])
            ]
        );
        assert_eq!(json["syscalls"][1]["errnoRet"], 13);
        assert_eq!(json["syscalls"][1]["args"][0]["op"], "SCMP_CMP_EQ");
    }

    #[test]
    fn contradictions_are_errors() {
        let both = r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"], "archMap": []}"#;
        assert!(to_oci(both, &[])
            .unwrap_err()
            .contains("both architectures and archMap"));
        let both = r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"name": "a", "names": ["b"], "action": "SCMP_ACT_ERRNO"}]}"#;
        assert!(to_oci(both, &[])
            .unwrap_err()
            .contains("both name and names"));
    }
}
