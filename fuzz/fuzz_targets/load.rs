//! Fuzzes the whole Compose loader with a file read from "standard input": parsing,
//! interpolation, merging, decoding, profiles and validation must never panic, and a
//! stack that loads must print a canonical form that loads again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let opts = spec::LoadOptions {
        files: vec!["-".into()],
        stdin_text: Some(text.to_string()),
        // A directory that does not exist: nothing else is read from disk.
        working_dir: "/nonexistent/berth-fuzz".into(),
        environment: [("X".to_string(), "1".to_string())].into_iter().collect(),
        ..Default::default()
    };
    if let Ok(project) = spec::load(&opts) {
        let canonical = spec::canonical::to_yaml(&project.stack).expect("a loaded stack serializes");
        let again = spec::LoadOptions { stdin_text: Some(canonical), ..opts };
        assert!(spec::load(&again).is_ok(), "the canonical form of a loaded stack must load");
    }
});
