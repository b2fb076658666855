//! Whatever bytes arrive (a peer's certificate, a CSR, a pasted file), the pki crate
//! answers with an error, never a panic.

use std::sync::OnceLock;
use std::time::SystemTime;

use pki::{Ca, CaCert, CertRequest, Identity, NodeCredentials, NodeId, Role};
use proptest::prelude::*;

fn ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| Ca::create(SystemTime::now()).expect("create CA"))
}

fn pem(label: &str, body: &str) -> String {
    format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn certificate_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        prop_assert!(Identity::from_cert_der(&bytes).is_err());
        prop_assert!(CaCert::from_der(bytes).is_err());
    }

    #[test]
    fn truncated_real_certificates(cut in 0usize..400) {
        // Prefixes of a real certificate get further into the parsers than noise.
        let creds = ca()
            .issue(
                &CertRequest::new(Identity::new(NodeId::new("n").expect("id"), Role::Worker)),
                SystemTime::now(),
            )
            .expect("issue");
        let der = creds.cert_der().as_ref();
        let cut = cut.min(der.len() - 1);
        prop_assert!(Identity::from_cert_der(&der[..cut]).is_err());
        prop_assert!(CaCert::from_der(ca().cert().der()[..cut].to_vec()).is_err());
    }

    #[test]
    fn pem_text(body in "[A-Za-z0-9+/=\\n]{0,200}", label in "(CERTIFICATE|PRIVATE KEY|CERTIFICATE REQUEST|X)") {
        let text = pem(&label, &body);
        let req = CertRequest::new(Identity::new(NodeId::new("n").expect("id"), Role::Worker));
        prop_assert!(ca().sign_csr(&text, &req, SystemTime::now()).is_err());
        prop_assert!(CaCert::from_pem(&text).is_err());
        prop_assert!(Ca::from_pem(&text, &text).is_err());
        prop_assert!(NodeCredentials::from_pem(ca().cert().clone(), &text, &text).is_err());
    }

    #[test]
    fn node_ids_and_roles(text in "\\PC{0,80}") {
        let _ = NodeId::new(&text);
        let _ = text.parse::<Role>();
    }
}
