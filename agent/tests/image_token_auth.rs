//! Bearer-token authentication against the real registry: Debian's `docker-registry`
//! configured with `auth: token:` (realm, service, issuer, rootcertbundle) trusts only
//! JWTs signed by `testkit::tokenserver`'s certificate. The token server grants user
//! `tester` the repository `private/busybox` and nothing else. So:
//! - the right credentials pull (and the token server saw the pull's scope, so the
//!   bearer path was taken, not basic auth);
//! - wrong credentials fail with berth's error naming the registry and what to do;
//! - another repository is refused by the registry itself, both through `pull` and
//!   with a token for `private/busybox` replayed by hand against the other repository.

use std::path::{Path, PathBuf};

use agent::image::pull::{pull, Credentials, PullOptions};
use agent::image::{ImageStore, Reference};
use testkit::registry::Registry;
use testkit::tokenserver::{basic_auth, http_get, TokenServer, SERVICE};

fn layout(dir: &Path) -> PathBuf {
    let base = testkit::busybox_rootfs_tar(&dir.join("base")).expect("busybox rootfs tar");
    let layout = dir.join("layout");
    testkit::oci::oci_layout(&base, &layout, "1").expect("OCI layout");
    layout
}

fn basic(user: &str, password: &str) -> PullOptions {
    PullOptions {
        credentials: Credentials::Basic {
            username: user.into(),
            password: password.into(),
        },
        ..Default::default()
    }
}

#[test]
fn bearer_token_auth_grants_exactly_the_scoped_repository() {
    let work = tempfile::tempdir().unwrap();
    let layout = layout(work.path());
    let tokens = TokenServer::start(
        &[("tester", "s3cret"), ("other", "pw")],
        &[("tester", "private/busybox"), ("other", "else/busybox")],
    )
    .unwrap();
    let registry = Registry::start_with_token_auth(&tokens).unwrap();
    // skopeo goes through the same token dance to push.
    registry
        .push_layout(
            &layout,
            "1",
            "private/busybox:1",
            Some(("tester", "s3cret")),
        )
        .unwrap();
    registry
        .push_layout(&layout, "1", "else/busybox:1", Some(("other", "pw")))
        .unwrap();
    let store = ImageStore::open(&work.path().join("state")).unwrap();
    let r = Reference::parse(&format!("{}/private/busybox:1", registry.addr)).unwrap();

    // Wrong password: the token server says 401, berth says which registry and what to do.
    let err = pull(&store, &r, &basic("tester", "wrong"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "registry {} refused the credentials",
            registry.addr
        )),
        "{err}"
    );
    assert!(
        err.contains("--username") && err.contains("docker login"),
        "{err}"
    );
    assert!(store.images().unwrap().is_empty());

    // The right credentials: a bearer token for exactly this repository, then the pull.
    let image = pull(&store, &r, &basic("tester", "s3cret")).unwrap();
    assert_eq!(
        store.image(&r).unwrap().manifest_digest,
        image.manifest_digest
    );
    assert!(store.layer_dirs(&image).unwrap()[0]
        .join("bin/busybox")
        .is_file());
    let log = tokens.requests();
    assert!(
        log.iter()
            .any(|l| l == "tester repository:private/busybox:pull -> [private/busybox:pull]"),
        "the pull used a bearer token for its scope: {log:?}"
    );

    // Another repository, same user: the token carries no access to it, and the
    // registry refuses.
    let other = Reference::parse(&format!("{}/else/busybox:1", registry.addr)).unwrap();
    let err = pull(&store, &other, &basic("tester", "s3cret"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("registry {} denied access", registry.addr)),
        "{err}"
    );
    assert!(store.image(&other).is_err());

    // A token for private/busybox replayed against else/busybox by hand: refused, while
    // it works for its own repository (so the refusal is about scope, not the token).
    let scope = "repository:private/busybox:pull";
    let (status, body) = http_get(
        &tokens.addr,
        &format!("/token?service={SERVICE}&scope={scope}"),
        &[("Authorization", &basic_auth("tester", "s3cret"))],
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = json["token"].as_str().unwrap().to_string();
    let bearer = format!("Bearer {token}");
    let accept = "application/vnd.oci.image.manifest.v1+json";
    let (own, _) = http_get(
        &registry.addr,
        "/v2/private/busybox/manifests/1",
        &[("Authorization", &bearer), ("Accept", accept)],
    )
    .unwrap();
    assert_eq!(own, 200);
    let (foreign, body) = http_get(
        &registry.addr,
        "/v2/else/busybox/manifests/1",
        &[("Authorization", &bearer), ("Accept", accept)],
    )
    .unwrap();
    assert_eq!(foreign, 401, "{body}");
    assert!(body.contains("UNAUTHORIZED"), "{body}");
}
