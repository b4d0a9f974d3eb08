//! kiln.toml: `Config::parse` and `Recipe::load` (which turns spans into line:column) never
//! panic, and a refusal's span lies inside the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn recipe_dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(d.path().join("etc")).expect("mkdir");
        std::fs::write(d.path().join("etc/rc"), "exec sh\n").expect("rc");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err((Some(span), _)) = kiln_recipe::Config::parse(text) {
        assert!(
            span.start <= span.end && span.start <= text.len(),
            "{span:?}"
        );
    }
    let _ = kiln_recipe::KernelChoice::parse_override(text);
    let d = recipe_dir();
    std::fs::write(d.path().join("kiln.toml"), data).expect("write");
    if let Err(e) = kiln_recipe::Recipe::load(d.path()) {
        let _ = e.to_string();
    }
});
