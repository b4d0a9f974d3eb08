//! Property tests of the newc archive: what the [`Writer`] writes, [`read_archive`] reads back
//! entry for entry; invalid names are errors; and the reader never panics on damaged or
//! arbitrary bytes.

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

/// One entry to write.
#[derive(Debug, Clone)]
enum Gen {
    Dir(String, u32),
    File(String, u32, Vec<u8>),
    Symlink(String, String),
    Device(String, DeviceKind, u32, u32, u32),
}

/// A name the archive can hold: 1–60 characters (sometimes near the limit), no NUL.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[^\0]{1,60}",
        // Long names, made cheaply (a regex of 4000 characters is slow to generate).
        1 => (4000..=MAX_PATH_LEN, "[a-z/]{1,8}").prop_map(|(n, unit)| {
            let mut s = unit.repeat(n / unit.len() + 1);
            s.truncate(n);
            s
        }),
    ]
    .prop_filter("the trailer's name", |s| s != TRAILER)
}

fn entry() -> impl Strategy<Value = Gen> {
    prop_oneof![
        (name(), any::<u32>()).prop_map(|(p, m)| Gen::Dir(p, m)),
        (
            name(),
            any::<u32>(),
            prop::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(p, m, d)| Gen::File(p, m, d)),
        (name(), name()).prop_map(|(p, t)| Gen::Symlink(p, t)),
        (
            name(),
            any::<bool>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(|(p, block, m, maj, min)| {
                let kind = if block {
                    DeviceKind::Block
                } else {
                    DeviceKind::Char
                };
                Gen::Device(p, kind, m, maj, min)
            }),
    ]
}

fn write(entries: &[Gen], mtime: u32) -> Vec<u8> {
    let mut w = Writer::new(Vec::new()).with_mtime(mtime);
    for e in entries {
        match e {
            Gen::Dir(p, m) => w.add_dir(p, *m),
            Gen::File(p, m, d) => w.add_file(p, *m, d),
            Gen::Symlink(p, t) => w.add_symlink(p, t),
            Gen::Device(p, k, m, maj, min) => w.add_device(p, *k, *m, *maj, *min),
        }
        .expect("a valid entry");
    }
    assert_eq!(w.entries(), entries.len());
    w.finish().expect("finish")
}

/// How an archive is damaged: bytes flipped, cut short, or both.
fn damage() -> impl Strategy<Value = (Vec<(prop::sample::Index, u8)>, Option<prop::sample::Index>)>
{
    (
        prop::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 0..8),
        prop::option::of(any::<prop::sample::Index>()),
    )
}

proptest! {
    #![proptest_config(config())]

    /// Entries written are read back as written: type, permissions, owner 0, link count,
    /// mtime, inode numbers from 1, device numbers and data.
    #[test]
    fn write_then_read_round_trips(entries in prop::collection::vec(entry(), 0..12), mtime in any::<u32>()) {
        let data = write(&entries, mtime);
        prop_assert_eq!(data.len() % BLOCK_SIZE as usize, 0);
        let read = read_archive(&data).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(read.len(), entries.len());
        for (i, (g, e)) in entries.iter().zip(&read).enumerate() {
            prop_assert_eq!(e.ino as usize, i + 1);
            prop_assert_eq!((e.uid, e.gid, e.mtime), (0, 0, u64::from(mtime)));
            let (path, mode, nlink, rdev, bytes): (&str, u32, u32, (u32, u32), Vec<u8>) = match g {
                Gen::Dir(p, m) => (p, S_IFDIR | (m & PERM_MASK), 2, (0, 0), vec![]),
                Gen::File(p, m, d) => (p, S_IFREG | (m & PERM_MASK), 1, (0, 0), d.clone()),
                Gen::Symlink(p, t) => (p, S_IFLNK | 0o777, 1, (0, 0), t.as_bytes().to_vec()),
                Gen::Device(p, k, m, maj, min) => {
                    (p, k.type_bits() | (m & PERM_MASK), 1, (*maj, *min), vec![])
                }
            };
            prop_assert_eq!(&e.path, path);
            prop_assert_eq!(e.mode, mode);
            prop_assert_eq!(e.nlink, nlink);
            prop_assert_eq!((e.rdev_major, e.rdev_minor), rdev);
            prop_assert_eq!(&e.data, &bytes);
            if let Gen::Symlink(_, t) = g {
                prop_assert_eq!(e.symlink_target(), Some(t.clone()));
            }
        }
    }

    /// Two archives one after the other read as one list, as the kernel reads them.
    #[test]
    fn concatenated_archives_read_as_one(
        a in prop::collection::vec(entry(), 0..5),
        b in prop::collection::vec(entry(), 1..5),
        gap in 0usize..3,
    ) {
        let mut data = write(&a, 1);
        data.extend(std::iter::repeat_n(0u8, gap * 4));
        data.extend(write(&b, 2));
        let read = read_archive(&data).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(read.len(), a.len() + b.len());
        prop_assert!(read[..a.len()].iter().all(|e| e.mtime == 1));
        prop_assert!(read[a.len()..].iter().all(|e| e.mtime == 2));
    }

    /// Names the archive cannot hold are errors (never a panic, never a broken archive).
    #[test]
    fn invalid_names_are_refused(
        prefix in "[a-z]{0,5}",
        kind in 0u8..5,
        target in prop_oneof![
            Just(String::new()),
            "[a-z]{0,3}\0[a-z]{0,3}",
            (MAX_PATH_LEN + 1..MAX_PATH_LEN + 5).prop_map(|n| "t".repeat(n)),
        ],
    ) {
        let bad: Vec<u8> = match kind {
            0 => Vec::new(),
            1 => format!("{prefix}\0x").into_bytes(),
            2 => TRAILER.as_bytes().to_vec(),
            3 => vec![b'a'; MAX_PATH_LEN + 1 + prefix.len()],
            _ => b"ok".to_vec(),
        };
        let mut w = Writer::new(Vec::new());
        if kind < 4 {
            prop_assert!(w.add_dir(&bad, 0o755).is_err());
            prop_assert!(w.add_file(&bad, 0o644, b"x").is_err());
            prop_assert!(w.add_device(&bad, DeviceKind::Char, 0o600, 5, 1).is_err());
        }
        prop_assert!(w.add_symlink("link", target.as_bytes()).is_err());
        prop_assert_eq!(w.entries(), 0);
        // A reader shorter than it says is an error too.
        prop_assert!(w.add_file_reader("short", 0o644, 10 + prefix.len() as u64, prefix.as_bytes()).is_err());
    }

    /// Arbitrary bytes, and bytes that start like an archive: entries or an error.
    #[test]
    fn reading_arbitrary_bytes_never_panics(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..600),
            (prop::collection::vec("[0-9A-Fa-f]", 104), prop::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(hex, tail)| {
                    let mut b = NEWC_MAGIC.to_vec();
                    b.extend(hex.concat().bytes());
                    b.extend(tail);
                    b
                }),
        ],
    ) {
        if let Err(e) = read_archive(&bytes) {
            let _ = e.to_string();
        }
    }

    /// A valid archive with bytes flipped and cut short: entries or an error, never a panic;
    /// whatever is read has its data inside the input.
    #[test]
    fn reading_damaged_archives_never_panics(entries in prop::collection::vec(entry(), 1..6), (flips, cut) in damage()) {
        let mut data = write(&entries, 7);
        for (i, x) in flips {
            let i = i.index(data.len());
            data[i] ^= x;
        }
        if let Some(c) = cut {
            let c = c.index(data.len() + 1);
            data.truncate(c);
        }
        match read_archive(&data) {
            Ok(read) => {
                let total: usize = read.iter().map(|e| e.data.len()).sum();
                prop_assert!(total <= data.len());
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
}
