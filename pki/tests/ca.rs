//! What the CA puts in certificates, and what it refuses.

mod common;

use std::time::{Duration, SystemTime};

use pki::ca::NODE_VALIDITY;
use pki::{Ca, CaError, CertRequest, Identity, NodeCredentials, NodeId, NodeKey, Role};
use rustls::pki_types::pem::PemObject;
use x509_parser::extensions::GeneralName;

fn id(s: &str) -> NodeId {
    NodeId::new(s).expect("node id")
}

/// (CN, OU, SANs as text, serverAuth, clientAuth, is CA) of a certificate.
fn describe(der: &[u8]) -> (String, String, Vec<String>, bool, bool, bool) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("parse");
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .expect("CN")
        .as_str()
        .expect("CN text")
        .to_string();
    let ou = subject
        .iter_organizational_unit()
        .next()
        .expect("OU")
        .as_str()
        .expect("OU text")
        .to_string();
    let sans = cert
        .subject_alternative_name()
        .expect("SAN extension")
        .expect("SANs")
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => format!("dns:{d}"),
            GeneralName::URI(u) => format!("uri:{u}"),
            GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
            other => format!("{other:?}"),
        })
        .collect();
    let eku = cert
        .extended_key_usage()
        .expect("EKU")
        .expect("EKU present")
        .value;
    (cn, ou, sans, eku.server_auth, eku.client_auth, cert.is_ca())
}

#[test]
fn node_certificates_carry_id_role_and_addresses() {
    let ca = Ca::create(SystemTime::now()).unwrap();
    let manager = ca
        .issue(
            &CertRequest::new(Identity::new(id("m1"), Role::Manager))
                .address("10.1.2.3")
                .address("node1.example"),
            SystemTime::now(),
        )
        .unwrap();
    let (cn, ou, sans, server, client, is_ca) = describe(manager.cert_der());
    assert_eq!((cn.as_str(), ou.as_str()), ("m1", "manager"));
    assert_eq!(
        sans,
        [
            "uri:berth://node/m1",
            "dns:m1",
            "dns:berth-manager",
            "ip:[10, 1, 2, 3]",
            "dns:node1.example"
        ]
    );
    assert!(server && client && !is_ca);

    let worker = ca
        .issue(
            &CertRequest::new(Identity::new(id("w1"), Role::Worker)),
            SystemTime::now(),
        )
        .unwrap();
    let (_, ou, sans, server, client, _) = describe(worker.cert_der());
    assert_eq!(ou, "worker");
    assert_eq!(sans, ["uri:berth://node/w1", "dns:w1"], "no manager name");
    assert!(server && client);

    let admin = ca
        .issue(
            &CertRequest::new(Identity::new(id("admin"), Role::Admin)),
            SystemTime::now(),
        )
        .unwrap();
    let (_, ou, _, server, client, _) = describe(admin.cert_der());
    assert_eq!(ou, "admin");
    assert!(!server && client, "the admin certificate is client-only");

    // The identity reads back from the certificate.
    assert_eq!(
        Identity::from_cert_der(manager.cert_der()).unwrap(),
        Identity::new(id("m1"), Role::Manager)
    );
}

#[test]
fn the_ca_is_a_p256_root_with_long_validity() {
    let now = SystemTime::now();
    let ca = Ca::create(now).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(ca.cert().der()).unwrap();
    assert!(cert.is_ca());
    assert_eq!(cert.subject(), cert.issuer(), "self-signed");
    assert_eq!(
        cert.public_key()
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string()),
        Some("1.2.840.10045.3.1.7".to_string()),
        "P-256"
    );
    let years = ca.cert().not_after().duration_since(now).unwrap().as_secs() / (365 * 24 * 3600);
    assert_eq!(years, 19, "about 20 years (less rounding)");
    // Two clusters never share a CA.
    assert_ne!(Ca::create(now).unwrap().digest(), ca.digest());
}

#[test]
fn renewal_is_due_at_half_life() {
    let ca = Ca::create(SystemTime::now()).unwrap();
    let issued_at = SystemTime::now();
    let creds = ca
        .issue(
            &CertRequest::new(Identity::new(id("n"), Role::Worker)),
            issued_at,
        )
        .unwrap();
    let lifetime = creds
        .not_after()
        .duration_since(issued_at - pki::ca::BACKDATE)
        .unwrap();
    assert!(lifetime.abs_diff(NODE_VALIDITY + pki::ca::BACKDATE) <= Duration::from_secs(1));
    let half = creds.renew_after().duration_since(issued_at).unwrap();
    let expected = (NODE_VALIDITY + pki::ca::BACKDATE) / 2 - pki::ca::BACKDATE;
    assert!(
        half.abs_diff(expected) <= Duration::from_secs(2),
        "{half:?}"
    );
}

#[test]
fn bad_requests_and_foreign_certificates_are_refused_with_reasons() {
    let ca = Ca::create(SystemTime::now()).unwrap();
    let req = CertRequest::new(Identity::new(id("n"), Role::Worker));

    let err = ca.sign_csr("not pem", &req, SystemTime::now()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("the certificate signing request is not valid PEM"),
        "{err}"
    );
    // A CSR whose signature does not match its key.
    let good = NodeKey::generate().unwrap().csr_pem().unwrap();
    let der =
        rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(good.as_bytes()).unwrap();
    let mut bytes = der.as_ref().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    let tampered = common::pem_encode("CERTIFICATE REQUEST", &bytes);
    let err = ca.sign_csr(&tampered, &req, SystemTime::now()).unwrap_err();
    assert!(matches!(err, CaError::Csr(_)), "{err}");

    let err = ca
        .issue(&req.clone().address("not a name!"), SystemTime::now())
        .unwrap_err();
    assert!(err.to_string().contains("\"not a name!\""), "{err}");

    // Credentials whose certificate another CA issued.
    let other = Ca::create(SystemTime::now()).unwrap();
    let foreign = other.issue(&req, SystemTime::now()).unwrap();
    let err = NodeCredentials::from_pem(ca.cert().clone(), &foreign.cert_pem(), &foreign.key_pem())
        .unwrap_err();
    assert!(matches!(err, CaError::NotIssuedByCa), "{err}");

    // A CA whose key is not its certificate's.
    let err = Ca::from_pem(&ca.cert().to_pem(), &other.key_pem()).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
    // A node certificate is not a CA.
    let err = pki::CaCert::from_pem(&foreign.cert_pem()).unwrap_err();
    assert!(matches!(err, CaError::NotCa), "{err}");
}
