//! age identities, read from a key file as sops reads `SOPS_AGE_KEY_FILE`, and the
//! unwrapping of a file's data key with them.

use std::fmt;
use std::io::Read as _;
use std::path::Path;
use std::str::FromStr as _;

use age::armor::ArmoredReader;
use zeroize::Zeroizing;

use super::SopsError;

/// The age secret keys berth may decrypt with.
///
/// Its `Debug` shows where the keys came from and their public recipients, never
/// the secret keys.
pub struct Identities {
    source: String,
    keys: Vec<age::x25519::Identity>,
}

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identities")
            .field("source", &self.source)
            .field("recipients", &self.recipients())
            .finish()
    }
}

/// Why the data key did not unwrap.
pub(crate) enum UnwrapError {
    /// None of the identities is a recipient of this stanza.
    NoMatch,
    /// The stanza is damaged or not age; the text names no secret.
    Other(String),
}

impl Identities {
    /// Reads an age key file: `AGE-SECRET-KEY-1…` lines, with blank lines and `#`
    /// comments allowed (what age-keygen writes and sops reads).
    pub fn from_file(path: &Path) -> Result<Identities, SopsError> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
            SopsError::ReadKeyFile {
                path: path.to_path_buf(),
                source,
            }
        })?);
        Identities::parse(&text, &path.display().to_string())
    }

    /// Reads key-file text; `source` names where it came from in errors and `Debug`
    /// (a path, or the name of an environment variable).
    pub fn parse(text: &str, source: &str) -> Result<Identities, SopsError> {
        let mut keys = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // The line is a secret (or a mistyped one): errors give its number only.
            let reason = if line.starts_with("AGE-PLUGIN-") {
                "is an age plugin identity, which berth does not support: use a native age key from age-keygen"
            } else if line.starts_with("AGE-SECRET-KEY-PQ-") {
                "is a post-quantum age key, which berth does not support yet: use an X25519 key from age-keygen"
            } else if !line.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-1") {
                "is neither a comment nor an AGE-SECRET-KEY-1… line"
            } else {
                match age::x25519::Identity::from_str(line) {
                    Ok(key) => {
                        keys.push(key);
                        continue;
                    }
                    Err(_) => "is not a valid age secret key (mistyped or cut short?)",
                }
            };
            return Err(SopsError::KeyFileLine {
                key_file: source.to_owned(),
                line: index + 1,
                reason,
            });
        }
        if keys.is_empty() {
            return Err(SopsError::NoKeys {
                key_file: source.to_owned(),
            });
        }
        Ok(Identities {
            source: source.to_owned(),
            keys,
        })
    }

    /// The public recipients (`age1…`) of these keys.
    pub fn recipients(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| k.to_public().to_string())
            .collect()
    }

    /// Where the keys came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Decrypts an armored age message (a sops `enc` field) with any of the keys.
    pub(crate) fn unwrap(&self, armored: &str) -> Result<Zeroizing<Vec<u8>>, UnwrapError> {
        let other = |e: &dyn fmt::Display| UnwrapError::Other(e.to_string());
        let decryptor =
            age::Decryptor::new(ArmoredReader::new(armored.as_bytes())).map_err(|e| other(&e))?;
        let mut reader = decryptor
            .decrypt(self.keys.iter().map(|k| k as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => UnwrapError::NoMatch,
                e => other(&e),
            })?;
        let mut plain = Zeroizing::new(Vec::new());
        reader.read_to_end(&mut plain).map_err(|e| other(&e))?;
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data key the age CLI (Debian's age 1.1.1) encrypted to the test key:
    /// `age -a -r <recipient of keys/key.txt>`; datakey.hex holds the key.
    #[test]
    fn unwraps_a_data_key_the_age_cli_encrypted() {
        let keys = Identities::parse(
            include_str!("../../tests/sops/keys/key.txt"),
            "keys/key.txt",
        )
        .expect("the test key parses");
        let armored = include_str!("../../tests/sops/age-cli/datakey.age");
        let Ok(plain) = keys.unwrap(armored) else {
            panic!("the age CLI's message opens")
        };
        assert_eq!(
            hex::encode(&plain[..]),
            include_str!("../../tests/sops/age-cli/datakey.hex").trim()
        );
    }

    #[test]
    fn another_key_does_not_match() {
        let keys = Identities::parse(include_str!("../../tests/sops/keys/other-key.txt"), "other")
            .expect("the other key parses");
        let armored = include_str!("../../tests/sops/age-cli/datakey.age");
        assert!(matches!(keys.unwrap(armored), Err(UnwrapError::NoMatch)));
    }
}
