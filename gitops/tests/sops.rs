//! Decrypting files the real sops made (sops 3.11.0; see tests/sops/README.md):
//! each format gives back what `sops decrypt` gave, a wrong key or an edited file is
//! refused with a message that says what to do, and no message shows a secret.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use gitops::sops::{decrypt, is_encrypted, Format, Identities, SopsError};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sops")
        .join(rel)
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(fixture(rel)).unwrap_or_else(|e| panic!("reading fixture {rel}: {e}"))
}

fn keys(name: &str) -> Identities {
    Identities::from_file(&fixture(&format!("keys/{name}"))).expect("the test key file parses")
}

/// Decrypts `encrypted/NAME` with keys/key.txt, as if it were at `name` in a stack.
fn decrypt_fixture(name: &str) -> Result<Vec<u8>, SopsError> {
    decrypt(
        &read(&format!("encrypted/{name}")),
        Path::new(name),
        &keys("key.txt"),
    )
}

/// Decrypts `bytes`, which stand for the fixture NAME after an edit.
fn decrypt_edited(name: &str, bytes: &str) -> Result<Vec<u8>, SopsError> {
    decrypt(bytes.as_bytes(), Path::new(name), &keys("key.txt"))
}

fn text(rel: &str) -> String {
    String::from_utf8(read(rel)).expect("fixture is UTF-8")
}

/// YAML documents as data, to compare what berth writes with what sops wrote
/// (berth re-emits YAML, so layout and comments differ).
fn yaml_docs(bytes: &[u8]) -> Vec<serde_json::Value> {
    use serde::Deserialize as _;
    serde_norway::Deserializer::from_slice(bytes)
        .map(|doc| serde_json::Value::deserialize(doc).expect("valid YAML"))
        .collect()
}

/// The (changed) text with `from` replaced once by `to`; fails if `from` is absent.
fn edit(original: &str, from: &str, to: &str) -> String {
    assert!(original.contains(from), "fixture has no {from:?}");
    original.replacen(from, to, 1)
}

#[test]
fn format_comes_from_the_extension() {
    for (name, format) in [
        ("a.env", Format::Dotenv),
        ("a.yaml", Format::Yaml),
        ("a.yml", Format::Yaml),
        ("a.json", Format::Json),
        ("a.bin", Format::Binary),
        ("secrets", Format::Binary),
    ] {
        assert_eq!(Format::from_path(Path::new(name)), format, "{name}");
    }
}

#[test]
fn dotenv_decrypts_to_what_sops_gives() {
    let plain = decrypt_fixture("app.env").expect("decrypts");
    assert_eq!(String::from_utf8(plain).unwrap(), text("decrypted/app.env"));
}

#[test]
fn json_decrypts_to_what_sops_gives() {
    let plain = decrypt_fixture("config.json").expect("decrypts");
    // Byte for byte: tab indentation and key order as sops writes them.
    assert_eq!(
        String::from_utf8(plain).unwrap(),
        text("decrypted/config.json")
    );
}

#[test]
fn binary_decrypts_to_the_original_bytes() {
    let plain = decrypt_fixture("blob.bin").expect("decrypts");
    assert_eq!(plain, read("decrypted/blob.bin"));
    assert!(
        std::str::from_utf8(&plain).is_err(),
        "the fixture holds non-UTF-8 bytes"
    );
}

#[test]
fn yaml_decrypts_to_the_same_data_as_sops() {
    for name in [
        "stack.yaml",
        "multi.yaml",
        "partial.yaml",
        "maconly.yaml",
        "comments.yaml",
    ] {
        let plain = decrypt_fixture(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            yaml_docs(&plain),
            yaml_docs(&read(&format!("decrypted/{name}"))),
            "{name}"
        );
        assert!(
            !String::from_utf8(plain).unwrap().contains("sops"),
            "{name}: metadata removed"
        );
    }
}

#[test]
fn yaml_keeps_types_and_order() {
    let plain = String::from_utf8(decrypt_fixture("stack.yaml").expect("decrypts")).unwrap();
    let doc = &yaml_docs(plain.as_bytes())[0];
    let env = &doc["services"]["web"]["environment"];
    assert_eq!(env["PORT"], serde_json::json!(8080));
    assert_eq!(env["RATIO"], serde_json::json!(0.75));
    assert_eq!(env["DEBUG"], serde_json::json!(false));
    assert_eq!(env["NOTHING"], serde_json::Value::Null);
    assert_eq!(
        doc["services"]["db"]["quoted_number"],
        serde_json::json!("42")
    );
    assert_eq!(
        doc["services"]["db"]["multiline"],
        serde_json::json!("first line\nsecond line\n")
    );
    let services = plain.find("services:").unwrap();
    let public = plain.find("public_unencrypted:").unwrap();
    let list = plain.find("list_of_maps:").unwrap();
    assert!(
        services < public && public < list,
        "top-level keys keep their order:\n{plain}"
    );
}

#[test]
fn any_recipient_of_a_file_can_decrypt_it() {
    // encrypted/two-recipients.yaml is encrypted for second-key.txt first, key.txt second.
    let bytes = read("encrypted/two-recipients.yaml");
    let expected = yaml_docs(&read("decrypted/two-recipients.yaml"));
    for key in ["key.txt", "second-key.txt"] {
        let plain = decrypt(&bytes, Path::new("two-recipients.yaml"), &keys(key)).expect(key);
        assert_eq!(yaml_docs(&plain), expected, "{key}");
    }
}

#[test]
fn is_encrypted_tells_sops_files_from_plain_ones() {
    for name in [
        "app.env",
        "stack.yaml",
        "config.json",
        "blob.bin",
        "multi.yaml",
    ] {
        assert!(
            is_encrypted(&read(&format!("encrypted/{name}")), Path::new(name)),
            "encrypted {name}"
        );
        assert!(
            !is_encrypted(&read(&format!("decrypted/{name}")), Path::new(name)),
            "plain {name}"
        );
    }
}

#[test]
fn a_plain_file_is_refused_as_not_encrypted() {
    let err = decrypt(
        &read("decrypted/stack.yaml"),
        Path::new("stack.yaml"),
        &keys("key.txt"),
    )
    .unwrap_err();
    assert!(matches!(err, SopsError::NotEncrypted { .. }), "{err}");
}

#[test]
fn a_wrong_key_is_refused_naming_the_recipients_and_the_key_file() {
    let other = keys("other-key.txt");
    let err = decrypt(
        &read("encrypted/stack.yaml"),
        Path::new("stack.yaml"),
        &other,
    )
    .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, SopsError::NoMatchingKey { .. }), "{message}");
    let file_recipient = "age1tl6t76wxrtd5xj7505su0x5k0wm2mxkwn4cr493tx7xhpd006c8sfxnts2";
    assert!(
        message.starts_with("stack.yaml: none of the age keys in "),
        "{message}"
    );
    assert!(
        message.contains("other-key.txt"),
        "names the key file tried: {message}"
    );
    assert!(
        message.contains(file_recipient),
        "names the file's recipient: {message}"
    );
    assert!(
        message.contains(&other.recipients()[0]),
        "names the key tried: {message}"
    );
}

#[test]
fn an_edited_encrypted_value_is_refused() {
    let original = text("encrypted/stack.yaml");
    // Flip one character of DB_PASSWORD's ciphertext.
    let edited = edit(
        &original,
        "DB_PASSWORD: ENC[AES256_GCM,data:A",
        "DB_PASSWORD: ENC[AES256_GCM,data:B",
    );
    let err = decrypt_edited("stack.yaml", &edited).unwrap_err();
    assert!(matches!(err, SopsError::ValueTampered { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("services.web.environment.DB_PASSWORD"),
        "{message}"
    );
    assert!(
        message.contains("changed after it was encrypted"),
        "{message}"
    );
}

#[test]
fn a_value_moved_to_another_key_is_refused() {
    // Each value is bound to its path: DB_USER's ciphertext does not open as DB_PASSWORD.
    let original = text("encrypted/app.env");
    let line = |key: &str| {
        original
            .lines()
            .find(|l| l.starts_with(&format!("{key}=")))
            .unwrap()
            .to_owned()
    };
    let (user, password) = (line("DB_USER"), line("DB_PASSWORD"));
    let moved = original.replace(
        &password,
        &format!("DB_PASSWORD={}", &user["DB_USER=".len()..]),
    );
    let err = decrypt_edited("app.env", &moved).unwrap_err();
    assert!(
        matches!(err, SopsError::ValueTampered { ref path, .. } if path == "DB_PASSWORD"),
        "{err}"
    );
}

#[test]
fn an_edited_unencrypted_value_fails_the_mac() {
    let cases = [
        (
            "stack.yaml",
            "note: this stays readable",
            "note: this was changed",
        ),
        (
            "app.env",
            "API_TOKEN_unencrypted=visible-token",
            "API_TOKEN_unencrypted=other-token",
        ),
        (
            "config.json",
            "\"version_unencrypted\": \"1.2.3\"",
            "\"version_unencrypted\": \"9.9.9\"",
        ),
        // encrypted_regex leaves `replicas` plain, but the MAC covers it.
        ("partial.yaml", "replicas: 2", "replicas: 3"),
    ];
    for (name, from, to) in cases {
        let err =
            decrypt_edited(name, &edit(&text(&format!("encrypted/{name}")), from, to)).unwrap_err();
        assert!(
            matches!(err, SopsError::MacMismatch { .. }),
            "{name}: {err}"
        );
        assert!(
            err.to_string()
                .contains("the file was changed after it was encrypted"),
            "{name}: {err}"
        );
    }
}

#[test]
fn a_removed_or_reordered_value_fails_the_mac() {
    let original = text("encrypted/app.env");
    let without = original
        .lines()
        .filter(|l| !l.starts_with("DB_USER="))
        .collect::<Vec<_>>()
        .join("\n");
    let err = decrypt_edited("app.env", &without).unwrap_err();
    assert!(
        matches!(err, SopsError::MacMismatch { .. }),
        "removed: {err}"
    );

    // Swapping two lines keeps each value at its path but changes the order hashed.
    let lines: Vec<&str> = original.lines().collect();
    let (user, password) = (lines[1], lines[2]);
    assert!(user.starts_with("DB_USER=") && password.starts_with("DB_PASSWORD="));
    let swapped = original.replacen(
        &format!("{user}\n{password}"),
        &format!("{password}\n{user}"),
        1,
    );
    let err = decrypt_edited("app.env", &swapped).unwrap_err();
    assert!(
        matches!(err, SopsError::MacMismatch { .. }),
        "swapped: {err}"
    );
}

#[test]
fn an_edited_mac_or_timestamp_is_refused() {
    let original = text("encrypted/stack.yaml");
    let edited = edit(&original, "lastmodified: \"2026-", "lastmodified: \"2027-");
    let err = decrypt_edited("stack.yaml", &edited).unwrap_err();
    assert!(
        matches!(err, SopsError::MacMismatch { .. }),
        "timestamp: {err}"
    );

    let edited = edit(
        &original,
        "mac: ENC[AES256_GCM,data:",
        "mac: ENC[AES256_GCM,data:AAAA",
    );
    let err = decrypt_edited("stack.yaml", &edited).unwrap_err();
    assert!(matches!(err, SopsError::MacMismatch { .. }), "mac: {err}");
}

#[test]
fn a_plaintext_put_where_sops_encrypted_is_refused() {
    let original = text("encrypted/stack.yaml");
    let start = original.find("DB_PASSWORD: ").unwrap() + "DB_PASSWORD: ".len();
    let end = start + original[start..].find('\n').unwrap();
    let edited = format!("{}not-encrypted{}", &original[..start], &original[end..]);
    let err = decrypt_edited("stack.yaml", &edited).unwrap_err();
    assert!(matches!(err, SopsError::ValueNotEncrypted { .. }), "{err}");
}

#[test]
fn mac_only_encrypted_covers_only_the_encrypted_values() {
    // As in sops: with mac_only_encrypted, plain values may change, encrypted may not.
    let original = text("encrypted/maconly.yaml");
    let plain = decrypt_edited("maconly.yaml", &edit(&original, "count: 5", "count: 6"))
        .expect("plain edit allowed");
    assert_eq!(yaml_docs(&plain)[0]["count"], serde_json::json!(6));
    let edited = edit(
        &original,
        "password: ENC[AES256_GCM,data:E",
        "password: ENC[AES256_GCM,data:F",
    );
    assert!(matches!(
        decrypt_edited("maconly.yaml", &edited),
        Err(SopsError::ValueTampered { .. })
    ));
}

#[test]
fn a_comment_regex_file_still_checks_every_value() {
    // encrypted_comment_regex: berth reads no YAML comments, so it decrypts the ENC[]
    // values and relies on the MAC, which covers the plain ones too.
    let original = text("encrypted/comments.yaml");
    let edited = edit(&original, "replicas: 2", "replicas: 20");
    assert!(matches!(
        decrypt_edited("comments.yaml", &edited),
        Err(SopsError::MacMismatch { .. })
    ));
}

#[test]
fn a_file_without_age_recipients_is_refused_with_what_to_do() {
    let original = text("encrypted/partial.yaml");
    let start = original.find("    age:\n").unwrap();
    let end = original.find("    lastmodified:").unwrap();
    let pgp = "    pgp:\n        - fp: 0123456789ABCDEF\n          created_at: \"2026-01-01T00:00:00Z\"\n          enc: x\n";
    let edited = format!("{}{pgp}{}", &original[..start], &original[end..]);
    let err = decrypt_edited("partial.yaml", &edited).unwrap_err();
    assert!(matches!(err, SopsError::NoAgeRecipient { .. }), "{err}");
    assert!(
        err.to_string().contains("only for pgp") && err.to_string().contains("--add-age"),
        "{err}"
    );
}

#[test]
fn key_file_errors_say_which_line_and_never_echo_it() {
    let secret = "AGE-SECRET-KEY-1HMZL9R3MQZYSH23VR72GFT4G8MNVPR9USDM2MJRLM6WV82U84LJS0PCWGX";
    let err = Identities::parse(&format!("# my key\n{secret}\n"), "keys.txt").unwrap_err();
    let message = err.to_string();
    assert_eq!(
        message,
        "age key file keys.txt, line 2: is not a valid age secret key (mistyped or cut short?)"
    );
    assert!(!format!("{err:?}").contains("HMZL9R3"));

    let err = Identities::parse("# only a comment\n", "keys.txt").unwrap_err();
    assert!(matches!(err, SopsError::NoKeys { .. }), "{err}");
    let err = Identities::parse("export SOPS_AGE_KEY=x\n", "keys.txt").unwrap_err();
    assert!(
        err.to_string()
            .contains("line 1: is neither a comment nor an AGE-SECRET-KEY-1"),
        "{err}"
    );
    let err = Identities::from_file(&fixture("keys/missing.txt")).unwrap_err();
    assert!(
        err.to_string().starts_with("cannot read the age key file "),
        "{err}"
    );
}

/// The data key of a fixture, unwrapped here with the age crate directly, to look
/// for it in messages.
fn data_key_of(name: &str) -> Vec<u8> {
    let doc = &yaml_docs(&read(&format!("encrypted/{name}")))[0];
    let enc = doc["sops"]["age"][0]["enc"]
        .as_str()
        .expect("an age entry")
        .to_owned();
    let key_file = text("keys/key.txt");
    let line = key_file
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .expect("a key line");
    let identity: age::x25519::Identity = line.parse().expect("a valid key");
    let armored = age::armor::ArmoredReader::new(enc.as_bytes());
    let decryptor = age::Decryptor::new(armored).expect("an age message");
    let mut reader = decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .expect("the key opens it");
    let mut key = Vec::new();
    reader.read_to_end(&mut key).expect("the data key reads");
    assert_eq!(key.len(), 32);
    key
}

#[test]
fn no_secret_appears_in_errors_or_debug() {
    use base64::Engine as _;
    let data_key = data_key_of("stack.yaml");
    let private_key = text("keys/key.txt");
    let private_key = private_key
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap();
    let forbidden = [
        "hunter2".to_owned(),
        "nginx:1.27".to_owned(),
        "s3cr3t".to_owned(),
        "topsecret".to_owned(),
        "first line".to_owned(),
        private_key.to_owned(),
        private_key[20..40].to_owned(),
        private_key.to_ascii_lowercase()[20..40].to_owned(),
        hex::encode(&data_key),
        hex::encode_upper(&data_key),
        base64::engine::general_purpose::STANDARD.encode(&data_key),
        format!("{data_key:?}"),
    ];

    let original = text("encrypted/stack.yaml");
    let env = text("encrypted/app.env");
    let mut outputs = vec![format!("{:?}", keys("key.txt"))];
    let mut errors: Vec<SopsError> = vec![
        decrypt(
            original.as_bytes(),
            Path::new("stack.yaml"),
            &keys("other-key.txt"),
        )
        .unwrap_err(),
        decrypt_edited("stack.yaml", &edit(&original, "data:A", "data:B")).unwrap_err(),
        decrypt_edited("stack.yaml", &edit(&original, "type:int]", "type:bool]")).unwrap_err(),
        decrypt_edited("stack.yaml", &edit(&original, "type:str]", "type:zzz]")).unwrap_err(),
        decrypt_edited("stack.yaml", &edit(&original, "note: this", "note: that")).unwrap_err(),
        decrypt_edited("app.env", &edit(&env, "DB_USER=", "DB_USER")).unwrap_err(),
        Identities::parse(&format!("{}x", private_key), "k").unwrap_err(),
    ];
    // A file whose data key decrypts but whose metadata is damaged elsewhere.
    errors.push(
        decrypt_edited(
            "stack.yaml",
            &edit(&original, "lastmodified:", "lastmodifed:"),
        )
        .unwrap_err(),
    );
    for err in &errors {
        outputs.push(err.to_string());
        outputs.push(format!("{err:?}"));
    }
    for output in &outputs {
        for secret in &forbidden {
            assert!(
                !output.contains(secret.as_str()),
                "{output:?} shows a secret"
            );
        }
    }
}
