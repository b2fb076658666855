//! The `sops` section of an encrypted file: who can open the data key, the MAC, and
//! the rule that says which values were encrypted (sops's stores/stores.go).

use regex::Regex;

use super::tree::Node;

/// An age recipient and the data key encrypted to it (armored age).
pub(crate) struct AgeStanza {
    pub(crate) recipient: String,
    pub(crate) enc: String,
}

/// Which values sops encrypted, from the one rule a file may carry.
pub(crate) enum Rule {
    UnencryptedSuffix(String),
    EncryptedSuffix(String),
    UnencryptedRegex(Regex),
    EncryptedRegex(Regex),
    /// `encrypted_comment_regex` or `unencrypted_comment_regex`: they depend on
    /// YAML comments, which berth does not read. The values that are `ENC[…]` are
    /// the encrypted ones; the MAC still covers every value, so this cannot hide an
    /// edit.
    ByComments,
}

impl Rule {
    /// Whether sops encrypted the value at this path (`shouldBeEncrypted` in sops.go);
    /// `None` when only the value itself can tell.
    pub(crate) fn encrypts(&self, keys: &[String]) -> Option<bool> {
        Some(match self {
            Rule::UnencryptedSuffix(s) => !keys.iter().any(|k| k.ends_with(s.as_str())),
            Rule::EncryptedSuffix(s) => keys.iter().any(|k| k.ends_with(s.as_str())),
            Rule::UnencryptedRegex(r) => !keys.iter().any(|k| r.is_match(k)),
            Rule::EncryptedRegex(r) => keys.iter().any(|k| r.is_match(k)),
            Rule::ByComments => return None,
        })
    }
}

pub(crate) struct Metadata {
    pub(crate) age: Vec<AgeStanza>,
    /// The other kinds of master key the file names (kms, pgp, …), for a clear error
    /// when it has no age key.
    pub(crate) other_kinds: Vec<&'static str>,
    pub(crate) last_modified: String,
    pub(crate) mac: String,
    pub(crate) rule: Rule,
    pub(crate) mac_only_encrypted: bool,
}

const OTHER_KINDS: [&str; 6] = ["kms", "gcp_kms", "azure_kv", "hc_vault", "pgp", "hckms"];

impl Metadata {
    /// Reads the `sops` mapping; errors say what is missing or unsupported.
    pub(crate) fn from_node(sops: &Node) -> Result<Metadata, String> {
        let Node::Map(_) = sops else {
            return Err("the `sops` entry is not a mapping".into());
        };
        let text = |key: &str| {
            sops.get(key)
                .and_then(Node::as_text)
                .filter(|s| !s.is_empty())
        };

        // Keys at the top level form the one key group; otherwise `key_groups`.
        let has_top_level_keys = ["age"]
            .iter()
            .chain(OTHER_KINDS.iter())
            .any(|k| non_empty_list(sops.get(k)));
        let group = if has_top_level_keys {
            sops
        } else {
            match sops.get("key_groups") {
                Some(Node::Seq(groups)) if groups.len() == 1 => &groups[0],
                Some(Node::Seq(groups)) if groups.len() > 1 => {
                    return Err(format!(
                        "the data key is split over {} key groups (Shamir secret sharing), which berth \
                         does not support; re-encrypt the file with a single key group",
                        groups.len()
                    ))
                }
                _ => return Err("it names no master key (no `age`, `kms`, `pgp`, … list)".into()),
            }
        };

        let mut age = Vec::new();
        if let Some(Node::Seq(entries)) = group.get("age") {
            for entry in entries {
                let recipient = entry
                    .get("recipient")
                    .and_then(Node::as_text)
                    .unwrap_or_default();
                let enc = entry.get("enc").and_then(Node::as_text).ok_or_else(|| {
                    format!("the age entry for recipient {recipient:?} has no `enc` data key")
                })?;
                age.push(AgeStanza { recipient, enc });
            }
        }
        let other_kinds = OTHER_KINDS
            .iter()
            .copied()
            .filter(|k| non_empty_list(group.get(k)))
            .collect();

        let last_modified = text("lastmodified").ok_or("it has no `lastmodified` timestamp")?;
        let mac = text("mac").unwrap_or_default();

        let regex = |key: &str, pattern: String| {
            Regex::new(&pattern).map_err(|e| {
                format!("its {key} {pattern:?} is not a valid regular expression: {e}")
            })
        };
        let mut rules = Vec::new();
        if let Some(s) = text("unencrypted_suffix") {
            rules.push(Rule::UnencryptedSuffix(s));
        }
        if let Some(s) = text("encrypted_suffix") {
            rules.push(Rule::EncryptedSuffix(s));
        }
        if let Some(p) = text("unencrypted_regex") {
            rules.push(Rule::UnencryptedRegex(regex("unencrypted_regex", p)?));
        }
        if let Some(p) = text("encrypted_regex") {
            rules.push(Rule::EncryptedRegex(regex("encrypted_regex", p)?));
        }
        if text("unencrypted_comment_regex").is_some() || text("encrypted_comment_regex").is_some()
        {
            rules.push(Rule::ByComments);
        }
        if rules.len() > 1 {
            return Err(
                "it sets more than one of encrypted_suffix, unencrypted_suffix, encrypted_regex, \
                        unencrypted_regex and the comment regexes (sops refuses that too)"
                    .into(),
            );
        }
        // sops's default when the file sets no rule.
        let rule = rules
            .pop()
            .unwrap_or_else(|| Rule::UnencryptedSuffix("_unencrypted".into()));

        let mac_only_encrypted = match text("mac_only_encrypted").as_deref() {
            None | Some("false") | Some("False") | Some("0") => false,
            Some("true") | Some("True") | Some("1") => true,
            Some(_) => return Err("its mac_only_encrypted is neither true nor false".into()),
        };

        Ok(Metadata {
            age,
            other_kinds,
            last_modified,
            mac,
            rule,
            mac_only_encrypted,
        })
    }
}

fn non_empty_list(node: Option<&Node>) -> bool {
    matches!(node, Some(Node::Seq(items)) if !items.is_empty())
}
