//! The cluster CA: a self-signed ECDSA P-256 root that signs every node's certificate.
//!
//! Like Swarm's, there is one root per cluster and no intermediates (path length 0).
//! Its identity to the outside is its digest (SHA-256 of the DER certificate), which
//! join tokens carry so that a joining node can pin it. The CA's private key lives on
//! managers only; whoever holds it can mint any identity.

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::cert::{check_key_matches, CaCert, CaDigest};
use crate::error::CaError;
use crate::identity::{Identity, Role, MANAGER_SERVER_NAME, NODE_URI_PREFIX};
use crate::node::NodeCredentials;

/// How long a cluster CA is valid: 20 years, as Swarm's.
pub const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// How long a node or admin certificate is valid by default: 90 days, as Swarm's.
/// A node renews at half-life ([`NodeCredentials::renew_after`]).
pub const NODE_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Certificates start this long before they are issued, so a peer whose clock is a
/// little behind the CA's does not see a "not yet valid" certificate.
pub const BACKDATE: Duration = Duration::from_secs(3600);

/// What to put in a node (or admin) certificate.
#[derive(Debug, Clone)]
pub struct CertRequest {
    pub identity: Identity,
    /// IP addresses and DNS names the node is reached at (SANs), besides its id.
    pub addresses: Vec<String>,
    pub validity: Duration,
}

impl CertRequest {
    pub fn new(identity: Identity) -> Self {
        Self {
            identity,
            addresses: Vec::new(),
            validity: NODE_VALIDITY,
        }
    }

    pub fn address(mut self, addr: impl Into<String>) -> Self {
        self.addresses.push(addr.into());
        self
    }

    pub fn validity(mut self, validity: Duration) -> Self {
        self.validity = validity;
        self
    }
}

/// The cluster CA: its certificate and its signing key.
pub struct Ca {
    cert: CaCert,
    key: KeyPair,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("Ca").field("cert", &self.cert).finish()
    }
}

impl Ca {
    /// A new cluster CA, valid from `now` (less [`BACKDATE`]) for [`CA_VALIDITY`].
    pub fn create(now: SystemTime) -> Result<Self, CaError> {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::Generate)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "berth cluster CA");
        // A random tag tells one cluster's CA from another's in error messages and
        // `openssl x509 -text`; the digest is what actually identifies it.
        dn.push(
            DnType::OrganizationName,
            format!(
                "berth cluster {}",
                crate::base36::encode(&crate::random_bytes::<8>())
            ),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, now, CA_VALIDITY, None)?;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(CaError::Generate)?;
        Ok(Self {
            cert: CaCert::from_der(cert.der().to_vec())?,
            key,
        })
    }

    /// The CA from its certificate and key (PEM), checking that they belong together.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let cert = CaCert::from_pem(cert_pem)?;
        let key = crate::pem::parse_key(key_pem, "the CA key")?;
        check_key_matches(cert.der(), &key, "the CA certificate")?;
        Ok(Self { cert, key })
    }

    pub fn cert(&self) -> &CaCert {
        &self.cert
    }

    pub fn digest(&self) -> CaDigest {
        self.cert.digest()
    }

    /// The CA's private key (PKCS#8 PEM), to be written only to a 0600 file.
    pub fn key_pem(&self) -> String {
        crate::pem::key(&self.key)
    }

    /// A new key and a certificate for it: the first manager's and the admin's at
    /// `cluster init`.
    pub fn issue(&self, req: &CertRequest, now: SystemTime) -> Result<NodeCredentials, CaError> {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::Generate)?;
        let params = self.node_params(req, now)?;
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(CaError::Generate)?;
        NodeCredentials::from_pem(
            self.cert.clone(),
            &crate::pem::cert(cert.der()),
            &crate::pem::key(&key),
        )
    }

    /// A certificate for the key in `csr_pem` (a joining or renewing node's), saying
    /// what `req` says. Only the request's public key is used: the node's identity is
    /// the manager's decision (a fresh id, and the role of the token it presented),
    /// never what the requester wrote. Returns the certificate as PEM.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        req: &CertRequest,
        now: SystemTime,
    ) -> Result<String, CaError> {
        let csr = CertificateSigningRequestParams::from_der(&crate::pem::parse_csr(csr_pem)?)
            .map_err(CaError::Csr)?;
        let signed = CertificateSigningRequestParams {
            params: self.node_params(req, now)?,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer()?)
        .map_err(CaError::Generate)?;
        Ok(crate::pem::cert(signed.der()))
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, CaError> {
        Issuer::from_ca_cert_der(self.cert.der(), &self.key).map_err(CaError::Generate)
    }

    /// The certificate parameters of a node: pure over the request, the time and the
    /// CA's own end of validity.
    fn node_params(
        &self,
        req: &CertRequest,
        now: SystemTime,
    ) -> Result<CertificateParams, CaError> {
        let Identity { id, role } = &req.identity;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id.as_str());
        dn.push(DnType::OrganizationalUnitName, role.as_str());
        dn.push(DnType::OrganizationName, "berth");
        params.distinguished_name = dn;

        let ia5 = |s: String| {
            rcgen::string::Ia5String::try_from(s.clone()).map_err(|e| CaError::BadAddress {
                addr: s,
                detail: e.to_string(),
            })
        };
        let mut sans = vec![
            SanType::URI(ia5(format!("{NODE_URI_PREFIX}{id}"))?),
            SanType::DnsName(ia5(id.to_string())?),
        ];
        if *role == Role::Manager {
            sans.push(SanType::DnsName(ia5(MANAGER_SERVER_NAME.to_string())?));
        }
        for addr in &req.addresses {
            sans.push(match addr.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    // rcgen takes any ASCII; a name webpki would not match is a mistake.
                    rustls_pki_types::DnsName::try_from(addr.as_str()).map_err(|e| {
                        CaError::BadAddress {
                            addr: addr.clone(),
                            detail: e.to_string(),
                        }
                    })?;
                    SanType::DnsName(ia5(addr.clone())?)
                }
            });
        }
        params.subject_alt_names = sans;

        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Nodes both serve and dial; the admin (CLI) only dials, so its certificate
        // can never be a server's.
        params.extended_key_usages = match role {
            Role::Admin => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Role::Manager | Role::Worker => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, now, req.validity, Some(self.cert.not_after()))?;
        params.serial_number = Some(random_serial());
        Ok(params)
    }
}

/// `not_before = now - BACKDATE`, `not_after = now + validity`, capped at `cap`.
fn set_validity(
    params: &mut CertificateParams,
    now: SystemTime,
    validity: Duration,
    cap: Option<SystemTime>,
) -> Result<(), CaError> {
    let start = now.checked_sub(BACKDATE).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut end = now.checked_add(validity).ok_or(CaError::EmptyValidity)?;
    if let Some(cap) = cap {
        end = end.min(cap);
    }
    if end <= start {
        return Err(CaError::EmptyValidity);
    }
    params.not_before = OffsetDateTime::from(start);
    params.not_after = OffsetDateTime::from(end);
    Ok(())
}

/// 16 random bytes, positive and without a leading zero byte (RFC 5280: a positive
/// serial of at most 20 octets; unpredictable, as the CA/Browser Forum asks).
fn random_serial() -> SerialNumber {
    let mut bytes = crate::random_bytes::<16>();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::validity;

    #[test]
    fn validity_is_backdated_and_capped_by_the_ca() {
        let now = SystemTime::now();
        let ca = Ca::create(now).unwrap();
        let (start, end) = validity(ca.cert().der()).unwrap();
        // X.509 times have whole seconds.
        let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(secs(start), secs(now - BACKDATE));
        assert_eq!(secs(end), secs(now + CA_VALIDITY));

        let id = Identity::new(crate::NodeId::new("n1").unwrap(), Role::Worker);
        let long = CertRequest::new(id).validity(CA_VALIDITY * 2);
        let creds = ca.issue(&long, now).unwrap();
        assert_eq!(secs(creds.not_after()), secs(ca.cert().not_after()));
    }
}
