//! Join tokens as text: format, parse, validate, rotate; malformed tokens give clear
//! errors and never a panic.

use std::time::SystemTime;

use pki::{Ca, CaCert, JoinToken, JoinTokens, NodeRole, TokenError};
use proptest::prelude::*;

fn tokens() -> (Ca, JoinTokens) {
    let ca = Ca::create(SystemTime::now()).expect("create CA");
    let tokens = JoinTokens::generate(ca.digest());
    (ca, tokens)
}

#[test]
fn format_and_parse_roundtrip() {
    let (ca, tokens) = tokens();
    for role in [NodeRole::Worker, NodeRole::Manager] {
        let token = tokens.token(role);
        let text = token.to_string();
        let parts: Vec<&str> = text.split('-').collect();
        assert_eq!(parts.len(), 4, "{text}");
        assert_eq!(parts[0], "BERTHTKN");
        assert_eq!(parts[1], "1");
        assert_eq!(parts[2].len(), 50, "base36 of a SHA-256 digest");
        assert_eq!(parts[3].len(), 25, "base36 of a 128-bit secret");
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"BERTHKN-".contains(&b)));
        let parsed: JoinToken = text.parse().unwrap();
        assert_eq!(parsed, token);
        assert_eq!(parsed.ca_digest(), ca.digest());
        // A pasted newline or spaces do not matter.
        assert_eq!(format!("  {text}\n").parse::<JoinToken>().unwrap(), token);
    }
    assert_ne!(
        tokens.token(NodeRole::Worker),
        tokens.token(NodeRole::Manager)
    );
    // Stored and restored (the manager keeps the two tokens as text).
    let restored = JoinTokens::from_tokens(
        &tokens.token(NodeRole::Worker).to_string(),
        &tokens.token(NodeRole::Manager).to_string(),
    )
    .unwrap();
    assert_eq!(restored, tokens);
}

#[test]
fn validate_gives_the_role_and_rotation_retires_the_old_token() {
    let (_ca, mut tokens) = tokens();
    let worker = tokens.token(NodeRole::Worker).to_string();
    let manager = tokens.token(NodeRole::Manager).to_string();
    assert_eq!(tokens.validate(&worker), Ok(NodeRole::Worker));
    assert_eq!(tokens.validate(&manager), Ok(NodeRole::Manager));

    tokens.rotate(NodeRole::Manager);
    assert_eq!(tokens.validate(&manager), Err(TokenError::Rejected));
    assert_eq!(tokens.validate(&worker), Ok(NodeRole::Worker));
    let new_manager = tokens.token(NodeRole::Manager).to_string();
    assert_ne!(new_manager, manager);
    assert_eq!(tokens.validate(&new_manager), Ok(NodeRole::Manager));
    // Only the secret changed: the token still pins the same CA.
    assert_eq!(new_manager[..61], manager[..61]);
}

#[test]
fn a_token_of_another_cluster_is_named_as_such() {
    let (_ca, tokens) = tokens();
    let (other_ca, other) = self::tokens();
    let err = tokens
        .validate(&other.token(NodeRole::Worker).to_string())
        .unwrap_err();
    assert!(matches!(err, TokenError::WrongCluster { .. }));
    assert!(
        err.to_string().contains(&other_ca.digest().to_string()),
        "{err}"
    );
}

#[test]
fn verify_ca_pins_by_digest() {
    let (ca, tokens) = tokens();
    let (other_ca, _) = self::tokens();
    let token = tokens.token(NodeRole::Worker);
    let fetched = CaCert::from_pem(&ca.cert().to_pem()).unwrap();
    assert_eq!(token.verify_ca(&fetched), Ok(()));
    let err = token.verify_ca(other_ca.cert()).unwrap_err();
    assert_eq!(
        err,
        TokenError::PinMismatch {
            pinned: ca.digest(),
            got: other_ca.digest()
        }
    );
}

#[test]
fn malformed_tokens_say_what_is_wrong() {
    let (_ca, tokens) = tokens();
    let good = tokens.token(NodeRole::Worker).to_string();
    let digest = &good[11..61];
    let secret = &good[62..];
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "starts with \"\""),
        (
            "hello".into(),
            "a join token starts with BERTHTKN-, this one starts with \"hello\"",
        ),
        (
            format!("SWMTKN-1-{digest}-{secret}"),
            "(that is a Docker Swarm token)",
        ),
        (
            format!("berthtkn-1-{digest}-{secret}"),
            "(the prefix is upper case)",
        ),
        ("BERTHTKN-1-abc".into(), "this one has 3"),
        (format!("BERTHTKN-1-{digest}-{secret}-x"), "this one has 5"),
        (
            format!("BERTHTKN-2-{digest}-{secret}"),
            "version \"2\" is not supported",
        ),
        (
            format!("BERTHTKN-1-{}-{secret}", &digest[..49]),
            "CA digest has 49 characters, 50 expected (was the token cut short?)",
        ),
        (
            format!("BERTHTKN-1-{digest}-{}", &secret[..20]),
            "secret has 20 characters, 25 expected",
        ),
        (
            format!("BERTHTKN-1-{}Z-{secret}", &digest[..49]),
            "CA digest has 'Z' at character 50; only 0-9 and a-z are used",
        ),
        (
            format!("BERTHTKN-1-{}-{secret}", "z".repeat(50)),
            "CA digest is out of range",
        ),
    ];
    for (token, expected) in cases {
        let err = token.parse::<JoinToken>().unwrap_err().to_string();
        assert!(
            err.contains(expected),
            "{token:?}: {err:?} lacks {expected:?}"
        );
    }
}

#[test]
fn the_secret_never_appears_in_messages() {
    let (_ca, tokens) = tokens();
    let good = tokens.token(NodeRole::Worker).to_string();
    let secret = &good[62..];
    assert!(!format!("{:?}", tokens.token(NodeRole::Worker)).contains(secret));
    assert!(!format!("{tokens:?}").contains(secret));
    // A bad character in the secret is located but not echoed with its neighbours.
    let bad = format!("{}!{}", &good[..70], &good[71..]);
    let err = bad.parse::<JoinToken>().unwrap_err().to_string();
    assert_eq!(
        err,
        "the join token's secret has a character other than 0-9 and a-z at character 9"
    );
    let err = JoinTokens::generate(tokens.token(NodeRole::Worker).ca_digest())
        .validate(&good)
        .unwrap_err()
        .to_string();
    assert!(!err.contains(secret), "{err}");
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,120}") {
        let _ = text.parse::<JoinToken>();
    }

    #[test]
    fn mutated_tokens_never_panic_and_never_validate(
        pos in 0usize..87,
        ch in proptest::char::any(),
    ) {
        // One fixed set of tokens is enough: the mutation is what varies.
        let tokens = JoinTokens::generate(pki::CaDigest([7; 32]));
        let good = tokens.token(NodeRole::Worker).to_string();
        let mut chars: Vec<char> = good.chars().collect();
        let original = chars[pos];
        chars[pos] = ch;
        let mutated: String = chars.into_iter().collect();
        let result = tokens.validate(&mutated);
        if ch != original {
            prop_assert!(result.is_err(), "{mutated} validated");
        }
    }

    #[test]
    fn structured_garbage_never_panics(
        prefix in "[A-Z]{0,10}",
        version in "[0-9a-z]{0,3}",
        digest in "[0-9a-zA-Z!]{0,60}",
        secret in "[0-9a-zA-Z!]{0,30}",
    ) {
        let text = format!("{prefix}-{version}-{digest}-{secret}");
        let _ = text.parse::<JoinToken>();
    }
}
