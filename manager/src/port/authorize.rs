//! Who may call which HTTP path on the cluster port: a pure function of the path and
//! the verified client certificate's identity, applied by the port before a request
//! reaches the router, so no handler can forget it.
//!
//! | path | who |
//! |---|---|
//! | `/v1/cluster/join`, `/v1/ping` | anyone, with or without a certificate (a joiner has none yet) |
//! | `/v1/cluster/images/holders` | a worker, a manager or an admin (which nodes hold an image: a node fetching one it lacks asks, and so does `berth up` from a remote CLI) |
//! | `/v1/dispatcher/...`, `/v1/cluster/images/...` | a worker or a manager (every node runs an agent, and fetches the images it lacks from the other nodes) |
//! | `/v1/node/...` | a manager only (a node's own containers: logs, signals, exec; managers route the API's requests there) |
//! | anything else | an admin (the CLI) or a manager |
//!
//! Only exact, plain paths are relaxed: a node's path with a `.` or `..` segment, an
//! empty segment or a percent sign is judged as "anything else", so no spelling of a
//! path can reach the control API with a weaker certificate than it needs. The node
//! class is the other way round (stricter than the control API: no admin), and any
//! path that starts with `/v1/node` is in it, plain or not, so no spelling reaches it
//! with an admin certificate either.

use pki::{access, Identity, Role};

/// Paths open to a client without a certificate.
const OPEN: &[&str] = &["/v1/cluster/join", "/v1/ping"];
/// Paths open to every certificate of the cluster: nodes and admins.
const LOOKUP: &[&str] = &["/v1/cluster/images/holders"];
/// Paths under these prefixes are for nodes: the dispatcher's (agents), and the images
/// a node fetches from another (`crate::api::images`).
const NODE_PREFIXES: &[&str] = &["/v1/dispatcher/", "/v1/cluster/images/"];
/// Paths under this prefix are a node's own endpoints (`crate::api::node`), for the
/// managers only.
const NODE_API_PREFIX: &str = "/v1/node";

/// Why a request was refused: its HTTP status (401 without a certificate, 403 with the
/// wrong role) and a message for the caller, sent as `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

/// Which kind of endpoint a path is, for [`authorize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Open,
    Lookup,
    Node,
    NodeApi,
    Control,
}

fn class(path: &str) -> Class {
    if OPEN.contains(&path) {
        return Class::Open;
    }
    if LOOKUP.contains(&path) {
        return Class::Lookup;
    }
    // Stricter than the control API, so every spelling is in it (`/v1/nodes` is the
    // control API's, and needs no such care: an admin may call it).
    if path
        .strip_prefix(NODE_API_PREFIX)
        .is_some_and(|rest| rest.is_empty() || !rest.starts_with('s'))
    {
        return Class::NodeApi;
    }
    let plain = |rest: &str| {
        !rest.contains('%')
            && rest
                .split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
    };
    let node = NODE_PREFIXES
        .iter()
        .any(|prefix| path.strip_prefix(prefix).is_some_and(plain));
    if node {
        Class::Node
    } else {
        Class::Control
    }
}

/// Ok if `peer` (None: the client presented no certificate) may call `path`.
pub fn authorize(path: &str, peer: Option<&Identity>) -> Result<(), Refusal> {
    let (allowed, needs): (&[Role], &str) = match class(path) {
        Class::Open => return Ok(()),
        Class::Lookup => (
            access::IMAGE_LOOKUP,
            "a worker, manager or admin certificate",
        ),
        Class::Node => (access::DISPATCHER, "a worker or manager certificate"),
        Class::NodeApi => (access::NODE_API, "a manager certificate"),
        Class::Control => (access::CONTROL_API, "a manager or admin certificate"),
    };
    let Some(peer) = peer else {
        return Err(Refusal {
            status: 401,
            message: format!(
                "{path}: this endpoint needs {needs}; the client presented none (only {} are open without one)",
                OPEN.join(" and ")
            ),
        });
    };
    if allowed.contains(&peer.role) {
        return Ok(());
    }
    Err(Refusal {
        status: 403,
        message: format!(
            "{path}: this endpoint needs {needs}; the client presented {} {} certificate for node {}",
            if peer.role == Role::Admin { "an" } else { "a" },
            peer.role,
            peer.id
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pki::NodeId;

    fn who(role: Role) -> Identity {
        Identity::new(NodeId::new("n1").unwrap(), role)
    }

    #[test]
    fn table() {
        let m = Some(who(Role::Manager));
        let w = Some(who(Role::Worker));
        let a = Some(who(Role::Admin));
        let none: Option<Identity> = None;
        // (path, peer, expected status: 200 = allowed)
        let cases: &[(&str, &Option<Identity>, u16)] = &[
            ("/v1/cluster/join", &none, 200),
            ("/v1/cluster/join", &w, 200),
            ("/v1/ping", &none, 200),
            ("/v1/ping", &a, 200),
            ("/v1/state", &none, 401),
            ("/v1/state", &w, 403),
            ("/v1/state", &a, 200),
            ("/v1/state", &m, 200),
            ("/v1/stacks/web", &w, 403),
            ("/v1/dispatcher/x", &none, 401),
            ("/v1/dispatcher/x", &w, 200),
            ("/v1/dispatcher/x", &m, 200),
            // The dispatcher is the agents': the CLI has no business there.
            ("/v1/dispatcher/x", &a, 403),
            ("/v1/dispatcher/tasks/t1/status", &w, 200),
            // Spellings that could mean another path are the control API's.
            ("/v1/dispatcher/../state", &w, 403),
            ("/v1/dispatcher/./x", &w, 403),
            ("/v1/dispatcher//x", &w, 403),
            ("/v1/dispatcher/", &w, 403),
            ("/v1/dispatcher/%2e%2e/state", &w, 403),
            ("/v1/dispatcher", &w, 403),
            // A node fetches the images it lacks; the CLI has no business there either.
            ("/v1/cluster/images/manifest", &w, 200),
            ("/v1/cluster/images/blobs/sha256:0123abcd", &m, 200),
            ("/v1/cluster/images/manifest", &a, 403),
            ("/v1/cluster/images/manifest", &none, 401),
            ("/v1/cluster/images/../../state", &w, 403),
            ("/v1/cluster/images/%2e%2e/state", &w, 403),
            ("/v1/cluster/images", &w, 403),
            ("/v1/cluster/imagesx/manifest", &w, 403),
            // Where an image is: every node, and the CLI (`up` from a remote host).
            ("/v1/cluster/images/holders", &w, 200),
            ("/v1/cluster/images/holders", &m, 200),
            ("/v1/cluster/images/holders", &a, 200),
            ("/v1/cluster/images/holders", &none, 401),
            // Only that exact path: another spelling is the control API's.
            ("/v1/cluster/images/holders/", &w, 403),
            ("/v1/cluster/images/holders/../blobs/sha256:0123", &w, 403),
            ("/v1/cluster/images/blobs/sha256:0123", &a, 403),
            ("/v1/cluster", &w, 403),
            ("/v1/cluster/join/", &none, 401),
            ("/v1/cluster/join/../../state", &none, 401),
            // A node's own endpoints: the managers only, never a worker (another
            // node's containers) nor the CLI (it asks a manager).
            ("/v1/node/tasks/t1/logs", &m, 200),
            ("/v1/node/tasks/t1/exec", &m, 200),
            ("/v1/node/tasks/t1/exec", &w, 403),
            ("/v1/node/tasks/t1/exec", &a, 403),
            ("/v1/node/tasks/t1/logs", &none, 401),
            ("/v1/node", &a, 403),
            ("/v1/node/", &a, 403),
            ("/v1/node//tasks/t1/exec", &a, 403),
            ("/v1/node/../tasks/t1/exec", &a, 403),
            ("/v1/node/%2e%2e/state", &a, 403),
            ("/v1/node/tasks/t1/kill", &w, 403),
            // `/v1/nodes` is the control API's (node ls), not a node's.
            ("/v1/nodes", &a, 200),
            ("/v1/nodes/n1", &a, 200),
            ("/v1/nodes", &w, 403),
            ("/V1/PING", &none, 401),
            ("", &none, 401),
        ];
        for (path, peer, want) in cases {
            let got = match authorize(path, peer.as_ref()) {
                Ok(()) => 200,
                Err(r) => r.status,
            };
            assert_eq!(got, *want, "{path} with {peer:?}");
        }
    }

    #[test]
    fn refusals_explain_themselves() {
        let err = authorize("/v1/state", Some(&who(Role::Worker))).unwrap_err();
        assert_eq!(
            err.message,
            "/v1/state: this endpoint needs a manager or admin certificate; the client presented a worker certificate for node n1"
        );
        let err = authorize("/v1/dispatcher/x", Some(&who(Role::Admin))).unwrap_err();
        assert_eq!(
            err.message,
            "/v1/dispatcher/x: this endpoint needs a worker or manager certificate; the client presented an admin certificate for node n1"
        );
        let err = authorize("/v1/node/tasks/t1/exec", Some(&who(Role::Worker))).unwrap_err();
        assert_eq!(
            err.message,
            "/v1/node/tasks/t1/exec: this endpoint needs a manager certificate; the client presented a worker certificate for node n1"
        );
        let err = authorize("/v1/state", None).unwrap_err();
        assert_eq!(
            err.message,
            "/v1/state: this endpoint needs a manager or admin certificate; the client presented none (only /v1/cluster/join and /v1/ping are open without one)"
        );
    }
}
