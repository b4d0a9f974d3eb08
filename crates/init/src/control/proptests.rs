//! Property tests of the control-command parser: no line makes it panic, well-formed commands
//! parse into what they say whatever the spacing, and malformed ones say why.

use super::*;
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

fn hex(bytes: &[u8], upper: &[bool]) -> String {
    bytes
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if upper.get(i).copied().unwrap_or(false) {
                format!("{b:02X}")
            } else {
                format!("{b:02x}")
            }
        })
        .collect()
}

/// Spacing between words: spaces and tabs (ASCII whitespace the parser splits on).
fn gap() -> impl Strategy<Value = String> {
    "[ \t]{1,3}"
}

/// A line that looks like a command: command words, hex, hostnames and numbers.
fn command_like() -> impl Strategy<Value = String> {
    let word = prop_oneof![
        Just("thaw".to_string()),
        Just("poweroff".to_string()),
        Just("reboot".to_string()),
        Just("freeze".to_string()),
        Just("hosts".to_string()),
        "[a-z]{1,8}=[0-9.]{1,16}",
        "[0-9a-fA-F]{0,130}",
        "[^ \t\r\n]{1,70}",
        any::<u64>().prop_map(|n| n.to_string()),
        "[0-9]{19,22}",
    ];
    prop::collection::vec((word, gap()), 0..6).prop_map(|ws| {
        ws.into_iter()
            .map(|(w, g)| format!("{w}{g}"))
            .collect::<String>()
    })
}

proptest! {
    #![proptest_config(config())]

    /// Any line: a command, nothing, or a refusal; an unknown command is the trimmed line, and
    /// a malformed thaw's console line never echoes the seed.
    #[test]
    fn parse_command_never_panics(line in prop_oneof![any::<String>(), command_like()]) {
        match parse_command(&line) {
            Ok(None) => prop_assert!(line.trim().is_empty() || line.split_ascii_whitespace().next().is_none()),
            Ok(Some(_)) => {}
            Err(BadCommand::Unknown(u)) => prop_assert_eq!(u, line.trim()),
            Err(BadCommand::Hosts(pair)) => {
                prop_assert!(line.split_ascii_whitespace().skip(1).any(|w| w == pair), "{pair}");
            }
            Err(BadCommand::Thaw(e)) => {
                let out = e.line();
                prop_assert!(out.contains("thaw") && out.contains("(ignored)"), "{out}");
                for w in line.split_ascii_whitespace().filter(|w| w.len() >= 16) {
                    prop_assert!(!out.contains(w), "{out} echoes {w}");
                }
            }
        }
    }

    /// `thaw SEED HOSTNAME NANOS` with any seed, hostname and time, in any case and spacing.
    #[test]
    fn thaw_round_trips(
        seed in prop::array::uniform32(any::<u8>()).prop_flat_map(|a| {
            prop::array::uniform32(any::<u8>()).prop_map(move |b| {
                let mut s = [0u8; SEED_LEN];
                s[..32].copy_from_slice(&a);
                s[32..].copy_from_slice(&b);
                s
            })
        }),
        upper in prop::collection::vec(any::<bool>(), SEED_LEN),
        hostname in "[^\\s\0]{1,64}".prop_filter("64 bytes at most", |h| h.len() <= 64),
        nanos in any::<u64>(),
        (g0, g1, g2, g3) in (gap(), gap(), gap(), gap()),
        crlf in any::<bool>(),
    ) {
        let line = format!(
            "{g0}thaw{g1}{}{g2}{hostname}{g3}{nanos}{}",
            hex(&seed, &upper),
            if crlf { "\r\n" } else { "\n" }
        );
        let want = Command::Thaw(Thaw { seed, hostname: hostname.clone(), unix_nanos: nanos });
        prop_assert_eq!(parse_command(&line), Ok(Some(want)));
    }

    /// Malformed thaws say what is wrong: the number of fields, the seed, the name or the time.
    #[test]
    fn malformed_thaws_say_why(
        n_fields in 0usize..6,
        seed_len in 0usize..80,
        odd in any::<bool>(),
        bad_time in "[0-9]{0,3}[a-z.-][0-9]{0,3}",
    ) {
        let seed = "ab".repeat(seed_len) + if odd { "a" } else { "" };
        let fields: Vec<String> = (0..n_fields).map(|i| format!("f{i}")).collect();
        if n_fields != 3 {
            let line = format!("thaw {}", fields.join(" "));
            prop_assert_eq!(parse_command(&line), Err(BadCommand::Thaw(ThawError::FieldCount(n_fields))));
        }
        let line = format!("thaw {seed} host 1");
        let want = if seed.is_empty() {
            ThawError::FieldCount(2)
        } else if odd {
            ThawError::SeedNotHex
        } else {
            ThawError::SeedLength(seed_len)
        };
        if seed_len != SEED_LEN || odd {
            prop_assert_eq!(parse_command(&line), Err(BadCommand::Thaw(want)));
        }
        let good = "00".repeat(SEED_LEN);
        let line = format!("thaw {good} host {bad_time}");
        prop_assert_eq!(parse_command(&line), Err(BadCommand::Thaw(ThawError::BadTime)));
        let long = "h".repeat(65);
        let line = format!("thaw {good} {long} 1");
        prop_assert_eq!(parse_command(&line), Err(BadCommand::Thaw(ThawError::BadHostname)));
    }

    /// The one-word commands, with any spacing; with an argument they are unknown.
    #[test]
    fn one_word_commands(
        which in prop::sample::select(vec![("poweroff", Command::PowerOff), ("reboot", Command::Reboot), ("freeze", Command::Freeze)]),
        (g0, g1) in (gap(), gap()),
        arg in "[a-z0-9]{1,5}",
    ) {
        let (word, cmd) = which;
        let line = format!("{g0}{word}{g1}\r\n");
        prop_assert_eq!(parse_command(&line), Ok(Some(cmd)));
        let line = format!("{word} {arg}");
        prop_assert_eq!(parse_command(&line), Err(BadCommand::Unknown(line.as_str())));
    }

    /// Hex decoding: any bytes in either case round-trip; an odd length or a non-hex character
    /// is refused.
    #[test]
    fn hex_round_trips(bytes in prop::collection::vec(any::<u8>(), 0..100), upper in prop::collection::vec(any::<bool>(), 0..100), junk in any::<String>()) {
        let h = hex(&bytes, &upper);
        prop_assert_eq!(decode_hex(&h), Some(bytes));
        prop_assert_eq!(decode_hex(&format!("{h}0")), None);
        if let Some(d) = decode_hex(&junk) {
            prop_assert!(junk.len() % 2 == 0 && junk.bytes().all(|b| b.is_ascii_hexdigit()));
            prop_assert_eq!(d.len(), junk.len() / 2);
        }
    }
}
