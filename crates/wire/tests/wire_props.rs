//! Property tests of the exec channel's frames: every frame survives encode → decode, in
//! whatever pieces the bytes arrive, and no byte string makes the decoder panic.

use kiln_wire::{decode, encode, Decoder, Frame, Open, Status};
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn frame() -> impl Strategy<Value = Frame> {
    let data = proptest::collection::vec(any::<u8>(), 0..64);
    prop_oneof![
        (
            any::<u32>(),
            proptest::collection::vec(text(), 0..4),
            proptest::collection::vec(text(), 0..3),
            text(),
            any::<bool>(),
            any::<u16>(),
            any::<u16>()
        )
            .prop_map(|(id, argv, env, cwd, tty, rows, cols)| Frame::Open {
                id,
                open: Open {
                    argv,
                    env,
                    cwd,
                    tty,
                    rows,
                    cols
                }
            }),
        (any::<u32>(), text()).prop_map(|(id, path)| Frame::Get { id, path }),
        (any::<u32>(), text(), any::<u32>()).prop_map(|(id, path, mode)| Frame::Put {
            id,
            path,
            mode
        }),
        (any::<u32>(), data.clone()).prop_map(|(id, data)| Frame::Stdin { id, data }),
        any::<u32>().prop_map(|id| Frame::StdinEof { id }),
        (any::<u32>(), any::<u16>(), any::<u16>()).prop_map(|(id, rows, cols)| Frame::Resize {
            id,
            rows,
            cols
        }),
        any::<u32>().prop_map(|id| Frame::Close { id }),
        (any::<u32>(), data.clone()).prop_map(|(id, data)| Frame::Stdout { id, data }),
        (any::<u32>(), data).prop_map(|(id, data)| Frame::Stderr { id, data }),
        (any::<u32>(), any::<i32>(), any::<bool>()).prop_map(|(id, v, sig)| Frame::Exit {
            id,
            status: if sig {
                Status::Signaled(v)
            } else {
                Status::Exited(v)
            }
        }),
        (any::<u32>(), text()).prop_map(|(id, message)| Frame::Error { id, message }),
        (any::<u32>(), any::<u32>()).prop_map(|(id, mode)| Frame::Mode { id, mode }),
    ]
}

proptest! {
    #[test]
    fn frames_round_trip_in_any_pieces(
        frames in proptest::collection::vec(frame(), 1..6),
        cuts in proptest::collection::vec(1usize..40, 1..20),
    ) {
        let bytes: Vec<u8> = frames.iter().flat_map(encode).collect();
        let mut d = Decoder::new();
        let mut got = vec![];
        let mut at = 0;
        let mut cut = cuts.iter().cycle();
        while at < bytes.len() {
            let n = (*cut.next().unwrap_or(&1)).min(bytes.len() - at);
            d.push(&bytes[at..at + n]);
            at += n;
            while let Some(f) = d.next_frame().map_err(|e| TestCaseError::fail(e.to_string()))? {
                got.push(f);
            }
        }
        prop_assert_eq!(got, frames);
        prop_assert_eq!(d.pending(), 0);
    }

    #[test]
    fn any_bytes_decode_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        if let Ok(Some((f, n))) = decode(&bytes) {
            prop_assert!(n <= bytes.len());
            // What decodes encodes back to the same bytes.
            prop_assert_eq!(encode(&f), bytes[..n].to_vec());
        }
    }
}
