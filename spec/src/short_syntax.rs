//! Parsers for Compose's one-string short forms: `ports`, `volumes`, `extra_hosts`, `expose`
//! and service-level `tmpfs` entries.
//!
//! They follow the Go code Docker Compose runs (go-connections `nat.ParsePortSpec`, compose-go
//! `format.ParseVolume` and `types.HostsList`, moby's tmpfs option check) and are stricter where
//! that code silently drops input: unknown options, trailing garbage and empty parts are errors
//! here. Windows paths (`C:\data`) are not recognised; berth runs Linux containers only.
//!
//! The results are plain structs with no tie to the model, and errors are lowercase messages
//! without a path prefix, which the caller adds.

use std::net::IpAddr;

use crate::units;

/// One `ports:` short-syntax entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortShort {
    /// Host address to bind, without IPv6 brackets; `None` binds all addresses.
    pub host_ip: Option<String>,
    /// Inclusive host port range; `None` lets the engine pick a port.
    pub published: Option<(u16, u16)>,
    /// Inclusive container port range.
    pub target: (u16, u16),
    /// `tcp`, `udp` or `sctp`, lowercase.
    pub protocol: String,
}

const PORT_FORMS: &str = "expected [[host_ip:]published:]target[/protocol], \
                          like 80, 8080:80, 127.0.0.1:8080:80 or 6060:6060/udp";
const PORT_HINT: &str = "expected a number from 1 to 65535 or a range like 8000-8010";
const IP_HINT: &str = "expected an IPv4 or IPv6 address, like 127.0.0.1 or [::1]";

/// Parses a `ports:` entry: `80`, `8080:80`, `127.0.0.1:8080:80`, `[::1]:8080:80`,
/// `::1:8080:80`, `8000-8010:8000-8010`, `127.0.0.1:5000-5010:5000`, `6060:6060/udp`,
/// `0.0.0.0::80`.
///
/// As in `nat.ParsePortSpec` the last two `:`-separated parts are the published and target
/// ports and everything before them is the host IP, which is why an unbracketed IPv6 address
/// works. A published range with a single target port asks the engine to pick one port from the
/// range. A published port of `0` means "any port", the same as leaving it empty.
///
/// Stricter than Docker: a range spans at most `max_ports` ports (so a typo like `1-65535`
/// cannot make a caller expand a huge range), `1-2-3` is an error instead of `1-2`, and a
/// target port must be 1-65535.
pub fn parse_port(s: &str, max_ports: u32) -> Result<PortShort, String> {
    let mut parts = s.rsplitn(3, ':');
    let last = parts.next().unwrap_or_default();
    let published = parts.next().unwrap_or_default();
    let ip = parts.next().unwrap_or_default();

    let (target, protocol) = split_protocol(last);
    if target.is_empty() {
        return Err(format!("missing container port in {s:?}: {PORT_FORMS}"));
    }
    let protocol = protocol_of(protocol, s)?;
    let host_ip = host_ip(ip, s)?;
    let target_range = port_range(target, s, max_ports)?;
    let published = match published {
        "" | "0" => None,
        text => {
            let range = port_range(text, s, max_ports)?;
            let (published_len, target_len) = (range_len(range), range_len(target_range));
            if published_len != target_len && target_len != 1 {
                return Err(format!(
                    "published ports {text:?} ({published_len}) and target ports {target:?} \
                     ({target_len}) in {s:?} must be ranges of the same length, or the target \
                     a single port"
                ));
            }
            Some(range)
        }
    };
    Ok(PortShort {
        host_ip,
        published,
        target: target_range,
        protocol,
    })
}

/// Splits `80/udp` into the port part and the protocol (empty when not given). Like
/// `nat.SplitProtoPort` only the first `/` separates, so `80/udp/x` has protocol `udp/x`.
fn split_protocol(s: &str) -> (&str, &str) {
    s.split_once('/').unwrap_or((s, ""))
}

fn protocol_of(text: &str, whole: &str) -> Result<String, String> {
    // Docker lowercases the protocol before checking it.
    let protocol = if text.is_empty() {
        "tcp".to_string()
    } else {
        text.to_ascii_lowercase()
    };
    match protocol.as_str() {
        "tcp" | "udp" | "sctp" => Ok(protocol),
        _ => Err(format!(
            "unknown protocol {text:?} in {whole:?}: expected tcp, udp or sctp"
        )),
    }
}

fn host_ip(text: &str, whole: &str) -> Result<Option<String>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    // Brackets are how IPv6 is usually written next to a port; Docker strips them.
    let bare = match text.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']').unwrap_or(text),
        None => text,
    };
    match bare.parse::<IpAddr>() {
        Ok(_) => Ok(Some(bare.to_string())),
        Err(_) => Err(format!("invalid host IP {text:?} in {whole:?}: {IP_HINT}")),
    }
}

fn range_len((start, end): (u16, u16)) -> u32 {
    u32::from(end) - u32::from(start) + 1
}

/// Parses `8080` or `8000-8010` into an inclusive range of ports 1-65535, at most `max_ports`
/// long.
fn port_range(text: &str, whole: &str, max_ports: u32) -> Result<(u16, u16), String> {
    let (start, end) = match text.split_once('-') {
        Some((a, b)) => (port_number(a, whole)?, port_number(b, whole)?),
        None => {
            let p = port_number(text, whole)?;
            (p, p)
        }
    };
    if start > end {
        return Err(format!(
            "invalid port range {text:?} in {whole:?}: the start is greater than the end"
        ));
    }
    let len = range_len((start, end));
    if len > max_ports {
        return Err(format!(
            "port range {text:?} spans {len} ports, more than the maximum of {max_ports}"
        ));
    }
    Ok((start, end))
}

fn port_number(text: &str, whole: &str) -> Result<u16, String> {
    if text.is_empty() || !text.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!("invalid port {text:?} in {whole:?}: {PORT_HINT}"));
    }
    match text.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        // All digits, so the only failure left is a value past 65535.
        _ => Err(format!("port {text} is out of range (1-65535)")),
    }
}

/// One `volumes:` short-syntax entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeShort {
    /// Host path or volume name; `None` for an anonymous volume (`/data`).
    pub source: Option<String>,
    /// Absolute path in the container.
    pub target: String,
    pub kind: VolumeKind,
    /// `ro` given (the last of `ro`/`rw` wins, as in compose-go).
    pub read_only: bool,
    /// The other mode options, in the order written.
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeKind {
    Bind,
    Volume,
}

const VOLUME_FORMS: &str =
    "expected [source:]target[:options], like data:/data, ./html:/usr/share/html:ro or /cache";
const VOLUME_OPTIONS_HINT: &str = "expected ro, rw, z, Z, nocopy, a propagation (private, \
     rprivate, shared, rshared, slave, rslave) or a consistency (cached, delegated, consistent)";

/// Mode options kept in [`VolumeShort::options`]: SELinux relabelling, `nocopy`, bind
/// propagation and the macOS consistency hints compose-go accepts.
const VOLUME_OPTIONS: &str =
    "z Z nocopy private rprivate shared rshared slave rslave cached delegated consistent";

/// Parses a `volumes:` entry: `/data`, `data:/data`, `./data:/data:ro`, `~/x:/x:rw,z`,
/// `/host:/ctr:ro,rshared`.
///
/// The source is a bind mount when it starts with `/`, `.` or `~` (compose-go's rule, minus
/// its Windows drive and pipe forms), a named volume otherwise. compose-go ignores unknown
/// options and empty ones; here they are errors, since a misspelt `ro` would otherwise mount
/// read-write without a word.
pub fn parse_volume(s: &str) -> Result<VolumeShort, String> {
    if s.is_empty() {
        return Err(format!("empty volume: {VOLUME_FORMS}"));
    }
    let parts: Vec<&str> = s.split(':').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!(
            "invalid volume {s:?}: empty part between ':'; {VOLUME_FORMS}"
        ));
    }
    let (source, target, mode) = match parts.as_slice() {
        [target] => (None, *target, None),
        [source, target] => (Some(*source), *target, None),
        [source, target, mode] => (Some(*source), *target, Some(*mode)),
        _ => {
            return Err(format!(
                "invalid volume {s:?}: too many ':'; {VOLUME_FORMS}"
            ))
        }
    };
    if !target.starts_with('/') {
        return Err(format!(
            "invalid volume {s:?}: the target {target:?} must be an absolute path in the container"
        ));
    }
    let kind = match source {
        Some(src) if src.starts_with(['/', '.', '~']) => VolumeKind::Bind,
        _ => VolumeKind::Volume,
    };
    let mut read_only = false;
    let mut options = Vec::new();
    for option in mode.into_iter().flat_map(|m| m.split(',')) {
        match option {
            "ro" => read_only = true,
            "rw" => read_only = false,
            o if VOLUME_OPTIONS.split(' ').any(|v| v == o) => options.push(o.to_string()),
            "" => return Err(format!("invalid volume {s:?}: empty option between ','")),
            o => {
                return Err(format!(
                    "unknown volume option {o:?} in {s:?}: {VOLUME_OPTIONS_HINT}"
                ))
            }
        }
    }
    Ok(VolumeShort {
        source: source.map(str::to_string),
        target: target.to_string(),
        kind,
        read_only,
        options,
    })
}

const EXTRA_HOST_FORMS: &str = "expected host=ip or host:ip, like myhost=10.0.0.5 or myhost=::1";

/// Parses an `extra_hosts` entry: `somehost:162.242.195.82`, `somehost=162.242.195.82`,
/// `myhostv6:::1`, `myhostv6=::1`, `myhostv6=[::1]`, `host.docker.internal:host-gateway`.
/// Returns the host name and the address without brackets.
///
/// As in compose-go and the engine, `=` separates if present, else the first `:`, and
/// `host-gateway` is the engine's placeholder for the host's address. As in compose-go,
/// one entry may list several addresses (`host=1.2.3.4,::1`): a pair for each. Host names
/// containing whitespace are rejected, since they would split into separate names in
/// /etc/hosts.
pub fn parse_extra_hosts(s: &str) -> Result<Vec<(String, String)>, String> {
    let split = s.split_once('=').or_else(|| s.split_once(':'));
    let Some((host, ips)) = split.filter(|(_, ips)| ips.contains(',')) else {
        return parse_extra_host(s).map(|h| vec![h]);
    };
    // compose-go reads `h=ip1,ip2` as two entries for one host.
    ips.split(',')
        .map(|ip| parse_extra_host(&format!("{host}={ip}")))
        .collect()
}

/// Parses one `extra_hosts` address: `host=ip` or `host:ip` -> (host, ip), without the
/// brackets an IPv6 address may be written in. One address only: this is also how an
/// entry of a loaded stack is read back, which always holds one.
pub fn parse_extra_host(s: &str) -> Result<(String, String), String> {
    let split = s.split_once('=').or_else(|| s.split_once(':'));
    let (host, ip) =
        split.ok_or_else(|| format!("invalid extra host {s:?}: {EXTRA_HOST_FORMS}"))?;
    if host.is_empty() || host.contains([':', '=']) || host.contains(char::is_whitespace) {
        return Err(format!(
            "invalid extra host {s:?}: bad host name {host:?}; {EXTRA_HOST_FORMS}"
        ));
    }
    if ip.contains(',') {
        return Err(format!(
            "invalid extra host {s:?}: several addresses in one entry; write one entry per address"
        ));
    }
    let bare = match ip.strip_prefix('[').and_then(|i| i.strip_suffix(']')) {
        Some(inner) if !inner.is_empty() => inner,
        _ => ip,
    };
    if bare != "host-gateway" && bare.parse::<IpAddr>().is_err() {
        return Err(format!(
            "invalid IP address {ip:?} in extra host {s:?}: expected an IPv4 or IPv6 address \
             or host-gateway"
        ));
    }
    Ok((host.to_string(), bare.to_string()))
}

const EXPOSE_FORMS: &str = "like 3000, 8000-8010 or 8080/udp";

/// Parses an `expose` entry: `3000`, `8000-8010`, `8080/udp` -> (start, end, protocol).
///
/// Like the Docker CLI's `--expose` there is no host part; unlike it the protocol is checked
/// here (tcp, udp or sctp) instead of by the engine.
pub fn parse_expose(s: &str, max_ports: u32) -> Result<(u16, u16, String), String> {
    if s.contains(':') {
        return Err(format!(
            "invalid expose {s:?}: expose takes container ports only, {EXPOSE_FORMS}; publish \
             host ports under ports"
        ));
    }
    let (ports, protocol) = split_protocol(s);
    if ports.is_empty() {
        return Err(format!(
            "missing port in expose {s:?}: expected a port or range with an optional protocol, \
             {EXPOSE_FORMS}"
        ));
    }
    let protocol = protocol_of(protocol, s)?;
    let (start, end) = port_range(ports, s, max_ports)?;
    Ok((start, end, protocol))
}

/// One service-level `tmpfs:` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsShort {
    /// Absolute path in the container.
    pub target: String,
    /// `size=` in bytes; `Some(0)` is the kernel's "no limit".
    pub size: Option<u64>,
    /// `mode=`, octal in the entry.
    pub mode: Option<u32>,
    /// Every other option, as written and in order (`uid=1000`, `noexec`).
    pub options: Vec<String>,
}

const TMPFS_OPTIONS_HINT: &str = "expected size=, mode=, uid=, gid=, nr_inodes=, nr_blocks=, \
     mpol= or a mount flag like ro, noexec or nosuid";

const TMPFS_SIZE_HINT: &str = "a size like size=64m or size=1g (percentages are not supported)";
const TMPFS_MODE_HINT: &str = "an octal mode like mode=1777";
const TMPFS_ID_HINT: &str = "a numeric id like uid=1000";

/// Mount flags moby accepts for a tmpfs, the second list also with a `no` prefix. Deviation:
/// `defaults` (moby rejects it as tmpfs data) and `bind`, `rbind`, `remount` (meaningless for a
/// fresh tmpfs, and they break the mount) are left out.
const TMPFS_FLAGS: &str = "ro rw sync async dirsync private rprivate shared rshared slave rslave \
                           unbindable runbindable";
const TMPFS_NEGATABLE_FLAGS: &str = "suid dev exec mand atime diratime relatime strictatime";

fn is_tmpfs_flag(o: &str) -> bool {
    let positive = o.strip_prefix("no").unwrap_or(o);
    TMPFS_FLAGS.split(' ').any(|f| f == o)
        || TMPFS_NEGATABLE_FLAGS.split(' ').any(|f| f == positive)
}

/// Parses a service-level `tmpfs:` entry: `/run`, `/run:size=64m,mode=1777,uid=1000`.
///
/// Options are the ones moby's `ParseTmpfsOptions` allows: mount flags plus the tmpfs data
/// options `size`, `mode`, `uid`, `gid`, `nr_inodes`, `nr_blocks` and `mpol`. `size` takes the
/// units [`units::parse_bytes`] reads; the kernel's percentage form (`size=50%`) is not
/// supported because the result is a byte count.
pub fn parse_tmpfs(s: &str) -> Result<TmpfsShort, String> {
    let (target, opts) = s.split_once(':').unwrap_or((s, ""));
    if !target.starts_with('/') {
        return Err(format!(
            "invalid tmpfs {s:?}: the target {target:?} must be an absolute path in the \
             container, like /run or /run:size=64m"
        ));
    }
    let (target, size, mode, options) = (target.to_string(), None, None, Vec::new());
    let mut out = TmpfsShort {
        target,
        size,
        mode,
        options,
    };
    for option in opts.split(',').filter(|_| !opts.is_empty()) {
        let bad_value = |what| format!("invalid tmpfs option {option:?} in {s:?}: expected {what}");
        match option.split_once('=') {
            Some(("size", v)) => {
                let size = units::parse_bytes(v).map_err(|_| bad_value(TMPFS_SIZE_HINT))?;
                out.size = Some(size);
            }
            Some(("mode", v)) => {
                let mode = (!v.is_empty() && v.bytes().all(|c| (b'0'..=b'7').contains(&c)))
                    .then(|| u32::from_str_radix(v, 8).ok())
                    .flatten()
                    .filter(|&m| m <= 0o7777);
                out.mode = Some(mode.ok_or_else(|| bad_value(TMPFS_MODE_HINT))?);
            }
            Some(("uid" | "gid", v)) => {
                v.parse::<u32>().map_err(|_| bad_value(TMPFS_ID_HINT))?;
                out.options.push(option.to_string());
            }
            Some(("nr_inodes" | "nr_blocks" | "mpol", v)) if !v.is_empty() => {
                out.options.push(option.to_string());
            }
            None if is_tmpfs_flag(option) => out.options.push(option.to_string()),
            _ => {
                return Err(format!(
                    "unknown tmpfs option {option:?} in {s:?}: {TMPFS_OPTIONS_HINT}"
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: u32 = 1000;

    /// `host_ip published target`, `-` for an absent part, ranges collapsed when one port wide,
    /// and the protocol appended unless tcp: one short line per case.
    fn show_port(r: Result<PortShort, String>) -> String {
        let range = |(a, b): (u16, u16)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        };
        let Ok(p) = r else { return "error".into() };
        let ip = p.host_ip.as_deref().unwrap_or("-");
        let published = p.published.map_or("-".into(), range);
        let proto = if p.protocol == "tcp" {
            String::new()
        } else {
            format!("/{}", p.protocol)
        };
        format!("{ip} {published} {}{proto}", range(p.target))
    }

    #[test]
    fn ports_parse() {
        let cases = [
            ("80", "- - 80"),
            ("8080:80", "- 8080 80"),
            ("127.0.0.1:8080:80", "127.0.0.1 8080 80"),
            ("[::1]:8080:80", "::1 8080 80"),
            ("::1:8080:80", "::1 8080 80"),
            ("[::1]::80", "::1 - 80"),
            ("[10.0.0.1]:1:2", "10.0.0.1 1 2"),
            ("8000-8010:8000-8010", "- 8000-8010 8000-8010"),
            ("9090-9091:8080-8081", "- 9090-9091 8080-8081"),
            ("127.0.0.1:5000-5010:5000", "127.0.0.1 5000-5010 5000"),
            ("12400-12500:1240", "- 12400-12500 1240"),
            ("6060:6060/udp", "- 6060 6060/udp"),
            ("6060:6060/UDP", "- 6060 6060/udp"),
            ("80/sctp", "- - 80/sctp"),
            ("80/", "- - 80"),
            ("0.0.0.0::80", "0.0.0.0 - 80"),
            ("0:80", "- - 80"),
            (":80", "- - 80"),
            ("3000-3005", "- - 3000-3005"),
            ("65535:01", "- 65535 1"),
            ("1-1000:1-1000", "- 1-1000 1-1000"),
        ];
        for (input, expected) in cases {
            assert_eq!(show_port(parse_port(input, MAX)), expected, "{input}");
        }
    }

    #[test]
    fn port_errors() {
        let range = |p: &str| format!("port {p} is out of range (1-65535)");
        let number = |p: &str, s: &str| format!("invalid port {p:?} in {s:?}: {PORT_HINT}");
        let ip = |ip: &str, s: &str| format!("invalid host IP {ip:?} in {s:?}: {IP_HINT}");
        let proto = |p: &str, s: &str| {
            format!("unknown protocol {p:?} in {s:?}: expected tcp, udp or sctp")
        };
        let missing = |s: &str| format!("missing container port in {s:?}: {PORT_FORMS}");
        let order = |r: &str, s: &str| {
            format!("invalid port range {r:?} in {s:?}: the start is greater than the end")
        };
        let span = |r: &str, n: u32| {
            format!("port range {r:?} spans {n} ports, more than the maximum of 1000")
        };
        let lengths = |s: &str, pn: u32, tn: u32| {
            let (p, t) = s.split_once(':').unwrap_or_default();
            format!(
                "published ports {p:?} ({pn}) and target ports {t:?} ({tn}) in {s:?} must be \
                 ranges of the same length, or the target a single port"
            )
        };
        let cases = [
            ("70000", range("70000")),
            ("70000:80", range("70000")),
            ("0", range("0")),
            ("0-10:80", range("0")),
            ("99999999999999999999", range("99999999999999999999")),
            ("8010-8000:80", order("8010-8000", "8010-8000:80")),
            ("1-65535:1-65535", span("1-65535", 65535)),
            ("1-1001", span("1-1001", 1001)),
            ("8000-8010:80-81", lengths("8000-8010:80-81", 11, 2)),
            ("8080:80-81", lengths("8080:80-81", 1, 2)),
            ("80/xyz", proto("xyz", "80/xyz")),
            ("80/udp/x", proto("udp/x", "80/udp/x")),
            ("1.2.3:80:80", ip("1.2.3", "1.2.3:80:80")),
            ("[::1:80:80", ip("[::1", "[::1:80:80")),
            ("[]:80:80", ip("[]", "[]:80:80")),
            ("localhost:80:80", ip("localhost", "localhost:80:80")),
            ("abc", number("abc", "abc")),
            ("8080:http", number("http", "8080:http")),
            ("1-2-3", number("2-3", "1-2-3")),
            ("-80", number("", "-80")),
            ("+80", number("+80", "+80")),
            (" 80", number(" 80", " 80")),
            ("8080:", missing("8080:")),
            ("", missing("")),
            ("/udp", missing("/udp")),
        ];
        for (input, msg) in cases {
            assert_eq!(parse_port(input, MAX), Err(msg), "{input}");
        }
    }

    /// `kind source target ro|rw options`, `-` for an absent source or no options.
    fn show_volume(r: Result<VolumeShort, String>) -> String {
        let Ok(v) = r else { return "error".into() };
        let source = v.source.as_deref().unwrap_or("-");
        let mode = if v.read_only { "ro" } else { "rw" };
        let options = if v.options.is_empty() {
            "-".into()
        } else {
            v.options.join(",")
        };
        format!("{:?} {source} {} {mode} {options}", v.kind, v.target)
    }

    #[test]
    fn volumes_parse() {
        let cases = [
            ("/data", "Volume - /data rw -"),
            ("/", "Volume - / rw -"),
            ("data:/data", "Volume data /data rw -"),
            ("./data:/data:ro", "Bind ./data /data ro -"),
            ("~/x:/x:rw,z", "Bind ~/x /x rw z"),
            ("/host:/ctr:ro,rshared", "Bind /host /ctr ro rshared"),
            ("../up:/up:Z,cached", "Bind ../up /up rw Z,cached"),
            ("db:/var/lib/db:nocopy", "Volume db /var/lib/db rw nocopy"),
            ("db:/db:ro,rw", "Volume db /db rw -"),
            ("/a:/b:rw,ro", "Bind /a /b ro -"),
            ("/a:/b:private,delegated", "Bind /a /b rw private,delegated"),
            ("/a:/b:consistent,slave", "Bind /a /b rw consistent,slave"),
            (
                "/a:/b:rslave,shared,rprivate",
                "Bind /a /b rw rslave,shared,rprivate",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(show_volume(parse_volume(input)), expected, "{input}");
        }
    }

    #[test]
    fn volume_errors() {
        let relative = |s: &str, t: &str| {
            format!(
                "invalid volume {s:?}: the target {t:?} must be an absolute path in the container"
            )
        };
        let empty =
            |s: &str| format!("invalid volume {s:?}: empty part between ':'; {VOLUME_FORMS}");
        let unknown = |o: &str, s: &str| {
            format!("unknown volume option {o:?} in {s:?}: {VOLUME_OPTIONS_HINT}")
        };
        let cases = [
            ("", format!("empty volume: {VOLUME_FORMS}")),
            ("data", relative("data", "data")),
            ("data:data", relative("data:data", "data")),
            ("/data:ro", relative("/data:ro", "ro")),
            (r"C:\data:/data", relative(r"C:\data:/data", r"\data")),
            ("data::/x", empty("data::/x")),
            (":/x", empty(":/x")),
            ("/a:/b:", empty("/a:/b:")),
            (
                "/a:/b:c:d",
                format!("invalid volume \"/a:/b:c:d\": too many ':'; {VOLUME_FORMS}"),
            ),
            (
                "/a:/b:,",
                "invalid volume \"/a:/b:,\": empty option between ','".into(),
            ),
            ("/a:/b:RO", unknown("RO", "/a:/b:RO")),
            ("/a:/b:ro,bogus", unknown("bogus", "/a:/b:ro,bogus")),
        ];
        for (input, msg) in cases {
            assert_eq!(parse_volume(input), Err(msg), "{input}");
        }
    }

    #[test]
    fn extra_hosts_parse() {
        let cases = [
            ("somehost:162.242.195.82", "somehost", "162.242.195.82"),
            ("somehost=162.242.195.82", "somehost", "162.242.195.82"),
            ("myhostv6:::1", "myhostv6", "::1"),
            ("myhostv6=::1", "myhostv6", "::1"),
            ("myhostv6=[::1]", "myhostv6", "::1"),
            ("myhostv6:[::1]", "myhostv6", "::1"),
            ("v4=[10.0.0.1]", "v4", "10.0.0.1"),
            (
                "host.internal:host-gateway",
                "host.internal",
                "host-gateway",
            ),
            ("gw=host-gateway", "gw", "host-gateway"),
            ("h=::ffff:1.2.3.4", "h", "::ffff:1.2.3.4"),
        ];
        for (input, host, ip) in cases {
            assert_eq!(
                parse_extra_host(input),
                Ok((host.into(), ip.into())),
                "{input}"
            );
        }
    }

    #[test]
    fn extra_host_errors() {
        let forms = |s: &str| format!("invalid extra host {s:?}: {EXTRA_HOST_FORMS}");
        let host = |s: &str, h: &str| {
            format!("invalid extra host {s:?}: bad host name {h:?}; {EXTRA_HOST_FORMS}")
        };
        let ip = |s: &str, ip: &str| {
            format!(
                "invalid IP address {ip:?} in extra host {s:?}: expected an IPv4 or IPv6 address \
                 or host-gateway"
            )
        };
        let several = "invalid extra host \"h=1.2.3.4,::1\": several addresses in one entry; \
                       write one entry per address";
        let cases = [
            ("somehost", forms("somehost")),
            ("", forms("")),
            ("=1.2.3.4", host("=1.2.3.4", "")),
            ("a:b=1.2.3.4", host("a:b=1.2.3.4", "a:b")),
            ("my host=1.2.3.4", host("my host=1.2.3.4", "my host")),
            ("h=1.2.3.4,::1", several.into()),
            ("h=1.2.3", ip("h=1.2.3", "1.2.3")),
            ("h=", ip("h=", "")),
            ("h=[]", ip("h=[]", "[]")),
            ("h=example.com", ip("h=example.com", "example.com")),
        ];
        for (input, msg) in cases {
            assert_eq!(parse_extra_host(input), Err(msg), "{input}");
        }
    }

    #[test]
    fn expose_cases() {
        let ok = [
            ("3000", 3000, 3000, "tcp"),
            ("8000-8010", 8000, 8010, "tcp"),
            ("8080/udp", 8080, 8080, "udp"),
            ("53/UDP", 53, 53, "udp"),
            ("9000-9001/sctp", 9000, 9001, "sctp"),
        ];
        for (input, a, b, p) in ok {
            assert_eq!(parse_expose(input, MAX), Ok((a, b, p.into())), "{input}");
        }
        let host = "invalid expose \"8080:80\": expose takes container ports only, like 3000, \
                    8000-8010 or 8080/udp; publish host ports under ports";
        let missing = "missing port in expose \"/udp\": expected a port or range with an \
                       optional protocol, like 3000, 8000-8010 or 8080/udp";
        let bad = [
            ("8080:80", host),
            ("/udp", missing),
            ("70000", "port 70000 is out of range (1-65535)"),
            (
                "1-65535",
                "port range \"1-65535\" spans 65535 ports, more than the maximum of 1000",
            ),
            (
                "10-1",
                "invalid port range \"10-1\" in \"10-1\": the start is greater than the end",
            ),
            (
                "80/icmp",
                "unknown protocol \"icmp\" in \"80/icmp\": expected tcp, udp or sctp",
            ),
        ];
        for (input, msg) in bad {
            assert_eq!(parse_expose(input, MAX), Err(msg.into()), "{input}");
        }
    }

    /// `target size mode options`, `-` for an absent size or mode.
    fn show_tmpfs(r: Result<TmpfsShort, String>) -> String {
        let Ok(t) = r else { return "error".into() };
        let size = t.size.map_or("-".into(), units::format_bytes);
        let mode = t.mode.map_or("-".into(), |m| format!("{m:o}"));
        format!("{} {size} {mode} {}", t.target, t.options.join(","))
    }

    #[test]
    fn tmpfs_cases() {
        let ok = [
            ("/run", "/run - - "),
            ("/run:", "/run - - "),
            ("/r:size=64m,mode=1777,uid=1000", "/r 64m 1777 uid=1000"),
            (
                "/r:rw,noexec,nosuid,size=65536k",
                "/r 64m - rw,noexec,nosuid",
            ),
            ("/r:size=0,mode=0755,gid=0", "/r 0 755 gid=0"),
            ("/r:nr_inodes=1k,size=1.5g", "/r 1536m - nr_inodes=1k"),
            (
                "/r:mpol=local,nr_blocks=10",
                "/r - - mpol=local,nr_blocks=10",
            ),
            (
                "/r:nodev,suid,exec,rshared",
                "/r - - nodev,suid,exec,rshared",
            ),
        ];
        for (input, expected) in ok {
            assert_eq!(show_tmpfs(parse_tmpfs(input)), expected, "{input}");
        }
        let relative = |s: &str, t: &str| {
            format!(
                "invalid tmpfs {s:?}: the target {t:?} must be an absolute path in the container, \
                 like /run or /run:size=64m"
            )
        };
        let value = |o: &str, hint: &str| {
            format!("invalid tmpfs option {o:?} in \"/r:{o}\": expected {hint}")
        };
        let unknown =
            |o: &str| format!("unknown tmpfs option {o:?} in \"/r:{o}\": {TMPFS_OPTIONS_HINT}");
        let bad = [
            ("run", relative("run", "run")),
            ("", relative("", "")),
            ("/r:size=lots", value("size=lots", TMPFS_SIZE_HINT)),
            ("/r:size=50%", value("size=50%", TMPFS_SIZE_HINT)),
            ("/r:mode=999", value("mode=999", TMPFS_MODE_HINT)),
            ("/r:mode=17777", value("mode=17777", TMPFS_MODE_HINT)),
            ("/r:uid=root", value("uid=root", TMPFS_ID_HINT)),
            ("/r:bogus", unknown("bogus")),
            ("/r:defaults", unknown("defaults")),
            ("/r:nosync", unknown("nosync")),
            ("/r:mpol=", unknown("mpol=")),
            (
                "/r:ro,,x",
                format!("unknown tmpfs option \"\" in \"/r:ro,,x\": {TMPFS_OPTIONS_HINT}"),
            ),
        ];
        for (input, msg) in bad {
            assert_eq!(parse_tmpfs(input), Err(msg), "{input}");
        }
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC{0,40}") {
            let _ = parse_port(&s, MAX);
            let _ = parse_volume(&s);
            let _ = parse_extra_host(&s);
            let _ = parse_expose(&s, MAX);
            let _ = parse_tmpfs(&s);
        }

        #[test]
        fn accepted_ports_respect_the_limits(s in "[0-9:/\\-\\[\\].a-fudp]{0,30}") {
            if let Ok(p) = parse_port(&s, MAX) {
                prop_assert!(p.target.0 >= 1 && p.target.0 <= p.target.1);
                prop_assert!(u32::from(p.target.1 - p.target.0) < MAX);
            }
            if let Ok((start, end, _)) = parse_expose(&s, MAX) {
                prop_assert!(start >= 1 && start <= end && u32::from(end - start) < MAX);
            }
        }

        #[test]
        fn published_range_with_single_target(start in 1u16.., len in 0u16..1000, t in 1u16..) {
            let end = start.saturating_add(len);
            let spec = format!("{start}-{end}:{t}");
            prop_assert_eq!(parse_port(&spec, MAX).map(|p| p.published), Ok(Some((start, end))));
        }
    }
}
