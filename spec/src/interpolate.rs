//! Compose variable interpolation of a single string value.
//!
//! Implements the "Interpolation" chapter of the Compose specification with the
//! behaviour of compose-go's `template` package (what `docker compose` runs):
//! `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}`, `${VAR?err}`,
//! `${VAR:+alt}`, `${VAR+alt}`, nesting inside the default/alt/err word, and `$$` for a
//! literal `$`. Names are ASCII `[A-Za-z_][A-Za-z0-9_]*` in both forms (no dots).
//!
//! A `$` that does not start one of those forms (`$ 5`, `cost: 5$`, `$1`, `$}`, `$é`)
//! is kept as-is, as compose-go does; only `${` commits to the braced syntax, so a
//! malformed `${...}` is an error rather than silently passed through.
//!
//! Deliberate deviations from compose-go, each because compose-go's behaviour falls
//! out of its regex implementation rather than from any intended semantics:
//! - The default/alt/err word is evaluated lazily: a variable in the branch that is not
//!   taken is neither looked up, reported as unset, nor able to raise a `:?` error
//!   (compose-go substitutes the word before testing the variable). Syntax errors are
//!   still reported in untaken branches, as in compose-go.
//! - The word may span lines; compose-go's `.` does not match `\n`, so it rejects
//!   `${A:-x<newline>y}`, which can legitimately come out of a double-quoted env value.
//! - Braces in the word must balance (`${A:-{x}}` is `{x}`, as in compose-go); where
//!   they do not, compose-go falls back to the last `}` on the line, which silently
//!   changes meaning, so we report a syntax error instead.

use std::collections::HashSet;

/// Deepest `${...}` nesting accepted; keeps recursion (and stack use) bounded.
const MAX_DEPTH: usize = 64;

/// Result of interpolating one string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpolated {
    pub value: String,
    /// Names of variables that were unset and had no default (Compose warns about these and
    /// substitutes ""). Each name appears once, in order of first use.
    pub unset: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolateError {
    /// `${VAR:?msg}` / `${VAR?msg}` with VAR missing (or empty for `:?`).
    #[error("required variable {name} is missing a value{}", colon_prefixed(.message))]
    Required { name: String, message: String },
    /// Malformed template, e.g. `${`, `${}`, `${FOO`, `${FOO:x}`.
    #[error("invalid interpolation format in {input:?}: {reason}")]
    Syntax { input: String, reason: String },
}

fn colon_prefixed(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

/// Interpolate `input`, resolving variables with `lookup` (`None` = unset).
pub fn interpolate(
    input: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Interpolated, InterpolateError> {
    let mut expander = Expander {
        src: input,
        lookup,
        unset: Vec::new(),
        seen: HashSet::new(),
    };
    let mut value = String::with_capacity(input.len());
    expander.expand(0, input.len(), 0, true, &mut value)?;
    Ok(Interpolated {
        value,
        unset: expander.unset,
    })
}

#[derive(Clone, Copy)]
enum Op {
    Default,
    Required,
    Alternative,
}

/// Walks byte ranges of the original input, so nested words need no copying and error
/// offsets always refer to the string the caller passed in.
struct Expander<'a> {
    src: &'a str,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    unset: Vec<String>,
    seen: HashSet<String>,
}

impl Expander<'_> {
    /// Expand `src[start..end]` into `out`. With `live == false` the range is only
    /// checked for syntax: nothing is looked up, recorded or required.
    fn expand(
        &mut self,
        start: usize,
        end: usize,
        depth: usize,
        live: bool,
        out: &mut String,
    ) -> Result<(), InterpolateError> {
        let src = self.src;
        let bytes = src.as_bytes();
        let mut pos = start;
        while let Some(found) = src[pos..end].find('$') {
            let dollar = pos + found;
            out.push_str(&src[pos..dollar]);
            let next = if dollar + 1 < end {
                Some(bytes[dollar + 1])
            } else {
                None
            };
            pos = match next {
                Some(b'$') => {
                    out.push('$');
                    dollar + 2
                }
                Some(b) if is_name_start(b) => {
                    let name_end = scan_name(bytes, dollar + 1, end);
                    self.substitute(&src[dollar + 1..name_end], live, out);
                    name_end
                }
                Some(b'{') => self.braced(dollar, end, depth, live, out)?,
                // Not a reference: compose-go leaves such a `$` untouched.
                _ => {
                    out.push('$');
                    dollar + 1
                }
            };
        }
        out.push_str(&src[pos..end]);
        Ok(())
    }

    /// Handle the `${...}` starting at `dollar`; returns the offset just past its `}`.
    fn braced(
        &mut self,
        dollar: usize,
        end: usize,
        depth: usize,
        live: bool,
        out: &mut String,
    ) -> Result<usize, InterpolateError> {
        let src = self.src;
        let bytes = src.as_bytes();
        let at = |i: usize| if i < end { Some(bytes[i]) } else { None };
        let name_start = dollar + 2;
        let name_end = match at(name_start) {
            Some(b) if is_name_start(b) => scan_name(bytes, name_start, end),
            _ => name_start,
        };
        if name_end == name_start {
            let reason = match src[name_start..end].chars().next() {
                None => unclosed(dollar),
                Some('}') => format!(
                    "\"${{}}\" at offset {dollar} has no variable name; write \"$${{}}\" for a \
                     literal \"${{}}\""
                ),
                Some(c) => format!(
                    "variable name at offset {name_start} cannot start with {c:?}; names match \
                     [A-Za-z_][A-Za-z0-9_]* (write \"$$\" for a literal \"$\")"
                ),
            };
            return Err(self.syntax(reason));
        }
        let name = &src[name_start..name_end];
        let colon_op = match at(name_end) {
            Some(b':') => at(name_end + 1).and_then(op_of),
            _ => None,
        };
        let (op, strict, word_start) = match (at(name_end), colon_op, at(name_end).and_then(op_of))
        {
            (Some(b'}'), _, _) => {
                self.substitute(name, live, out);
                return Ok(name_end + 1);
            }
            (_, Some(op), _) => (op, true, name_end + 2),
            (_, None, Some(op)) => (op, false, name_end + 1),
            (None, _, _) => return Err(self.syntax(unclosed(dollar))),
            (Some(_), _, _) => {
                let found = src[name_end..end].chars().take(2).collect::<String>();
                return Err(self.syntax(format!(
                    "unexpected {found:?} after \"${{{name}\" at offset {name_end}; expected \
                     \"}}\" or one of :- - :? ? :+ +"
                )));
            }
        };
        let close =
            find_close(bytes, word_start, end).ok_or_else(|| self.syntax(unclosed(dollar)))?;
        if depth >= MAX_DEPTH {
            return Err(self.syntax(format!("variables nest deeper than {MAX_DEPTH} levels")));
        }

        let value = if live { (self.lookup)(name) } else { None };
        // `:` forms treat an empty value like an unset one.
        let present = value.as_deref().is_some_and(|v| !(strict && v.is_empty()));
        let taken = match op {
            Op::Default | Op::Required => !present,
            Op::Alternative => present,
        };
        if !taken {
            // Still parse the untaken word so malformed templates fail regardless of the
            // environment, as they do in compose-go.
            self.expand(word_start, close, depth + 1, false, &mut String::new())?;
            if !matches!(op, Op::Alternative) {
                out.push_str(value.as_deref().unwrap_or_default());
            }
        } else if matches!(op, Op::Required) && live {
            let mut message = String::new();
            self.expand(word_start, close, depth + 1, true, &mut message)?;
            return Err(InterpolateError::Required {
                name: name.to_owned(),
                message,
            });
        } else {
            self.expand(word_start, close, depth + 1, live, out)?;
        }
        Ok(close + 1)
    }

    fn substitute(&mut self, name: &str, live: bool, out: &mut String) {
        if !live {
            return;
        }
        match (self.lookup)(name) {
            Some(value) => out.push_str(&value),
            None => {
                if self.seen.insert(name.to_owned()) {
                    self.unset.push(name.to_owned());
                }
            }
        }
    }

    fn syntax(&self, reason: String) -> InterpolateError {
        InterpolateError::Syntax {
            input: self.src.to_owned(),
            reason,
        }
    }
}

fn unclosed(dollar: usize) -> String {
    format!(
        "\"${{\" at offset {dollar} is not closed; add \"}}\" or write \"$$\" for a literal \"$\""
    )
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn scan_name(bytes: &[u8], start: usize, end: usize) -> usize {
    let len = bytes[start..end]
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
        .count();
    start + len
}

fn op_of(b: u8) -> Option<Op> {
    match b {
        b'-' => Some(Op::Default),
        b'?' => Some(Op::Required),
        b'+' => Some(Op::Alternative),
        _ => None,
    }
}

/// Offset of the `}` closing a word that starts inside one open `${`. Every `{` counts,
/// not just `${`, which is how compose-go pairs braces (`${A:-{x}}` has default `{x}`).
fn find_close(bytes: &[u8], start: usize, end: usize) -> Option<usize> {
    let mut open = 1usize;
    for (i, b) in bytes[start..end].iter().enumerate() {
        match b {
            b'{' => open += 1,
            b'}' => {
                open -= 1;
                if open == 0 {
                    return Some(start + i);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn env(name: &str) -> Option<String> {
        let v = match name {
            "FOO" => "first",
            "BAR" => "",
            "UNI" => "héllo wörld",
            "DOLLAR" => "$HOME",
            _ => return None,
        };
        Some(v.to_owned())
    }

    enum Want {
        /// Expected value and the expected `unset` list.
        Value(&'static str, &'static [&'static str]),
        /// Expected `Display` of a `Required` error.
        Required(&'static str),
        /// Substring expected in the reason of a `Syntax` error.
        Syntax(&'static str),
    }
    use Want::{Required, Syntax, Value};

    #[rustfmt::skip]
    const CASES: &[(&str, Want)] = &[
        // plain text and simple references
        ("", Value("", &[])),
        ("no variables here", Value("no variables here", &[])),
        ("$FOO", Value("first", &[])),
        ("${FOO}", Value("first", &[])),
        ("This $FOO var", Value("This first var", &[])),
        ("$FOO-bar", Value("first-bar", &[])),
        ("${FOO}bar", Value("firstbar", &[])),
        ("$FOObar", Value("", &["FOObar"])),
        ("${FOO}${FOO}", Value("firstfirst", &[])),
        ("$foo", Value("", &["foo"])),
        ("_$_x", Value("_", &["_x"])),
        // unset vs empty
        ("This ${missing} var", Value("This  var", &["missing"])),
        ("This ${BAR} var", Value("This  var", &[])),
        ("$NOPE $NOPE ${NOPE} $OTHER", Value("   ", &["NOPE", "OTHER"])),
        // values are inserted verbatim, never re-interpolated
        ("${DOLLAR}", Value("$HOME", &[])),
        // escaping and lone dollars
        ("$$", Value("$", &[])),
        ("$${foo}", Value("${foo}", &[])),
        ("$$FOO", Value("$FOO", &[])),
        ("$$$FOO", Value("$first", &[])),
        ("$$$$", Value("$$", &[])),
        ("a $ string", Value("a $ string", &[])),
        ("^REGEX$", Value("^REGEX$", &[])),
        ("cost: 5$", Value("cost: 5$", &[])),
        ("$ 5", Value("$ 5", &[])),
        ("$ {", Value("$ {", &[])),
        ("$}", Value("$}", &[])),
        ("$", Value("$", &[])),
        ("$1", Value("$1", &[])),
        ("$-x", Value("$-x", &[])),
        // unicode
        ("$é", Value("$é", &[])),
        ("ñ$FOOñ", Value("ñfirstñ", &[])),
        ("${UNI}", Value("héllo wörld", &[])),
        ("${NOPE:-日本語}", Value("日本語", &[])),
        // :- and -
        ("ok ${missing:-def}", Value("ok def", &[])),
        ("ok ${BAR:-def}", Value("ok def", &[])),
        ("ok ${FOO:-def}", Value("ok first", &[])),
        ("ok ${missing-def}", Value("ok def", &[])),
        ("ok ${BAR-def}", Value("ok ", &[])),
        ("${NOPE-}", Value("", &[])),
        ("ok ${BAR:-/non:-alphanumeric}", Value("ok /non:-alphanumeric", &[])),
        ("${NOPE-myerror?msg}", Value("myerror?msg", &[])),
        // :? and ?
        ("ok ${FOO:?err}", Value("ok first", &[])),
        ("ok ${FOO?err}", Value("ok first", &[])),
        ("ok ${BAR?err}", Value("ok ", &[])),
        ("${FOO?bar-baz}", Value("first", &[])),
        ("${NOPE:?Unset!}", Required("required variable NOPE is missing a value: Unset!")),
        ("${BAR:?Empty!}", Required("required variable BAR is missing a value: Empty!")),
        ("${NOPE?bar-baz}", Required("required variable NOPE is missing a value: bar-baz")),
        ("${NOPE:?}", Required("required variable NOPE is missing a value")),
        ("${NOPE?}", Required("required variable NOPE is missing a value")),
        ("${NOPE?need ${FOO}}", Required("required variable NOPE is missing a value: need first")),
        // :+ and +
        ("ok ${FOO:+alt}", Value("ok alt", &[])),
        ("ok ${FOO+alt}", Value("ok alt", &[])),
        ("ok ${BAR:+alt}", Value("ok ", &[])),
        ("ok ${BAR+alt}", Value("ok alt", &[])),
        ("ok ${NOPE:+alt}", Value("ok ", &[])),
        ("ok ${NOPE+alt}", Value("ok ", &[])),
        // nesting
        ("${NOPE:-${BAR:-x}}", Value("x", &[])),
        ("${NOPE:-$FOO}", Value("first", &[])),
        ("${NOPE:-x${FOO}y}", Value("xfirsty", &[])),
        ("ok ${NOPE-${FOO} ${FOO}}", Value("ok first first", &[])),
        ("ok ${BAR+$FOO ${FOO:+second}}", Value("ok first second", &[])),
        ("+ok ${NOPE:-${BAR-defaultValue}}", Value("+ok ", &[])),
        ("${NOPE:-$INNER}", Value("", &["INNER"])),
        ("${NOPE:-${A:-${B:-${C:-deep}}}}", Value("deep", &[])),
        ("${NOPE:-$${FOO}}", Value("${FOO}", &[])),
        // untaken branches are not looked up (deviation: compose-go evaluates eagerly)
        ("${FOO:-$OTHER}", Value("first", &[])),
        ("${FOO:-${NOPE:?boom}}", Value("first", &[])),
        ("${NOPE:+$OTHER}", Value("", &[])),
        // braces inside the word pair up the way compose-go pairs them
        ("${NOPE:-{\"a\":1}}", Value("{\"a\":1}", &[])),
        ("${FOO:-{x}}", Value("first", &[])),
        ("${NOPE:-x}}", Value("x}", &[])),
        ("${NOPE:-a\nb}", Value("a\nb", &[])),
        // syntax errors
        ("${", Syntax("is not closed")),
        ("x ${FOO", Syntax("is not closed")),
        ("${FOO:-x", Syntax("is not closed")),
        ("${NOPE:-${FOO}", Syntax("is not closed")),
        ("${NOPE:-{}", Syntax("is not closed")),
        ("${}", Syntax("has no variable name")),
        ("${ }", Syntax("cannot start with ' '")),
        ("${ foo}", Syntax("cannot start with ' '")),
        ("${1}", Syntax("cannot start with '1'")),
        ("${é}", Syntax("cannot start with 'é'")),
        ("${foo }", Syntax("unexpected \" }\" after \"${foo\"")),
        ("${foo!}", Syntax("unexpected \"!}\"")),
        ("${FOO.BAR}", Syntax("unexpected \".B\"")),
        ("${FOO:x}", Syntax("unexpected \":x\"")),
        ("${FOO:}", Syntax("expected \"}\" or one of :- - :? ? :+ +")),
        ("${FOO:-${}}", Syntax("has no variable name")),
        ("${NOPE:-ok} ${", Syntax("at offset 12 is not closed")),
    ];

    #[test]
    fn table() {
        for (input, want) in CASES {
            let got = interpolate(input, &env);
            match (want, &got) {
                (Value(value, unset), Ok(i)) => {
                    assert_eq!(i.value, *value, "value of {input:?}");
                    assert_eq!(i.unset, *unset, "unset of {input:?}");
                }
                (Required(msg), Err(e @ InterpolateError::Required { .. })) => {
                    assert_eq!(e.to_string(), *msg, "error of {input:?}");
                }
                (
                    Syntax(part),
                    Err(InterpolateError::Syntax {
                        input: echoed,
                        reason,
                    }),
                ) => {
                    assert_eq!(echoed, input);
                    assert!(
                        reason.contains(part),
                        "{input:?}: {reason:?} lacks {part:?}"
                    );
                }
                _ => panic!("{input:?}: unexpected result {got:?}"),
            }
        }
    }

    #[test]
    fn syntax_error_display_names_input_and_fix() {
        let err = interpolate("a ${", &env).expect_err("unclosed");
        assert_eq!(
            err.to_string(),
            "invalid interpolation format in \"a ${\": \"${\" at offset 2 is not closed; \
             add \"}\" or write \"$$\" for a literal \"$\""
        );
    }

    #[test]
    fn nesting_depth_is_bounded() {
        let nested = |n: usize| format!("{}x{}", "${NOPE:-".repeat(n), "}".repeat(n));
        let deepest = interpolate(&nested(MAX_DEPTH), &env).expect("64 levels are allowed");
        assert_eq!(deepest.value, "x");
        let err = interpolate(&nested(MAX_DEPTH + 1), &env).expect_err("65 levels are not");
        assert!(err.to_string().contains("nest deeper than 64"), "{err}");
        // Far past the limit must fail cleanly too, not overflow the stack.
        assert!(interpolate(&nested(100_000), &env).is_err());
    }

    #[test]
    fn long_inputs_stay_fast() {
        let many = "$FOO ${NOPE:-x} $$ ".repeat(50_000);
        let out = interpolate(&many, &env).expect("valid template");
        assert_eq!(out.value, "first x $ ".repeat(50_000));
        let unclosed = format!("${{NOPE:-{}", "{".repeat(200_000));
        assert!(interpolate(&unclosed, &env).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(s in ".*") {
            let _ = interpolate(&s, &env);
        }

        #[test]
        fn never_panics_on_template_soup(s in "[${}:?+\\-_aFOé1 ]{0,48}") {
            let _ = interpolate(&s, &env);
        }

        #[test]
        fn text_without_dollar_is_unchanged(s in "[^$]*") {
            let out = interpolate(&s, &env).expect("no `$`, no error");
            prop_assert_eq!(out.value, s);
            prop_assert!(out.unset.is_empty());
        }
    }
}
