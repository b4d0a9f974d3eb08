//! Property tests of the console protocol parser: any line or byte stream is parsed without a
//! panic, kiln-init's lines round-trip for any number, and feeding bytes in any split gives
//! the same events as feeding them at once.

use kiln_vm::console::{parse_line, ConsoleEvent, LineParser};
use proptest::prelude::*;

/// 256 cases, or `PROPTEST_CASES` (`make fuzz` without nightly).
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        ..ProptestConfig::default()
    }
}

/// A console line: kiln-init's, a kernel message, or noise.
fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "(\\[ *[0-9]+\\.[0-9]+\\] )?kiln: (ready in|thawed in|rc exited with status|timeline|error:|init panicked:|powering off|frozen) ?[-0-9a-z= ]{0,20}( ms)?",
        any::<u64>().prop_map(|n| format!("kiln: ready in {n} ms")),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Any line: an event or nothing, never a panic.
    #[test]
    fn parse_line_never_panics(l in line()) {
        let _ = parse_line(&l);
    }

    /// `kiln: ready in N ms` and `kiln: thawed in N ms` for any N, after any prefix a kernel
    /// message may leave on the line.
    #[test]
    fn ready_and_thawed_round_trip(n in any::<u64>(), prefix in "(\\[ *[0-9]{1,5}\\.[0-9]{6}\\] )?[a-z ]{0,10}") {
        prop_assert_eq!(
            parse_line(&format!("{prefix}kiln: ready in {n} ms")),
            Some(ConsoleEvent::Ready { guest_ms: n })
        );
        prop_assert_eq!(
            parse_line(&format!("{prefix}kiln: thawed in {n} ms")),
            Some(ConsoleEvent::Thawed { ms: n })
        );
    }

    /// `rc exited with status N` for any i32 and timelines of any phases.
    #[test]
    fn status_and_timeline_round_trip(
        status in any::<i32>(),
        phases in prop::collection::vec(("[a-z]{1,8}", any::<u64>()), 0..6),
    ) {
        prop_assert_eq!(
            parse_line(&format!("kiln: rc exited with status {status}")),
            Some(ConsoleEvent::RcExited { status })
        );
        let words: Vec<String> = phases.iter().map(|(k, v)| format!("{k}={v}")).collect();
        prop_assert_eq!(
            parse_line(&format!("kiln: timeline {}", words.join(" "))),
            Some(ConsoleEvent::Timeline(phases))
        );
    }

    /// Bytes fed in any pieces give the events of the whole, and the tail keeps at most `keep`
    /// lines plus the unfinished one.
    #[test]
    fn feed_in_pieces_is_feed_at_once(
        lines in prop::collection::vec(line(), 0..12),
        junk in prop::collection::vec(any::<u8>(), 0..64),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        keep in 1usize..8,
    ) {
        let mut bytes: Vec<u8> = lines.join("\r\n").into_bytes();
        bytes.push(b'\n');
        bytes.extend(&junk);
        let mut whole = LineParser::new(keep);
        let all = whole.feed(&bytes);
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        at.sort_unstable();
        let mut pieces = LineParser::new(keep);
        let mut got = Vec::new();
        let mut start = 0;
        for end in at.into_iter().chain([bytes.len()]) {
            got.extend(pieces.feed(&bytes[start..end]));
            start = end;
        }
        prop_assert_eq!(&got, &all);
        prop_assert_eq!(pieces.tail(), whole.tail());
        let complete = bytes.iter().filter(|&&b| b == b'\n').count();
        let tail_lines = whole.tail().matches('\n').count() + 1;
        prop_assert!(tail_lines <= keep + 1 || tail_lines <= complete + 1);
    }

    /// A line longer than the parser keeps (4096 bytes) is cut, not grown without bound.
    #[test]
    fn long_lines_are_bounded(n in 4096usize..20000, b in 0x20u8..0x7f) {
        let mut p = LineParser::new(2);
        p.feed(&vec![b; n]);
        prop_assert!(p.tail().len() <= 4096 * 4);
    }
}
