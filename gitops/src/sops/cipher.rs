//! sops's value cipher: `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]` strings opened
//! with the file's 32-byte data key (sops's aes/cipher.go), and the MAC over the
//! plaintext values (sops.go, `Tree.Decrypt`).

use std::sync::OnceLock;

use aes_gcm::aead::consts::{U12, U32};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::aes::Aes256;
use aes_gcm::{AesGcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use regex::Regex;
use sha2::{Digest, Sha512};
use zeroize::Zeroizing;

use super::tree::{go_float, Node};

/// Why a value did not open. Holds no part of the value: it may be a secret.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// Not of the `ENC[AES256_GCM,…]` form, or its base64 is broken.
    Malformed(&'static str),
    /// The tag does not verify: wrong key, edited value, or moved to another path.
    Authentication,
}

/// A value type sops records in `type:` and the plaintext's bytes.
pub(crate) struct Opened {
    kind: String,
    bytes: Zeroizing<Vec<u8>>,
}

/// The file's data key.
pub(crate) struct Cipher {
    key: Zeroizing<[u8; 32]>,
}

impl Cipher {
    pub(crate) fn new(key: Zeroizing<[u8; 32]>) -> Self {
        Cipher { key }
    }

    /// Opens one `ENC[…]` string; `additional_data` is the value's path as sops
    /// builds it (`a:b:c:`). An empty string is an empty value: sops writes "" for "".
    pub(crate) fn open(&self, value: &str, additional_data: &str) -> Result<Opened, OpenError> {
        if value.is_empty() {
            return Ok(Opened {
                kind: "str".into(),
                bytes: Zeroizing::new(Vec::new()),
            });
        }
        static ENC: OnceLock<Option<Regex>> = OnceLock::new();
        // sops's own pattern, greedy groups and all, so the same strings parse.
        let pattern = ENC
            .get_or_init(|| {
                Regex::new(r"^ENC\[AES256_GCM,data:(.+),iv:(.+),tag:(.+),type:(.+)\]").ok()
            })
            .as_ref()
            .ok_or(OpenError::Malformed(
                "internal error: the ENC[] pattern does not compile",
            ))?;
        let caps = pattern.captures(value).ok_or(OpenError::Malformed(
            "is not of sops's ENC[AES256_GCM,…] form",
        ))?;
        let field = |i: usize, what: &'static str| {
            caps.get(i)
                .map(|m| m.as_str())
                .ok_or(OpenError::Malformed(what))
        };
        let decode = |text: &str, what: &'static str| {
            STANDARD
                .decode(text)
                .map_err(|_| OpenError::Malformed(what))
        };
        let data = decode(field(1, "has no data")?, "has data that is not base64")?;
        let iv = decode(field(2, "has no iv")?, "has an iv that is not base64")?;
        let tag = decode(field(3, "has no tag")?, "has a tag that is not base64")?;
        let kind = field(4, "has no type")?.to_owned();
        if tag.len() != 16 {
            return Err(OpenError::Malformed("has a tag that is not 16 bytes"));
        }
        let mut sealed = data;
        sealed.extend_from_slice(&tag);
        let payload = Payload {
            msg: &sealed,
            aad: additional_data.as_bytes(),
        };
        let key = Key::<AesGcm<Aes256, U32>>::from_slice(&self.key[..]);
        // sops uses 32-byte IVs (Go's NewGCMWithNonceSize); 12 is GCM's usual size.
        let plain = match iv.len() {
            32 => AesGcm::<Aes256, U32>::new(key).decrypt(Nonce::<U32>::from_slice(&iv), payload),
            12 => AesGcm::<Aes256, U12>::new(key).decrypt(Nonce::<U12>::from_slice(&iv), payload),
            _ => {
                return Err(OpenError::Malformed(
                    "has an iv that is neither 32 nor 12 bytes",
                ))
            }
        };
        let bytes = Zeroizing::new(plain.map_err(|_| OpenError::Authentication)?);
        Ok(Opened { kind, bytes })
    }
}

impl Opened {
    /// The plaintext as text, for the MAC itself and for comments.
    pub(crate) fn into_text(self) -> Option<String> {
        String::from_utf8(self.bytes.to_vec()).ok()
    }

    /// The value as sops would hold it after decryption, typed by its `type:`, and
    /// the bytes sops hashes for it (`ToBytes` of the typed value). Errors say what is
    /// wrong without the plaintext.
    pub(crate) fn into_node(self) -> Result<(Node, Vec<u8>), &'static str> {
        let text = std::str::from_utf8(&self.bytes);
        let number_text = || text.map(str::trim).map_err(|_| "is not UTF-8 text");
        match self.kind.as_str() {
            "str" | "bytes" => {
                let mac = self.bytes.to_vec();
                let node = match String::from_utf8(self.bytes.to_vec()) {
                    Ok(s) => Node::Str(s),
                    Err(e) => Node::Bytes(e.into_bytes()),
                };
                Ok((node, mac))
            }
            "int" => {
                // Go's Atoi: an optional sign, decimal digits.
                let i: i64 = number_text()?
                    .parse()
                    .map_err(|_| "is marked int but does not hold an integer")?;
                Ok((Node::Int(i), i.to_string().into_bytes()))
            }
            "float" => {
                let f: f64 = number_text()?
                    .parse()
                    .map_err(|_| "is marked float but does not hold a number")?;
                Ok((Node::Float(f), go_float(f).into_bytes()))
            }
            "bool" => {
                // Go's ParseBool accepts exactly these; sops hashes True/False.
                let b = match number_text()? {
                    "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
                    "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
                    _ => return Err("is marked bool but does not hold true or false"),
                };
                Ok((
                    Node::Bool(b),
                    if b {
                        b"True".to_vec()
                    } else {
                        b"False".to_vec()
                    },
                ))
            }
            // sops re-marshals a time as RFC 3339, which gives back what it encrypted.
            "time" | "comment" => {
                let s = text.map_err(|_| "is not UTF-8 text")?.to_owned();
                let mac = s.clone().into_bytes();
                Ok((Node::Str(s), mac))
            }
            _ => {
                Err("has a type sops does not know (expected str, int, float, bool, time or bytes)")
            }
        }
    }
}

/// The bytes sops hashes for a value it left unencrypted (`ToBytes` in sops.go).
pub(crate) fn plain_mac_bytes(node: &Node) -> Vec<u8> {
    match node {
        Node::Str(s) => s.clone().into_bytes(),
        Node::Bytes(b) => b.clone(),
        Node::Int(i) => i.to_string().into_bytes(),
        Node::Float(f) => go_float(*f).into_bytes(),
        Node::Bool(true) => b"True".to_vec(),
        Node::Bool(false) => b"False".to_vec(),
        // sops's walk skips nulls and descends into collections.
        Node::Null | Node::Seq(_) | Node::Map(_) => Vec::new(),
    }
}

/// Whether a string is a sops-encrypted value.
pub(crate) fn is_enc(value: &str) -> bool {
    value.starts_with("ENC[AES256_GCM,")
}

/// SHA-512 over the values in document order, printed as upper-case hex.
pub(crate) struct Mac {
    hash: Sha512,
}

/// The 32 bytes sops hashes first when `mac_only_encrypted` is set, so that such a
/// MAC never equals one over all values (sha256 of "sops", from sops.go).
const MAC_ONLY_ENCRYPTED_INIT: [u8; 32] = [
    0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47, 0xbe, 0x0b,
    0x0b, 0x97, 0x5b, 0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81, 0x76, 0xf2, 0x7d, 0x69,
];

impl Mac {
    pub(crate) fn new(mac_only_encrypted: bool) -> Self {
        let mut hash = Sha512::new();
        if mac_only_encrypted {
            hash.update(MAC_ONLY_ENCRYPTED_INIT);
        }
        Mac { hash }
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.hash.update(bytes);
    }

    pub(crate) fn finish(self) -> String {
        hex::encode_upper(self.hash.finalize())
    }
}

/// The additional data sops binds a value to: its mapping keys joined with `:` plus a
/// trailing `:` (sequence indices are not part of it).
pub(crate) fn additional_data(keys: &[String]) -> String {
    let mut aad = keys.join(":");
    aad.push(':');
    aad
}

/// The additional data of the MAC: `lastmodified` as Go's `time.Format(RFC3339)`
/// prints it after parsing, which drops fractional seconds.
pub(crate) fn mac_additional_data(last_modified: &str) -> String {
    // "2024-01-02T03:04:05.123Z" -> "2024-01-02T03:04:05Z"
    if let Some(t) = last_modified.find('T') {
        let seconds_end = t + 9;
        if last_modified.get(seconds_end..seconds_end + 1) == Some(".") {
            let rest = &last_modified[seconds_end + 1..];
            let zone = rest.trim_start_matches(|c: char| c.is_ascii_digit());
            return format!("{}{}", &last_modified[..seconds_end], zone);
        }
    }
    last_modified.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn additional_data_is_keys_with_trailing_colon() {
        assert_eq!(additional_data(&[]), ":");
        assert_eq!(additional_data(&["a".into(), "b".into()]), "a:b:");
    }

    #[test]
    fn mac_additional_data_drops_fractional_seconds() {
        assert_eq!(
            mac_additional_data("2024-01-02T03:04:05Z"),
            "2024-01-02T03:04:05Z"
        );
        assert_eq!(
            mac_additional_data("2024-01-02T03:04:05.123456Z"),
            "2024-01-02T03:04:05Z"
        );
        assert_eq!(
            mac_additional_data("2024-01-02T03:04:05.5+02:00"),
            "2024-01-02T03:04:05+02:00"
        );
    }

    #[test]
    fn mac_only_encrypted_init_is_sha256_of_sops() {
        use sha2::Sha256;
        assert_eq!(Sha256::digest(b"sops").as_slice(), MAC_ONLY_ENCRYPTED_INIT);
    }
}
