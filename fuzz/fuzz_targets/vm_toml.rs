//! vm.toml: `VmConfig` from TOML and `VmConfig::load` (FILE:LINE: key `KEY`: message) never
//! panic; what loads, validates, and survives JSON and TOML unchanged.
#![no_main]

use kiln_fleet::VmConfig;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = toml::from_str::<VmConfig>(text) {
            if c.validate().is_ok() {
                assert_eq!(round_trips(&c), (c.clone(), c));
            }
        }
    }
    let p = dir().path().join("vm.toml");
    std::fs::write(&p, data).expect("write");
    match VmConfig::load(&p) {
        Ok(c) => assert!(c.validate().is_ok()),
        Err(e) => {
            let m = e.to_string();
            assert!(m.contains("vm.toml"), "{m}");
        }
    }
});

/// The config through JSON (records, the API) and TOML (saved configs).
fn round_trips(c: &VmConfig) -> (VmConfig, VmConfig) {
    let json = serde_json::to_string(c).expect("a valid config serialises to JSON");
    let toml_text = toml::to_string(c).expect("a valid config serialises to TOML");
    (
        serde_json::from_str(&json).expect("and reads back from JSON"),
        toml::from_str(&toml_text).expect("and reads back from TOML"),
    )
}
