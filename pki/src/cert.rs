//! Certificates as the cluster reads them: the CA's certificate, public and given to
//! every node ([`CaCert`]), its digest that join tokens pin ([`CaDigest`]), and the
//! checks the CA and a node's credentials both make on a certificate (its validity
//! period, that a key is its key).

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::KeyPair;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use crate::error::CaError;

/// SHA-256 of the CA certificate's DER bytes: what a join token pins.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaDigest(pub [u8; 32]);

impl CaDigest {
    pub fn of(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }
}

impl fmt::Display for CaDigest {
    /// `sha256:<hex>`, the form shown to people (`berth cluster status`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for CaDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaDigest({self})")
    }
}

/// The CA's certificate: public, given to every node.
#[derive(Clone, PartialEq, Eq)]
pub struct CaCert {
    der: CertificateDer<'static>,
}

impl fmt::Debug for CaCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaCert({})", self.digest())
    }
}

impl CaCert {
    /// Checks that `der` is a CA certificate and wraps it.
    pub fn from_der(der: Vec<u8>) -> Result<Self, CaError> {
        let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| CaError::Parse {
            what: "the CA certificate",
            detail: e.to_string(),
        })?;
        if !cert.is_ca() {
            return Err(CaError::NotCa);
        }
        Ok(Self {
            der: CertificateDer::from(der),
        })
    }

    pub fn from_pem(pem: &str) -> Result<Self, CaError> {
        Self::from_der(crate::pem::parse_cert(pem, "the CA certificate")?.to_vec())
    }

    pub fn to_pem(&self) -> String {
        crate::pem::cert(&self.der)
    }

    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    pub fn digest(&self) -> CaDigest {
        CaDigest::of(&self.der)
    }

    /// The end of the CA's validity; issued certificates never outlive it.
    pub fn not_after(&self) -> SystemTime {
        validity(&self.der).map_or(SystemTime::UNIX_EPOCH, |(_, end)| end)
    }

    /// Checks that `cert_der` was signed by this CA's key.
    pub(crate) fn verify_issued(&self, cert_der: &[u8]) -> Result<(), CaError> {
        let parse = |what, der| {
            x509_parser::parse_x509_certificate(der)
                .map(|(_, c)| c)
                .map_err(|e| CaError::Parse {
                    what,
                    detail: e.to_string(),
                })
        };
        let ca = parse("the CA certificate", &self.der)?;
        let cert = parse("the node certificate", cert_der)?;
        cert.verify_signature(Some(ca.public_key()))
            .map_err(|_| CaError::NotIssuedByCa)
    }
}

/// The certificate's (not_before, not_after).
pub(crate) fn validity(der: &[u8]) -> Option<(SystemTime, SystemTime)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let v = cert.validity();
    let to_system = |t: &x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
        } else {
            SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
        }
    };
    Some((to_system(&v.not_before)?, to_system(&v.not_after)?))
}

/// Fails unless `key`'s public key is the one in `cert_der`.
pub(crate) fn check_key_matches(
    cert_der: &[u8],
    key: &KeyPair,
    what: &'static str,
) -> Result<(), CaError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| CaError::Parse {
        what,
        detail: e.to_string(),
    })?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(CaError::KeyMismatch { what });
    }
    Ok(())
}
