//! The loader never panics, whatever it is given: arbitrary text, and Compose-shaped
//! documents made of real attribute names with values of every shape, which reach far
//! deeper into decoding and validation than random text does.

mod common;

use proptest::prelude::*;

const KEYS: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "expose",
    "volumes",
    "tmpfs",
    "networks",
    "depends_on",
    "healthcheck",
    "restart",
    "deploy",
    "secrets",
    "configs",
    "user",
    "working_dir",
    "labels",
    "ulimits",
    "sysctls",
    "extra_hosts",
    "dns",
    "cap_add",
    "stop_signal",
    "stop_grace_period",
    "shm_size",
    "mem_limit",
    "cpus",
    "scale",
    "profiles",
    "logging",
    "build",
    "extends",
    "replicas",
    "resources",
    "limits",
    "memory",
    "target",
    "published",
    "source",
    "type",
    "test",
    "interval",
    "condition",
    "mode",
    "placement",
    "constraints",
    "soft",
    "hard",
    "x-ext",
    "<<",
    "aliases",
    "ipv4_address",
    "bind",
    "tmpfs",
];

const SCALARS: &[&str] = &[
    "0",
    "-1",
    "70000",
    "1.5",
    "true",
    "null",
    "''",
    "'$$'",
    "'${X:-y}'",
    "'${X:?no}'",
    "'8080:80'",
    "'1-65535:1-65535'",
    "'[::1]:80:80/udp'",
    "'./a:/b:ro'",
    "/abs",
    "1m30s",
    "'10 parsecs'",
    "512m",
    "SIGTERM",
    "'on-failure:3'",
    "0440",
    "'a=b'",
    "CMD",
    "'${'",
    "'\u{1F600}'",
    "'node.role==manager'",
    "web",
    "db",
    "default",
    "x",
    "~",
];

/// A YAML value of bounded depth, written in flow style.
fn value(depth: u32) -> BoxedStrategy<String> {
    let leaf = proptest::sample::select(SCALARS)
        .prop_map(str::to_string)
        .boxed();
    if depth == 0 {
        return leaf;
    }
    let key = proptest::sample::select(KEYS);
    prop_oneof![
        2 => leaf,
        1 => proptest::collection::vec(value(depth - 1), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
        2 => proptest::collection::vec((key, value(depth - 1)), 0..5).prop_map(|kv| {
            let body: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k:?}: {v}")).collect();
            format!("{{{}}}", body.join(", "))
        }),
    ]
    .boxed()
}

fn document() -> impl Strategy<Value = String> {
    let service = proptest::collection::vec((proptest::sample::select(KEYS), value(3)), 0..8);
    proptest::collection::vec(
        (proptest::sample::select(&["web", "db", "x"][..]), service),
        1..4,
    )
    .prop_map(|services| {
        let mut text = String::from("services:\n");
        for (name, attrs) in services {
            text.push_str(&format!("  {name}:\n    image: busybox\n"));
            for (k, v) in attrs {
                text.push_str(&format!("    {k:?}: {v}\n"));
            }
        }
        text.push_str("networks: {default: {}}\nvolumes: {data: {}}\n");
        text
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        let _ = common::load_text(&text, &[]);
    }

    #[test]
    fn compose_shaped_documents_never_panic(doc in document()) {
        // Errors are fine; a panic fails the test. When a document loads, its canonical
        // form must load too.
        if let Ok(p) = common::load_text(&doc, &[("X", "1")]) {
            let text = spec::canonical::to_yaml(&p.stack).expect("serializes");
            prop_assert!(common::load_text(&text, &[("X", "1")]).is_ok(), "canonical form of\n{doc}\ndoes not load:\n{text}");
        }
    }
}
