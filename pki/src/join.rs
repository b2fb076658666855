//! The joining node's first connection: it has a token but no certificate and does not
//! know the cluster CA yet (trust on first use, pinned by the token's digest, as Swarm).
//!
//! Swarm fetches the CA certificate over an unverified connection and compares its
//! digest with the token's. berth pins during the handshake instead: managers send the
//! CA certificate after their own in the chain ([`crate::tls::server_config`]); the
//! joiner's verifier accepts the server only if some certificate in that chain has the
//! token's digest *and* the server's certificate verifies against it as a manager. So
//! the secret in the token is only ever sent to a manager of the pinned cluster, and
//! the verified CA certificate comes out of the handshake ([`PinnedCa::get`]).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::ca::{Ca, CertRequest};
use crate::cert::{CaCert, CaDigest};
use crate::error::CaError;
use crate::identity::{Identity, NodeId};
use crate::node::{NodeCredentials, NodeKey};
use crate::tls::{refuse, TlsError};
use crate::token::{JoinToken, JoinTokens, TokenError};

/// Why a join did not give a node its credentials.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("no CA was pinned: the join handshake did not succeed")]
    NotPinned,
}

/// The manager's side of a join: checks `token` against the cluster's current
/// tokens and signs the joiner's CSR for a fresh node id with the token's role and
/// the given addresses. Returns the new identity and the certificate (PEM) to send
/// back.
pub fn admit(
    ca: &Ca,
    tokens: &JoinTokens,
    token: &str,
    csr_pem: &str,
    addresses: &[String],
    now: SystemTime,
) -> Result<(Identity, String), JoinError> {
    let role = tokens.validate(token)?;
    let identity = Identity::new(NodeId::generate(), role.role());
    let mut req = CertRequest::new(identity.clone());
    req.addresses = addresses.to_vec();
    let cert = ca.sign_csr(csr_pem, &req, now)?;
    Ok((identity, cert))
}

/// The joiner's last step: the certificate the manager sent, with the joiner's key
/// and the CA pinned during the handshake, checked to belong together (and the CA
/// against the token once more), ready to [`NodeCredentials::save`].
pub fn finish(
    token: &JoinToken,
    pinned: &PinnedCa,
    key: &NodeKey,
    cert_pem: &str,
) -> Result<NodeCredentials, JoinError> {
    let ca = pinned.get().ok_or(JoinError::NotPinned)?;
    token.verify_ca(&ca)?;
    Ok(NodeCredentials::from_pem(ca, cert_pem, &key.key_pem())?)
}

/// The CA certificate a join handshake pinned, once the handshake has succeeded.
#[derive(Debug, Clone, Default)]
pub struct PinnedCa(Arc<Mutex<Option<CaCert>>>);

impl PinnedCa {
    /// The cluster CA, verified against the token's digest; `None` before a successful
    /// handshake.
    pub fn get(&self) -> Option<CaCert> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, ca: CaCert) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(ca);
    }
}

/// A client config for joining with `token`: no client certificate; the server must
/// be a manager (verified against [`crate::MANAGER_SERVER_NAME`]: dial with
/// [`crate::tls::manager_server_name`]) whose certificate chains to the CA the token
/// pins. The returned [`PinnedCa`] holds that CA after the handshake.
pub fn client_config(token: &JoinToken) -> Result<(ClientConfig, PinnedCa), TlsError> {
    let provider = crate::crypto_provider();
    let pinned = PinnedCa::default();
    let verifier = PinningVerifier {
        digest: token.ca_digest(),
        provider: provider.clone(),
        pinned: pinned.clone(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // A resumed session would skip the pinning verifier (and leave PinnedCa empty).
    config.resumption = rustls::client::Resumption::disabled();
    Ok((config, pinned))
}

#[derive(Debug)]
struct PinningVerifier {
    digest: CaDigest,
    provider: Arc<CryptoProvider>,
    pinned: PinnedCa,
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca_der) = intermediates
            .iter()
            .find(|c| CaDigest::of(c) == self.digest)
        else {
            // Name what the server offered (the last certificate of a berth chain is
            // its CA), so a wrong-cluster token is told apart from a stranger.
            let got = intermediates
                .last()
                .map_or(CaDigest::of(end_entity), |c| CaDigest::of(c));
            return Err(refuse(TokenError::PinMismatch {
                pinned: self.digest,
                got,
            }));
        };
        let ca = CaCert::from_der(ca_der.to_vec()).map_err(refuse)?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone())?;
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verified =
            webpki.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)?;
        self.pinned.set(ca);
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
