//! Seccomp: berth's default profile (Docker's, written as a Rust table) and the
//! compilation of any OCI `linux.seccomp` into classic BPF with seccompiler.
//!
//! OCI profiles give each rule its own action; a seccompiler filter has one action for
//! a match and one for no match. So a profile becomes a stack of filters, which the
//! kernel runs all of, keeping the most severe answer (KILL > TRAP > ERRNO > TRACE >
//! LOG > ALLOW; for equal severity, the filter installed last):
//! - the *base* filter: every rule's syscall (with its arguments) -> ALLOW, anything
//!   else -> the default action;
//! - one filter per other action A: the rules with action A -> A, anything else ->
//!   ALLOW.
//!
//! A call no rule names gets the default action from the base filter and ALLOW from
//! the others; a call a rule names gets ALLOW from the base filter and that rule's
//! action from its own filter. Rules whose action equals the default are dropped: the
//! base filter already answers that.

use std::collections::BTreeMap;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::RuntimeError;

/// System calls Docker's default profile allows unconditionally (moby
/// `profiles/seccomp/default.json` as of 25.0, first rule), plus its kernel- and arch-conditional
/// ones that apply to x86_64 and aarch64 on a kernel >= 4.8. Names that do not exist on
/// the running architecture are skipped at compile time.
const DEFAULT_ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_time64",
    "futex_waitv",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    // io_uring_setup, io_uring_enter and io_uring_register are left out, as Docker
    // left them out in 25.0 (moby#46762): io_uring has been the source of a stream of
    // kernel privilege escalations, and its operations bypass this filter entirely
    // (an SQE does what the system call it replaces would, unchecked).
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    // kernel >= 4.8: ptrace can no longer bypass seccomp
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    // x86 only
    "arch_prctl",
    "modify_ldt",
    // CAP_SYS_CHROOT is in the default capability set
    "chroot",
];

/// `personality(2)` domains Docker allows: Linux, Linux32 and UNAME26 variants, and
/// the query (0xffffffff).
const DEFAULT_PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// The clone flags that create namespaces; without CAP_SYS_ADMIN Docker allows clone
/// only with none of them set (`CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS |
/// CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET`).
const NAMESPACE_CLONE_FLAGS: u64 = 0x7e02_0000;

/// AF_VSOCK: sockets to the hypervisor, refused by Docker's profile.
const AF_VSOCK: u64 = 40;

/// The default profile for Docker's default capabilities: deny with EPERM what is not
/// listed, so a program probing for a newer system call gets a clean error.
pub fn default_profile() -> Result<LinuxSeccomp, RuntimeError> {
    let rule = |names: &[&str], action, errno: Option<u32>, args: Vec<LinuxSeccompArg>| {
        let mut s = LinuxSyscall::default();
        s.set_names(names.iter().map(|n| (*n).to_string()).collect());
        s.set_action(action);
        s.set_errno_ret(errno);
        s.set_args((!args.is_empty()).then_some(args));
        s
    };
    let arg = |index: usize, value: u64, value_two: Option<u64>, op| {
        let mut b = LinuxSeccompArgBuilder::default()
            .index(index)
            .value(value)
            .op(op);
        if let Some(v) = value_two {
            b = b.value_two(v);
        }
        b.build()
    };
    use LinuxSeccompAction::{ScmpActAllow as Allow, ScmpActErrno as Errno};
    use LinuxSeccompOperator::{ScmpCmpEq, ScmpCmpMaskedEq, ScmpCmpNe};

    let mut syscalls = vec![rule(DEFAULT_ALLOWED, Allow, None, vec![])];
    syscalls.push(rule(
        &["socket"],
        Allow,
        None,
        vec![arg(0, AF_VSOCK, None, ScmpCmpNe)?],
    ));
    for p in DEFAULT_PERSONALITIES {
        syscalls.push(rule(
            &["personality"],
            Allow,
            None,
            vec![arg(0, *p, None, ScmpCmpEq)?],
        ));
    }
    // clone without namespace flags: (flags & NAMESPACE_CLONE_FLAGS) == 0
    syscalls.push(rule(
        &["clone"],
        Allow,
        None,
        vec![arg(0, NAMESPACE_CLONE_FLAGS, Some(0), ScmpCmpMaskedEq)?],
    ));
    // clone3 passes its flags in memory seccomp cannot read: answer ENOSYS so libcs
    // fall back to clone, which the rule above checks.
    syscalls.push(rule(&["clone3"], Errno, Some(libc::ENOSYS as u32), vec![]));

    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(Errno);
    profile.set_default_errno_ret(Some(libc::EPERM as u32));
    profile.set_architectures(Some(native_arches()));
    profile.set_syscalls(Some(syscalls));
    Ok(profile)
}

fn native_arches() -> Vec<Arch> {
    if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64]
    } else {
        vec![Arch::ScmpArchX86_64]
    }
}

/// The system call number of `name` on this architecture, if it has one.
pub fn syscall_number(name: &str) -> Option<i64> {
    #[cfg(target_arch = "x86_64")]
    {
        super::syscalls_x86_64::SYSCALLS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, nr)| *nr)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = name;
        None
    }
}

fn target_arch() -> Result<TargetArch, RuntimeError> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else {
        Err(RuntimeError::Seccomp(
            "berth has no system call table for this architecture yet".into(),
        ))
    }
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<SeccompAction, RuntimeError> {
    use LinuxSeccompAction as A;
    Ok(match a {
        A::ScmpActAllow => SeccompAction::Allow,
        A::ScmpActErrno => SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32)),
        A::ScmpActKill | A::ScmpActKillThread => SeccompAction::KillThread,
        A::ScmpActKillProcess => SeccompAction::KillProcess,
        A::ScmpActTrap => SeccompAction::Trap,
        A::ScmpActLog => SeccompAction::Log,
        A::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(0)),
        A::ScmpActNotify => {
            return Err(RuntimeError::Seccomp(
                "SCMP_ACT_NOTIFY is not supported (no seccomp agent)".into(),
            ))
        }
    })
}

fn condition(a: &LinuxSeccompArg) -> Result<SeccompCondition, RuntimeError> {
    use LinuxSeccompOperator as O;
    let (op, value) = match a.op() {
        O::ScmpCmpNe => (SeccompCmpOp::Ne, a.value()),
        O::ScmpCmpLt => (SeccompCmpOp::Lt, a.value()),
        O::ScmpCmpLe => (SeccompCmpOp::Le, a.value()),
        O::ScmpCmpEq => (SeccompCmpOp::Eq, a.value()),
        O::ScmpCmpGe => (SeccompCmpOp::Ge, a.value()),
        O::ScmpCmpGt => (SeccompCmpOp::Gt, a.value()),
        // libseccomp: (arg & value) == valueTwo
        O::ScmpCmpMaskedEq => (
            SeccompCmpOp::MaskedEq(a.value()),
            a.value_two().unwrap_or(0),
        ),
    };
    let index = u8::try_from(a.index()).map_err(|_| {
        RuntimeError::Seccomp(format!("argument index {} is out of range", a.index()))
    })?;
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| RuntimeError::Seccomp(format!("argument {index}: {e}")))
}

/// Per system call: `None` matches the call whatever its arguments, `Some(rules)`
/// matches when any rule's conditions all hold.
type Rules = BTreeMap<i64, Option<Vec<SeccompRule>>>;

fn add_rules(rules: &mut Rules, syscall: &LinuxSyscall) -> Result<(), RuntimeError> {
    let conditions = syscall
        .args()
        .iter()
        .flatten()
        .map(condition)
        .collect::<Result<Vec<_>, _>>()?;
    for name in syscall.names() {
        let Some(nr) = syscall_number(name) else {
            continue;
        };
        if conditions.is_empty() {
            rules.insert(nr, None);
        } else if let Some(list) = rules.entry(nr).or_insert_with(|| Some(Vec::new())) {
            list.push(
                SeccompRule::new(conditions.clone())
                    .map_err(|e| RuntimeError::Seccomp(format!("{name}: {e}")))?,
            );
        }
    }
    Ok(())
}

/// Compiles a spec's seccomp section into the BPF programs to install, in order.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<BpfProgram>, RuntimeError> {
    if profile.listener_path().is_some() {
        return Err(RuntimeError::Seccomp(
            "listenerPath is not supported (no seccomp agent)".into(),
        ));
    }
    if profile.flags().as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(RuntimeError::Seccomp("flags are not supported yet".into()));
    }
    let arch = target_arch()?;
    if let Some(arches) = profile.architectures() {
        let native = native_arches();
        if !arches.is_empty() && !arches.iter().any(|a| native.contains(a)) {
            return Err(RuntimeError::Seccomp(format!(
                "architectures {arches:?} do not include this machine's ({native:?})"
            )));
        }
    }
    let default = action(profile.default_action(), profile.default_errno_ret())?;

    let mut base = Rules::new();
    let mut by_action: Vec<(SeccompAction, Rules)> = Vec::new();
    for syscall in profile.syscalls().iter().flatten() {
        let act = action(syscall.action(), syscall.errno_ret())?;
        if act == default {
            continue;
        }
        add_rules(&mut base, syscall)?;
        if act != SeccompAction::Allow {
            let pos = match by_action.iter().position(|(a, _)| *a == act) {
                Some(pos) => pos,
                None => {
                    by_action.push((act.clone(), Rules::new()));
                    by_action.len() - 1
                }
            };
            add_rules(&mut by_action[pos].1, syscall)?;
        }
    }

    let mut programs = Vec::new();
    let filter = |rules: Rules, mismatch: SeccompAction, matched: SeccompAction| {
        let rules = rules
            .into_iter()
            .map(|(nr, r)| (nr, r.unwrap_or_default()))
            .collect();
        SeccompFilter::new(rules, mismatch, matched, arch)
            .and_then(BpfProgram::try_from)
            .map_err(|e| RuntimeError::Seccomp(e.to_string()))
    };
    if default != SeccompAction::Allow {
        programs.push(filter(base, default.clone(), SeccompAction::Allow)?);
    }
    for (act, rules) in by_action {
        programs.push(filter(rules, SeccompAction::Allow, act)?);
    }
    Ok(programs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_compiles_to_base_and_enosys_filters() {
        let programs = compile(&default_profile().unwrap()).unwrap();
        assert_eq!(programs.len(), 2, "base filter + the clone3 ENOSYS filter");
        assert!(programs.iter().all(|p| !p.is_empty()));
    }

    /// What Docker's profile refuses to a container without extra capabilities, and
    /// so must berth's: io_uring (Docker 25.0), the keyring, bpf, perf, userfaultfd,
    /// namespaces and mounts (CAP_SYS_ADMIN's), modules, kexec, raw I/O, the clock.
    #[test]
    fn default_profile_refuses_what_docker_refuses() {
        let p = default_profile().unwrap();
        let named: Vec<&String> = p
            .syscalls()
            .iter()
            .flatten()
            .filter(|s| s.action() == LinuxSeccompAction::ScmpActAllow)
            .flat_map(|s| s.names())
            .collect();
        for name in [
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "unshare",
            "setns",
            "mount",
            "umount2",
            "pivot_root",
            "open_by_handle_at",
            "init_module",
            "finit_module",
            "kexec_load",
            "kexec_file_load",
            "iopl",
            "ioperm",
            "settimeofday",
            "clock_settime",
            "swapon",
            "reboot",
            "fsopen",
            "open_tree",
            "move_mount",
        ] {
            assert!(
                !named.iter().any(|n| *n == name),
                "{name} is allowed by the default profile"
            );
        }
        let clone3 = p
            .syscalls()
            .iter()
            .flatten()
            .find(|s| s.names().iter().any(|n| n == "clone3"))
            .unwrap();
        assert_eq!(clone3.action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(clone3.errno_ret(), Some(libc::ENOSYS as u32));
    }

    #[test]
    fn names_this_arch_lacks_are_skipped() {
        assert_eq!(syscall_number("read"), Some(0));
        assert_eq!(syscall_number("chown32"), None);
    }

    #[test]
    fn notify_is_refused_clearly() {
        let mut p = default_profile().unwrap();
        p.set_default_action(LinuxSeccompAction::ScmpActNotify);
        let e = compile(&p).unwrap_err().to_string();
        assert!(e.contains("SCMP_ACT_NOTIFY"), "{e}");
    }

    #[test]
    fn allow_by_default_with_one_errno_rule_is_one_filter() {
        let mut p = LinuxSeccomp::default();
        p.set_default_action(LinuxSeccompAction::ScmpActAllow);
        let mut s = LinuxSyscall::default();
        s.set_names(vec!["mkdir".into()]);
        s.set_action(LinuxSeccompAction::ScmpActErrno);
        p.set_syscalls(Some(vec![s]));
        assert_eq!(compile(&p).unwrap().len(), 1);
    }
}
