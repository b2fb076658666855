//! Typed decoding of a Compose YAML tree into the model, collecting every problem.
//!
//! serde's derive stops at the first error and cannot say "did you mean"; a user fixing a
//! file wants all problems at once, each with its path. So decoding is written by hand on
//! top of two small tools: [`Cx`], which knows the file and collects diagnostics, and
//! [`MapReader`], which hands out a mapping's entries by key and, at the end, reports the
//! keys nobody asked for (with a suggestion taken from the keys that were asked for).
//!
//! Decoders return `Option<T>`: `None` means "absent or invalid, already reported".
//! Scalars are read the way Compose reads them after interpolation: an interpolated
//! `${REPLICAS:-3}` is the string "3", so numbers and booleans are also accepted as
//! strings, but "three" is still an error.

mod host;
pub(crate) mod project;
mod service;

pub(crate) use project::decode_project;

use serde_norway::Value;

use crate::diag::{index, join, Diagnostics};

/// Decoding context: the file being decoded and where diagnostics go.
pub(crate) struct Cx<'a> {
    pub file: &'a str,
    pub diags: &'a mut Diagnostics,
    /// Looks up a variable in the project environment (for `environment: [FOO]`).
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// Decoding one file of several: objects may be partial (an override file can
    /// change only a secret's name), so checks that an object is complete are left to
    /// the merged project.
    pub fragment: bool,
}

/// A value and its path in the file.
#[derive(Clone, Copy)]
pub(crate) struct Node<'v, 'p> {
    pub value: &'v Value,
    pub path: &'p str,
}

impl<'v> Node<'v, '_> {
    /// The value with any YAML tag (`!reset`, `!override`) looked through; tags matter
    /// only to merging, which has already happened when a tree is decoded.
    pub fn v(&self) -> &'v Value {
        untag(self.value)
    }
}

pub(crate) fn untag(v: &Value) -> &Value {
    match v {
        Value::Tagged(t) => untag(&t.value),
        other => other,
    }
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match untag(v) {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

impl Cx<'_> {
    pub fn error(&mut self, path: &str, message: impl Into<String>) {
        self.diags.error(self.file, path, message);
    }

    pub fn warn(&mut self, path: &str, message: impl Into<String>) {
        self.diags.warn(self.file, path, message);
    }

    fn expected(&mut self, n: Node, what: &str) {
        // Show short scalars as they are: `found "three"` says more than `found a string`.
        let found = match n.v() {
            Value::String(s) if s.chars().count() <= 40 => format!("{s:?}"),
            Value::Number(x) => x.to_string(),
            Value::Bool(b) => b.to_string(),
            other => kind(other).to_string(),
        };
        self.error(n.path, format!("expected {what}, found {found}"));
    }

    /// A string; numbers are accepted (`user: 1000`) since YAML makes them so easily.
    pub fn string(&mut self, n: Node) -> Option<String> {
        match n.v() {
            Value::String(s) => Some(s.clone()),
            Value::Number(x) => Some(x.to_string()),
            _ => {
                self.expected(n, "a string");
                None
            }
        }
    }

    /// A scalar rendered as a string: labels, environment values, sysctls, options.
    pub fn scalar(&mut self, n: Node) -> Option<String> {
        match n.v() {
            Value::String(s) => Some(s.clone()),
            Value::Number(x) => Some(x.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => {
                self.expected(n, "a string, number or boolean");
                None
            }
        }
    }

    pub fn bool(&mut self, n: Node) -> Option<bool> {
        match n.v() {
            Value::Bool(b) => Some(*b),
            // The spellings Compose accepts after interpolation.
            Value::String(s) => match s.to_ascii_lowercase().as_str() {
                "true" | "yes" | "y" | "on" => Some(true),
                "false" | "no" | "n" | "off" => Some(false),
                _ => {
                    self.error(n.path, format!("expected true or false, found {s:?}"));
                    None
                }
            },
            _ => {
                self.expected(n, "true or false");
                None
            }
        }
    }

    pub fn int(&mut self, n: Node) -> Option<i64> {
        let parsed = match n.v() {
            Value::Number(x) => x.as_i64(),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        if parsed.is_none() {
            self.expected(n, "an integer");
        }
        parsed
    }

    /// An integer in `min..=max`; the error names the range.
    pub fn int_in(&mut self, n: Node, min: i64, max: i64) -> Option<i64> {
        let x = self.int(n)?;
        if x < min || x > max {
            self.error(n.path, format!("{x} is out of range ({min}-{max})"));
            return None;
        }
        Some(x)
    }

    pub fn u32(&mut self, n: Node) -> Option<u32> {
        self.int_in(n, 0, i64::from(u32::MAX))
            .and_then(|x| u32::try_from(x).ok())
    }

    pub fn float(&mut self, n: Node) -> Option<f64> {
        let parsed = match n.v() {
            Value::Number(x) => x.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match parsed {
            Some(f) if f.is_finite() => Some(f),
            _ => {
                self.expected(n, "a number");
                None
            }
        }
    }

    /// A scalar parsed by `parse`, whose error message is reported at the node's path.
    pub fn parsed<T>(
        &mut self,
        n: Node,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.scalar(n)?;
        match parse(&text) {
            Ok(t) => Some(t),
            Err(e) => {
                self.error(n.path, e);
                None
            }
        }
    }

    pub fn seq<'v>(&mut self, n: Node<'v, '_>) -> Option<&'v [Value]> {
        match n.v() {
            Value::Sequence(s) => Some(s),
            _ => {
                self.expected(n, "a list");
                None
            }
        }
    }

    /// Applies `f` to each item of a list, with the item's path.
    pub fn each<T>(&mut self, n: Node, mut f: impl FnMut(&mut Self, Node) -> Option<T>) -> Vec<T> {
        let Some(items) = self.seq(n) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = index(n.path, i);
            if let Some(t) = f(
                self,
                Node {
                    value: item,
                    path: &path,
                },
            ) {
                out.push(t);
            }
        }
        out
    }

    /// A string or a list of strings (`dns: 8.8.8.8` or `dns: [8.8.8.8]`).
    pub fn strings(&mut self, n: Node) -> Vec<String> {
        match n.v() {
            Value::Sequence(_) => self.each(n, |cx, item| cx.string(item)),
            _ => self.string(n).into_iter().collect(),
        }
    }

    /// A mapping's reader; `None` (reported) if the value is not a mapping. `null` is an
    /// empty mapping, as Compose treats `networks: {default: }`.
    pub fn map<'v>(&mut self, n: Node<'v, '_>) -> Option<MapReader<'v>> {
        match n.v() {
            Value::Mapping(m) => {
                let mut entries = Vec::with_capacity(m.len());
                for (k, v) in m {
                    match untag(k) {
                        Value::String(s) => entries.push((s.clone(), v, false)),
                        Value::Number(x) => entries.push((x.to_string(), v, false)),
                        Value::Bool(b) => entries.push((b.to_string(), v, false)),
                        other => self.error(
                            n.path,
                            format!("mapping keys must be strings, found {}", kind(other)),
                        ),
                    }
                }
                Some(MapReader {
                    path: n.path.to_string(),
                    entries,
                    asked: Vec::new(),
                })
            }
            Value::Null => Some(MapReader {
                path: n.path.to_string(),
                entries: Vec::new(),
                asked: Vec::new(),
            }),
            _ => {
                self.expected(n, "a mapping");
                None
            }
        }
    }

    /// `KEY=VALUE` list or `KEY: VALUE` mapping (environment, labels, sysctls, args).
    /// A list item without `=` and a mapping value of null give `None`.
    pub fn list_or_map(&mut self, n: Node) -> Vec<(String, Option<String>)> {
        match n.v() {
            Value::Sequence(_) => self.each(n, |cx, item| {
                let text = cx.string(item)?;
                Some(match text.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (text, None),
                })
            }),
            Value::Mapping(_) => {
                let Some(mut m) = self.map(n) else {
                    return Vec::new();
                };
                let mut out = Vec::new();
                for (key, node_value) in m.drain() {
                    let path = join(n.path, &key);
                    let node = Node {
                        value: node_value,
                        path: &path,
                    };
                    if matches!(node.v(), Value::Null) {
                        out.push((key, None));
                    } else if let Some(v) = self.scalar(node) {
                        out.push((key, Some(v)));
                    }
                }
                out
            }
            Value::Null => Vec::new(),
            _ => {
                self.expected(n, "a list of KEY=VALUE or a mapping");
                Vec::new()
            }
        }
    }
}

/// Hands out a mapping's entries by key and reports what was left unread.
pub(crate) struct MapReader<'v> {
    pub path: String,
    entries: Vec<(String, &'v Value, bool)>,
    /// Every key the decoder asked for: the known keys, used for suggestions.
    asked: Vec<&'static str>,
}

impl<'v> MapReader<'v> {
    /// The value under `key`, marking it read. Absent keys and explicit `null`s are both
    /// `None`: Compose treats `image: ` like a missing image.
    pub fn take(&mut self, key: &'static str) -> Option<&'v Value> {
        self.asked.push(key);
        let entry = self.entries.iter_mut().find(|(k, _, _)| k == key)?;
        entry.2 = true;
        match untag(entry.1) {
            Value::Null => None,
            _ => Some(entry.1),
        }
    }

    /// Decodes the value under `key` with `f`, giving it the key's full path.
    pub fn get<'c, T>(
        &mut self,
        cx: &mut Cx<'c>,
        key: &'static str,
        f: impl for<'p> FnOnce(&mut Cx<'c>, Node<'v, 'p>) -> Option<T>,
    ) -> Option<T> {
        let value = self.take(key)?;
        let path = join(&self.path, key);
        f(cx, Node { value, path: &path })
    }

    /// Whether the key is present at all (even as null).
    pub fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _, _)| k == key)
    }

    pub fn path_of(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// All entries not yet read, in file order, marking them read.
    pub fn drain(&mut self) -> Vec<(String, &'v Value)> {
        let mut out = Vec::new();
        for (k, v, read) in self.entries.iter_mut() {
            if !*read {
                *read = true;
                out.push((k.clone(), *v));
            }
        }
        out
    }

    /// Entries not yet read whose key starts with `x-` (extension fields).
    pub fn extensions(&mut self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for (k, v, read) in self.entries.iter_mut() {
            if !*read && k.starts_with("x-") {
                *read = true;
                out.push((k.clone(), (*v).clone()));
            }
        }
        out
    }

    /// Reads and drops `x-*` keys where the model has no place for them, saying so:
    /// nothing a user wrote disappears without a word.
    pub fn ignore_extensions(&mut self, cx: &mut Cx) {
        for (k, _) in self.extensions() {
            cx.warn(
                &join(&self.path, &k),
                "extension fields are kept at the top level and on services, networks, \
                 volumes, secrets and configs; this one is ignored",
            );
        }
    }

    /// Reports every unread key as unknown, suggesting the closest known key.
    pub fn finish(self, cx: &mut Cx) {
        for (k, _, read) in &self.entries {
            if *read {
                continue;
            }
            let path = join(&self.path, k);
            match suggest(k, &self.asked) {
                Some(s) => cx.error(&path, format!("unknown attribute; did you mean {s:?}?")),
                None => cx.error(&path, "unknown attribute"),
            }
        }
    }
}

/// The closest known key, if it is close enough to be a plausible typo.
pub(crate) fn suggest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(word, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}
