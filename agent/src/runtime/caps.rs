//! Capabilities: the spec's five sets turned into the bit masks the kernel takes
//! (`capset(2)`, `PR_CAPBSET_DROP`, `PR_CAP_AMBIENT_RAISE`). Applied by the init in
//! `init.rs`; computed here, in the parent, so the child only makes system calls.

use std::str::FromStr;

use oci_spec::runtime::{Capability, LinuxCapabilities};

use super::RuntimeError;

/// The five capability sets as masks (bit n = capability number n).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapMasks {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
    /// The highest capability number this kernel knows (`cap_last_cap`).
    pub last_cap: u32,
}

/// The kernel's number for an OCI capability name.
pub fn number(cap: &Capability) -> Result<u32, RuntimeError> {
    let name = format!("CAP_{cap}");
    caps::Capability::from_str(&name)
        .map(|c| u32::from(c.index()))
        .map_err(|_| RuntimeError::unsupported(format!("unknown capability {name}")))
}

/// The mask of a set of capabilities.
pub fn mask<'a>(caps: impl IntoIterator<Item = &'a Capability>) -> Result<u64, RuntimeError> {
    let mut mask = 0u64;
    for cap in caps {
        mask |= 1u64 << number(cap)?;
    }
    Ok(mask)
}

/// The masks for the spec's capabilities; a set the spec leaves out is empty, as in
/// runc. Capabilities this kernel does not know are dropped from every set (the kernel
/// would refuse them), as runc does with a warning.
///
/// The kernel raises an ambient capability only if it is both permitted and
/// inheritable (`PR_CAP_AMBIENT_RAISE` fails with EPERM otherwise). runc tries each
/// one, warns and goes on; `runc spec` writes ambient capabilities without any
/// inheritable ones, so that bundle runs with an empty ambient set. berth does the
/// same, computed here: the ambient mask keeps only what the kernel would accept.
pub fn masks(caps: Option<&LinuxCapabilities>, last_cap: u32) -> Result<CapMasks, RuntimeError> {
    let known = if last_cap >= 63 {
        u64::MAX
    } else {
        (1u64 << (last_cap + 1)) - 1
    };
    let set = |s: Option<&oci_spec::runtime::Capabilities>| -> Result<u64, RuntimeError> {
        Ok(s.map(|s| mask(s.iter())).transpose()?.unwrap_or(0) & known)
    };
    let Some(caps) = caps else {
        return Ok(CapMasks {
            last_cap,
            ..CapMasks::default()
        });
    };
    let permitted = set(caps.permitted().as_ref())?;
    let inheritable = set(caps.inheritable().as_ref())?;
    Ok(CapMasks {
        bounding: set(caps.bounding().as_ref())?,
        effective: set(caps.effective().as_ref())?,
        permitted,
        inheritable,
        ambient: set(caps.ambient().as_ref())? & permitted & inheritable,
        last_cap,
    })
}

/// The host kernel's highest capability number.
pub fn last_cap() -> Result<u32, RuntimeError> {
    let path = "/proc/sys/kernel/cap_last_cap";
    let text = std::fs::read_to_string(path).map_err(|e| RuntimeError::io(path, e))?;
    text.trim().parse().map_err(|_| {
        RuntimeError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not a number"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_the_kernel() {
        assert_eq!(number(&Capability::Chown).unwrap(), 0);
        assert_eq!(number(&Capability::SysAdmin).unwrap(), 21);
        assert_eq!(number(&Capability::Setfcap).unwrap(), 31);
    }

    #[test]
    fn unknown_capabilities_are_masked_by_last_cap() {
        let mut caps = LinuxCapabilities::default();
        caps.set_bounding(Some(
            [Capability::Chown, Capability::CheckpointRestore].into(),
        ));
        let m = masks(Some(&caps), 39).unwrap();
        assert_eq!(m.bounding, 1);
        let m = masks(Some(&caps), 40).unwrap();
        assert_eq!(m.bounding, 1 | (1 << 40));
    }

    /// `runc spec`'s capabilities: ambient ones with no inheritable set. The kernel
    /// would refuse to raise them (EPERM); runc skips them with a warning.
    #[test]
    fn ambient_keeps_only_what_is_permitted_and_inheritable() {
        let set = |c: &[Capability]| Some(c.iter().cloned().collect());
        let mut caps = LinuxCapabilities::default();
        caps.set_permitted(set(&[Capability::Kill, Capability::NetBindService]));
        caps.set_inheritable(None);
        caps.set_ambient(set(&[Capability::Kill, Capability::NetBindService]));
        assert_eq!(masks(Some(&caps), 40).unwrap().ambient, 0);

        caps.set_inheritable(set(&[Capability::Kill, Capability::Chown]));
        caps.set_ambient(set(&[
            Capability::Kill,
            Capability::NetBindService,
            Capability::Chown,
        ]));
        let kill = 1u64 << number(&Capability::Kill).unwrap();
        assert_eq!(masks(Some(&caps), 40).unwrap().ambient, kill);
    }
}
