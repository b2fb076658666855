//! Host devices a service asks for: `devices`, `device_cgroup_rules`, `gpus` and
//! `deploy.resources.reservations.devices`, and the block I/O limits of
//! `blkio_config`, parsed as Docker parses them (`docker run --device`,
//! `--device-cgroup-rule`, `--gpus`, `--blkio-weight-device`, ...).
//!
//! Pure: nothing here looks at the host. Which device a path is, and which CDI specs
//! exist, is the agent's business at start time (on the node that runs the task).

use std::fmt;

use serde::{Deserialize, Serialize};

/// One `devices` entry: a host device node made in the container, or a CDI device
/// (`vendor.com/class=name`) when `source` is a CDI name (then `target` is empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceMapping {
    pub source: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// cgroup access: some of `r`, `w`, `m`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub permissions: String,
}

impl DeviceMapping {
    /// Docker's short syntax: `HOST[:CONTAINER][:PERMISSIONS]`, where a second field
    /// made only of `rwm` letters is the permissions; or a CDI name.
    pub fn parse(text: &str) -> Result<DeviceMapping, String> {
        if is_cdi_name(text) {
            return Ok(DeviceMapping {
                source: text.to_string(),
                target: String::new(),
                permissions: String::new(),
            });
        }
        let fields: Vec<&str> = text.split(':').collect();
        let (source, target, permissions) = match fields.as_slice() {
            [s] => (*s, *s, "rwm"),
            [s, p] if valid_access(p) => (*s, *s, *p),
            [s, t] => (*s, *t, "rwm"),
            [s, t, p] => (*s, *t, *p),
            _ => {
                return Err(format!(
                    "invalid device {text:?}: write HOST_PATH[:CONTAINER_PATH][:PERMISSIONS], or a CDI name vendor.com/class=name"
                ))
            }
        };
        let d = DeviceMapping {
            source: source.to_string(),
            target: target.to_string(),
            permissions: permissions.to_string(),
        };
        d.check()?;
        Ok(d)
    }

    /// The checks Docker makes of a device's fields.
    pub fn check(&self) -> Result<(), String> {
        if self.is_cdi() {
            return Ok(());
        }
        if !self.source.starts_with('/') {
            return Err(format!(
                "device {:?} must be an absolute host path (or a CDI name vendor.com/class=name)",
                self.source
            ));
        }
        if !self.target.starts_with('/') {
            return Err(format!(
                "container path {:?} of device {:?} must be absolute",
                self.target, self.source
            ));
        }
        if !valid_access(&self.permissions) {
            return Err(format!(
                "invalid permissions {:?} of device {:?}: some of r, w and m (e.g. rwm)",
                self.permissions, self.source
            ));
        }
        Ok(())
    }

    pub fn is_cdi(&self) -> bool {
        is_cdi_name(&self.source)
    }
}

/// `r`, `w`, `m`, each at most once, at least one.
fn valid_access(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 3
        && s.chars().all(|c| "rwm".contains(c))
        && s.chars().enumerate().all(|(i, c)| !s[..i].contains(c))
}

/// A fully qualified CDI device name, `vendor.com/class=name` (the CDI
/// specification's `parser.IsQualifiedName`).
pub fn is_cdi_name(s: &str) -> bool {
    let Some((kind, name)) = s.split_once('=') else {
        return false;
    };
    let Some((vendor, class)) = kind.split_once('/') else {
        return false;
    };
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let ok = |s: &str, extra: &str| {
        s.chars().next().is_some_and(alnum)
            && s.chars().last().is_some_and(alnum)
            && s.chars().all(|c| alnum(c) || extra.contains(c))
    };
    ok(vendor, "-_.") && ok(class, "-_") && ok(name, "-_.:")
}

/// A `device_cgroup_rules` entry: `TYPE MAJOR:MINOR ACCESS`, as `c 1:3 rwm` or
/// `a *:* m` (Docker's `--device-cgroup-rule`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceRule {
    /// `a` (all), `c` (char) or `b` (block).
    pub kind: char,
    /// `None` is `*`.
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub access: String,
}

impl DeviceRule {
    pub fn parse(text: &str) -> Result<DeviceRule, String> {
        let bad = || {
            format!(
                "invalid device cgroup rule {text:?}: write TYPE MAJOR:MINOR ACCESS, e.g. \"c 1:3 rwm\" or \"b 8:* r\" (type a, b or c; numbers or *; access some of r, w, m)"
            )
        };
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [kind, numbers, access] = parts.as_slice() else {
            return Err(bad());
        };
        let kind = match *kind {
            "a" => 'a',
            "b" => 'b',
            "c" => 'c',
            _ => return Err(bad()),
        };
        let (major, minor) = numbers.split_once(':').ok_or_else(bad)?;
        let number = |s: &str| -> Result<Option<i64>, String> {
            match s {
                "*" => Ok(None),
                _ => s
                    .parse::<u32>()
                    .map(|n| Some(i64::from(n)))
                    .map_err(|_| bad()),
            }
        };
        if !valid_access(access) {
            return Err(bad());
        }
        Ok(DeviceRule {
            kind,
            major: number(major)?,
            minor: number(minor)?,
            access: access.to_string(),
        })
    }
}

impl fmt::Display for DeviceRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = |x: Option<i64>| x.map_or("*".to_string(), |x| x.to_string());
        write!(
            f,
            "{} {}:{} {}",
            self.kind,
            n(self.major),
            n(self.minor),
            self.access
        )
    }
}

impl TryFrom<String> for DeviceRule {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        DeviceRule::parse(&s)
    }
}

impl From<DeviceRule> for String {
    fn from(r: DeviceRule) -> String {
        r.to_string()
    }
}

/// A request for devices by kind rather than by path: an entry of `gpus`, or of
/// `deploy.resources.reservations.devices` (Docker's `DeviceRequest`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceRequest {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub driver: String,
    /// How many; -1 is all. Neither `count` nor `device_ids`: all (Docker's rule).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub device_ids: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub options: std::collections::BTreeMap<String, String>,
}

/// The CDI kind NVIDIA's container toolkit writes its GPUs under.
pub const NVIDIA_GPU_KIND: &str = "nvidia.com/gpu";

impl DeviceRequest {
    /// The CDI kind (`vendor/class`) whose devices answer this request: `driver: cdi`
    /// takes qualified names in `device_ids`; a GPU (the `gpu` capability, or the
    /// `nvidia` driver) is NVIDIA's kind, as Docker's daemon maps `--gpus` to CDI.
    pub fn cdi_kind(&self) -> Option<&str> {
        if self.driver == "cdi" {
            return None;
        }
        (self.driver == "nvidia"
            || (self.driver.is_empty() && self.capabilities.iter().any(|c| c == "gpu")))
        .then_some(NVIDIA_GPU_KIND)
    }

    /// Which devices of a kind whose devices are `available` (sorted) it asks for, as
    /// fully qualified CDI names; an error says what is missing.
    pub fn select(&self, kind: &str, available: &[String]) -> Result<Vec<String>, String> {
        let qualified = |n: &str| format!("{kind}={n}");
        if !self.device_ids.is_empty() {
            let mut out = Vec::new();
            for id in &self.device_ids {
                if !available.contains(id) {
                    return Err(format!(
                        "device {id:?} is not among the {kind} devices of this host's CDI specs ({})",
                        if available.is_empty() { "none".to_string() } else { available.join(", ") }
                    ));
                }
                out.push(qualified(id));
            }
            return Ok(out);
        }
        // The spec's own `all` device, where it has one, stands for every device.
        let singles: Vec<&String> = available.iter().filter(|n| *n != "all").collect();
        match self.count {
            Some(n) if n >= 0 => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                if singles.len() < n {
                    return Err(format!(
                        "{n} {kind} devices asked for, this host's CDI specs have {}",
                        singles.len()
                    ));
                }
                Ok(singles[..n].iter().map(|d| qualified(d)).collect())
            }
            _ => {
                if available.iter().any(|n| n == "all") {
                    Ok(vec![qualified("all")])
                } else if singles.is_empty() {
                    Err(format!("this host's CDI specs have no {kind} device"))
                } else {
                    Ok(singles.iter().map(|d| qualified(d)).collect())
                }
            }
        }
    }
}

/// `blkio_config`: a weight, weights per device, and throttles per device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlkioConfig {
    /// 10..=1000.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u16>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub weight_device: Vec<WeightDevice>,
    /// Bytes per second.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub device_read_bps: Vec<ThrottleDevice>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub device_write_bps: Vec<ThrottleDevice>,
    /// Operations per second.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub device_read_iops: Vec<ThrottleDevice>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub device_write_iops: Vec<ThrottleDevice>,
}

impl BlkioConfig {
    pub fn is_empty(&self) -> bool {
        self == &BlkioConfig::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightDevice {
    pub path: String,
    pub weight: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleDevice {
    pub path: String,
    pub rate: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_short_syntax_as_docker_reads_it() {
        let d = |s: &str| DeviceMapping::parse(s).map(|d| (d.source, d.target, d.permissions));
        let t = |a: &str, b: &str, c: &str| Ok((a.into(), b.into(), c.into()));
        assert_eq!(d("/dev/fuse"), t("/dev/fuse", "/dev/fuse", "rwm"));
        assert_eq!(d("/dev/fuse:r"), t("/dev/fuse", "/dev/fuse", "r"));
        assert_eq!(d("/dev/sda:/dev/xvda"), t("/dev/sda", "/dev/xvda", "rwm"));
        assert_eq!(d("/dev/sda:/dev/xvda:rw"), t("/dev/sda", "/dev/xvda", "rw"));
        assert_eq!(
            d("vendor.com/class=dev0"),
            t("vendor.com/class=dev0", "", "")
        );
        for bad in [
            "dev/fuse",
            "/dev/a:b",
            "/dev/a:/b:rx",
            "/dev/a:/b:rr",
            "/a:/b:r:w",
        ] {
            assert!(d(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cdi_names() {
        assert!(is_cdi_name("nvidia.com/gpu=all"));
        assert!(is_cdi_name("vendor.com/class=0:1"));
        for not in [
            "/dev/x",
            "nvidia.com/gpu",
            "gpu=all",
            "/x=y",
            "a/b=",
            "a/-b=c",
        ] {
            assert!(!is_cdi_name(not), "{not}");
        }
    }

    #[test]
    fn cgroup_rules() {
        let r = DeviceRule::parse("c 1:3 rwm").unwrap();
        assert_eq!((r.kind, r.major, r.minor), ('c', Some(1), Some(3)));
        assert_eq!(DeviceRule::parse("b 8:* r").unwrap().minor, None);
        assert_eq!(DeviceRule::parse("a *:* m").unwrap().to_string(), "a *:* m");
        for bad in [
            "c 1:3", "x 1:3 r", "c 1-3 r", "c a:3 r", "c 1:3 q", "c -1:3 r",
        ] {
            assert!(DeviceRule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_pick_devices_of_a_kind() {
        let gpus = vec!["0".to_string(), "1".into(), "all".into()];
        let all = DeviceRequest {
            count: Some(-1),
            ..Default::default()
        };
        assert_eq!(
            all.select(NVIDIA_GPU_KIND, &gpus).unwrap(),
            ["nvidia.com/gpu=all"]
        );
        let one = DeviceRequest {
            count: Some(1),
            ..Default::default()
        };
        assert_eq!(
            one.select(NVIDIA_GPU_KIND, &gpus).unwrap(),
            ["nvidia.com/gpu=0"]
        );
        let three = DeviceRequest {
            count: Some(3),
            ..Default::default()
        };
        assert!(three.select(NVIDIA_GPU_KIND, &gpus).is_err());
        let by_id = DeviceRequest {
            device_ids: vec!["1".into()],
            ..Default::default()
        };
        assert_eq!(
            by_id.select(NVIDIA_GPU_KIND, &gpus).unwrap(),
            ["nvidia.com/gpu=1"]
        );
        assert!(all.select(NVIDIA_GPU_KIND, &[]).is_err());
        let gpu = DeviceRequest {
            capabilities: vec!["gpu".into()],
            ..Default::default()
        };
        assert_eq!(gpu.cdi_kind(), Some(NVIDIA_GPU_KIND));
        let cdi = DeviceRequest {
            driver: "cdi".into(),
            ..Default::default()
        };
        assert_eq!(cdi.cdi_kind(), None);
    }
}
