//! berth's cluster PKI, after Swarm's (`swarmkit/ca`): a cluster CA, certificates that
//! carry a node's id and role, join tokens that pin the CA, and rustls configurations
//! for mutual TLS between nodes and from the CLI.
//!
//! What a caller does:
//! - `cluster init`: [`Ca::create`], [`Ca::issue`] the first manager's and the admin's
//!   credentials, [`JoinTokens::generate`]; save with [`Ca::save`] /
//!   [`NodeCredentials::save`].
//! - a joining node: parse the [`JoinToken`], dial a manager with
//!   [`join::client_config`] (which pins the CA by the token's digest during the
//!   handshake), send the token and a [`NodeKey::csr_pem`]; the manager answers with
//!   [`join::admit`] (token checked, CSR signed with a fresh id and the token's role);
//!   the joiner ends with [`join::finish`].
//! - every other connection: [`tls::server_config`] / [`tls::client_config`] with a
//!   shared [`DenyList`] of removed nodes; each endpoint calls [`authorize`] with the
//!   roles it allows ([`access`]).
//!
//! Time is a parameter (`now`) wherever a certificate is made; the handshake checks
//! validity against the real clock.

mod base36;
pub mod ca;
pub mod cert;
pub mod error;
pub mod files;
pub mod identity;
pub mod join;
pub mod node;
mod pem;
pub mod tls;
pub mod token;

use std::sync::Arc;

pub use ca::{Ca, CertRequest};
pub use cert::{CaCert, CaDigest};
pub use error::CaError;
pub use files::FileError;
pub use identity::{
    access, authorize, peer_identity, AuthError, Identity, IdentityError, NodeId, NodeRole, Role,
    MANAGER_SERVER_NAME,
};
pub use node::{NodeCredentials, NodeKey};
pub use tls::{ClientAuth, DenyList, TlsError};
pub use token::{JoinToken, JoinTokens, TokenError};

/// The one crypto provider berth's TLS uses: ring. Every config is built with it
/// explicitly, never with rustls' process-wide default (which is ambiguous when, as in
/// this workspace, both ring and aws-lc-rs are compiled in).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `N` bytes from the operating system's secure random source.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    // SystemRandom is getrandom(2); it fails only if the kernel has no entropy source
    // at all, where no key can be made safely either: stop rather than go on.
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .expect("the kernel's random source (getrandom) failed");
    out
}
