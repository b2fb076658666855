//! Why a PKI operation on keys and certificates failed: [`CaError`], shared by the CA
//! (`ca.rs`), the certificates it makes and trusts (`cert.rs`), a node's credentials
//! (`node.rs`) and PEM parsing (`pem.rs`).

use crate::identity::IdentityError;

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("generating a key or certificate failed: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("{what} is not valid PEM: {detail}")]
    BadPem { what: &'static str, detail: String },
    #[error("{what} could not be parsed: {detail}")]
    Parse { what: &'static str, detail: String },
    #[error("the private key does not belong to {what} (their public keys differ)")]
    KeyMismatch { what: &'static str },
    #[error("the certificate is not a CA certificate (its basicConstraints do not say CA:TRUE)")]
    NotCa,
    #[error("the node certificate was not issued by this cluster's CA (its signature does not verify against the CA's key)")]
    NotIssuedByCa,
    #[error("the certificate signing request is not valid: {0} (expected a PEM CERTIFICATE REQUEST signed with its own key, like NodeKey::csr_pem makes)")]
    Csr(#[source] rcgen::Error),
    #[error("address {addr:?} cannot be put in a certificate: {detail} (give an IP address or a DNS name)")]
    BadAddress { addr: String, detail: String },
    #[error("the certificate's validity ended at or before it would start")]
    EmptyValidity,
    #[error(transparent)]
    Identity(#[from] IdentityError),
}
