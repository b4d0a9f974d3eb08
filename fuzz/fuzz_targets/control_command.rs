//! kiln-init's control commands (`poweroff`, `reboot`, `freeze`, `thaw SEED HOST NANOS`):
//! `parse_command` never panics. kiln-init is a binary crate, so its parser's modules are
//! compiled in here from their files, with the snapshot module (which acts on the guest)
//! replaced by a stub.
#![no_main]
#![allow(dead_code, unused_imports, clippy::all)]

#[path = "../../crates/init/src/cmdline.rs"]
mod cmdline;
#[path = "../../crates/init/src/config.rs"]
mod config;
#[path = "../../crates/init/src/control.rs"]
mod control;
#[path = "../../crates/init/src/report.rs"]
mod report;
#[path = "../../crates/init/src/sys.rs"]
mod sys;

/// What control.rs needs of kiln-init's snapshot module, doing nothing.
mod snapshot {
    pub struct Guest;
    pub fn freeze() {}
    pub fn thaw(_: &Guest, _: &crate::control::Thaw, _: u64) {}
}

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    match control::parse_command(&line) {
        Ok(_) => {}
        Err(control::BadCommand::Unknown(u)) => assert_eq!(u, line.trim()),
        Err(control::BadCommand::Thaw(e)) => {
            let _ = e.line();
        }
    }
    let _ = control::decode_hex(&line);
});
