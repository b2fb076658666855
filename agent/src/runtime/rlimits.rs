//! Resource limits (`process.rlimits`): mapped to the kernel's resource numbers and
//! clamped to what this host lets us set. Without CAP_SYS_RESOURCE (common in nested
//! and CI environments) a hard limit can only be lowered, so asking for more than the
//! current hard limit would make every container fail to start; berth gives the
//! container the most the host allows instead, and never raises a soft limit above
//! its hard limit.

use oci_spec::runtime::{PosixRlimit, PosixRlimitType};

use super::RuntimeError;

/// One limit, ready for `setrlimit(2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: libc::__rlimit_resource_t,
    pub soft: u64,
    pub hard: u64,
}

/// The kernel's number for an OCI rlimit type.
pub fn resource(typ: PosixRlimitType) -> Result<libc::__rlimit_resource_t, RuntimeError> {
    use PosixRlimitType as T;
    Ok(match typ {
        T::RlimitCpu => libc::RLIMIT_CPU,
        T::RlimitFsize => libc::RLIMIT_FSIZE,
        T::RlimitData => libc::RLIMIT_DATA,
        T::RlimitStack => libc::RLIMIT_STACK,
        T::RlimitCore => libc::RLIMIT_CORE,
        T::RlimitRss => libc::RLIMIT_RSS,
        T::RlimitNproc => libc::RLIMIT_NPROC,
        T::RlimitNofile => libc::RLIMIT_NOFILE,
        T::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        T::RlimitAs => libc::RLIMIT_AS,
        T::RlimitLocks => libc::RLIMIT_LOCKS,
        T::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        T::RlimitNice => libc::RLIMIT_NICE,
        T::RlimitRtprio => libc::RLIMIT_RTPRIO,
        T::RlimitRttime => libc::RLIMIT_RTTIME,
    })
}

/// `wanted` clamped against the host's current hard limit `host_hard`: the hard limit
/// never above it, the soft limit never above the (clamped) hard limit.
pub fn clamp(soft: u64, hard: u64, host_hard: u64) -> (u64, u64) {
    let hard = hard.min(host_hard);
    (soft.min(hard), hard)
}

/// The spec's limits, clamped against this process's hard limits (which the container
/// inherits).
pub fn plan(limits: &[PosixRlimit]) -> Result<Vec<Rlimit>, RuntimeError> {
    limits
        .iter()
        .map(|l| {
            let resource = resource(l.typ())?;
            let mut current = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes one rlimit struct into `current`, which we own.
            if unsafe { libc::getrlimit(resource, &mut current) } != 0 {
                return Err(RuntimeError::io(
                    format!("getrlimit {:?}", l.typ()),
                    std::io::Error::last_os_error(),
                ));
            }
            let (soft, hard) = clamp(l.soft(), l.hard(), current.rlim_max);
            Ok(Rlimit {
                resource,
                soft,
                hard,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamp_cases() {
        // (soft, hard, host hard) -> (soft, hard)
        let cases = [
            ((1_048_576, 1_048_576, 20_000), (20_000, 20_000)),
            ((1024, 1_048_576, 20_000), (1024, 20_000)),
            ((1024, 4096, 20_000), (1024, 4096)),
            ((8192, 4096, 20_000), (4096, 4096)),
            ((u64::MAX, u64::MAX, u64::MAX), (u64::MAX, u64::MAX)),
        ];
        for ((soft, hard, host), want) in cases {
            assert_eq!(clamp(soft, hard, host), want, "{soft} {hard} {host}");
        }
    }
}
