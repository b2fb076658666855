//! Device access rules (OCI `linux.resources.devices`) and their two kernel forms:
//! lines for v1's `devices.allow` / `devices.deny`, and, for v2 (which has no devices
//! controller), an eBPF program of type `BPF_PROG_TYPE_CGROUP_DEVICE` that the kernel
//! runs on every mknod and open of a device node by a process of the cgroup.
//!
//! Pure: rules in, instructions out. Loading and attaching the program is
//! [`super::bpf`]'s job.
//!
//! # How the program decides (after crun's `ebpf.c` and runc's `devicefilter`)
//! The rules are the spec's followed by [`DEFAULT_ALLOWED`] (Docker's and runc's
//! defaults). The last rule that matches a request decides it; a request no rule
//! matches is denied. The program tests the rules from the last to the first and
//! returns at the first match. A rule that matches everything (`a`, no numbers, `rwm`)
//! ends the program: the rules before it can never decide.
//!
//! A request carries one access (`m`) or a set (`r`, `w`, or both for `O_RDWR`). An
//! allow rule matches only if it grants every requested access; a deny rule matches
//! if it refuses any of them. So a request is never allowed unless, for each access
//! it asks, the last rule naming that access allows it (runc's v1 emulator merges
//! rules to reach the same answer; crun lets a partial deny fall through to an
//! earlier allow, which this does not).

use super::CgroupError;

/// `bpf_cgroup_dev_ctx.access_type` bits (the high 16 bits of the field).
pub const ACC_MKNOD: u8 = 1;
pub const ACC_READ: u8 = 2;
pub const ACC_WRITE: u8 = 4;
const ACC_ALL: u8 = ACC_MKNOD | ACC_READ | ACC_WRITE;
/// `bpf_cgroup_dev_ctx.access_type` device types (the low 16 bits).
pub const DEV_BLOCK: u32 = 1;
pub const DEV_CHAR: u32 = 2;

/// Which devices a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// `a`: block and character devices.
    All,
    Block,
    Char,
}

/// One device rule: allow or deny `access` (a set of `ACC_*` bits) to the devices of
/// `kind` with these numbers (`None` is the wildcard `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    pub allow: bool,
    pub kind: DeviceKind,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: u8,
}

/// Device access every container gets after the spec's rules (runc's and Docker's
/// defaults): creating any device node (but not using it), and the standard /dev
/// entries and terminals.
pub const DEFAULT_ALLOWED: &[DeviceRule] = &[
    allow(DeviceKind::Char, None, None, ACC_MKNOD),
    allow(DeviceKind::Block, None, None, ACC_MKNOD),
    allow(DeviceKind::Char, Some(1), Some(3), ACC_ALL), // null
    allow(DeviceKind::Char, Some(1), Some(5), ACC_ALL), // zero
    allow(DeviceKind::Char, Some(1), Some(7), ACC_ALL), // full
    allow(DeviceKind::Char, Some(1), Some(8), ACC_ALL), // random
    allow(DeviceKind::Char, Some(1), Some(9), ACC_ALL), // urandom
    allow(DeviceKind::Char, Some(5), Some(0), ACC_ALL), // tty
    allow(DeviceKind::Char, Some(5), Some(1), ACC_ALL), // console
    allow(DeviceKind::Char, Some(5), Some(2), ACC_ALL), // ptmx
    allow(DeviceKind::Char, Some(136), None, ACC_ALL),  // pts/*
    allow(DeviceKind::Char, Some(10), Some(200), ACC_ALL), // net/tun
];

const fn allow(kind: DeviceKind, major: Option<u32>, minor: Option<u32>, access: u8) -> DeviceRule {
    DeviceRule {
        allow: true,
        kind,
        major,
        minor,
        access,
    }
}

impl DeviceRule {
    /// A rule from the spec's fields: `typ` is `a`, `b`, `c` or `u` (unbuffered
    /// character, the same to the kernel), absent meaning `a`; a negative or absent
    /// number is the wildcard; absent access means `rwm`.
    pub fn from_spec(
        allow: bool,
        typ: Option<char>,
        major: Option<i64>,
        minor: Option<i64>,
        access: Option<&str>,
    ) -> Result<DeviceRule, CgroupError> {
        let bad =
            |what: String| CgroupError::Unsupported(format!("linux.resources.devices: {what}"));
        let kind = match typ.unwrap_or('a') {
            'a' => DeviceKind::All,
            'b' => DeviceKind::Block,
            'c' | 'u' => DeviceKind::Char,
            other => return Err(bad(format!("type {other:?} is not a, b or c"))),
        };
        // Linux numbers are 12 bits (major) and 20 bits (minor); the program compares
        // them as signed 32-bit immediates.
        let number = |n: Option<i64>, what: &str| match n {
            None => Ok(None),
            Some(n) if n < 0 => Ok(None),
            Some(n) => i32::try_from(n)
                .map(|n| Some(n as u32))
                .map_err(|_| bad(format!("{what} {n} is out of range"))),
        };
        let mut bits = 0;
        for c in access.unwrap_or("rwm").chars() {
            bits |= match c {
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                'm' => ACC_MKNOD,
                other => return Err(bad(format!("access {other:?} is not r, w or m"))),
            };
        }
        Ok(DeviceRule {
            allow,
            kind,
            major: number(major, "major")?,
            minor: number(minor, "minor")?,
            access: bits,
        })
    }

    /// The rule as lines for v1's `devices.allow` / `devices.deny`. v1 reads `a` as
    /// every device and every access, whatever follows it: an `a` rule with numbers or
    /// a partial access is written as its `b` and `c` halves, never as `a`.
    pub fn v1_lines(&self) -> Vec<String> {
        if self.is_total() {
            return vec!["a".into()];
        }
        let num = |n: Option<u32>| n.map_or("*".to_string(), |n| n.to_string());
        let mut access = String::new();
        for (bit, c) in [(ACC_READ, 'r'), (ACC_WRITE, 'w'), (ACC_MKNOD, 'm')] {
            if self.access & bit != 0 {
                access.push(c);
            }
        }
        let kinds: &[char] = match self.kind {
            DeviceKind::All => &['b', 'c'],
            DeviceKind::Block => &['b'],
            DeviceKind::Char => &['c'],
        };
        kinds
            .iter()
            .map(|k| format!("{k} {}:{} {access}", num(self.major), num(self.minor)))
            .collect()
    }

    /// Matches every request: the rules before it never decide.
    fn is_total(&self) -> bool {
        self.kind == DeviceKind::All
            && self.major.is_none()
            && self.minor.is_none()
            && self.access == ACC_ALL
    }
}

/// The rules a container's cgroup enforces: the spec's, then the defaults.
pub fn effective_rules(spec: &[DeviceRule]) -> Vec<DeviceRule> {
    spec.iter().chain(DEFAULT_ALLOWED).copied().collect()
}

/// One eBPF instruction, laid out as the kernel's `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

// Opcodes: class | operation | source.
const LDX_W: u8 = 0x61; // BPF_LDX | BPF_W | BPF_MEM
const AND32_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const RSH32_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const MOV32_K: u8 = 0xb4; // BPF_ALU | BPF_MOV | BPF_K
const MOV32_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
const JEQ_K: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

// Registers: R1 is the context on entry, R0 the answer; the prologue loads the
// request into R2-R5 and R1 is then free as a scratch register.
const R0: u8 = 0;
const R1: u8 = 1;
const R2_TYPE: u8 = 2;
const R3_ACCESS: u8 = 3;
const R4_MAJOR: u8 = 4;
const R5_MINOR: u8 = 5;

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// The program for `rules` (already with the defaults: see [`effective_rules`]).
pub fn program(rules: &[DeviceRule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_W, R2_TYPE, R1, 0, 0),
        insn(AND32_K, R2_TYPE, 0, 0, 0xffff),
        insn(LDX_W, R3_ACCESS, R1, 0, 0),
        insn(RSH32_K, R3_ACCESS, 0, 0, 16),
        insn(LDX_W, R4_MAJOR, R1, 4, 0),
        insn(LDX_W, R5_MINOR, R1, 8, 0),
    ];
    for rule in rules.iter().rev() {
        if rule.is_total() {
            p.extend([
                insn(MOV32_K, R0, 0, 0, rule.allow.into()),
                insn(EXIT, 0, 0, 0, 0),
            ]);
            return p;
        }
        // Each test jumps to the next rule when it fails: `skip` emits such a jump
        // and remembers it, to fill in its offset once the block's length is known.
        let mut skips = Vec::new();
        let mut skip = |p: &mut Vec<Insn>, code, dst, imm| {
            skips.push(p.len());
            p.push(insn(code, dst, 0, 0, imm));
        };
        match rule.kind {
            DeviceKind::All => {}
            DeviceKind::Block => skip(&mut p, JNE_K, R2_TYPE, DEV_BLOCK as i32),
            DeviceKind::Char => skip(&mut p, JNE_K, R2_TYPE, DEV_CHAR as i32),
        }
        if rule.access & ACC_ALL != ACC_ALL {
            p.push(insn(MOV32_X, R1, R3_ACCESS, 0, 0));
            if rule.allow {
                // an access asked for and not granted: not this rule
                p.push(insn(AND32_K, R1, 0, 0, i32::from(!rule.access & ACC_ALL)));
                skip(&mut p, JNE_K, R1, 0);
            } else {
                // no access asked for is refused: not this rule
                p.push(insn(AND32_K, R1, 0, 0, i32::from(rule.access)));
                skip(&mut p, JEQ_K, R1, 0);
            }
        }
        if let Some(major) = rule.major {
            skip(&mut p, JNE_K, R4_MAJOR, major as i32);
        }
        if let Some(minor) = rule.minor {
            skip(&mut p, JNE_K, R5_MINOR, minor as i32);
        }
        p.extend([
            insn(MOV32_K, R0, 0, 0, rule.allow.into()),
            insn(EXIT, 0, 0, 0, 0),
        ]);
        let end = p.len();
        for at in skips {
            // Offsets count from the instruction after the jump; a block is a handful
            // of instructions, far below i16::MAX.
            p[at].off = (end - at - 1) as i16;
        }
    }
    p.extend([insn(MOV32_K, R0, 0, 0, 0), insn(EXIT, 0, 0, 0, 0)]);
    p
}

/// The rules' answer to a request, evaluated directly (the model the program is
/// tested against): `dev_type` is [`DEV_BLOCK`] or [`DEV_CHAR`], `access` a set of
/// `ACC_*` bits.
pub fn allows(rules: &[DeviceRule], dev_type: u32, major: u32, minor: u32, access: u8) -> bool {
    let matches = |r: &DeviceRule| {
        let kind = match r.kind {
            DeviceKind::All => true,
            DeviceKind::Block => dev_type == DEV_BLOCK,
            DeviceKind::Char => dev_type == DEV_CHAR,
        };
        let access = if r.allow {
            access & !r.access == 0
        } else {
            access & r.access != 0
        };
        kind && access && r.major.is_none_or(|m| m == major) && r.minor.is_none_or(|m| m == minor)
    };
    rules
        .iter()
        .rev()
        .find(|r| matches(r))
        .is_some_and(|r| r.allow)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `prog` on a request as the kernel would (only the instructions
    /// [`program`] emits).
    fn run(prog: &[Insn], dev_type: u32, major: u32, minor: u32, access: u8) -> bool {
        let ctx = [(u32::from(access) << 16) | dev_type, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        for _ in 0..10_000 {
            let i = prog[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_W => {
                    assert_eq!(src, 1, "loads only from the context");
                    r[dst] = u64::from(ctx[i.off as usize / 4]);
                }
                AND32_K => r[dst] = u64::from(r[dst] as u32 & i.imm as u32),
                RSH32_K => r[dst] = u64::from((r[dst] as u32) >> i.imm),
                MOV32_K => r[dst] = u64::from(i.imm as u32),
                MOV32_X => r[dst] = u64::from(r[src] as u32),
                JEQ_K | JNE_K => {
                    let equal = r[dst] == i.imm as i64 as u64;
                    if equal == (i.code == JEQ_K) {
                        pc = (pc as i64 + i64::from(i.off)) as usize;
                    }
                }
                EXIT => return r[0] != 0,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
        panic!("the program did not exit");
    }

    fn rule(text: &str) -> DeviceRule {
        // "allow c 1:3 rwm" / "deny a"
        let mut w = text.split_whitespace();
        let allow = w.next() == Some("allow");
        let typ = w.next().and_then(|t| t.chars().next());
        let (major, minor) = match w.next() {
            Some(nums) => {
                let (a, b) = nums.split_once(':').unwrap();
                let n = |s: &str| {
                    if s == "*" {
                        None
                    } else {
                        Some(s.parse().unwrap())
                    }
                };
                (n(a), n(b))
            }
            None => (None, None),
        };
        DeviceRule::from_spec(allow, typ, major, minor, w.next()).unwrap()
    }

    const B: u32 = DEV_BLOCK;
    const C: u32 = DEV_CHAR;
    const R: u8 = ACC_READ;
    const W: u8 = ACC_WRITE;
    const M: u8 = ACC_MKNOD;

    /// (spec rules, request (type, major, minor, access), allowed?)
    type Case = (&'static [&'static str], (u32, u32, u32, u8), bool);

    #[test]
    fn decisions_match_last_rule_wins() {
        // (spec rules, request (type, major, minor, access), allowed?) with the
        // defaults appended, as a container gets them.
        #[rustfmt::skip]
        let cases: &[Case] = &[
            // Docker's default: deny all, then the defaults.
            (&["deny a"], (B, 8, 0, M), true),      // mknod of any node: allowed
            (&["deny a"], (B, 8, 0, R), false),     // reading the host's disk: no
            (&["deny a"], (B, 8, 0, W), false),
            (&["deny a"], (B, 8, 0, R | W), false),
            (&["deny a"], (C, 1, 3, R | W), true),  // /dev/null
            (&["deny a"], (C, 1, 9, R), true),      // /dev/urandom
            (&["deny a"], (C, 1, 1, R), false),     // /dev/mem
            (&["deny a"], (C, 136, 7, R | W), true), // a pts
            (&["deny a"], (B, 1, 3, R), false),     // 1:3 is allowed as a char device only
            (&["deny a"], (C, 10, 200, R | W), true),
            (&["deny a"], (C, 10, 229, R), false),  // /dev/fuse
            // No spec rules: the same (deny is the default).
            (&[], (B, 8, 0, R), false),
            (&[], (C, 1, 3, W), true),
            // A device given to the container.
            (&["deny a", "allow b 8:0 rwm"], (B, 8, 0, R | W), true),
            (&["deny a", "allow b 8:0 rwm"], (B, 8, 1, R), false),
            (&["deny a", "allow b 8:* r"], (B, 8, 1, R), true),
            (&["deny a", "allow b 8:* r"], (B, 8, 1, W), false),
            (&["deny a", "allow b 8:* r"], (B, 8, 1, R | W), false),
            (&["deny a", "allow b *:0 rw"], (B, 259, 0, R | W), true),
            // Privileged: allow all; a later deny punches a hole.
            (&["allow a"], (B, 8, 0, R | W), true),
            (&["allow a", "deny b 8:0 rwm"], (B, 8, 0, R), false),
            (&["allow a", "deny b 8:0 rwm"], (B, 8, 1, R), true),
            // The defaults come last: a spec cannot deny /dev/null.
            (&["allow a", "deny c 1:3 rwm"], (C, 1, 3, R), true),
            // Last match wins, whatever the order of allow and deny.
            (&["deny a", "allow b 8:0 rwm", "deny b 8:0 w"], (B, 8, 0, R), true),
            (&["deny a", "allow b 8:0 rwm", "deny b 8:0 w"], (B, 8, 0, W), false),
            (&["deny a", "allow b 8:0 rwm", "deny b 8:0 w"], (B, 8, 0, R | W), false),
            (&["deny a", "deny b 8:0 w", "allow b 8:0 rwm"], (B, 8, 0, R | W), true),
            // A total rule hides every rule before it.
            (&["allow b 8:0 rwm", "deny a"], (B, 8, 0, R), false),
            (&["deny b 8:0 rwm", "allow a"], (B, 8, 0, R), true),
            // Type a with numbers or a partial access is not total.
            (&["allow a 8:* r"], (B, 8, 5, R), true),
            (&["allow a 8:* r"], (C, 8, 5, R), true),
            (&["allow a 8:* r"], (B, 8, 5, W), false),
            (&["allow a *:* m"], (B, 8, 5, M), true),
            (&["allow a *:* m"], (B, 8, 5, R), false),
        ];
        for (spec, (t, major, minor, access), want) in cases {
            let rules = effective_rules(&spec.iter().map(|s| rule(s)).collect::<Vec<_>>());
            let prog = program(&rules);
            assert_eq!(
                allows(&rules, *t, *major, *minor, *access),
                *want,
                "model: {spec:?} {t}:{major}:{minor} access {access}"
            );
            assert_eq!(
                run(&prog, *t, *major, *minor, *access),
                *want,
                "program: {spec:?} {t}:{major}:{minor} access {access}"
            );
        }
    }

    #[test]
    fn program_agrees_with_the_model_everywhere() {
        let specs: &[&[&str]] = &[
            &["deny a"],
            &["allow a"],
            &["allow a", "deny b 8:* rw", "allow b 8:1 r"],
            &["deny a", "allow c *:* rw", "deny c 1:* w", "allow b 8:0 m"],
            &["allow b 8:0 rwm", "deny a", "allow c 5:* r"],
        ];
        for spec in specs {
            let rules = effective_rules(&spec.iter().map(|s| rule(s)).collect::<Vec<_>>());
            let prog = program(&rules);
            for t in [B, C] {
                for major in [1, 5, 8, 10, 136, 259] {
                    for minor in [0, 1, 3, 200] {
                        for access in 1..=7 {
                            assert_eq!(
                                run(&prog, t, major, minor, access),
                                allows(&rules, t, major, minor, access),
                                "{spec:?} {t}:{major}:{minor} access {access}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn instructions_are_laid_out_as_the_kernel_expects() {
        // deny all, allow one block device for reading: the prologue, the rule (type,
        // access, major, minor tests jumping past its return), the default.
        let prog = program(&[rule("allow b 8:0 r")]);
        #[rustfmt::skip]
        let want = [
            insn(LDX_W, 2, 1, 0, 0), insn(AND32_K, 2, 0, 0, 0xffff),
            insn(LDX_W, 3, 1, 0, 0), insn(RSH32_K, 3, 0, 0, 16),
            insn(LDX_W, 4, 1, 4, 0), insn(LDX_W, 5, 1, 8, 0),
            insn(JNE_K, 2, 0, 7, 1),
            insn(MOV32_X, 1, 3, 0, 0), insn(AND32_K, 1, 0, 0, 5), insn(JNE_K, 1, 0, 4, 0),
            insn(JNE_K, 4, 0, 3, 8),
            insn(JNE_K, 5, 0, 2, 0),
            insn(MOV32_K, 0, 0, 0, 1), insn(EXIT, 0, 0, 0, 0),
            insn(MOV32_K, 0, 0, 0, 0), insn(EXIT, 0, 0, 0, 0),
        ];
        assert_eq!(prog, want);
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        // A total allow is the whole program after the prologue.
        assert_eq!(program(&[rule("allow a")]).len(), 8);
    }

    #[test]
    fn spec_fields_are_checked() {
        assert_eq!(rule("allow c 1:3 rwm").v1_lines(), ["c 1:3 rwm"]);
        assert_eq!(rule("deny b *:* m").v1_lines(), ["b *:* m"]);
        assert_eq!(rule("deny a").v1_lines(), ["a"]);
        assert_eq!(rule("allow a 8:* r").v1_lines(), ["b 8:* r", "c 8:* r"]);
        assert_eq!(
            DeviceRule::from_spec(true, Some('c'), Some(-1), None, None).unwrap(),
            allow(DeviceKind::Char, None, None, ACC_ALL)
        );
        for (typ, major, access, what) in [
            (Some('p'), None, None, "type 'p'"),
            (
                Some('c'),
                Some(1 << 40),
                None,
                "major 1099511627776 is out of range",
            ),
            (Some('c'), None, Some("rx"), "access 'x'"),
        ] {
            let e = DeviceRule::from_spec(true, typ, major, None, access)
                .unwrap_err()
                .to_string();
            assert!(e.contains(what), "{e}");
        }
    }
}
