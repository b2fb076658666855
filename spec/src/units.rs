//! Parsers and formatters for the scalar units Compose files use: durations, byte sizes,
//! signals and CPU counts.
//!
//! Each one follows the Go code Docker Compose runs, so a value that loads there loads here
//! with the same meaning:
//!
//! * durations: Go's `time.ParseDuration` plus the `d` and `w` units of go-str2duration/v2,
//!   which compose-go uses; [`format_duration`] is Go's `Duration.String`;
//! * sizes: go-units' `RAMInBytes` (binary multiples, case-insensitive, optional `b`/`ib`);
//! * signals: moby's `signal.ParseSignal` with the Linux signal table;
//! * CPUs: `strconv.ParseFloat`, as compose-go's `NanoCPUs` reads a string.
//!
//! Errors are plain lowercase messages that say what is wrong and what would be accepted. They
//! carry no file or path prefix: the caller knows where the value came from and adds it.

use std::time::Duration;

const DURATION_HINT: &str =
    "expected a number followed by a unit (ns, us, ms, s, m, h), like 30s or 1m30s";

/// Go's `time.Duration` is an `int64` of nanoseconds; a longer duration could not be handed to
/// the engine, so parsing stops there (about 292 years).
const MAX_DURATION_NANOS: u64 = i64::MAX as u64;

/// Go's parser keeps its running total in a `uint64` and lets it reach 2^63 (so that
/// `-9223372036854775808ns` parses) before the final range check.
const GO_LIMIT: u64 = 1 << 63;

/// Parses a duration written the way Compose accepts it: `1m30s`, `1.5h`, `300ms`, `10us`,
/// `1µs`, `2h45m`, `0`, and the compose-go extras `1d` (24h) and `1w` (168h).
///
/// A sign is allowed as in Go, but a negative duration is an error: no Compose field takes one.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let syntax = || format!("invalid duration {s:?}: {DURATION_HINT}");
    let too_large = || {
        let max = format_duration(Duration::from_nanos(MAX_DURATION_NANOS));
        format!("invalid duration {s:?}: too large (the maximum is {max})")
    };
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    // Go special-cases a bare zero: it is the only number allowed without a unit.
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(syntax());
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        if !rest.starts_with(|c: char| c == '.' || c.is_ascii_digit()) {
            return Err(syntax());
        }
        let int_len = leading_digits(rest);
        let mut value: u64 = 0;
        for c in rest[..int_len].bytes() {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(c - b'0')))
                .filter(|&v| v <= GO_LIMIT)
                .ok_or_else(too_large)?;
        }
        rest = &rest[int_len..];

        // The fraction is accumulated and scaled exactly as Go does (float64 scale), so that
        // values such as "1.0000000001h" round the way `docker compose` rounds them.
        let (mut frac, mut scale, mut frac_len) = (0u64, 1f64, 0);
        if let Some(after_dot) = rest.strip_prefix('.') {
            frac_len = leading_digits(after_dot);
            for c in after_dot[..frac_len].bytes() {
                // Past 63 bits Go stops accumulating precision; later digits are ignored.
                if frac > (GO_LIMIT - 1) / 10 {
                    break;
                }
                let next = frac * 10 + u64::from(c - b'0');
                if next > GO_LIMIT {
                    break;
                }
                frac = next;
                scale *= 10.0;
            }
            rest = &after_dot[frac_len..];
        }
        if int_len == 0 && frac_len == 0 {
            return Err(syntax()); // "." or ".s": no digits at all
        }

        // The unit runs up to the next number; it is ASCII-delimited, so slicing is safe.
        let unit_len = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "d" => 24 * 3_600 * 1_000_000_000,
            "w" => 7 * 24 * 3_600 * 1_000_000_000,
            _ => return Err(syntax()),
        };
        rest = &rest[unit_len..];
        if value > GO_LIMIT / unit {
            return Err(too_large());
        }
        value *= unit;
        if frac > 0 {
            // Truncation toward zero, like Go's uint64(float64) conversion.
            value += (frac as f64 * (unit as f64 / scale)) as u64;
            if value > GO_LIMIT {
                return Err(too_large());
            }
        }
        total = total
            .checked_add(value)
            .filter(|&t| t <= GO_LIMIT)
            .ok_or_else(too_large)?;
    }
    if negative && total != 0 {
        return Err(format!(
            "invalid duration {s:?}: durations cannot be negative"
        ));
    }
    if total > MAX_DURATION_NANOS {
        return Err(too_large());
    }
    Ok(Duration::from_nanos(total))
}

fn leading_digits(s: &str) -> usize {
    s.bytes().take_while(u8::is_ascii_digit).count()
}

/// Formats a duration exactly as Go's `Duration.String` does: `1m30s`, `1.5s`, `300ms`, `0s`,
/// `1h0m0s`, `1µs` (with U+00B5, which [`parse_duration`] reads back).
///
/// Durations beyond Go's range (over about 292 years) are still formatted, in the same style.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos < 1_000_000_000 {
        // Below one second Go switches to the largest unit that keeps an integer part.
        let (digits, unit) = match nanos {
            n if n < 1_000 => (0, "ns"),
            n if n < 1_000_000 => (3, "\u{b5}s"),
            _ => (6, "ms"),
        };
        let (whole, frac) = split_fraction(nanos, digits);
        return format!("{whole}{frac}{unit}");
    }
    let (secs, frac) = split_fraction(nanos, 9);
    let (mins, secs) = (secs / 60, secs % 60);
    if mins == 0 {
        return format!("{secs}{frac}s");
    }
    let (hours, mins) = (mins / 60, mins % 60);
    if hours == 0 {
        format!("{mins}m{secs}{frac}s")
    } else {
        format!("{hours}h{mins}m{secs}{frac}s")
    }
}

/// Splits `v` into `v / 10^digits` and Go's fraction text: "." and the remainder's digits
/// without trailing zeros, or nothing when the remainder is zero.
fn split_fraction(v: u128, digits: u32) -> (u128, String) {
    let p = 10u128.pow(digits);
    let rem = v % p;
    if rem == 0 {
        return (v / p, String::new());
    }
    let text = format!("{rem:0width$}", width = digits as usize);
    (v / p, format!(".{}", text.trim_end_matches('0')))
}

const BYTES_HINT: &str = "expected a number of bytes with an optional unit b, k, m, g, t or p \
     (multiples of 1024, case-insensitive, optionally followed by b or ib), like 512m or 1.5g";

/// The engine stores sizes as `int64`.
const MAX_BYTES: u64 = i64::MAX as u64;

/// Parses a size the way go-units' `RAMInBytes` does: `512m`, `512M`, `512mb`, `512MiB`,
/// `1.5g`, `100k`, `1024b`, `1024`, `1 g`. Units are binary (k = 1024) and case-insensitive.
///
/// Deviations from go-units, both to be exact where Go uses a float64: the number must be plain
/// decimal (Go's `ParseFloat` also takes `1e3` or hex floats), and the arithmetic is exact, so
/// values past 2^53 are not rounded and a fraction of a byte is truncated, never rounded up.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let invalid = || format!("invalid size {s:?}: {BYTES_HINT}");
    // Like go-units: the number ends at the last digit, '.' or space; one space may separate it
    // from the unit.
    let sep = s
        .rfind(|c: char| c.is_ascii_digit() || c == '.' || c == ' ')
        .ok_or_else(invalid)?;
    let (num, suffix) = if s[sep..].starts_with(' ') {
        (&s[..sep], &s[sep + 1..])
    } else {
        (&s[..=sep], &s[sep + 1..])
    };
    if num.starts_with('-') {
        return Err(format!("invalid size {s:?}: sizes cannot be negative"));
    }
    let num = num.strip_prefix('+').unwrap_or(num);
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    let all_digits = |t: &str| t.bytes().all(|c| c.is_ascii_digit());
    if (int_part.is_empty() && frac_part.is_empty())
        || !all_digits(int_part)
        || !all_digits(frac_part)
    {
        return Err(invalid());
    }

    let lower = suffix.to_ascii_lowercase();
    let shift = match lower.as_bytes() {
        [] | [b'b'] => 0,
        [unit] | [unit, b'b'] | [unit, b'i', b'b'] => match unit {
            b'k' => 10,
            b'm' => 20,
            b'g' => 30,
            b't' => 40,
            b'p' => 50,
            _ => return Err(invalid()),
        },
        _ => return Err(invalid()),
    };
    let mul = 1u128 << shift;
    let too_large =
        || format!("invalid size {s:?}: too large (the maximum is {MAX_BYTES} bytes, 8 EiB)");

    let mut whole: u128 = 0;
    for c in int_part.bytes() {
        whole = whole * 10 + u128::from(c - b'0');
        if whole > u128::from(MAX_BYTES) {
            return Err(too_large());
        }
    }
    // floor(0.frac * mul) by long multiplication from the last digit: exact for any length.
    let frac_bytes = frac_part
        .bytes()
        .rev()
        .fold(0u128, |carry, c| (u128::from(c - b'0') * mul + carry) / 10);
    let total = whole * mul + frac_bytes;
    u64::try_from(total)
        .ok()
        .filter(|&t| t <= MAX_BYTES)
        .ok_or_else(too_large)
}

/// Formats a size in the shortest form [`parse_bytes`] reads back exactly: a whole number of
/// the largest unit that divides it (`256m`, `1g`, `64k`), else the plain number of bytes.
pub fn format_bytes(n: u64) -> String {
    if n == 0 {
        return "0".to_string();
    }
    for (shift, unit) in [(50, "p"), (40, "t"), (30, "g"), (20, "m"), (10, "k")] {
        if n.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// Linux signal names by number (index + 1). x86_64 and aarch64 share this numbering (aarch64
/// uses the generic table, which matches x86 for 1-31). 32 and 33 are reserved by glibc and
/// have no name; the real-time range is named the way moby's `SignalMap` names it.
#[rustfmt::skip] // eight to a line reads as the table it is
const SIGNAL_NAMES: [&str; 64] = [
    "SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE",
    "SIGKILL", "SIGUSR1", "SIGSEGV", "SIGUSR2", "SIGPIPE", "SIGALRM", "SIGTERM", "SIGSTKFLT",
    "SIGCHLD", "SIGCONT", "SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG", "SIGXCPU",
    "SIGXFSZ", "SIGVTALRM", "SIGPROF", "SIGWINCH", "SIGIO", "SIGPWR", "SIGSYS", "",
    "", "SIGRTMIN", "SIGRTMIN+1", "SIGRTMIN+2", "SIGRTMIN+3", "SIGRTMIN+4", "SIGRTMIN+5",
    "SIGRTMIN+6", "SIGRTMIN+7", "SIGRTMIN+8", "SIGRTMIN+9", "SIGRTMIN+10", "SIGRTMIN+11",
    "SIGRTMIN+12", "SIGRTMIN+13", "SIGRTMIN+14", "SIGRTMIN+15", "SIGRTMAX-14", "SIGRTMAX-13",
    "SIGRTMAX-12", "SIGRTMAX-11", "SIGRTMAX-10", "SIGRTMAX-9", "SIGRTMAX-8", "SIGRTMAX-7",
    "SIGRTMAX-6", "SIGRTMAX-5", "SIGRTMAX-4", "SIGRTMAX-3", "SIGRTMAX-2", "SIGRTMAX-1",
    "SIGRTMAX",
];

/// Other names moby accepts for the same signals; they canonicalize to the main name.
const SIGNAL_ALIASES: [(&str, &str); 3] = [
    ("SIGIOT", "SIGABRT"),
    ("SIGCLD", "SIGCHLD"),
    ("SIGPOLL", "SIGIO"),
];

/// Parses a stop signal the way moby's `ParseSignal` does: a name with or without `SIG`, in any
/// case (`SIGTERM`, `TERM`, `sigterm`, `SIGRTMIN+3`), or a number (`15`). Returns the canonical
/// name (`SIGTERM`); aliases map to their main name (`SIGIOT` -> `SIGABRT`).
///
/// Deviation: moby passes any non-zero number through (even 99 or -1); here a number must be a
/// Linux signal, because the result is a name and an unknown number would only fail later.
pub fn parse_signal(s: &str) -> Result<&'static str, String> {
    let invalid = || {
        format!(
            "invalid signal {s:?}: expected a signal name like SIGTERM, TERM or SIGRTMIN+3, \
             or a signal number (1-31 or 34-64)"
        )
    };
    // strconv.Atoi syntax: optional sign, then decimal digits.
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    let found = if !unsigned.is_empty() && unsigned.bytes().all(|c| c.is_ascii_digit()) {
        let index = s.parse::<usize>().ok().and_then(|n| n.checked_sub(1));
        index.and_then(|i| SIGNAL_NAMES.get(i)).copied()
    } else {
        let upper = s.to_ascii_uppercase();
        let wanted = format!("SIG{}", upper.strip_prefix("SIG").unwrap_or(&upper));
        let name = SIGNAL_ALIASES
            .iter()
            .find(|&&(alias, _)| alias == wanted)
            .map_or(wanted.as_str(), |&(_, main)| main);
        SIGNAL_NAMES.iter().find(|&&n| n == name).copied()
    };
    found.filter(|n| !n.is_empty()).ok_or_else(invalid)
}

/// The Linux number of a signal given in any form [`parse_signal`] accepts, normally its
/// canonical name (`SIGTERM` -> 15).
pub fn signal_number(canonical: &str) -> Option<i32> {
    let name = parse_signal(canonical).ok()?;
    let index = SIGNAL_NAMES.iter().position(|&n| n == name)?;
    i32::try_from(index + 1).ok()
}

/// Parses `cpus:` given as a string: `0.5`, `2`, `1.25`. Like compose-go (Go's `ParseFloat`)
/// exponents such as `1e-1` are accepted; the value must be finite and greater than zero, and
/// small enough that the engine's nano-CPU count (an `int64`) holds it.
pub fn parse_cpus(s: &str) -> Result<f64, String> {
    let value = s
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| {
            format!("invalid cpus {s:?}: expected a number greater than 0, like 0.5 or 2")
        })?;
    if value <= 0.0 {
        return Err(format!(
            "invalid cpus {s:?}: must be greater than 0, like 0.5 or 2"
        ));
    }
    if value * 1e9 >= i64::MAX as f64 {
        return Err(format!("invalid cpus {s:?}: too large"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const US: u64 = 1_000;
    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000_000_000;
    const MIN: u64 = 60 * SEC;
    const HOUR: u64 = 60 * MIN;
    const K: u64 = 1024;
    const M: u64 = K * K;
    const G: u64 = M * K;

    #[test]
    fn parse_duration_accepts_go_syntax() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("+0", 0),
            ("-0", 0),
            ("-0s", 0),
            ("1m30s", 90 * SEC),
            ("1.5h", 90 * MIN),
            ("300ms", 300 * MS),
            ("10us", 10 * US),
            ("1\u{b5}s", US),
            ("1\u{3bc}s", US),
            ("3ns", 3),
            ("2h45m", 2 * HOUR + 45 * MIN),
            ("1.5s", 1500 * MS),
            ("+5s", 5 * SEC),
            (".5s", 500 * MS),
            ("5.s", 5 * SEC),
            ("1h0m0s", HOUR),
            ("1.0000000001h", HOUR + 360),
            ("1s1s", 2 * SEC),
            ("1d", 24 * HOUR),
            ("1w2d", 9 * 24 * HOUR),
            ("0.3333333333333333333333s", 333_333_333),
            ("00000000000000000000000000001s", SEC),
            ("9223372036854775807ns", i64::MAX as u64),
            ("2562047h47m16.854775807s", i64::MAX as u64),
        ];
        for &(input, nanos) in cases {
            assert_eq!(
                parse_duration(input),
                Ok(Duration::from_nanos(nanos)),
                "{input}"
            );
        }
    }

    #[test]
    fn parse_duration_errors() {
        let hint = "expected a number followed by a unit (ns, us, ms, s, m, h), like 30s or 1m30s";
        let max = "too large (the maximum is 2562047h47m16.854775807s)";
        let negative = "durations cannot be negative";
        let cases: &[(&str, &str)] = &[
            ("10 parsecs", hint),
            ("", hint),
            ("10", hint),
            ("s", hint),
            (".s", hint),
            ("1.2.3s", hint),
            ("1S", hint),
            ("1s ", hint),
            (" 1s", hint),
            ("-", hint),
            ("half", hint),
            ("-5s", negative),
            ("-1m30s", negative),
            ("9223372036854775808ns", max),
            ("3000000h", max),
            ("99999999999999999999999s", max),
            ("2562047h47m16.854775808s", max),
            ("106751d23h47m17s", max),
        ];
        for &(input, msg) in cases {
            let expected = format!("invalid duration {input:?}: {msg}");
            assert_eq!(parse_duration(input), Err(expected), "{input}");
        }
    }

    #[test]
    fn format_duration_matches_go() {
        let cases: &[(u64, &str)] = &[
            (0, "0s"),
            (1, "1ns"),
            (999, "999ns"),
            (US, "1\u{b5}s"),
            (1_100, "1.1\u{b5}s"),
            (2_200 * US, "2.2ms"),
            (300 * MS, "300ms"),
            (999_999_999, "999.999999ms"),
            (SEC, "1s"),
            (1500 * MS, "1.5s"),
            (SEC + 1, "1.000000001s"),
            (59 * SEC, "59s"),
            (MIN, "1m0s"),
            (90 * SEC, "1m30s"),
            (MIN + 500 * MS, "1m0.5s"),
            (HOUR, "1h0m0s"),
            (2 * HOUR + 45 * MIN, "2h45m0s"),
            (HOUR + 1, "1h0m0.000000001s"),
            (100 * HOUR, "100h0m0s"),
            (i64::MAX as u64, "2562047h47m16.854775807s"),
        ];
        for &(nanos, text) in cases {
            assert_eq!(
                format_duration(Duration::from_nanos(nanos)),
                text,
                "{nanos}"
            );
        }
        // Past Go's range the same style continues instead of wrapping.
        assert_eq!(
            format_duration(Duration::from_secs(u64::MAX)),
            "5124095576030431h0m15s"
        );
    }

    #[test]
    fn parse_bytes_accepts_ram_in_bytes_forms() {
        let cases: &[(&[&str], u64)] = &[
            (&["0", "0b", "0k", "0.0g"], 0),
            (&["1", "1b", "1 b", "1 "], 1),
            (
                &[
                    "1024", "1024b", "1024B", "1k", "1K", "1kb", "1KiB", "1.k", "+1k",
                ],
                K,
            ),
            (
                &[
                    "512m", "512M", "512mb", "512MB", "512mib", "512 MiB", "0.5g",
                ],
                512 * M,
            ),
            (&["1g", "1G", "1gb", "1GiB", "1 g", "1 GB", "1024m"], G),
            (&["1.5g", "1.5 GiB", "1536m"], 3 * G / 2),
            (&["2t", "2TB", "2048g"], 2 * G * K),
            (&["1p", "1PiB", "1024t"], G * M),
            (&[".5k", "0.5k", "512"], 512),
            (&["0.1k", "102.4b", "102"], 102),
            (
                &["8191.99999999999999999999999p", "9223372036854775807"],
                i64::MAX as u64,
            ),
            (
                &["9007199254740993", "9007199254740993b"],
                9_007_199_254_740_993,
            ),
        ];
        for &(inputs, bytes) in cases {
            for &input in inputs {
                assert_eq!(parse_bytes(input), Ok(bytes), "{input}");
            }
        }
    }

    #[test]
    fn parse_bytes_errors() {
        let max = "too large (the maximum is 9223372036854775807 bytes, 8 EiB)";
        let cases: &[(&str, &str)] = &[
            ("-1", "sizes cannot be negative"),
            ("-1g", "sizes cannot be negative"),
            ("8192p", max),
            ("9223372036854775808", max),
            ("99999999999999999999999999999999999999999", max),
        ];
        for &(input, msg) in cases {
            assert_eq!(
                parse_bytes(input),
                Err(format!("invalid size {input:?}: {msg}"))
            );
        }
        let syntax = [
            "", "m", "12x", "1kk", "1ki", "1bb", "1kbb", "1e", "1e3", "1.2.3m", ".", "1  g", "1g ",
            " 1g", "1,5g", "ten", "0x10",
        ];
        for input in syntax {
            let expected = format!("invalid size {input:?}: {BYTES_HINT}");
            assert_eq!(parse_bytes(input), Err(expected), "{input}");
        }
        assert!(BYTES_HINT.starts_with("expected a number of bytes with an optional unit b, k, m"));
    }

    #[test]
    fn format_bytes_uses_the_largest_exact_unit() {
        let cases: &[(u64, &str)] = &[
            (0, "0"),
            (1, "1"),
            (1000, "1000"),
            (1023, "1023"),
            (1024, "1k"),
            (1536, "1536"),
            (65536, "64k"),
            (268_435_456, "256m"),
            (3 << 29, "1536m"),
            (1 << 30, "1g"),
            (1 << 40, "1t"),
            (1 << 50, "1p"),
            (1 << 60, "1024p"),
            (u64::MAX, "18446744073709551615"),
        ];
        for &(n, text) in cases {
            assert_eq!(format_bytes(n), text, "{n}");
        }
    }

    #[test]
    fn parse_signal_accepts_moby_forms() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["SIGTERM", "TERM", "sigterm", "term", "SigTerm", "15", "+15"],
                "SIGTERM",
            ),
            (&["SIGKILL", "kill", "9"], "SIGKILL"),
            (&["SIGHUP", "1"], "SIGHUP"),
            (&["SIGSYS", "31"], "SIGSYS"),
            (&["SIGUSR1", "usr1"], "SIGUSR1"),
            (&["SIGIOT", "IOT", "SIGABRT", "6"], "SIGABRT"),
            (&["SIGCLD", "cld", "CHLD", "17"], "SIGCHLD"),
            (&["SIGPOLL", "sigpoll", "IO", "29"], "SIGIO"),
            (&["SIGRTMIN", "rtmin", "34"], "SIGRTMIN"),
            (&["SIGRTMIN+3", "RTMIN+3", "37"], "SIGRTMIN+3"),
            (&["sigrtmin+15", "49"], "SIGRTMIN+15"),
            (&["SIGRTMAX-14", "50"], "SIGRTMAX-14"),
            (&["SIGRTMAX", "RTMAX", "64"], "SIGRTMAX"),
        ];
        for &(inputs, name) in cases {
            for &input in inputs {
                assert_eq!(parse_signal(input), Ok(name), "{input}");
            }
        }
    }

    #[test]
    fn parse_signal_errors() {
        let bad = [
            "",
            "0",
            "-15",
            "32",
            "33",
            "65",
            "99",
            "FOO",
            "SIG",
            "SIGSIGTERM",
            "SIGRTMIN+16",
            "SIGRTMAX-15",
            "SIGRTMIN+0",
            " TERM",
            "TERM ",
            "1.5",
            "99999999999999999999999",
        ];
        for input in bad {
            let expected = format!(
                "invalid signal {input:?}: expected a signal name like SIGTERM, TERM or \
                 SIGRTMIN+3, or a signal number (1-31 or 34-64)"
            );
            assert_eq!(parse_signal(input), Err(expected), "{input}");
        }
    }

    #[test]
    fn signal_numbers_follow_linux() {
        let cases: &[(&str, i32)] = &[
            ("SIGHUP", 1),
            ("SIGKILL", 9),
            ("SIGTERM", 15),
            ("SIGSTKFLT", 16),
            ("SIGCHLD", 17),
            ("SIGSTOP", 19),
            ("SIGWINCH", 28),
            ("SIGSYS", 31),
            ("SIGRTMIN", 34),
            ("SIGRTMIN+3", 37),
            ("SIGRTMAX-1", 63),
            ("SIGRTMAX", 64),
        ];
        for &(name, number) in cases {
            assert_eq!(signal_number(name), Some(number), "{name}");
        }
        assert_eq!(signal_number("SIGBOGUS"), None);
        // Every number with a name maps to it and back.
        for number in (1..=31).chain(34..=64) {
            let name = parse_signal(&number.to_string());
            assert_eq!(name.map(signal_number), Ok(Some(number)));
        }
    }

    #[test]
    fn parse_cpus_cases() {
        let ok: &[(&str, f64)] = &[("0.5", 0.5), ("2", 2.0), ("1.25", 1.25), ("1e-1", 0.1)];
        for &(input, value) in ok {
            assert_eq!(parse_cpus(input), Ok(value), "{input}");
        }
        let not_number = "expected a number greater than 0, like 0.5 or 2";
        let not_positive = "must be greater than 0, like 0.5 or 2";
        let bad: &[(&str, &str)] = &[
            ("half", not_number),
            ("", not_number),
            ("inf", not_number),
            ("NaN", not_number),
            ("0", not_positive),
            ("-1", not_positive),
            ("1e10", "too large"),
        ];
        for &(input, msg) in bad {
            assert_eq!(
                parse_cpus(input),
                Err(format!("invalid cpus {input:?}: {msg}"))
            );
        }
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC{0,40}") {
            let _ = parse_duration(&s);
            let _ = parse_bytes(&s);
            let _ = parse_signal(&s);
            let _ = parse_cpus(&s);
        }

        #[test]
        fn unit_like_strings_never_panic(s in "[-+0-9.µμ a-zA-Z]{0,30}") {
            let _ = parse_duration(&s);
            let _ = parse_bytes(&s);
        }

        #[test]
        fn duration_round_trips(nanos in 0..=i64::MAX as u64) {
            let d = Duration::from_nanos(nanos);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn small_duration_round_trips(nanos in 0u64..10_000_000_000) {
            let d = Duration::from_nanos(nanos);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn bytes_round_trip(n in 0..=MAX_BYTES, shift in 0u32..=50) {
            // Clearing low bits makes every unit come up, not just plain byte counts.
            let n = (n >> shift) << shift;
            prop_assert_eq!(parse_bytes(&format_bytes(n)), Ok(n));
        }
    }
}
