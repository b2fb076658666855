//! The kernel side of the cgroup v2 device filter: `bpf(BPF_PROG_LOAD)` of the
//! program [`super::devices::program`] assembled, then `bpf(BPF_PROG_ATTACH)` to the
//! cgroup's directory as `BPF_CGROUP_DEVICE`, with `BPF_F_ALLOW_MULTI` as runc and crun
//! attach theirs (a program attached higher up, by systemd say, still runs too: a
//! device must pass every one).
//!
//! The attachment holds the program: its descriptor is closed once attached, and it
//! lives until the cgroup is removed.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::devices::Insn;
use super::CgroupError;

/// Attaches a device program to a cgroup directory: the seam between the v2 cgroup
/// code and the kernel, so the cgroup code runs against fixture directories in tests.
pub trait DeviceFilter: std::fmt::Debug {
    fn attach(&self, cgroup_dir: &Path, program: &[Insn]) -> Result<(), CgroupError>;
}

/// The real kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelBpf;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// `union bpf_attr` for BPF_PROG_LOAD, up to the fields berth sets (the kernel takes
/// a shorter attr and reads the rest as zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// `union bpf_attr` for BPF_PROG_ATTACH.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised #[repr(C)] prefix of `union bpf_attr` for
    // `cmd`, and its size is passed with it; the pointers inside it (instructions,
    // license, log buffer) point at buffers the caller keeps alive across the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn failed(dir: &Path, step: &'static str, source: std::io::Error) -> CgroupError {
    CgroupError::DeviceFilter {
        path: dir.to_path_buf(),
        step,
        source,
    }
}

/// Loads `program`; on failure, loads it again with the verifier's log, to say why.
fn load(dir: &Path, program: &[Insn]) -> Result<OwnedFd, CgroupError> {
    const STEP: &str = "load the device filter (bpf BPF_PROG_LOAD)";
    let license = c"Apache-2.0";
    let mut name = [0u8; 16];
    name[..9].copy_from_slice(b"berth_dev");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: program.len() as u32,
        insns: program.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..ProgLoadAttr::default()
    };
    let mut result = bpf(BPF_PROG_LOAD, &mut attr);
    if matches!(&result, Err(e) if e.raw_os_error() == Some(libc::EPERM)) {
        // Before Linux 5.11 programs were charged to RLIMIT_MEMLOCK: raise the soft
        // limit to the hard one (all root may do without CAP_SYS_RESOURCE) and retry.
        if let Ok((_, hard)) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)
        {
            let _ = nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_MEMLOCK,
                hard,
                hard,
            );
            result = bpf(BPF_PROG_LOAD, &mut attr);
        }
    }
    match result {
        // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else owns.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(first) => {
            let mut log = vec![0u8; 64 * 1024];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let _ = bpf(BPF_PROG_LOAD, &mut attr).map(|fd| {
                // SAFETY: as above; it loaded this time and is closed at once.
                drop(unsafe { OwnedFd::from_raw_fd(fd as i32) })
            });
            let text =
                String::from_utf8_lossy(&log[..log.iter().position(|b| *b == 0).unwrap_or(0)])
                    .trim()
                    .replace('\n', "; ");
            let source = if text.is_empty() {
                first
            } else {
                std::io::Error::new(first.kind(), format!("{first} (verifier: {text})"))
            };
            Err(failed(dir, STEP, source))
        }
    }
}

impl DeviceFilter for KernelBpf {
    fn attach(&self, dir: &Path, program: &[Insn]) -> Result<(), CgroupError> {
        let prog = load(dir, program)?;
        let path = CString::new(dir.as_os_str().as_bytes())
            .map_err(|e| failed(dir, "open the cgroup directory", std::io::Error::other(e)))?;
        // SAFETY: `path` is a valid C string; the result is checked before use.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(failed(
                dir,
                "open the cgroup directory",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: open returned a new descriptor that nothing else owns.
        let dir_fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut attr = ProgAttachAttr {
            target_fd: dir_fd.as_raw_fd() as u32,
            attach_bpf_fd: prog.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            attach_flags: BPF_F_ALLOW_MULTI,
            replace_bpf_fd: 0,
        };
        bpf(BPF_PROG_ATTACH, &mut attr)
            .map(drop)
            .map_err(|e| failed(dir, "attach the device filter (bpf BPF_PROG_ATTACH)", e))
    }
}
