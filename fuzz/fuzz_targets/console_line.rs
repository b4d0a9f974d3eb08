//! The console protocol: lines parsed, bytes fed in pieces, never a panic; pieces give the
//! same events as the whole.
#![no_main]

use kiln_vm::console::{parse_line, LineParser};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    for line in String::from_utf8_lossy(bytes).lines() {
        let _ = parse_line(line);
    }
    let mut whole = LineParser::new(4);
    let all = whole.feed(bytes);
    let mut pieces = LineParser::new(4);
    let mut got = Vec::new();
    for chunk in bytes.chunks(usize::from(split).max(1)) {
        got.extend(pieces.feed(chunk));
    }
    assert_eq!(got, all);
    assert_eq!(pieces.tail(), whole.tail());
});
