//! The document trees sops encrypts, read from and written back to each file format.
//!
//! sops sees a YAML or JSON file as ordered mappings, sequences and scalars, and a
//! dotenv file as a flat list of `KEY=value` lines and comments. The order matters:
//! the MAC hashes the values in document order, so mappings keep theirs here.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Error as _, Serialize, SerializeMap, SerializeSeq, Serializer};

/// One value of a YAML or JSON document, in document order.
///
/// No `Debug`: after decryption a node holds secrets, and a stray `{:?}` must not
/// print them.
pub(crate) enum Node {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// A decrypted string that is not UTF-8: fine for a binary file's `data`, refused
    /// when written back as YAML or JSON.
    Bytes(Vec<u8>),
    Seq(Vec<Node>),
    Map(Vec<(String, Node)>),
}

impl Node {
    /// The value under `key` when this node is a mapping.
    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text of a string node, or of a scalar as mapstructure's weak typing reads
    /// it (sops decodes its metadata that way, so `mac_only_encrypted: "true"` counts).
    pub(crate) fn as_text(&self) -> Option<String> {
        match self {
            Node::Str(s) => Some(s.clone()),
            Node::Int(i) => Some(i.to_string()),
            Node::Bool(b) => Some(b.to_string()),
            Node::Float(f) => Some(go_float(*f)),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML or JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        // sops reads a JSON integer past int64 as a float; do the same.
        Ok(i64::try_from(v).map_or(Node::Float(v as f64), Node::Int))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        Node::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Node>()? {
            // sops refuses non-string keys too ("Only string keys are supported").
            let Node::Str(key) = key else {
                return Err(de::Error::custom(
                    "a mapping key is not a string (sops supports only string keys)",
                ));
            };
            entries.push((key, map.next_value()?));
        }
        Ok(Node::Map(entries))
    }
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Emit {
            node: self,
            integral_floats_as_ints: false,
        }
        .serialize(serializer)
    }
}

/// A node being written out. sops's JSON store encrypts every JSON number as a
/// float and Go's encoder prints a whole float without a fraction (`5432`, not
/// `5432.0`); JSON output does the same so a port stays a port.
struct Emit<'a> {
    node: &'a Node,
    integral_floats_as_ints: bool,
}

impl Serialize for Emit<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let child = |node| Emit {
            node,
            integral_floats_as_ints: self.integral_floats_as_ints,
        };
        match self.node {
            Node::Null => serializer.serialize_unit(),
            Node::Bool(b) => serializer.serialize_bool(*b),
            Node::Int(i) => serializer.serialize_i64(*i),
            // The bound keeps the cast exact: within it every whole f64 fits an i64.
            Node::Float(f)
                if self.integral_floats_as_ints && f.fract() == 0.0 && f.abs() < 9.0e15 =>
            {
                serializer.serialize_i64(*f as i64)
            }
            Node::Float(f) => serializer.serialize_f64(*f),
            Node::Str(s) => serializer.serialize_str(s),
            // Never the bytes themselves in the message: they are a decrypted secret.
            Node::Bytes(_) => Err(S::Error::custom(
                "a decrypted value is not UTF-8 text, so it cannot be written as YAML or JSON",
            )),
            Node::Seq(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&child(item))?;
                }
                seq.end()
            }
            Node::Map(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, &child(v))?;
                }
                map.end()
            }
        }
    }
}

/// Reads every document of a YAML file; sops keeps a copy of its metadata in each.
pub(crate) fn parse_yaml(bytes: &[u8]) -> Result<Vec<Node>, String> {
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_slice(bytes) {
        let node = Node::deserialize(doc).map_err(|e| e.to_string())?;
        docs.push(match node {
            // An empty document is an empty mapping to sops.
            Node::Null => Node::Map(Vec::new()),
            Node::Map(_) => node,
            _ => {
                return Err("a YAML document is not a mapping (sops encrypts only mappings)".into())
            }
        });
    }
    Ok(docs)
}

/// Writes documents back the way sops separates them: `---` between documents.
pub(crate) fn emit_yaml(docs: &[Node]) -> Result<Vec<u8>, String> {
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_norway::to_string(doc).map_err(|e| e.to_string())?);
    }
    Ok(out.into_bytes())
}

pub(crate) fn parse_json(bytes: &[u8]) -> Result<Node, String> {
    match serde_json::from_slice::<Node>(bytes).map_err(|e| e.to_string())? {
        node @ Node::Map(_) => Ok(node),
        _ => Err("the top level is not an object (sops encrypts only JSON objects)".into()),
    }
}

/// Writes JSON as sops does: tab-indented, with a final newline.
pub(crate) fn emit_json(doc: &Node) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    Emit {
        node: doc,
        integral_floats_as_ints: true,
    }
    .serialize(&mut serializer)
    .map_err(|e| e.to_string())?;
    out.push(b'\n');
    Ok(out)
}

/// One line of a dotenv file as sops reads it.
pub(crate) enum DotenvLine {
    /// The text after `#`.
    Comment(String),
    Pair(String, Node),
}

/// Reads dotenv the way sops's dotenv store does: no quoting, the value is everything
/// after the first `=`, and `\n` in a value stands for a newline.
pub(crate) fn parse_dotenv(bytes: &[u8]) -> Result<Vec<DotenvLine>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the file is not UTF-8 text".to_owned())?;
    let mut lines = Vec::new();
    for (number, line) in text.split('\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            lines.push(DotenvLine::Comment(comment.to_owned()));
            continue;
        }
        // The line itself stays out of the message: it may be a plaintext secret.
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {} has no `=` (expected KEY=value)", number + 1))?;
        lines.push(DotenvLine::Pair(
            key.to_owned(),
            Node::Str(value.replace("\\n", "\n")),
        ));
    }
    Ok(lines)
}

/// Writes dotenv as sops's dotenv store does, newlines escaped back to `\n`.
pub(crate) fn emit_dotenv(lines: &[DotenvLine]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        match line {
            DotenvLine::Comment(text) => {
                out.push(b'#');
                out.extend_from_slice(text.as_bytes());
            }
            DotenvLine::Pair(key, value) => {
                out.extend_from_slice(key.as_bytes());
                out.push(b'=');
                match value {
                    Node::Str(s) => out.extend_from_slice(s.replace('\n', "\\n").as_bytes()),
                    Node::Bytes(b) => out.extend_from_slice(b),
                    // Non-string values come only from a file sops converted from
                    // another format; sops prints them with Go's %v.
                    other => out.extend_from_slice(other.as_text().unwrap_or_default().as_bytes()),
                }
            }
        }
        out.push(b'\n');
    }
    out
}

/// Rebuilds sops's metadata from the flat `sops_…` keys of a dotenv file, where
/// `age__list_0__map_enc` stands for `age[0].enc` (sops's stores/flatten.go).
pub(crate) fn unflatten(entries: &[(String, String)]) -> Result<Node, String> {
    #[derive(Default)]
    struct Builder {
        value: Option<String>,
        keys: BTreeMap<String, Builder>,
        indices: BTreeMap<usize, Builder>,
    }

    fn build(b: Builder) -> Result<Node, String> {
        match (b.value, b.keys.is_empty(), b.indices.is_empty()) {
            (Some(v), true, true) => Ok(Node::Str(v)),
            (None, false, true) => Ok(Node::Map(
                b.keys
                    .into_iter()
                    .map(|(k, v)| Ok((k, build(v)?)))
                    .collect::<Result<_, String>>()?,
            )),
            (None, true, false) => {
                let len = b.indices.len();
                if b.indices.keys().copied().ne(0..len) {
                    return Err("a flattened metadata list has a gap in its indices".into());
                }
                Ok(Node::Seq(
                    b.indices
                        .into_values()
                        .map(build)
                        .collect::<Result<_, _>>()?,
                ))
            }
            (None, true, true) => Ok(Node::Map(Vec::new())),
            _ => Err("a flattened metadata key is both a value and a list or mapping".into()),
        }
    }

    let mut root = Builder::default();
    for (key, value) in entries {
        let mut node = &mut root;
        for token in tokenize(key)? {
            node = match token {
                Token::Key(k) => node.keys.entry(k).or_default(),
                Token::Index(i) => node.indices.entry(i).or_default(),
            };
        }
        if node.value.replace(value.clone()).is_some() {
            return Err(format!("the metadata key sops_{key} appears twice"));
        }
    }
    build(root)
}

enum Token {
    Key(String),
    Index(usize),
}

const MAP_SEPARATOR: &str = "__map_";
const LIST_SEPARATOR: &str = "__list_";

/// Splits `age__list_0__map_enc` into `age`, `0`, `enc`.
fn tokenize(path: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    // The first token is a key; each later one starts at a separator that says which.
    let mut is_index = false;
    let mut rest = path;
    loop {
        let next = [MAP_SEPARATOR, LIST_SEPARATOR]
            .iter()
            .filter_map(|sep| rest.find(sep).map(|at| (at, *sep)))
            .min_by_key(|(at, _)| *at);
        let (part, after) = match next {
            Some((at, sep)) => (
                &rest[..at],
                Some((&rest[at + sep.len()..], sep == LIST_SEPARATOR)),
            ),
            None => (rest, None),
        };
        tokens.push(if is_index {
            Token::Index(
                part.parse()
                    .map_err(|_| format!("metadata key sops_{path} has a bad list index"))?,
            )
        } else {
            Token::Key(part.to_owned())
        });
        match after {
            Some((tail, index)) => {
                rest = tail;
                is_index = index;
            }
            None => return Ok(tokens),
        }
    }
}

/// Formats a float as Go's `strconv.FormatFloat(f, 'f', -1, 64)`, which sops uses for
/// a float's bytes in the MAC: the shortest digits that read back the same, never an
/// exponent. Rust's `Display` does the same for finite values.
pub(crate) fn go_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        f.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_float_matches_go_formatting() {
        for (f, go) in [
            (0.75, "0.75"),
            (1.0, "1"),
            (-3.5, "-3.5"),
            (1e21, "1000000000000000000000"),
            (1e-7, "0.0000001"),
        ] {
            assert_eq!(go_float(f), go);
        }
        assert_eq!(go_float(f64::INFINITY), "+Inf");
    }

    #[test]
    fn unflatten_rebuilds_lists_and_maps() {
        let entries = vec![
            ("age__list_0__map_recipient".to_owned(), "r0".to_owned()),
            ("age__list_1__map_recipient".to_owned(), "r1".to_owned()),
            ("mac".to_owned(), "m".to_owned()),
        ];
        let node = unflatten(&entries).expect("unflattens");
        let Some(Node::Seq(age)) = node.get("age") else {
            panic!("age is a list")
        };
        assert_eq!(age.len(), 2);
        assert_eq!(
            age[1].get("recipient").and_then(Node::as_text).as_deref(),
            Some("r1")
        );
    }

    #[test]
    fn unflatten_refuses_a_gap() {
        let entries = vec![("age__list_1__map_enc".to_owned(), "x".to_owned())];
        assert!(unflatten(&entries).is_err());
    }
}
