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

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::ca::{CaCert, CaDigest};
use crate::tls::{refuse, TlsError};
use crate::token::{JoinToken, TokenError};

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
