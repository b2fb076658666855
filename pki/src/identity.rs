//! Who a certificate speaks for: a node id and a role, written into every certificate
//! the cluster CA issues and read back from a verified peer's certificate.
//!
//! The encoding follows Swarm's: subject CN = node id, subject OU = role, plus a URI
//! SAN `berth://node/<id>` so tools that only look at SANs see the id too. Both must
//! agree, or the certificate is not a berth identity.

use std::fmt;
use std::str::FromStr;

use x509_parser::extensions::GeneralName;

/// The URI SAN prefix every node certificate carries, followed by the node id.
pub const NODE_URI_PREFIX: &str = "berth://node/";

/// The DNS name every manager certificate carries (and no other certificate does). A
/// client that dials "any manager" (a joiner, an agent, the CLI) verifies the server
/// against this name, so a worker's or admin's certificate cannot pose as a manager.
pub const MANAGER_SERVER_NAME: &str = "berth-manager";

/// Why a node id, a role or a certificate's identity is not valid.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum IdentityError {
    #[error("node id {id:?} is not valid: {reason} (a node id is 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-')")]
    BadNodeId { id: String, reason: &'static str },
    #[error("unknown role {0:?}: expected manager, worker or admin")]
    UnknownRole(String),
    #[error("the certificate could not be parsed as X.509: {0}")]
    Parse(String),
    #[error("the certificate's subject has no common name (CN): it was not issued by a berth cluster CA")]
    MissingCommonName,
    #[error("the certificate's subject has no organizational unit (OU) naming its role: it was not issued by a berth cluster CA")]
    MissingRole,
    #[error(
        "the certificate's subject has more than one {0}: it was not issued by a berth cluster CA"
    )]
    Ambiguous(&'static str),
    #[error("the certificate's URI SAN does not name node {id} ({NODE_URI_PREFIX}{id} expected): it was not issued by a berth cluster CA")]
    UriMismatch { id: String },
}

/// A node's id: a DNS label (so it can be a TLS server name), 1-63 characters of
/// `a-z0-9-`. Generated ids are 25 base36 characters (128 random bits), like Swarm's.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

impl NodeId {
    /// Checks `id` and wraps it.
    pub fn new(id: &str) -> Result<Self, IdentityError> {
        let bad = |reason| IdentityError::BadNodeId {
            id: id.to_string(),
            reason,
        };
        if id.is_empty() {
            return Err(bad("it is empty"));
        }
        if id.len() > 63 {
            return Err(bad("it is longer than 63 characters"));
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(bad("it has a character other than a-z, 0-9 and '-'"));
        }
        if id.starts_with('-') || id.ends_with('-') {
            return Err(bad("it starts or ends with '-'"));
        }
        Ok(Self(id.to_string()))
    }

    /// A fresh random id: 128 bits from the system's secure random source, base36.
    pub fn generate() -> Self {
        Self(crate::base36::encode(&crate::random_bytes::<16>()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.0)
    }
}

/// What a certificate's holder may do.
///
/// `Admin` is the CLI's identity (issued by `cluster init` to root, like a Docker
/// context's client certificate or a Nomad management token): it may call the
/// control API like a manager, but its certificate is client-only (no serverAuth usage,
/// no `berth-manager` name), so it can never pose as a manager nor join Raft.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Manager,
    Worker,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
            Role::Admin => "admin",
        }
    }
}

/// A node's role in the cluster: what a join token gives, what the store records of
/// each node, what a node's configuration says it is. Managers and workers join;
/// admins are issued, not joined, so an admin is a [`Role`] and never a node's.
/// Serialized as `"manager"` / `"worker"`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Manager,
    Worker,
}

impl NodeRole {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Manager => "manager",
            NodeRole::Worker => "worker",
        }
    }

    /// The certificate role a node of this role holds.
    pub fn role(self) -> Role {
        match self {
            NodeRole::Worker => Role::Worker,
            NodeRole::Manager => Role::Manager,
        }
    }
}

impl FromStr for Role {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "manager" => Ok(Role::Manager),
            "worker" => Ok(Role::Worker),
            "admin" => Ok(Role::Admin),
            other => Err(IdentityError::UnknownRole(other.to_string())),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which roles may use each kind of endpoint. An endpoint handler calls
/// [`authorize`] (or [`Identity::require_role`]) with one of these.
pub mod access {
    use super::Role;

    /// The control API (stacks, services, nodes, tokens): managers and the CLI.
    pub const CONTROL_API: &[Role] = &[Role::Manager, Role::Admin];
    /// Raft messages between managers: managers only.
    pub const RAFT: &[Role] = &[Role::Manager];
    /// The dispatcher (assignments down, task status up): every node runs an agent.
    pub const DISPATCHER: &[Role] = &[Role::Manager, Role::Worker];
    /// A node's own endpoints (its containers' logs, signals, exec): the managers,
    /// which route the API's requests to the node a task runs on. Never a worker
    /// (one node must not reach into another's containers) nor the CLI (it goes
    /// through a manager, which checks what it asks against the store).
    pub const NODE_API: &[Role] = &[Role::Manager];
    /// Which nodes hold an image: every node (a node fetching an image it lacks asks
    /// where it is) and the CLI (`berth up` accepts an image some node holds). The
    /// answer names nodes and their addresses, which `node ls` shows an admin anyway.
    pub const IMAGE_LOOKUP: &[Role] = &[Role::Manager, Role::Worker, Role::Admin];
}

/// The (node id, role) a certificate was issued for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub id: NodeId,
    pub role: Role,
}

/// Why a peer may not use an endpoint.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error(
        "the peer presented no certificate: this endpoint needs a berth node or admin certificate"
    )]
    NoCertificate,
    #[error("the peer's certificate is not a berth identity: {0}")]
    Invalid(#[from] IdentityError),
    #[error("node {id} has role {role}; this endpoint needs role {}", roles(.allowed))]
    Forbidden {
        id: NodeId,
        role: Role,
        allowed: Vec<Role>,
    },
}

fn roles(allowed: &[Role]) -> String {
    allowed
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(" or ")
}

impl Identity {
    pub fn new(id: NodeId, role: Role) -> Self {
        Self { id, role }
    }

    /// Reads the identity out of a DER certificate. This does not verify the
    /// certificate: call it on a peer's certificate after the TLS handshake has
    /// (see [`peer_identity`]), or on one of our own.
    pub fn from_cert_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::Parse(e.to_string()))?;
        let subject = cert.subject();
        let cn = single(subject.iter_common_name(), "common name (CN)")?
            .ok_or(IdentityError::MissingCommonName)?;
        let ou = single(
            subject.iter_organizational_unit(),
            "organizational unit (OU)",
        )?
        .ok_or(IdentityError::MissingRole)?;
        let id = NodeId::new(&cn)?;
        let role: Role = ou.parse()?;

        let expected_uri = format!("{NODE_URI_PREFIX}{id}");
        let sans = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::Parse(e.to_string()))?;
        let uri_matches = sans.is_some_and(|ext| {
            ext.value
                .general_names
                .iter()
                .any(|n| matches!(n, GeneralName::URI(u) if *u == expected_uri))
        });
        if !uri_matches {
            return Err(IdentityError::UriMismatch { id: id.0 });
        }
        Ok(Self { id, role })
    }

    /// Ok if this identity's role is one of `allowed` (see [`access`]).
    pub fn require_role(&self, allowed: &[Role]) -> Result<(), AuthError> {
        if allowed.contains(&self.role) {
            Ok(())
        } else {
            Err(AuthError::Forbidden {
                id: self.id.clone(),
                role: self.role,
                allowed: allowed.to_vec(),
            })
        }
    }
}

fn single<'a>(
    mut values: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
    what: &'static str,
) -> Result<Option<String>, IdentityError> {
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(IdentityError::Ambiguous(what));
    }
    let text = first
        .as_str()
        .map_err(|e| IdentityError::Parse(format!("{what}: {e}")))?;
    Ok(Some(text.to_string()))
}

/// The identity of the peer of an established TLS connection (server or client side:
/// pass `&ServerConnection`, `&ClientConnection`, or tokio-rustls'
/// `stream.get_ref().1`). The certificate was verified by the handshake (chain to the
/// cluster CA, validity, deny list), so only its identity is read here.
pub fn peer_identity(conn: &rustls::CommonState) -> Result<Identity, AuthError> {
    let leaf = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or(AuthError::NoCertificate)?;
    Ok(Identity::from_cert_der(leaf)?)
}

/// [`peer_identity`] and then [`Identity::require_role`]: the one call an endpoint
/// makes before doing anything.
pub fn authorize(conn: &rustls::CommonState, allowed: &[Role]) -> Result<Identity, AuthError> {
    let identity = peer_identity(conn)?;
    identity.require_role(allowed)?;
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids() {
        for good in ["a", "node-1", "0", &"x".repeat(63)] {
            assert!(NodeId::new(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("-a", "starts or ends"),
            ("a-", "starts or ends"),
            ("Node", "character other"),
            ("a.b", "character other"),
            ("a b", "character other"),
            (&"x".repeat(64), "longer than 63"),
        ] {
            let err = NodeId::new(bad).expect_err(bad).to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        let generated = NodeId::generate();
        assert_eq!(generated.as_str().len(), 25);
        assert!(NodeId::new(generated.as_str()).is_ok());
        assert_ne!(generated, NodeId::generate());
    }

    #[test]
    fn roles_roundtrip_and_authorize() {
        for role in [Role::Manager, Role::Worker, Role::Admin] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().is_err());

        let worker = Identity::new(NodeId::new("w1").unwrap(), Role::Worker);
        let err = worker.require_role(access::CONTROL_API).unwrap_err();
        assert_eq!(
            err.to_string(),
            "node w1 has role worker; this endpoint needs role manager or admin"
        );
        assert!(worker.require_role(access::DISPATCHER).is_ok());
        let admin = Identity::new(NodeId::new("cli").unwrap(), Role::Admin);
        assert!(admin.require_role(access::CONTROL_API).is_ok());
        assert!(admin.require_role(access::RAFT).is_err());
    }

    #[test]
    fn garbage_is_not_an_identity() {
        assert!(matches!(
            Identity::from_cert_der(b"not a certificate"),
            Err(IdentityError::Parse(_))
        ));
    }
}
