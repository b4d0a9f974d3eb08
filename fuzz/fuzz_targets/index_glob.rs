//! The copy-binlib index: lines parsed (comments, blanks), each compiled as a glob and matched
//! against paths, never a panic. (Host globbing is left out: a fuzzed `/**` would walk the
//! whole filesystem.)
#![no_main]

use kiln_rootfs::index::{parse, wildcards, Glob, MAX_WILDCARDS};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

const OPTS: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

const PATHS: &[&str] = &[
    "/",
    "/usr/sbin/nginx",
    "/etc/nginx/nginx.conf",
    "/usr/share/nginx/html/index.html",
    "/.hidden/x",
    "/a/b/c/d/e/f",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for l in parse(text) {
        assert!(!l.text.is_empty() && l.text.trim() == l.text);
        // As `index::select`: a line with more wildcards is refused before it is matched.
        if wildcards(&l.text) > MAX_WILDCARDS {
            continue;
        }
        if let Ok(g) = Glob::new(&l.text) {
            for p in PATHS.iter().chain([&l.text.as_str()]) {
                let _ = g.matches_path_with(Path::new(p), OPTS);
            }
        }
    }
});
