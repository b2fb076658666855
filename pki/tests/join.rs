//! Joining a cluster over real TLS on loopback: the joiner pins the CA by the token's
//! digest during the handshake, the manager checks the token's secret and signs the
//! joiner's CSR with the token's role.

mod common;

use std::net::SocketAddr;
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;

use common::{creds, request, rustls_error, Outcome, TestServer};
use pki::tls::{client_config, manager_server_name, server_config};
use pki::{
    Ca, CaCert, ClientAuth, DenyList, Identity, JoinToken, JoinTokens, NodeCredentials, NodeKey,
    NodeRole, Role, TokenError,
};

/// A manager listening for joins (client certificates optional).
async fn manager() -> TestServer {
    let ca = Ca::create(SystemTime::now()).expect("create CA");
    let manager = creds(&ca, "m1", Role::Manager);
    let config =
        server_config(&manager, ClientAuth::Optional, &DenyList::new()).expect("server config");
    TestServer::start(config, ca).await
}

/// What a joining node does: pin, send token and CSR, build credentials from the
/// answer. Returns the credentials, or the manager's refusal / the TLS error as text.
async fn join(addr: SocketAddr, token: &str) -> Result<NodeCredentials, String> {
    let parsed: JoinToken = token.parse().map_err(|e: TokenError| e.to_string())?;
    let (config, pinned) = pki::join::client_config(&parsed).expect("join config");
    let key = NodeKey::generate().expect("node key");
    let req = format!("join {token}\n{}END", key.csr_pem().expect("csr"));
    let (answer, server) = request(config, addr, manager_server_name(), &req)
        .await
        .map_err(|e| format!("tls: {e} ({:?})", rustls_error(&e)))?;
    if answer.starts_with("denied") {
        return Err(answer);
    }
    assert_eq!(server.map(|s| s.role), Some(Role::Manager));
    let cert = answer.strip_suffix("END").expect("certificate then END");
    Ok(pki::join::finish(&parsed, &pinned, &key, cert).expect("issued credentials"))
}

fn token(server: &TestServer, role: NodeRole) -> String {
    server
        .state
        .tokens
        .lock()
        .expect("tokens lock")
        .token(role)
        .to_string()
}

#[tokio::test]
async fn worker_and_manager_tokens_give_their_role() {
    let mut server = manager().await;
    for (role, expected) in [
        (NodeRole::Worker, Role::Worker),
        (NodeRole::Manager, Role::Manager),
    ] {
        let creds = join(server.addr, &token(&server, role)).await.unwrap();
        assert_eq!(creds.identity().role, expected);
        assert_eq!(
            creds.ca(),
            server.state.ca.cert(),
            "the pinned CA is the cluster's"
        );
        assert!(matches!(server.outcome().await, Outcome::Answered(_)));

        // The new credentials work for mutual TLS at once, with the issued identity.
        let (answer, _) = request(
            client_config(&creds, &DenyList::new()).unwrap(),
            server.addr,
            manager_server_name(),
            "whoami",
        )
        .await
        .unwrap();
        assert_eq!(answer, format!("ok {} {}", creds.identity().id, expected));
        assert!(matches!(server.outcome().await, Outcome::Answered(_)));
    }
}

#[tokio::test]
async fn a_joined_manager_can_serve_as_a_manager() {
    let server = manager().await;
    let new_manager = join(server.addr, &token(&server, NodeRole::Manager))
        .await
        .unwrap();
    let worker = join(server.addr, &token(&server, NodeRole::Worker))
        .await
        .unwrap();
    let deny = DenyList::new();
    let config = server_config(&new_manager, ClientAuth::Required, &deny).unwrap();
    let second = TestServer::start(config, common::copy(&server.state.ca)).await;
    let (answer, seen) = request(
        client_config(&worker, &deny).unwrap(),
        second.addr,
        manager_server_name(),
        "whoami",
    )
    .await
    .unwrap();
    assert_eq!(answer, format!("ok {} worker", worker.identity().id));
    assert_eq!(seen, Some(new_manager.identity().clone()));
}

#[tokio::test]
async fn wrong_digest_refuses_the_ca_before_the_secret_is_sent() {
    let mut server = manager().await;
    let other_ca = Ca::create(SystemTime::now()).unwrap();
    // A well-formed token whose digest pins another cluster's CA.
    let foreign = JoinTokens::generate(other_ca.digest())
        .token(NodeRole::Manager)
        .to_string();
    let (config, pinned) = pki::join::client_config(&foreign.parse().unwrap()).unwrap();
    let err = request(
        config,
        server.addr,
        manager_server_name(),
        &format!("join {foreign}\nEND"),
    )
    .await
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("does not match the join token's digest"),
        "{message}"
    );
    assert!(
        message.contains(&server.state.ca.digest().to_string()),
        "the error names the CA that was offered: {message}"
    );
    // Code gets the typed reason.
    let tls = rustls_error(&err).expect("a TLS error");
    let reason = pki::tls::refusal(&tls).and_then(|r| r.downcast_ref::<TokenError>());
    assert_eq!(
        reason,
        Some(&TokenError::PinMismatch {
            pinned: other_ca.digest(),
            got: server.state.ca.digest(),
        })
    );
    assert!(pinned.get().is_none(), "nothing was pinned");
    let key = NodeKey::generate().unwrap();
    let err = pki::join::finish(&foreign.parse().unwrap(), &pinned, &key, "").unwrap_err();
    assert!(matches!(err, pki::join::JoinError::NotPinned), "{err}");
    // The client stopped in the handshake: the manager never saw a request.
    assert!(matches!(server.outcome().await, Outcome::Refused { .. }));
}

#[tokio::test]
async fn rotated_out_token_is_rejected() {
    let server = manager().await;
    let old_worker = token(&server, NodeRole::Worker);
    let manager_token = token(&server, NodeRole::Manager);
    join(server.addr, &old_worker).await.unwrap();

    server.state.tokens.lock().unwrap().rotate(NodeRole::Worker);
    let err = join(server.addr, &old_worker).await.unwrap_err();
    assert_eq!(
        err,
        "denied: the join token is not valid for this cluster: it was rotated or mistyped; ask a manager for the current one (`berth cluster join-token worker|manager`)"
    );
    let new_worker = token(&server, NodeRole::Worker);
    assert_ne!(new_worker, old_worker);
    assert_eq!(
        join(server.addr, &new_worker)
            .await
            .unwrap()
            .identity()
            .role,
        Role::Worker
    );
    // Rotating the worker token leaves the manager token alone.
    assert_eq!(
        join(server.addr, &manager_token)
            .await
            .unwrap()
            .identity()
            .role,
        Role::Manager
    );
}

#[tokio::test]
async fn the_csr_cannot_choose_its_identity() {
    // A joiner with a worker token asks, in its CSR, to be a manager named m1.
    let server = manager().await;
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["berth-manager".to_string(), "m1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "m1");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, "manager");
    let csr = params.serialize_request(&key).unwrap();
    let csr_pem = common::pem_encode("CERTIFICATE REQUEST", csr.der());
    let worker_token = token(&server, NodeRole::Worker);
    let (config, pinned) = pki::join::client_config(&worker_token.parse().unwrap()).unwrap();
    let (answer, _) = request(
        config,
        server.addr,
        manager_server_name(),
        &format!("join {worker_token}\n{csr_pem}END"),
    )
    .await
    .unwrap();
    let cert = answer.strip_suffix("END").unwrap();
    let ca: CaCert = pinned.get().unwrap();
    let der = rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    let identity = Identity::from_cert_der(&der).unwrap();
    assert_eq!(identity.role, Role::Worker);
    assert_ne!(identity.id.as_str(), "m1");
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
    let names = format!(
        "{:?}",
        parsed.subject_alternative_name().unwrap().unwrap().value
    );
    assert!(!names.contains("berth-manager"), "{names}");
    assert!(ca.digest() == server.state.ca.digest());
}

#[tokio::test]
async fn a_node_renews_its_certificate_with_the_same_identity() {
    let server = manager().await;
    let old = join(server.addr, &token(&server, NodeRole::Worker))
        .await
        .unwrap();
    // Over its current mutual-TLS connection, with a new key.
    let key = NodeKey::generate().unwrap();
    let (answer, _) = request(
        client_config(&old, &DenyList::new()).unwrap(),
        server.addr,
        manager_server_name(),
        &format!("renew\n{}END", key.csr_pem().unwrap()),
    )
    .await
    .unwrap();
    let cert = answer.strip_suffix("END").expect("a certificate");
    let new = NodeCredentials::from_pem(old.ca().clone(), cert, &key.key_pem()).unwrap();
    assert_eq!(new.identity(), old.identity());
    assert_ne!(new.cert_der(), old.cert_der());
    assert!(new.not_after() >= old.not_after());
    // A peer without a certificate cannot renew anything.
    let parsed: JoinToken = token(&server, NodeRole::Worker).parse().unwrap();
    let (config, _) = pki::join::client_config(&parsed).unwrap();
    let (answer, _) = request(
        config,
        server.addr,
        manager_server_name(),
        &format!("renew\n{}END", key.csr_pem().unwrap()),
    )
    .await
    .unwrap();
    assert!(
        answer.starts_with("denied: the peer presented no certificate"),
        "{answer}"
    );
}
