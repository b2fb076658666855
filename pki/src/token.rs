//! Join tokens: `BERTHTKN-1-<CA digest>-<secret>`, after Swarm's `SWMTKN-1-...`.
//!
//! The digest (SHA-256 of the CA certificate, 50 base36 characters) lets a joining
//! node pin the cluster's CA before it trusts anything the manager says; the secret
//! (128 random bits, 25 base36 characters) proves to the manager that the joiner was
//! given the token. There is one token per [`NodeRole`]; rotating one makes a new
//! secret, and the old token stops working at once.

use std::fmt;
use std::str::FromStr;

use subtle::ConstantTimeEq;

use crate::base36::{self, Base36Error};
use crate::cert::CaDigest;
use crate::identity::NodeRole;

pub const TOKEN_PREFIX: &str = "BERTHTKN";
pub const TOKEN_VERSION: &str = "1";

/// Why a token was refused. No message ever repeats the secret.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TokenError {
    #[error("a join token has four parts separated by '-' (BERTHTKN-1-<CA digest>-<secret>), this one has {parts}; copy the whole token that `berth cluster join-token` prints")]
    Parts { parts: usize },
    #[error("a join token starts with BERTHTKN-, this one starts with {prefix:?}{hint}")]
    Prefix { prefix: String, hint: &'static str },
    #[error("join token version {0:?} is not supported (this berth understands version 1)")]
    Version(String),
    #[error("the join token's {part} {problem}")]
    Field { part: &'static str, problem: String },
    #[error(
        "the join token is for another cluster: it pins CA {token}, this cluster's CA is {ours}"
    )]
    WrongCluster { token: CaDigest, ours: CaDigest },
    #[error("the join token is not valid for this cluster: it was rotated or mistyped; ask a manager for the current one (`berth cluster join-token worker|manager`)")]
    Rejected,
    #[error("the CA certificate {got} does not match the join token's digest {pinned}: this is not the cluster the token is for, or someone is in between")]
    PinMismatch { pinned: CaDigest, got: CaDigest },
}

/// 128 random bits. Compared in constant time; never printed by `Debug`.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Secret([u8; 16]);

impl Secret {
    fn generate() -> Self {
        Self(crate::random_bytes::<16>())
    }

    /// Constant-time equality, so a guesser learns nothing from the time an answer takes.
    fn matches(&self, other: &Secret) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    digest: CaDigest,
    secret: Secret,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "JoinToken({TOKEN_PREFIX}-{TOKEN_VERSION}-{}-<secret>)",
            base36::encode(&self.digest.0)
        )
    }
}

impl JoinToken {
    /// The CA digest the token pins.
    pub fn ca_digest(&self) -> CaDigest {
        self.digest
    }

    /// Checks a CA certificate fetched from a manager against the token's digest: the
    /// trust-on-first-use step of joining, for a CA that arrived outside the handshake
    /// (see [`crate::join`] for pinning during the handshake).
    pub fn verify_ca(&self, ca: &crate::CaCert) -> Result<(), TokenError> {
        let got = ca.digest();
        if got == self.digest {
            Ok(())
        } else {
            Err(TokenError::PinMismatch {
                pinned: self.digest,
                got,
            })
        }
    }
}

impl fmt::Display for JoinToken {
    /// The token as people copy it: `BERTHTKN-1-<50 base36>-<25 base36>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}-{TOKEN_VERSION}-{}-{}",
            base36::encode(&self.digest.0),
            base36::encode(&self.secret.0)
        )
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;

    /// Parses and checks the format; leading and trailing whitespace (a pasted newline)
    /// is ignored. Does not say whether the secret is current: that is
    /// [`JoinTokens::validate`]'s job, on a manager.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let parts: Vec<&str> = s.split('-').collect();
        // Check the prefix first: "not a berth token" is the better message for
        // a Swarm token (which also has four parts) or random text.
        if parts[0] != TOKEN_PREFIX {
            let prefix: String = parts[0].chars().take(16).collect();
            let hint = if prefix == "SWMTKN" {
                " (that is a Docker Swarm token)"
            } else if prefix.eq_ignore_ascii_case(TOKEN_PREFIX) {
                " (the prefix is upper case)"
            } else {
                ""
            };
            return Err(TokenError::Prefix { prefix, hint });
        }
        if parts.len() != 4 {
            return Err(TokenError::Parts { parts: parts.len() });
        }
        if parts[1] != TOKEN_VERSION {
            return Err(TokenError::Version(parts[1].chars().take(16).collect()));
        }
        let digest = decode_field::<32>(parts[2], "CA digest")?;
        let secret = decode_field::<16>(parts[3], "secret")?;
        Ok(Self {
            digest: CaDigest(digest),
            secret: Secret(secret),
        })
    }
}

fn decode_field<const N: usize>(text: &str, part: &'static str) -> Result<[u8; N], TokenError> {
    base36::decode::<N>(text).map_err(|e| TokenError::Field {
        part,
        problem: match e {
            Base36Error::Length { expected, got } => {
                format!("has {got} characters, {expected} expected (was the token cut short?)")
            }
            // The character is shown for the digest (public) but not for the secret.
            Base36Error::Char { index, ch } if part == "CA digest" => {
                format!(
                    "has {ch:?} at character {}; only 0-9 and a-z are used",
                    index + 1
                )
            }
            Base36Error::Char { index, .. } => {
                format!(
                    "has a character other than 0-9 and a-z at character {}",
                    index + 1
                )
            }
            Base36Error::Overflow => "is out of range (not a value berth makes)".to_string(),
        },
    })
}

/// A cluster's two current join tokens. Managers keep this (replicated in the store)
/// and check every join against it.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinTokens {
    digest: CaDigest,
    worker: Secret,
    manager: Secret,
}

impl fmt::Debug for JoinTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinTokens")
            .field("ca", &self.digest)
            .finish_non_exhaustive()
    }
}

impl JoinTokens {
    /// Fresh worker and manager tokens for the CA with `digest`.
    pub fn generate(digest: CaDigest) -> Self {
        Self {
            digest,
            worker: Secret::generate(),
            manager: Secret::generate(),
        }
    }

    /// Restores the tokens from their text (as stored), checking both pin the same CA.
    pub fn from_tokens(worker: &str, manager: &str) -> Result<Self, TokenError> {
        let worker: JoinToken = worker.parse()?;
        let manager: JoinToken = manager.parse()?;
        if worker.digest != manager.digest {
            return Err(TokenError::WrongCluster {
                token: manager.digest,
                ours: worker.digest,
            });
        }
        Ok(Self {
            digest: worker.digest,
            worker: worker.secret,
            manager: manager.secret,
        })
    }

    pub fn token(&self, role: NodeRole) -> JoinToken {
        JoinToken {
            digest: self.digest,
            secret: match role {
                NodeRole::Worker => self.worker,
                NodeRole::Manager => self.manager,
            },
        }
    }

    /// A new secret for `role`'s token; the old token is refused from now on. The
    /// other role's token is unchanged.
    pub fn rotate(&mut self, role: NodeRole) {
        match role {
            NodeRole::Worker => self.worker = Secret::generate(),
            NodeRole::Manager => self.manager = Secret::generate(),
        }
    }

    /// The role a joiner presenting `token` gets, or why it gets none. Both secrets are
    /// compared, in constant time, whatever the outcome.
    pub fn validate(&self, token: &str) -> Result<NodeRole, TokenError> {
        let token: JoinToken = token.parse()?;
        if token.digest != self.digest {
            return Err(TokenError::WrongCluster {
                token: token.digest,
                ours: self.digest,
            });
        }
        let is_worker = token.secret.matches(&self.worker);
        let is_manager = token.secret.matches(&self.manager);
        match (is_worker, is_manager) {
            (_, true) => Ok(NodeRole::Manager),
            (true, false) => Ok(NodeRole::Worker),
            (false, false) => Err(TokenError::Rejected),
        }
    }
}
