//! Reading YAML safely: bounded file size, one document, bounded nesting and alias
//! expansion, duplicate keys rejected, and `<<` merge keys applied.
//!
//! A stack file may come from anyone (a git-ops directory, a pull request), so parsing
//! must fail fast and in bounded memory on hostile input. serde_norway already bounds
//! nesting (128 levels) and alias expansion (a "billion laughs" file stops after a
//! budget proportional to the file's size); this module adds the file-size and
//! document-count limits and turns the parser's errors into messages a user can act on.

use std::io::Read;
use std::path::Path;

use serde::Deserialize;
use serde_norway::{Mapping, Value};

/// Larger than any hand-written or generated stack file we have seen (a 1,000-service
/// file is about 1 MiB), small enough that reading it is never a memory problem.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// A transformation of every file a load reads (its Compose files and env files),
/// given the file's path and text: git-ops decrypts SOPS-encrypted files with it.
pub type FileFilter = dyn Fn(&Path, String) -> Result<String, String>;

std::thread_local! {
    static FILTER: std::cell::RefCell<Option<Box<FileFilter>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` (a load: it runs on the calling thread) with `filter` applied to every
/// file it reads; an error from `filter` is the file's read error.
pub fn with_file_filter<R>(filter: Box<FileFilter>, f: impl FnOnce() -> R) -> R {
    let old = FILTER.with(|cell| cell.replace(Some(filter)));
    // Restored even if `f` panics, so a later load on this thread reads plainly.
    struct Restore(Option<Box<FileFilter>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let old = self.0.take();
            FILTER.with(|cell| *cell.borrow_mut() = old);
        }
    }
    let _restore = Restore(old);
    f()
}

/// Reads a text file of at most [`MAX_FILE_BYTES`] (through the filter of
/// [`with_file_filter`], if one is set).
pub(crate) fn read_limited(path: &Path) -> std::io::Result<String> {
    let file = std::fs::File::open(path)?;
    let mut text = String::new();
    let read = file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text)?;
    if read as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("file is larger than {} MiB", MAX_FILE_BYTES / (1024 * 1024)),
        ));
    }
    FILTER.with(|cell| match cell.borrow().as_ref() {
        Some(filter) => {
            filter(path, text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        }
        None => Ok(text),
    })
}

/// Parses one YAML document. An empty file or one holding only comments is `Null`.
/// The error is a message without the file name (the caller adds it).
pub fn parse(text: &str) -> Result<Value, String> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "file is larger than {} MiB",
            MAX_FILE_BYTES / (1024 * 1024)
        ));
    }
    let mut docs = serde_norway::Deserializer::from_str(text);
    let Some(first) = docs.next() else {
        return Ok(Value::Null);
    };
    let value = Value::deserialize(first)
        .map_err(|e| self_alias(text, &e).unwrap_or_else(|| describe(e)))?;
    if docs.next().is_some() {
        // A second document is almost always a mistake (two files pasted together, or a
        // Kubernetes manifest), and silently ignoring it would drop services.
        return Err(
            "the file holds more than one YAML document (---); put each stack in its own file"
                .into(),
        );
    }
    let mut value = value;
    apply_merge_keys(&mut value).map_err(|e| e.describe())?;
    Ok(value)
}

/// An anchor used inside its own value (`x: &a [*a]`) expands without end, which the
/// parser reports as too deep a nesting. The error points at the node that recursed;
/// if that node is anchored and its alias appears after it, say so instead.
fn self_alias(text: &str, e: &serde_norway::Error) -> Option<String> {
    if !e.to_string().contains("recursion limit exceeded") {
        return None;
    }
    let l = e.location()?;
    let start: usize = (text.split_inclusive('\n'))
        .take(l.line().checked_sub(1)?)
        .map(str::len)
        .sum();
    let line = text.get(start..)?.lines().next()?;
    let rest = line.get(l.column().checked_sub(1)?..)?;
    let anchor = rest.strip_prefix('&')?;
    let name: String = anchor
        .chars()
        .take_while(|c| !c.is_whitespace() && !matches!(c, ',' | '[' | ']' | '{' | '}'))
        .collect();
    let after = text.get(start + line.len() - rest.len()..)?;
    let alias = format!("*{name}");
    let used = after.match_indices(&alias).any(|(i, _)| {
        let end = after[i + alias.len()..].chars().next();
        end.is_none_or(|c| c.is_whitespace() || matches!(c, ',' | ']' | '}'))
    });
    used.then(|| {
        format!(
            "line {}, column {}: the anchor &{name} is used inside its own value (*{name}): \
             it would expand without end; refer to it only after its value ends",
            l.line(),
            l.column()
        )
    })
}

fn describe(e: serde_norway::Error) -> String {
    let msg = e.to_string();
    let location = e
        .location()
        .map(|l| format!("line {}, column {}: ", l.line(), l.column()))
        .unwrap_or_default();
    if msg.contains("recursion limit exceeded") {
        return format!("{location}the document is nested too deeply (more than 128 levels)");
    }
    if msg.contains("repetition limit exceeded") {
        return "aliases expand to a document far larger than the file (an alias bomb?); \
                refusing to expand it"
            .into();
    }
    // serde_norway appends " at line L column C"; we put the location first instead.
    let core = match msg.find(" at line ") {
        Some(i) => &msg[..i],
        None => &msg,
    };
    format!("{location}invalid YAML: {core}")
}

/// Applies `<<` merge keys (https://yaml.org/type/merge.html) everywhere in the tree.
///
/// Children are resolved before their parent, so a mapping merged in has had its own
/// `<<` applied first; explicit keys win over merged ones, and among several merged
/// mappings the earlier one wins, as the YAML merge spec says. On error, the path of
/// the offending mapping is put together on the way back up (most trees have none).
fn apply_merge_keys(v: &mut Value) -> Result<(), MergeKeyError> {
    match v {
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                apply_merge_keys(item).map_err(|e| e.under(&format!("[{i}]")))?;
            }
        }
        Value::Tagged(t) => apply_merge_keys(&mut t.value)?,
        Value::Mapping(map) => {
            for (k, child) in map.iter_mut() {
                let key = k.as_str().unwrap_or("?");
                apply_merge_keys(child).map_err(|e| e.under(&format!(".{key}")))?;
            }
            if let Some(merge) = map.remove("<<") {
                let sources: Vec<Mapping> = match merge {
                    Value::Mapping(m) => vec![m],
                    Value::Sequence(items) => items
                        .into_iter()
                        .map(|item| match item {
                            Value::Mapping(m) => Ok(m),
                            _ => Err(MergeKeyError::new("a << merge list may hold only mappings")),
                        })
                        .collect::<Result<_, _>>()?,
                    _ => {
                        return Err(MergeKeyError::new(
                            "the value of << must be a mapping or a list of mappings",
                        ))
                    }
                };
                for source in sources {
                    for (k, val) in source {
                        if !map.contains_key(&k) {
                            map.insert(k, val);
                        }
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// A bad `<<`, with the path to it built from the inside out.
struct MergeKeyError {
    path: String,
    message: &'static str,
}

impl MergeKeyError {
    fn new(message: &'static str) -> Self {
        MergeKeyError {
            path: String::new(),
            message,
        }
    }

    fn under(mut self, segment: &str) -> Self {
        self.path.insert_str(0, segment);
        self
    }

    fn describe(&self) -> String {
        let path = self.path.trim_start_matches('.');
        if path.is_empty() {
            self.message.to_string()
        } else {
            format!("{path}: {}", self.message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
        path.iter().fold(v, |v, k| &v[*k])
    }

    #[test]
    fn merge_keys_explicit_wins_and_nested_merges_resolve() {
        let v = parse(
            "base: &base {a: 1, b: 1}\n\
             mid: &mid {<<: *base, b: 2, c: 2}\n\
             top: {<<: *mid, c: 3}\n\
             multi: {<<: [{x: first}, {x: second, y: 2}]}\n",
        )
        .unwrap();
        assert_eq!(get(&v, &["top", "a"]), &Value::from(1));
        assert_eq!(get(&v, &["top", "b"]), &Value::from(2));
        assert_eq!(get(&v, &["top", "c"]), &Value::from(3));
        assert!(get(&v, &["top"]).get("<<").is_none());
        assert_eq!(get(&v, &["multi", "x"]), &Value::from("first"));
        assert_eq!(get(&v, &["multi", "y"]), &Value::from(2));
    }

    #[test]
    fn limits_and_errors_are_messages() {
        let cases: &[(&str, &str)] = &[
            ("a: 1\na: 2\n", "duplicate entry with key \"a\""),
            ("a: 1\n---\nb: 2\n", "more than one YAML document"),
            ("a: [1, 2\n", "line"),
            ("a: {<<: 3}\n", "value of << must be a mapping"),
        ];
        for (input, want) in cases {
            let err = parse(input).unwrap_err();
            assert!(
                err.contains(want),
                "{input:?}: {err:?} should contain {want:?}"
            );
        }
        let deep = format!("{}1{}", "[".repeat(500), "]".repeat(500));
        assert!(parse(&deep).unwrap_err().contains("nested too deeply"));
    }

    #[test]
    fn alias_bomb_fails_fast() {
        let mut text = String::from("l0: &l0 [x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let refs = vec![format!("*l{}", i - 1); 9].join(", ");
            text.push_str(&format!("l{i}: &l{i} [{refs}]\n"));
        }
        // 9^10 nodes if expanded: getting an error back at all shows expansion was bounded.
        let err = parse(&text).unwrap_err();
        assert!(err.contains("alias bomb"), "{err}");
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let big = "#".repeat(MAX_FILE_BYTES as usize + 1);
        assert!(parse(&big).unwrap_err().contains("larger than 16 MiB"));
    }

    #[test]
    fn empty_file_is_null() {
        assert_eq!(parse("").unwrap(), Value::Null);
        assert_eq!(parse("# only a comment\n").unwrap(), Value::Null);
    }
}
