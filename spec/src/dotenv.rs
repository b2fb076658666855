//! Parser for `.env` and `env_file` files, matching compose-go's `dotenv` package (the
//! parser `docker compose` uses), so a file means the same thing under berth.
//!
//! Accepted syntax, as in compose-go:
//! - blank lines, `#` comment lines, a leading UTF-8 BOM, CRLF line endings;
//! - `KEY=value`, `KEY: value` (YAML style), an optional `export ` prefix, whitespace
//!   around the key and the separator;
//! - keys made of letters, digits (Unicode), `_`, `.`, `-`, `[` and `]`;
//! - unquoted values run to the end of the line; ` #` starts a comment, trailing
//!   whitespace is dropped; `${VAR}` interpolation applies;
//! - `'single'` quotes are literal except that `\'` is a quote;
//! - `"double"` quotes may span lines, expand `\a \b \f \n \r \t \v \" \\ \$` and `\0NNN`
//!   (octal), then interpolate;
//! - a bare `KEY` line takes its value from `lookup`, and is skipped when that is unset.
//!
//! Interpolation resolves a name through `lookup` first and then the keys defined earlier
//! in the same file. That is compose-go's order (its `expandVariables`); it makes the
//! shell environment, which overrides `.env` entries anyway, win inside references too.
//!
//! Deviations from compose-go, where its behaviour is an accident of implementation:
//! - text after a closing quote other than whitespace or a `#` comment is an error;
//!   compose-go silently starts a new statement there (`A="x"B` defines `B` from lookup);
//! - a bare key on the last line without a newline is inherited like any other bare key
//!   (compose-go turns `FOO<EOF>` into an empty key with value `FOO`);
//! - an empty key (`=value`) and a key with inner tabs are errors (compose-go accepts both);
//! - a CRLF inside a quoted multi-line value becomes LF, so Windows line endings do not leak
//!   `\r` into container environments (compose-go keeps the `\r`);
//! - a malformed octal escape (`\0` not followed by 3 octal digits ≤ `\0377`) is kept
//!   verbatim (compose-go drops its `0`);
//! - a repeated key keeps the position of its first definition with the last value.

use std::collections::HashMap;

use crate::interpolate::interpolate;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct DotenvError {
    pub line: usize,
    pub message: String,
}

/// Parse the text of an env file into ordered (key, value) pairs. `lookup` resolves
/// `${VAR}` interpolation inside unquoted and double-quoted values (before keys defined
/// earlier in the file, as compose-go does); single-quoted values are literal.
pub fn parse(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, DotenvError> {
    // Some Windows editors prepend a BOM; it would otherwise become part of the first key.
    let src = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut parser = Parser {
        src,
        pos: 0,
        lookup,
        pairs: Vec::new(),
        index: HashMap::new(),
    };
    parser.run()?;
    Ok(parser.pairs)
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    pairs: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl Parser<'_> {
    fn run(&mut self) -> Result<(), DotenvError> {
        loop {
            let rest = &self.src[self.pos..];
            self.pos += rest.len() - rest.trim_start().len();
            let rest = &self.src[self.pos..];
            if rest.is_empty() {
                return Ok(());
            }
            if rest.starts_with('#') {
                self.pos += rest.find('\n').unwrap_or(rest.len());
                continue;
            }
            self.statement()?;
        }
    }

    /// Parse one `KEY=value` or bare `KEY` statement starting at `self.pos`.
    fn statement(&mut self) -> Result<(), DotenvError> {
        let src = self.src;
        let start = self.pos;
        let mut key_start = start;
        if let Some(after) = src[start..].strip_prefix("export") {
            let name = after.trim_start_matches(is_hspace);
            // `export` alone, or `export=1`, is an ordinary key called "export".
            if name.len() < after.len() && name.starts_with(is_key_char) {
                key_start = src.len() - name.len();
            }
        }

        let mut key_end = src.len();
        let mut separator = None;
        for (off, c) in src[key_start..].char_indices() {
            match c {
                '=' | ':' | '\n' => {
                    key_end = key_start + off;
                    separator = Some(c).filter(|c| *c != '\n');
                    break;
                }
                c if is_key_char(c) || is_hspace(c) => {}
                c => {
                    let line = &src[start..];
                    let line = &line[..line.find(['\n', '=', ':']).unwrap_or(line.len())];
                    return Err(self.error(
                        start,
                        format!(
                            "unexpected character {c:?} in variable name {:?}; names may only \
                             contain letters, digits, '_', '.', '-', '[' and ']'",
                            line.trim_end()
                        ),
                    ));
                }
            }
        }

        let key = src[key_start..key_end].trim_end();
        if let (true, Some(sep)) = (key.is_empty(), separator) {
            return Err(self.error(start, format!("missing variable name before {sep:?}")));
        }
        if key.contains(is_hspace) {
            return Err(self.error(
                start,
                format!("variable name {key:?} cannot contain whitespace"),
            ));
        }

        if separator.is_none() {
            // Bare `KEY`: inherit it from the environment, or leave it out entirely.
            self.pos = key_end;
            if let Some(value) = (self.lookup)(key) {
                self.set(key, value);
            }
            return Ok(());
        }

        let after = &src[key_end + 1..];
        self.pos = key_end + 1 + (after.len() - after.trim_start_matches(is_hspace).len());
        let value = match src.as_bytes().get(self.pos) {
            Some(&quote @ (b'"' | b'\'')) => self.quoted(key, char::from(quote))?,
            _ => self.unquoted(key)?,
        };
        self.set(key, value);
        Ok(())
    }

    fn unquoted(&mut self, key: &str) -> Result<String, DotenvError> {
        let start = self.pos;
        let rest = &self.src[start..];
        let line = &rest[..rest.find('\n').unwrap_or(rest.len())];
        self.pos += line.len();
        // Only a `#` preceded by a space starts a comment: `a#b` is a value (compose-go).
        let raw = line.find(" #").map_or(line, |i| &line[..i]).trim_end();
        self.expand(raw, key, start)
    }

    fn quoted(&mut self, key: &str, quote: char) -> Result<String, DotenvError> {
        let open = self.pos;
        let body = &self.src[open + 1..];
        let mut raw = String::new();
        let mut escaped = false;
        let mut close = None;
        let mut chars = body.char_indices().peekable();
        while let Some((off, c)) = chars.next() {
            if escaped {
                escaped = false;
                // `\<quote>` yields the quote; other escapes survive for `unescape`.
                if c != quote {
                    raw.push('\\');
                }
                raw.push(c);
            } else if c == '\\' {
                escaped = true;
            } else if c == quote {
                close = Some(open + 1 + off);
                break;
            } else if !(c == '\r' && chars.peek().is_some_and(|(_, n)| *n == '\n')) {
                raw.push(c);
            }
        }
        let kind = if quote == '"' { "double" } else { "single" };
        let Some(close) = close else {
            return Err(self.error(
                open,
                format!("unterminated {kind}-quoted value for {key}; add the closing {quote}"),
            ));
        };

        let rest = &self.src[close + 1..];
        let tail = &rest[..rest.find('\n').unwrap_or(rest.len())];
        let extra = tail.trim_start_matches(is_hspace);
        if !extra.is_empty() && !extra.starts_with('#') {
            return Err(self.error(
                close,
                format!(
                    "unexpected {extra:?} after the closing quote of {key}; put it inside the \
                     quotes or start a comment with '#'"
                ),
            ));
        }
        self.pos = close + 1 + tail.len();
        if quote == '"' {
            self.expand(&unescape(&raw), key, open)
        } else {
            Ok(raw)
        }
    }

    fn expand(&self, raw: &str, key: &str, at: usize) -> Result<String, DotenvError> {
        let resolve = |name: &str| {
            (self.lookup)(name).or_else(|| self.index.get(name).map(|&i| self.pairs[i].1.clone()))
        };
        interpolate(raw, &resolve)
            .map(|done| done.value)
            .map_err(|e| self.error(at, format!("value of {key}: {e}")))
    }

    fn set(&mut self, key: &str, value: String) {
        match self.index.get(key) {
            Some(&i) => self.pairs[i].1 = value,
            None => {
                self.index.insert(key.to_owned(), self.pairs.len());
                self.pairs.push((key.to_owned(), value));
            }
        }
    }

    /// Line numbers are only needed for errors, so count them lazily.
    fn error(&self, at: usize, message: String) -> DotenvError {
        let line = 1 + self.src[..at].bytes().filter(|b| *b == b'\n').count();
        DotenvError { line, message }
    }
}

/// Whitespace that does not end a line (compose-go's `isSpace`); `\r` is included so
/// CRLF files parse like LF ones.
fn is_hspace(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '\u{b}' | '\u{c}' | '\r' | '\u{85}' | '\u{a0}'
    )
}

fn is_key_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '[' | ']')
}

/// Expand the escapes compose-go honours in double-quoted values. `\$` becomes `$$` so that
/// the following interpolation produces a literal `$`.
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let Some(c) = after.chars().next() else {
            out.push('\\');
            return out;
        };
        let mut used = c.len_utf8();
        match c {
            'a' => out.push('\u{7}'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'v' => out.push('\u{b}'),
            '"' | '\\' => out.push(c),
            '$' => out.push_str("$$"),
            '0' => match after.get(1..4).and_then(|d| u8::from_str_radix(d, 8).ok()) {
                Some(byte) if after.as_bytes()[1..4].iter().all(u8::is_ascii_digit) => {
                    out.push(char::from(byte));
                    used = 4;
                }
                _ => out.push_str("\\0"),
            },
            _ => {
                out.push('\\');
                out.push(c);
            }
        }
        rest = &after[used..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    type Env = &'static [(&'static str, &'static str)];

    enum Want {
        Pairs(Env),
        /// Error line and a substring of its message.
        Error(usize, &'static str),
    }
    use Want::{Error, Pairs};

    const NO_ENV: Env = &[];
    const SHELL: Env = &[("FOO", "shell"), ("OPTION_A", "5"), ("EMPTY", "")];

    #[rustfmt::skip]
    const CASES: &[(&str, Env, Want)] = &[
        // blank lines, comments, BOM, CRLF
        ("", NO_ENV, Pairs(&[])),
        ("\n\r\n \t\n", NO_ENV, Pairs(&[])),
        ("# comment\n\t # indented comment\nA=1\n#A=2", NO_ENV, Pairs(&[("A", "1")])),
        ("\u{feff}A=1", NO_ENV, Pairs(&[("A", "1")])),
        ("A=1\r\nB=\"2\"\r\nC\r\n", SHELL, Pairs(&[("A", "1"), ("B", "2")])),
        ("FOO\r\n", SHELL, Pairs(&[("FOO", "shell")])),
        // keys, separators, export
        ("FOO=bar", NO_ENV, Pairs(&[("FOO", "bar")])),
        ("FOO =bar", NO_ENV, Pairs(&[("FOO", "bar")])),
        ("FOO= bar", NO_ENV, Pairs(&[("FOO", "bar")])),
        ("  KEY =value", NO_ENV, Pairs(&[("KEY", "value")])),
        ("FOO=bar  \t", NO_ENV, Pairs(&[("FOO", "bar")])),
        ("FOO=foobar=", NO_ENV, Pairs(&[("FOO", "foobar=")])),
        ("OPTION_A: 1", NO_ENV, Pairs(&[("OPTION_A", "1")])),
        ("OPTION_A: Foo=bar", NO_ENV, Pairs(&[("OPTION_A", "Foo=bar")])),
        ("OPTION_A=1:B", NO_ENV, Pairs(&[("OPTION_A", "1:B")])),
        ("FOO.BAR=a\nVAR-X=b", NO_ENV, Pairs(&[("FOO.BAR", "a"), ("VAR-X", "b")])),
        ("a[1]=c\n1ST=d", NO_ENV, Pairs(&[("a[1]", "c"), ("1ST", "d")])),
        ("árvíztűrő-TÜKÖR=ÁRVÍZTŰRŐ", NO_ENV, Pairs(&[("árvíztűrő-TÜKÖR", "ÁRVÍZTŰRŐ")])),
        ("export A=2", NO_ENV, Pairs(&[("A", "2")])),
        ("\texport\tB=3", NO_ENV, Pairs(&[("B", "3")])),
        ("export exportFoo=2", NO_ENV, Pairs(&[("exportFoo", "2")])),
        ("exportFOO=3", NO_ENV, Pairs(&[("exportFOO", "3")])),
        ("export_FOO =4", NO_ENV, Pairs(&[("export_FOO", "4")])),
        ("export.FOO= 5", NO_ENV, Pairs(&[("export.FOO", "5")])),
        ("export A=\"export B\"", NO_ENV, Pairs(&[("A", "export B")])),
        ("export=1", NO_ENV, Pairs(&[("export", "1")])),
        // empty values
        ("A=\nB=2", NO_ENV, Pairs(&[("A", ""), ("B", "2")])),
        ("A=''", NO_ENV, Pairs(&[("A", "")])),
        ("A=\"\"", NO_ENV, Pairs(&[("A", "")])),
        ("A= ", NO_ENV, Pairs(&[("A", "")])),
        // inline comments: only ` #` in unquoted values
        ("A=bar # comment", NO_ENV, Pairs(&[("A", "bar")])),
        ("A=bar #comment", NO_ENV, Pairs(&[("A", "bar")])),
        ("A=bar #", NO_ENV, Pairs(&[("A", "bar")])),
        ("A=123#not-a-comment", NO_ENV, Pairs(&[("A", "123#not-a-comment")])),
        ("A=a\t#b", NO_ENV, Pairs(&[("A", "a\t#b")])),
        ("A= # compose-go keeps this", NO_ENV, Pairs(&[("A", "# compose-go keeps this")])),
        ("A=\"bar#baz\"", NO_ENV, Pairs(&[("A", "bar#baz")])),
        ("A=\"bar#baz\"#", NO_ENV, Pairs(&[("A", "bar#baz")])),
        ("A=\"b#z\" # c", NO_ENV, Pairs(&[("A", "b#z")])),
        ("A='b#z' # c", NO_ENV, Pairs(&[("A", "b#z")])),
        // single quotes are literal (except \')
        ("A='$FOO ${FOO} \\n \\\\'", SHELL, Pairs(&[("A", "$FOO ${FOO} \\n \\\\")])),
        ("A='it\\'s'", NO_ENV, Pairs(&[("A", "it's")])),
        ("A='\"d\"'", NO_ENV, Pairs(&[("A", "\"d\"")])),
        ("A='line1\nline2'", NO_ENV, Pairs(&[("A", "line1\nline2")])),
        // double quotes: escapes and multi-line values
        ("A=\"escaped\\\"bar\"", NO_ENV, Pairs(&[("A", "escaped\"bar")])),
        ("A=\"\\\"quoted\\\"\"", NO_ENV, Pairs(&[("A", "\"quoted\"")])),
        ("A=\"'d'\"", NO_ENV, Pairs(&[("A", "'d'")])),
        ("A=\"bar\\nbaz\"", NO_ENV, Pairs(&[("A", "bar\nbaz")])),
        ("A=a\\tb", NO_ENV, Pairs(&[("A", "a\\tb")])),
        ("A=\"a\\tb\"", NO_ENV, Pairs(&[("A", "a\tb")])),
        ("K=\"\\a\\b\\f\\n\\r\"", NO_ENV, Pairs(&[("K", "\u{7}\u{8}\u{c}\n\r")])),
        ("K=\"\\t\\v\\\\\\0123\\$\"", NO_ENV, Pairs(&[("K", "\t\u{b}\\S$")])),
        ("A=\"\\x07 \\u12e4\"", NO_ENV, Pairs(&[("A", "\\x07 \\u12e4")])),
        ("A=\"\\c\\'\"", NO_ENV, Pairs(&[("A", "\\c\\'")])),
        ("A=\"\\012 \\0 \\0777\"", NO_ENV, Pairs(&[("A", "\\012 \\0 \\0777")])),
        ("A=\"bar\\n\\ b\\az\"", NO_ENV, Pairs(&[("A", "bar\n\\ b\u{7}z")])),
        ("A=\"bar\\\\\\n\\ b\"", NO_ENV, Pairs(&[("A", "bar\\\n\\ b")])),
        ("A=\"baz\\\\\"", NO_ENV, Pairs(&[("A", "baz\\")])),
        ("A=\"first\nsecond\"\nB=after", NO_ENV, Pairs(&[("A", "first\nsecond"), ("B", "after")])),
        ("A=\"one\r\ntwo\"\r\nB=2", NO_ENV, Pairs(&[("A", "one\ntwo"), ("B", "2")])),
        ("A=\"ünïcødé ✓\"", NO_ENV, Pairs(&[("A", "ünïcødé ✓")])),
        // bare keys are inherited from lookup, or skipped
        ("FOO", SHELL, Pairs(&[("FOO", "shell")])),
        ("FOO\nBAR=1\nEMPTY", SHELL, Pairs(&[("FOO", "shell"), ("BAR", "1"), ("EMPTY", "")])),
        ("MISSING\nBAR=1", SHELL, Pairs(&[("BAR", "1")])),
        ("export FOO", SHELL, Pairs(&[("FOO", "shell")])),
        // interpolation: lookup first, then earlier keys; single quotes untouched
        ("A=test\nB=$A", NO_ENV, Pairs(&[("A", "test"), ("B", "test")])),
        ("A=test\nB=${A}bar", NO_ENV, Pairs(&[("A", "test"), ("B", "testbar")])),
        ("A=test\nB=\"quote $A\"", NO_ENV, Pairs(&[("A", "test"), ("B", "quote test")])),
        ("A=test\nB='quote $A'", NO_ENV, Pairs(&[("A", "test"), ("B", "quote $A")])),
        ("B=$A\nA=1", NO_ENV, Pairs(&[("B", ""), ("A", "1")])),
        ("OPTION_A=1\nB=${OPTION_A}", SHELL, Pairs(&[("OPTION_A", "1"), ("B", "5")])),
        ("A=${FOO}/${NOPE:-dflt}/${EMPTY-x}", SHELL, Pairs(&[("A", "shell/dflt/")])),
        ("A=\"foo\\$BAR\"", NO_ENV, Pairs(&[("A", "foo$BAR")])),
        ("A=\"foo\\${BAR}\"", NO_ENV, Pairs(&[("A", "foo${BAR}")])),
        ("A=$$X", NO_ENV, Pairs(&[("A", "$X")])),
        ("A=\"\\\\$FOO\"", SHELL, Pairs(&[("A", "\\shell")])),
        ("A=cost 5$", NO_ENV, Pairs(&[("A", "cost 5$")])),
        ("A=\"${NOPE:-multi\nline}\"", NO_ENV, Pairs(&[("A", "multi\nline")])),
        // repeated keys keep their first position, last value
        ("A=1\nB=2\nA=3", NO_ENV, Pairs(&[("A", "3"), ("B", "2")])),
        ("A=1\nA\n", NO_ENV, Pairs(&[("A", "1")])),
        // errors
        ("lol$wut", NO_ENV, Error(1, "unexpected character '$' in variable name \"lol$wut\"")),
        ("%!(EXTRA string)=foo", NO_ENV, Error(1, "unexpected character '%'")),
        ("A=1\nFOO BAR=x", NO_ENV, Error(2, "variable name \"FOO BAR\" cannot contain whitespace")),
        ("A=1\nFOO\tBAR", NO_ENV, Error(2, "cannot contain whitespace")),
        ("=value", NO_ENV, Error(1, "missing variable name")),
        ("KEY=\"", NO_ENV, Error(1, "unterminated double-quoted value for KEY")),
        ("KEY=\"value", NO_ENV, Error(1, "unterminated double-quoted")),
        ("KEY=\"value\\\"", NO_ENV, Error(1, "unterminated double-quoted")),
        ("KEY=\"value'", NO_ENV, Error(1, "unterminated double-quoted")),
        ("KEY='", NO_ENV, Error(1, "unterminated single-quoted value for KEY")),
        ("KEY='value\\'", NO_ENV, Error(1, "unterminated single-quoted")),
        ("KEY='value\"", NO_ENV, Error(1, "unterminated single-quoted")),
        ("A=\"x\ny\"\n\nB=\"oops\nmore", NO_ENV, Error(4, "unterminated double-quoted value")),
        ("A=\"x\" B=2", NO_ENV, Error(1, "unexpected \"B=2\" after the closing quote of A")),
        ("A='x'y", NO_ENV, Error(1, "after the closing quote of A")),
        ("A=1\nB=${", NO_ENV, Error(2, "value of B: invalid interpolation format in \"${\"")),
        ("A=1\n\n# c\nB=${X:?need X}", NO_ENV, Error(4, "value of B: required variable X")),
        ("A=\"a\nb ${X?}\"", NO_ENV, Error(1, "required variable X is missing a value")),
    ];

    #[test]
    fn table() {
        for (input, env, want) in CASES {
            let lookup = |name: &str| {
                env.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            };
            let got = parse(input, &lookup);
            match (want, &got) {
                (Pairs(pairs), Ok(actual)) => {
                    let actual: Vec<(&str, &str)> = actual
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    assert_eq!(actual, *pairs, "parsing {input:?}");
                }
                (Error(line, part), Err(e)) => {
                    assert_eq!(e.line, *line, "line of {input:?}: {e}");
                    assert!(e.message.contains(part), "{input:?}: {e} lacks {part:?}");
                }
                _ => panic!("{input:?}: unexpected result {got:?}"),
            }
        }
    }

    #[test]
    fn error_display_starts_with_line() {
        let err = parse("A=1\nB=\"x", &|_| None).expect_err("unterminated");
        assert_eq!(
            err.to_string(),
            "line 2: unterminated double-quoted value for B; add the closing \""
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "(?s).*") {
            let _ = parse(&s, &|_| None);
        }

        #[test]
        fn never_panics_on_env_soup(s in "[A=:\"'\\\\#$ {}\n\r\t0é-]{0,48}") {
            let _ = parse(&s, &|_| Some("v".to_owned()));
        }
    }
}
