//! rustls configurations for mutual TLS inside a cluster.
//!
//! Both sides verify the peer against the cluster CA (webpki, through rustls' own
//! verifiers) and then against a [`DenyList`] of removed nodes, at handshake time, so a
//! removed node cannot open a new connection with a certificate that is otherwise still
//! valid. TLS 1.3 only, with ring as the provider.
//!
//! Server names: a client that wants any manager verifies the server against
//! [`MANAGER_SERVER_NAME`] (only manager certificates carry it); a client that wants one
//! particular node verifies against that node's id ([`node_server_name`]).

use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::identity::{Identity, NodeId, MANAGER_SERVER_NAME};
use crate::node::NodeCredentials;
use crate::CaCert;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the cluster CA certificate is not usable as a TLS trust anchor: {0}")]
    TrustAnchor(#[source] rustls::Error),
    #[error("building the certificate verifier failed: {0}")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    #[error("the TLS configuration was refused: {0}")]
    Config(#[source] rustls::Error),
}

/// Node ids whose certificates are refused at handshake: removed nodes (`berth node
/// rm`). Shared: clones see the same set, so the manager updates it once (from the
/// store's watch) and every listener and dialer built with it follows at once.
/// Connections already open are not affected; the caller closes a removed node's.
#[derive(Debug, Clone, Default)]
pub struct DenyList(Arc<RwLock<HashSet<NodeId>>>);

impl DenyList {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn deny(&self, id: NodeId) {
        self.write().insert(id);
    }

    pub fn allow(&self, id: &NodeId) {
        self.write().remove(id);
    }

    /// Replaces the whole set (from the store's list of removed nodes).
    pub fn replace(&self, ids: impl IntoIterator<Item = NodeId>) {
        *self.write() = ids.into_iter().collect();
    }

    pub fn contains(&self, id: &NodeId) -> bool {
        // A panic while holding the lock cannot leave a HashSet half-updated in a
        // way that matters here; keep serving rather than fail every handshake.
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(id)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashSet<NodeId>> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// After the chain is verified: the certificate must name a berth identity, and
    /// that identity must not be denied.
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<Identity, rustls::Error> {
        let identity = Identity::from_cert_der(end_entity).map_err(refuse)?;
        if self.contains(&identity.id) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(identity)
    }
}

/// berth's own reason for refusing a certificate in a handshake, carried inside
/// `rustls::Error::InvalidCertificate(CertificateError::Other(..))`. rustls prints it
/// with `Debug`, so `Debug` here is the plain message, for people reading logs; code
/// finds the typed reason with [`refusal`] and `downcast_ref`.
pub struct Refusal(Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Debug for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Refusal {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl Refusal {
    /// The typed reason (`TokenError`, `IdentityError`), if it is of type `E`.
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.0.downcast_ref()
    }
}

/// The refusal that berth's verifiers put in a rustls error, if this is one.
pub fn refusal(err: &rustls::Error) -> Option<&Refusal> {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<Refusal>()
        }
        _ => None,
    }
}

pub(crate) fn refuse(e: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        Refusal(Box::new(e)),
    ))))
}

/// Whether a server requires a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client must present a certificate from the cluster CA: every endpoint but
    /// joining.
    Required,
    /// A client may come without one (a joining node, which has none yet); a client
    /// that does present one is verified all the same. Every endpoint on such a
    /// listener other than join must call [`authorize`](crate::authorize), which
    /// refuses a peer without a certificate.
    Optional,
}

/// The server side of a node: presents `creds` (with the CA certificate in the chain,
/// for joiners) and verifies clients against the cluster CA and `deny`.
pub fn server_config(
    creds: &NodeCredentials,
    auth: ClientAuth,
    deny: &DenyList,
) -> Result<ServerConfig, TlsError> {
    let provider = crate::crypto_provider();
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(roots(creds.ca())?, provider.clone());
    if auth == ClientAuth::Optional {
        builder = builder.allow_unauthenticated();
    }
    let verifier = DenyingClientVerifier {
        inner: builder.build().map_err(TlsError::Verifier)?,
        deny: deny.clone(),
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(creds.chain(), creds.private_key())
        .map_err(TlsError::Config)?;
    // No resumption: a resumed session skips the verifier, and with it the deny list
    // and the expiry check. Connections between nodes are long-lived, so a full
    // handshake each time costs little.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The client side of a node or the CLI: presents `creds` and verifies the server
/// against the cluster CA, the server name it dials, and `deny`.
pub fn client_config(creds: &NodeCredentials, deny: &DenyList) -> Result<ClientConfig, TlsError> {
    let provider = crate::crypto_provider();
    let inner = WebPkiServerVerifier::builder_with_provider(roots(creds.ca())?, provider.clone())
        .build()
        .map_err(TlsError::Verifier)?;
    let verifier = DenyingServerVerifier {
        inner,
        deny: deny.clone(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(vec![creds.cert_der().clone()], creds.private_key())
        .map_err(TlsError::Config)?;
    // No resumption, for the same reason as on the server side.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// The name to verify a server against when any manager will do.
pub fn manager_server_name() -> ServerName<'static> {
    // MANAGER_SERVER_NAME is a constant valid DNS name.
    ServerName::try_from(MANAGER_SERVER_NAME).unwrap_or_else(|_| unreachable!())
}

/// The name to verify a server against when it must be node `id` (a Raft peer).
pub fn node_server_name(id: &NodeId) -> ServerName<'static> {
    // A NodeId is a DNS label by construction (identity::NodeId::new).
    ServerName::try_from(id.as_str().to_string()).unwrap_or_else(|_| unreachable!())
}

fn roots(ca: &CaCert) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).map_err(TlsError::TrustAnchor)?;
    Ok(Arc::new(roots))
}

/// webpki's client verification, then the identity and deny-list check.
#[derive(Debug)]
struct DenyingClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    deny: DenyList,
}

impl ClientCertVerifier for DenyingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.deny.check(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// webpki's server verification, then the identity and deny-list check.
#[derive(Debug)]
struct DenyingServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    deny: DenyList,
}

impl ServerCertVerifier for DenyingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.deny.check(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
