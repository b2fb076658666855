//! A node's own credentials: its private key, its certificate from the cluster CA, and
//! the CA certificate it trusts. What a node has after `cluster init` or `cluster join`.

use std::fmt;
use std::time::SystemTime;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::cert::{check_key_matches, validity, CaCert};
use crate::error::CaError;
use crate::identity::Identity;

/// A fresh private key on a joining (or renewing) node, and the certificate signing
/// request that carries its public key to a manager. The key never leaves the node.
pub struct NodeKey {
    key: KeyPair,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeKey(..)")
    }
}

impl NodeKey {
    /// An ECDSA P-256 key from the system's secure random source.
    pub fn generate() -> Result<Self, CaError> {
        Ok(Self {
            key: KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(CaError::Generate)?,
        })
    }

    /// A PEM CSR for this key. Its subject is a placeholder: the manager decides the
    /// identity ([`Ca::sign_csr`](crate::Ca::sign_csr)).
    pub fn csr_pem(&self) -> Result<String, CaError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "berth join request");
        params.distinguished_name = dn;
        let csr = params
            .serialize_request(&self.key)
            .map_err(CaError::Generate)?;
        Ok(crate::pem::encode("CERTIFICATE REQUEST", csr.der()))
    }

    /// The private key as PKCS#8 PEM (for [`NodeCredentials::from_pem`]).
    pub fn key_pem(&self) -> String {
        crate::pem::key(&self.key)
    }
}

/// A node's key, its certificate and the cluster CA's certificate, checked to belong
/// together: the key is the certificate's, the certificate was signed by the CA and
/// names a berth identity.
#[derive(Clone)]
pub struct NodeCredentials {
    ca: CaCert,
    cert: CertificateDer<'static>,
    key_der: Vec<u8>,
    identity: Identity,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl fmt::Debug for NodeCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("NodeCredentials")
            .field("identity", &self.identity)
            .field("ca", &self.ca)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl NodeCredentials {
    pub fn from_pem(ca: CaCert, cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let cert = crate::pem::parse_cert(cert_pem, "the node certificate")?;
        let key = crate::pem::parse_key(key_pem, "the node key")?;
        check_key_matches(&cert, &key, "the node certificate")?;
        ca.verify_issued(&cert)?;
        let identity = Identity::from_cert_der(&cert)?;
        let (not_before, not_after) = validity(&cert).ok_or(CaError::Parse {
            what: "the node certificate",
            detail: "its validity period is out of range".to_string(),
        })?;
        Ok(Self {
            ca,
            cert,
            key_der: key.serialize_der(),
            identity,
            not_before,
            not_after,
        })
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn ca(&self) -> &CaCert {
        &self.ca
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub fn cert_pem(&self) -> String {
        crate::pem::cert(&self.cert)
    }

    /// The private key as PKCS#8 PEM, to be written only to a 0600 file.
    pub fn key_pem(&self) -> String {
        crate::pem::encode("PRIVATE KEY", &self.key_der)
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Half-way through the certificate's life: from then on the node should ask a
    /// manager for a new one (a CSR over its current mutual-TLS connection; the manager
    /// signs it with the identity of the verified peer). Swarm renews at a random point
    /// between 50% and 80%; the caller may add jitter.
    pub fn renew_after(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life / 2
    }

    /// The chain a server sends: its certificate, then the CA's (so that a joining
    /// client can pin the CA by digest during the handshake).
    pub(crate) fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone(), self.ca.der().clone()]
    }

    pub(crate) fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}
