//! Mutual TLS between nodes, over real TCP on loopback: who gets in, who is refused,
//! and that each side sees the other's (id, role).

mod common;

use std::time::{Duration, SystemTime};

use common::{copy, creds, id, mixed_client_config, request, rustls_error, Outcome, TestServer};
use pki::tls::{client_config, manager_server_name, node_server_name, server_config};
use pki::{Ca, CertRequest, ClientAuth, DenyList, Identity, Role};
use rustls::CertificateError;

fn ca() -> Ca {
    Ca::create(SystemTime::now()).expect("create CA")
}

#[tokio::test]
async fn nodes_of_one_ca_see_each_others_identity() {
    let ca = ca();
    let manager = creds(&ca, "m1", Role::Manager);
    let worker = creds(&ca, "w1", Role::Worker);
    let deny = DenyList::new();
    let config = server_config(&manager, ClientAuth::Required, &deny).unwrap();
    let mut server = TestServer::start(config, ca).await;

    // Dialing "any manager".
    let (answer, seen_server) = request(
        client_config(&worker, &deny).unwrap(),
        server.addr,
        manager_server_name(),
        "whoami",
    )
    .await
    .unwrap();
    assert_eq!(
        answer, "ok w1 worker",
        "the server sees the client's identity"
    );
    assert_eq!(
        seen_server,
        Some(Identity::new(id("m1"), Role::Manager)),
        "the client sees the server's identity"
    );
    assert!(matches!(server.outcome().await, Outcome::Answered(a) if a == "ok w1 worker"));

    // Dialing this particular node by its id works too.
    let (answer, _) = request(
        client_config(&worker, &deny).unwrap(),
        server.addr,
        node_server_name(&id("m1")),
        "whoami",
    )
    .await
    .unwrap();
    assert_eq!(answer, "ok w1 worker");

    // ...but not as another node: the name is checked.
    let err = request(
        client_config(&worker, &deny).unwrap(),
        server.addr,
        node_server_name(&id("m2")),
        "whoami",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            rustls_error(&err),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ))
        ),
        "{err}"
    );
}

#[tokio::test]
async fn only_managers_answer_to_the_manager_name() {
    let ca = ca();
    let worker = creds(&ca, "w1", Role::Worker);
    let manager = creds(&ca, "m1", Role::Manager);
    let deny = DenyList::new();
    // A worker serving (it has serverAuth, as every node) is not a manager.
    let config = server_config(&worker, ClientAuth::Required, &deny).unwrap();
    let server = TestServer::start(config, ca).await;
    let addr = server.addr;
    let err = request(
        client_config(&manager, &deny).unwrap(),
        addr,
        manager_server_name(),
        "whoami",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            rustls_error(&err),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ))
        ),
        "{err}"
    );
}

#[tokio::test]
async fn admin_certificate_is_client_only() {
    let ca = ca();
    let admin = creds(&ca, "admin", Role::Admin);
    let manager = creds(&ca, "m1", Role::Manager);
    let deny = DenyList::new();
    // The CLI's certificate calls the control API...
    let config = server_config(&manager, ClientAuth::Required, &deny).unwrap();
    let server = TestServer::start(config, copy(&ca)).await;
    let control = client_config(&admin, &deny).unwrap();
    let (answer, _) = request(
        control.clone(),
        server.addr,
        manager_server_name(),
        "control",
    )
    .await
    .unwrap();
    assert_eq!(answer, "ok control");
    // ...but is not a Raft peer...
    let (answer, _) = request(control, server.addr, manager_server_name(), "raft")
        .await
        .unwrap();
    assert_eq!(
        answer,
        "denied: node admin has role admin; this endpoint needs role manager"
    );
    drop(server);

    // ...and cannot serve: it has no serverAuth usage, whatever name is dialed.
    let config = server_config(&admin, ClientAuth::Required, &deny).unwrap();
    let server = TestServer::start(config, copy(&ca)).await;
    for name in [manager_server_name(), node_server_name(&id("admin"))] {
        let err = request(
            client_config(&manager, &deny).unwrap(),
            server.addr,
            name,
            "whoami",
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                rustls_error(&err),
                Some(rustls::Error::InvalidCertificate(_))
            ),
            "{err}"
        );
    }
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let ca = ca();
    let manager = creds(&ca, "m1", Role::Manager);
    let deny = DenyList::new();
    let config = server_config(&manager, ClientAuth::Required, &deny).unwrap();
    let mut server = TestServer::start(config, copy(&ca)).await;
    let anonymous = mixed_client_config(&manager, None);
    let result = request(
        anonymous.clone(),
        server.addr,
        manager_server_name(),
        "whoami",
    )
    .await;
    assert!(result.is_err(), "{result:?}");
    let outcome = server.outcome().await;
    assert!(
        matches!(
            outcome.tls_error(),
            Some(rustls::Error::NoCertificatesPresented)
        ),
        "{outcome:?}"
    );

    // On a listener that lets joiners in without a certificate, the handshake
    // succeeds but every authorized endpoint refuses.
    let config = server_config(&manager, ClientAuth::Optional, &deny).unwrap();
    let server = TestServer::start(config, ca).await;
    let (answer, _) = request(anonymous, server.addr, manager_server_name(), "raft")
        .await
        .unwrap();
    assert_eq!(
        answer,
        "denied: the peer presented no certificate: this endpoint needs a berth node or admin certificate"
    );
    // A certificate presented on the optional listener is verified all the same.
    let stranger = creds(&Ca::create(SystemTime::now()).unwrap(), "x", Role::Manager);
    let result = request(
        mixed_client_config(&manager, Some(&stranger)),
        server.addr,
        manager_server_name(),
        "whoami",
    )
    .await;
    assert!(result.is_err(), "{result:?}");
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let ca = ca();
    let manager = creds(&ca, "m1", Role::Manager);
    let other_ca = Ca::create(SystemTime::now()).unwrap();
    // Same id and role, another cluster's CA.
    let impostor = creds(&other_ca, "m1", Role::Manager);
    let deny = DenyList::new();
    let config = server_config(&manager, ClientAuth::Required, &deny).unwrap();
    let mut server = TestServer::start(config, ca).await;
    // The client trusts the right CA, so it is the server that must refuse.
    let result = request(
        mixed_client_config(&manager, Some(&impostor)),
        server.addr,
        manager_server_name(),
        "whoami",
    )
    .await;
    assert!(result.is_err(), "{result:?}");
    let outcome = server.outcome().await;
    assert!(
        matches!(
            outcome.tls_error(),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature
            ))
        ),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn server_certificate_from_another_ca_is_refused_by_the_client() {
    let ca = ca();
    let worker = creds(&ca, "w1", Role::Worker);
    let other_ca = Ca::create(SystemTime::now()).unwrap();
    let impostor = creds(&other_ca, "m1", Role::Manager);
    let deny = DenyList::new();
    let config = server_config(&impostor, ClientAuth::Required, &deny).unwrap();
    let mut server = TestServer::start(config, other_ca).await;
    let err = request(
        client_config(&worker, &deny).unwrap(),
        server.addr,
        manager_server_name(),
        "whoami",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            rustls_error(&err),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature
            ))
        ),
        "{err}"
    );
    // The server never got a request: the client stopped in the handshake.
    let outcome = server.outcome().await;
    assert!(matches!(outcome, Outcome::Refused { .. }), "{outcome:?}");
}

#[tokio::test]
async fn worker_cannot_call_manager_endpoints() {
    let ca = ca();
    let manager = creds(&ca, "m1", Role::Manager);
    let other_manager = creds(&ca, "m2", Role::Manager);
    let worker = creds(&ca, "w1", Role::Worker);
    let deny = DenyList::new();
    let config = server_config(&manager, ClientAuth::Required, &deny).unwrap();
    let server = TestServer::start(config, ca).await;
    let ask = |who: &pki::NodeCredentials, what: &'static str| {
        let config = client_config(who, &deny).unwrap();
        let addr = server.addr;
        async move {
            request(config, addr, manager_server_name(), what)
                .await
                .unwrap()
                .0
        }
    };
    assert_eq!(
        ask(&worker, "raft").await,
        "denied: node w1 has role worker; this endpoint needs role manager"
    );
    assert_eq!(
        ask(&worker, "control").await,
        "denied: node w1 has role worker; this endpoint needs role manager or admin"
    );
    assert_eq!(ask(&other_manager, "raft").await, "ok raft");
    assert_eq!(ask(&other_manager, "control").await, "ok control");
    // The worker is still a node: it may use the endpoints every node uses.
    assert_eq!(ask(&worker, "whoami").await, "ok w1 worker");
}

#[tokio::test]
async fn removed_node_is_refused_at_handshake() {
    let ca = ca();
    let manager = creds(&ca, "m1", Role::Manager);
    let worker = creds(&ca, "w1", Role::Worker);
    let server_deny = DenyList::new();
    let config = server_config(&manager, ClientAuth::Required, &server_deny).unwrap();
    let mut server = TestServer::start(config, ca).await;
    let client_deny = DenyList::new();
    let client = client_config(&worker, &client_deny).unwrap();

    let ok = request(client.clone(), server.addr, manager_server_name(), "whoami").await;
    assert_eq!(ok.unwrap().0, "ok w1 worker");
    assert!(matches!(server.outcome().await, Outcome::Answered(_)));

    // `node rm w1`: the same, still valid certificate is refused from now on, by the
    // server built before the removal (the list is shared, not copied).
    server_deny.deny(id("w1"));
    let result = request(client.clone(), server.addr, manager_server_name(), "whoami").await;
    let err = result.unwrap_err();
    let outcome = server.outcome().await;
    assert!(
        matches!(
            outcome.tls_error(),
            Some(rustls::Error::InvalidCertificate(CertificateError::Revoked))
        ),
        "{outcome:?}"
    );
    // The client is told why.
    assert!(
        matches!(
            rustls_error(&err),
            Some(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateRevoked
            ))
        ),
        "{err}"
    );
    // Another node is unaffected.
    server_deny.replace([id("w9")]);
    let ok = request(client.clone(), server.addr, manager_server_name(), "whoami").await;
    assert_eq!(ok.unwrap().0, "ok w1 worker");
    assert!(matches!(server.outcome().await, Outcome::Answered(_)));

    // The client side checks its list too: a removed manager is not dialed.
    client_deny.deny(id("m1"));
    let err = request(client, server.addr, manager_server_name(), "whoami")
        .await
        .unwrap_err();
    assert!(
        matches!(
            rustls_error(&err),
            Some(rustls::Error::InvalidCertificate(CertificateError::Revoked))
        ),
        "{err}"
    );
}

#[tokio::test]
async fn expired_certificates_are_refused() {
    let ca = ca();
    let manager = creds(&ca, "m1", Role::Manager);
    let long_ago = SystemTime::now() - Duration::from_secs(10 * 24 * 3600);
    let expired = |name: &str, role| {
        ca.issue(
            &CertRequest::new(Identity::new(id(name), role))
                .validity(Duration::from_secs(24 * 3600)),
            long_ago,
        )
        .unwrap()
    };
    let old_worker = expired("w1", Role::Worker);
    let old_manager = expired("m0", Role::Manager);
    assert!(old_worker.not_after() < SystemTime::now());
    let deny = DenyList::new();

    // An expired client certificate.
    let config = server_config(&manager, ClientAuth::Required, &deny).unwrap();
    let mut server = TestServer::start(config, copy(&ca)).await;
    let result = request(
        client_config(&old_worker, &deny).unwrap(),
        server.addr,
        manager_server_name(),
        "whoami",
    )
    .await;
    assert!(result.is_err(), "{result:?}");
    let outcome = server.outcome().await;
    assert!(
        matches!(
            outcome.tls_error(),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ))
        ),
        "{outcome:?}"
    );

    // An expired server certificate.
    let config = server_config(&old_manager, ClientAuth::Required, &deny).unwrap();
    let server = TestServer::start(config, ca).await;
    let err = request(
        client_config(&manager, &deny).unwrap(),
        server.addr,
        manager_server_name(),
        "whoami",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            rustls_error(&err),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ))
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_resumed_session_does_not_bypass_the_deny_list() {
    let ca = ca();
    let manager = creds(&ca, "m1", Role::Manager);
    let worker = creds(&ca, "w1", Role::Worker);
    let deny = DenyList::new();
    let config = server_config(&manager, ClientAuth::Required, &deny).unwrap();
    let mut server = TestServer::start(config, ca).await;
    // A client that would resume if the server let it (rustls' default).
    let mut client = client_config(&worker, &DenyList::new()).unwrap();
    client.resumption = rustls::client::Resumption::default();
    for _ in 0..2 {
        let ok = request(client.clone(), server.addr, manager_server_name(), "whoami").await;
        assert_eq!(ok.unwrap().0, "ok w1 worker");
        assert!(matches!(server.outcome().await, Outcome::Answered(_)));
    }
    deny.deny(id("w1"));
    let result = request(client, server.addr, manager_server_name(), "whoami").await;
    assert!(result.is_err(), "{result:?}");
    let outcome = server.outcome().await;
    assert!(
        matches!(
            outcome.tls_error(),
            Some(rustls::Error::InvalidCertificate(CertificateError::Revoked))
        ),
        "{outcome:?}"
    );
}
