//! The ELF closure reader: the input is a binary in a sysroot whose interpreter and libc are
//! links to the same file; the closure is computed or refused, never a panic, and whatever it
//! keeps lies inside the sysroot.
#![no_main]

use kiln_rootfs::elf::{NodeKind, Resolver};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

fn sysroot() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().expect("tempdir");
        let r = d.path();
        for dir in ["bin", "lib64", "lib/x86_64-linux-gnu", "etc"] {
            std::fs::create_dir_all(r.join(dir)).expect("mkdir");
        }
        std::os::unix::fs::symlink("../bin/x", r.join("lib64/ld-linux-x86-64.so.2")).expect("ln");
        std::os::unix::fs::symlink("../../bin/x", r.join("lib/x86_64-linux-gnu/libc.so.6"))
            .expect("ln");
        std::fs::write(r.join("etc/ld.so.conf"), "/opt/lib\n").expect("conf");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let root = sysroot().path();
    std::fs::write(root.join("bin/x"), data).expect("write");
    let r = Resolver::new(root).expect("resolver");
    let bin = PathBuf::from("/bin/x");
    for got in [
        r.closure(std::slice::from_ref(&bin)),
        r.closure_with_reasons(&[(bin.clone(), "fuzzed".into())]),
    ] {
        match got {
            Ok(c) => {
                for n in &c.nodes {
                    if let NodeKind::File { source, .. } = &n.kind {
                        assert!(source.starts_with(root), "{}", source.display());
                    }
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});
