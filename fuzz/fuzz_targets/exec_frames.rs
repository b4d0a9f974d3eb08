//! The exec channel's frames (kiln-wire), as kiln-init and the keeper read them from the
//! other end: any bytes decode to frames or a refusal, never a panic; a decoded frame encodes
//! back to the same bytes; the stream decoder fed in pieces gives what one decode pass gives.
#![no_main]

use kiln_wire::{decode, encode, Decoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // One pass over the bytes.
    let mut whole = vec![];
    let mut at = 0;
    while let Ok(Some((frame, n))) = decode(&data[at..]) {
        assert!(n > 0 && at + n <= data.len());
        assert_eq!(encode(&frame), data[at..at + n], "{frame:?} encodes back as read");
        whole.push(frame);
        at += n;
    }
    // The same bytes in pieces of 7.
    let mut d = Decoder::new();
    let mut pieces = vec![];
    'feed: for chunk in data.chunks(7) {
        d.push(chunk);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => pieces.push(f),
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    assert_eq!(pieces, whole);
});
