//! Credentials on disk: modes (keys never readable by anyone but root), reload
//! gives the same CA and identity, and loading refuses exposed or mismatched keys.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::SystemTime;

use pki::files::{CA_CERT_FILE, CA_KEY_FILE, NODE_CERT_FILE, NODE_KEY_FILE};
use pki::{Ca, CertRequest, FileError, Identity, NodeCredentials, NodeId, Role};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[test]
fn ca_files_are_private_and_reload_to_the_same_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state/pki/ca");
    let ca = Ca::create(SystemTime::now()).unwrap();
    ca.save(&dir).unwrap();

    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
    assert_eq!(mode(&dir.join(CA_CERT_FILE)), 0o644);
    // No temporary file is left behind.
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["ca.crt", "ca.key"]);

    let loaded = Ca::load(&dir).unwrap();
    assert_eq!(loaded.digest(), ca.digest());
    assert_eq!(loaded.key_pem(), ca.key_pem());
    // And the digest is the SHA-256 of the DER certificate, shown as sha256:<hex>.
    use sha2::Digest;
    let expected = hex::encode(sha2::Sha256::digest(ca.cert().der()));
    assert_eq!(ca.digest().to_string(), format!("sha256:{expected}"));

    // The reloaded CA still signs certificates the original's holders accept.
    let creds = loaded
        .issue(
            &CertRequest::new(Identity::new(NodeId::new("n1").unwrap(), Role::Worker)),
            SystemTime::now(),
        )
        .unwrap();
    assert_eq!(creds.ca(), ca.cert());
}

#[test]
fn node_files_are_private_and_reload_to_the_same_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    // An existing, too open directory is tightened.
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    // A temporary file left by a crash does not stop the next save.
    fs::write(dir.join(".node.key.tmp"), "half a key").unwrap();

    let ca = Ca::create(SystemTime::now()).unwrap();
    let creds = ca
        .issue(
            &CertRequest::new(Identity::new(NodeId::new("m1").unwrap(), Role::Manager))
                .address("10.0.0.1")
                .address("node1.example"),
            SystemTime::now(),
        )
        .unwrap();
    creds.save(&dir).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(NODE_KEY_FILE)), 0o600);
    assert_eq!(mode(&dir.join(NODE_CERT_FILE)), 0o644);
    assert_eq!(mode(&dir.join(CA_CERT_FILE)), 0o644);
    assert!(!dir.join(".node.key.tmp").exists());

    let loaded = NodeCredentials::load(&dir).unwrap();
    assert_eq!(loaded.identity(), creds.identity());
    assert_eq!(loaded.cert_der(), creds.cert_der());
    assert_eq!(loaded.ca().digest(), ca.digest());
    assert_eq!(loaded.key_pem(), creds.key_pem());
}

#[test]
fn loading_refuses_an_exposed_key() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::create(SystemTime::now()).unwrap();
    ca.save(tmp.path()).unwrap();
    let key = tmp.path().join(CA_KEY_FILE);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let err = Ca::load(tmp.path()).unwrap_err();
    assert!(
        matches!(err, FileError::KeyExposed { mode: 0o644, .. }),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains(&key.display().to_string()), "{message}");
    assert!(message.contains("chmod 600"), "{message}");
}

#[test]
fn loading_refuses_a_key_that_is_not_the_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::create(SystemTime::now()).unwrap();
    let issue = |name: &str| {
        ca.issue(
            &CertRequest::new(Identity::new(NodeId::new(name).unwrap(), Role::Worker)),
            SystemTime::now(),
        )
        .unwrap()
    };
    let (a, b) = (issue("a"), issue("b"));
    a.save(&tmp.path().join("a")).unwrap();
    b.save(&tmp.path().join("b")).unwrap();
    fs::copy(
        tmp.path().join("b").join(NODE_KEY_FILE),
        tmp.path().join("a").join(NODE_KEY_FILE),
    )
    .unwrap();
    let err = NodeCredentials::load(&tmp.path().join("a")).unwrap_err();
    assert!(
        err.to_string()
            .contains("the private key does not belong to the node certificate"),
        "{err}"
    );

    // A missing file is named.
    let err = Ca::load(&tmp.path().join("nowhere")).unwrap_err();
    assert!(err.to_string().contains("nowhere/ca.crt"), "{err}");
}
