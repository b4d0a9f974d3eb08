//! The newc reader: entries or an error, never a panic; entries it reads, written again by the
//! writer, read back the same: the name; the type and permission bits (the writer keeps no
//! others, and writes symlinks 0777); the data of files and symlinks (the writer gives folders
//! and device nodes none, whatever an archive carried).
#![no_main]

use kiln_image::cpio::{read_archive, DeviceKind, Entry, Writer, PERM_MASK, S_IFLNK, S_IFMT};
use libfuzzer_sys::fuzz_target;

/// What the writer makes of an entry it is given: (name, mode, data).
fn as_written(e: &Entry) -> (&str, u32, &[u8]) {
    if e.is_symlink() {
        (&e.path, S_IFLNK | 0o777, &e.data)
    } else if e.is_file() {
        (&e.path, e.mode & (S_IFMT | PERM_MASK), &e.data)
    } else {
        (&e.path, e.mode & (S_IFMT | PERM_MASK), &[])
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(entries) = read_archive(data) else {
        return;
    };
    let mut w = Writer::new(Vec::new());
    let mut written = Vec::new();
    for e in &entries {
        let ok = if e.is_dir() {
            w.add_dir(&e.path, e.mode).is_ok()
        } else if e.is_file() {
            w.add_file(&e.path, e.mode, &e.data).is_ok()
        } else if e.is_symlink() {
            w.add_symlink(&e.path, &e.data).is_ok()
        } else if e.is_char_device() || e.is_block_device() {
            let kind = if e.is_char_device() {
                DeviceKind::Char
            } else {
                DeviceKind::Block
            };
            w.add_device(&e.path, kind, e.mode, e.rdev_major, e.rdev_minor)
                .is_ok()
        } else {
            false
        };
        if ok {
            written.push(e);
        }
    }
    let again = read_archive(&w.finish().expect("finish")).expect("a written archive reads");
    assert_eq!(again.len(), written.len());
    for (a, b) in again.iter().zip(written) {
        assert_eq!((a.path.as_str(), a.mode, a.data.as_slice()), as_written(b));
    }
});
