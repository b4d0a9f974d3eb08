//! End-to-end tests of `write_initramfs` on real staging trees in tempdirs.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::{self, File, Permissions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use kiln_image::cpio::{self, read_archive, Entry};
use kiln_image::{decompress, write_initramfs, BuildOptions, Compression, ExtraEntry, ImageError};
use sha2::{Digest, Sha256};

fn write_file(root: &Path, rel: &str, data: &[u8], mode: u32) {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(&path, data).expect("write");
    fs::set_permissions(&path, Permissions::from_mode(mode)).expect("chmod");
}

/// A small but varied guest tree.
fn populate(root: &Path) {
    for d in ["etc", "usr/bin", "usr/lib", "var/empty"] {
        fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    fs::set_permissions(root.join("var/empty"), Permissions::from_mode(0o711)).expect("chmod");
    write_file(root, "etc/hostname", b"kiln\n", 0o644);
    write_file(root, "etc/shadow", b"root:*:1::::::\n", 0o600);
    write_file(root, "usr/bin/app", b"\x7fELF pretend binary", 0o755);
    write_file(root, "usr/bin/su", b"setuid", 0o4755);
    write_file(root, "usr/lib/empty", b"", 0o644);
    // Bigger than one copy buffer, not a multiple of 4.
    let big: Vec<u8> = (0..200_003u32).map(|i| (i * 7 % 251) as u8).collect();
    write_file(root, "usr/lib/big.bin", &big, 0o644);
    symlink("usr/bin", root.join("bin")).expect("symlink");
    symlink("../usr/bin/app", root.join("etc/app-link")).expect("symlink");
    // Names that sort differently per directory and by full path bytes.
    write_file(root, "a-b", b"1", 0o644);
    write_file(root, "a/x", b"2", 0o644);
    write_file(root, "B", b"3", 0o644);
}

fn extras() -> Vec<ExtraEntry> {
    vec![
        ExtraEntry::char_dev("dev/console", 0o600, 5, 1),
        ExtraEntry::char_dev("/dev/null", 0o666, 1, 3),
        ExtraEntry::block_dev("dev/vda", 0o660, 254, 0),
        ExtraEntry::dir("proc", 0o555),
        ExtraEntry::dir("run/kiln/deep", 0o700),
        ExtraEntry::symlink("sbin", "bin"),
        ExtraEntry::file("etc/kiln.conf", 0o640, b"service=app\n".to_vec()),
    ]
}

fn build(
    staging: &Path,
    extra: &[ExtraEntry],
    opts: &BuildOptions,
    dest: &Path,
) -> kiln_image::ImageStats {
    write_initramfs(staging, extra, opts, dest).expect("write_initramfs")
}

fn entries_of(image: &Path) -> Vec<Entry> {
    let data = fs::read(image).expect("read image");
    let raw = decompress(&data).expect("decompress");
    read_archive(&raw).expect("read_archive")
}

fn find<'a>(entries: &'a [Entry], path: &str) -> &'a Entry {
    entries
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("{path} missing from archive"))
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn tool_available(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn cpio_round_trip() {
    let staging = tempfile::tempdir().expect("tempdir");
    populate(staging.path());
    let out = tempfile::tempdir().expect("tempdir");
    let dest = out.path().join("initramfs.cpio");
    let opts = BuildOptions {
        compression: Compression::None,
        level: None,
        mtime: 1_700_000_000,
        owners: Default::default(),
    };
    let stats = build(staging.path(), &extras(), &opts, &dest);

    let raw = fs::read(&dest).expect("read");
    assert_eq!(raw.len() as u64, stats.compressed_bytes);
    assert_eq!(raw.len() as u64, stats.uncompressed_bytes);
    assert_eq!(raw.len() % 512, 0, "archive padded to 512 bytes");
    assert_eq!(&raw[..6], b"070701");
    assert_eq!(stats.sha256, hex::encode(Sha256::digest(&raw)));

    // Walk the headers by hand: every header 4-aligned, trailer last.
    let mut pos = 0usize;
    let mut count = 0usize;
    loop {
        assert_eq!(pos % 4, 0, "header at {pos} is not 4-byte aligned");
        assert_eq!(&raw[pos..pos + 6], b"070701", "magic at {pos}");
        let field = |i: usize| {
            let off = pos + 6 + i * 8;
            let s = std::str::from_utf8(&raw[off..off + 8]).expect("ascii");
            usize::from_str_radix(s, 16).expect("hex")
        };
        let (filesize, namesize) = (field(6), field(11));
        let name = &raw[pos + 110..pos + 110 + namesize - 1];
        assert_eq!(raw[pos + 110 + namesize - 1], 0, "name NUL-terminated");
        let data_start = (pos + 110 + namesize).div_ceil(4) * 4;
        assert!(raw[pos + 110 + namesize..data_start]
            .iter()
            .all(|&b| b == 0));
        let next = (data_start + filesize).div_ceil(4) * 4;
        assert!(raw[data_start + filesize..next].iter().all(|&b| b == 0));
        if name == b"TRAILER!!!" {
            assert!(
                raw[next..].iter().all(|&b| b == 0),
                "only padding after trailer"
            );
            break;
        }
        count += 1;
        pos = next;
    }

    let entries = read_archive(&raw).expect("read_archive");
    assert_eq!(entries.len(), count);
    assert_eq!(entries.len(), stats.entries);

    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    let expected = [
        ".",
        "B",
        "a",
        "a-b",
        "a/x",
        "bin",
        "dev",
        "dev/console",
        "dev/null",
        "dev/vda",
        "etc",
        "etc/app-link",
        "etc/hostname",
        "etc/kiln.conf",
        "etc/shadow",
        "proc",
        "run",
        "run/kiln",
        "run/kiln/deep",
        "sbin",
        "usr",
        "usr/bin",
        "usr/bin/app",
        "usr/bin/su",
        "usr/lib",
        "usr/lib/big.bin",
        "usr/lib/empty",
        "var",
        "var/empty",
    ];
    assert_eq!(paths, expected);

    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.ino as usize, i + 1, "inode of {}", e.path);
        assert_eq!((e.uid, e.gid), (0, 0), "owner of {}", e.path);
        assert_eq!(e.mtime, 1_700_000_000, "mtime of {}", e.path);
        assert_eq!(
            e.nlink,
            if e.is_dir() { 2 } else { 1 },
            "nlink of {}",
            e.path
        );
        if !e.is_char_device() && !e.is_block_device() {
            assert_eq!((e.rdev_major, e.rdev_minor), (0, 0));
        }
    }

    let root = find(&entries, ".");
    assert_eq!(root.mode, cpio::S_IFDIR | 0o755);

    let e = find(&entries, "dev/console");
    assert_eq!(e.mode, cpio::S_IFCHR | 0o600);
    assert_eq!((e.rdev_major, e.rdev_minor), (5, 1));
    assert!(e.data.is_empty());
    let e = find(&entries, "dev/null");
    assert_eq!(e.mode, cpio::S_IFCHR | 0o666);
    assert_eq!((e.rdev_major, e.rdev_minor), (1, 3));
    let e = find(&entries, "dev/vda");
    assert_eq!(e.mode, cpio::S_IFBLK | 0o660);
    assert_eq!((e.rdev_major, e.rdev_minor), (254, 0));
    assert_eq!(find(&entries, "dev").mode, cpio::S_IFDIR | 0o755);

    let e = find(&entries, "usr/bin/app");
    assert_eq!(e.mode, cpio::S_IFREG | 0o755);
    assert_eq!(e.data, b"\x7fELF pretend binary");
    assert_eq!(find(&entries, "usr/bin/su").mode, cpio::S_IFREG | 0o4755);
    let e = find(&entries, "etc/shadow");
    assert_eq!(e.mode, cpio::S_IFREG | 0o600);
    assert_eq!(e.data, b"root:*:1::::::\n");
    assert_eq!(find(&entries, "etc/hostname").data, b"kiln\n");
    assert!(find(&entries, "usr/lib/empty").data.is_empty());
    let big = fs::read(staging.path().join("usr/lib/big.bin")).expect("read");
    assert_eq!(find(&entries, "usr/lib/big.bin").data, big);
    let e = find(&entries, "etc/kiln.conf");
    assert_eq!(e.mode, cpio::S_IFREG | 0o640);
    assert_eq!(e.data, b"service=app\n");

    let e = find(&entries, "bin");
    assert!(e.is_symlink());
    assert_eq!(e.mode, cpio::S_IFLNK | 0o777);
    assert_eq!(e.data, b"usr/bin");
    assert_eq!(
        find(&entries, "etc/app-link").symlink_target().as_deref(),
        Some("../usr/bin/app")
    );
    assert_eq!(find(&entries, "sbin").data, b"bin");

    assert_eq!(find(&entries, "var/empty").mode, cpio::S_IFDIR | 0o711);
    assert_eq!(find(&entries, "proc").mode, cpio::S_IFDIR | 0o555);
    assert_eq!(find(&entries, "run").mode, cpio::S_IFDIR | 0o755);
    assert_eq!(find(&entries, "run/kiln").mode, cpio::S_IFDIR | 0o755);
    assert_eq!(find(&entries, "run/kiln/deep").mode, cpio::S_IFDIR | 0o700);

    // Nothing but the image in the output directory.
    assert_eq!(dir_names(out.path()), ["initramfs.cpio"]);

    // Cross-check with GNU cpio when available.
    if tool_available("cpio") {
        let listing = Command::new("cpio")
            .args(["-i", "-t", "--quiet"])
            .stdin(File::open(&dest).expect("open"))
            .output()
            .expect("run cpio");
        assert!(listing.status.success(), "cpio -t failed: {listing:?}");
        let listed: Vec<&str> = std::str::from_utf8(&listing.stdout)
            .expect("utf8")
            .lines()
            .collect();
        assert_eq!(listed, expected);

        let content = Command::new("cpio")
            .args(["-i", "--quiet", "--to-stdout", "usr/lib/big.bin"])
            .stdin(File::open(&dest).expect("open"))
            .output()
            .expect("run cpio");
        assert!(
            content.status.success(),
            "cpio --to-stdout failed: {content:?}"
        );
        assert_eq!(content.stdout, big);

        let verbose = Command::new("cpio")
            .args(["-i", "-t", "-v", "--quiet", "dev/console", "usr/bin/su"])
            .stdin(File::open(&dest).expect("open"))
            .output()
            .expect("run cpio");
        let text = String::from_utf8_lossy(&verbose.stdout);
        assert!(text.contains("crw-------"), "{text}");
        assert!(text.contains("-rwsr-xr-x"), "{text}");
    } else {
        println!("note: `cpio` is not installed; skipping the GNU cpio cross-check");
    }
}

fn set_mtime(path: &Path, secs: u64) {
    let f = File::open(path).expect("open for set_modified");
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .expect("set_modified");
}

#[test]
fn reproducible_across_staging_trees() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    populate(a.path());
    populate(b.path());
    // Different mtimes everywhere (files and directories), different staging roots.
    for (root, base) in [(a.path(), 1_000_000u64), (b.path(), 1_500_000_000u64)] {
        for (i, entry) in walkdir::WalkDir::new(root)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| !e.path_is_symlink())
            .enumerate()
        {
            set_mtime(entry.path(), base + i as u64 * 17);
        }
    }
    fs::set_permissions(a.path(), Permissions::from_mode(0o700)).expect("chmod");
    fs::set_permissions(b.path(), Permissions::from_mode(0o755)).expect("chmod");

    let out = tempfile::tempdir().expect("tempdir");
    for compression in Compression::ALL {
        let opts = BuildOptions {
            compression,
            level: None,
            mtime: 1_234_567,
            owners: Default::default(),
        };
        let da = out.path().join(format!("a.{}", compression.extension()));
        let db = out.path().join(format!("b.{}", compression.extension()));
        let sa = build(a.path(), &extras(), &opts, &da);
        let sb = build(b.path(), &extras(), &opts, &db);
        assert_eq!(sa, sb, "{compression}: stats differ");
        assert_eq!(
            fs::read(&da).expect("read"),
            fs::read(&db).expect("read"),
            "{compression}: images differ"
        );
        // Rebuilding over an existing image gives the same bytes again.
        let again = build(a.path(), &extras(), &opts, &da);
        assert_eq!(again, sa);
    }

    // A different mtime does change the image.
    let opts = |mtime| BuildOptions {
        compression: Compression::None,
        level: None,
        mtime,
        owners: Default::default(),
    };
    let s1 = build(a.path(), &[], &opts(1), &out.path().join("m1"));
    let s2 = build(a.path(), &[], &opts(2), &out.path().join("m2"));
    assert_ne!(s1.sha256, s2.sha256);
}

#[test]
fn source_date_epoch_is_honoured() {
    // The only test touching the environment.
    std::env::set_var("SOURCE_DATE_EPOCH", "1600000000");
    let opts = BuildOptions::from_env(Compression::Zstd);
    assert_eq!(opts.mtime, 1_600_000_000);
    assert_eq!(opts.level, None);
    assert_eq!(opts.compression, Compression::Zstd);

    let staging = tempfile::tempdir().expect("tempdir");
    populate(staging.path());
    let out = tempfile::tempdir().expect("tempdir");
    let dest = out.path().join("img.cpio.zst");
    build(staging.path(), &extras(), &opts, &dest);
    let entries = entries_of(&dest);
    assert!(!entries.is_empty());
    assert!(entries.iter().all(|e| e.mtime == 1_600_000_000));

    for bad in ["", "yesterday", "-1", "99999999999"] {
        std::env::set_var("SOURCE_DATE_EPOCH", bad);
        assert_eq!(
            BuildOptions::from_env(Compression::Gzip).mtime,
            0,
            "{bad:?}"
        );
    }
    std::env::remove_var("SOURCE_DATE_EPOCH");
    assert_eq!(BuildOptions::from_env(Compression::Gzip).mtime, 0);
}

#[test]
fn every_compression_decodes() {
    let staging = tempfile::tempdir().expect("tempdir");
    populate(staging.path());
    let out = tempfile::tempdir().expect("tempdir");

    let raw_dest = out.path().join("ref.cpio");
    build(
        staging.path(),
        &extras(),
        &BuildOptions::new(Compression::None),
        &raw_dest,
    );
    let reference = fs::read(&raw_dest).expect("read");

    let have = |tool: &str| {
        let ok = tool_available(tool);
        if !ok {
            println!("note: `{tool}` is not installed; skipping its cross-check");
        }
        ok
    };

    for compression in [Compression::Gzip, Compression::Xz, Compression::Zstd] {
        let dest = out
            .path()
            .join(format!("initramfs.{}", compression.extension()));
        let stats = build(
            staging.path(),
            &extras(),
            &BuildOptions::new(compression),
            &dest,
        );
        let data = fs::read(&dest).expect("read");
        assert_eq!(stats.compressed_bytes, data.len() as u64);
        assert_eq!(stats.sha256, hex::encode(Sha256::digest(&data)));
        assert_eq!(Compression::detect(&data), Some(compression));
        let raw = decompress(&data).expect("decompress");
        assert_eq!(
            raw, reference,
            "{compression}: content differs from the raw build"
        );
        assert_eq!(stats.uncompressed_bytes, raw.len() as u64);
        assert!(stats.compressed_bytes < stats.uncompressed_bytes);

        let tool = match compression {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::None => unreachable!(),
        };
        match compression {
            Compression::Xz => {
                assert_eq!(&data[..6], b"\xFD7zXZ\0");
                assert_eq!(data[6], 0x00, "xz stream flags byte 0");
                assert_eq!(data[7], 0x01, "xz check type must be CRC32");
                // Stream footer repeats the flags.
                let n = data.len();
                assert_eq!(&data[n - 2..], b"YZ");
                assert_eq!(data[n - 3], 0x01);
            }
            Compression::Gzip => {
                assert_eq!(data[3], 0, "plain gzip: no name/extra/comment");
                assert_eq!(&data[4..8], &[0, 0, 0, 0], "gzip header mtime 0");
            }
            _ => {}
        }

        if have(tool) {
            let out = Command::new(tool)
                .args(["-d", "-c"])
                .arg(&dest)
                .output()
                .expect("run decompressor");
            assert!(out.status.success(), "{tool} -dc failed: {out:?}");
            assert_eq!(out.stdout, reference, "{tool} output differs");
            if compression == Compression::Xz {
                let list = Command::new("xz")
                    .args(["--robot", "--list", "-v"])
                    .arg(&dest)
                    .output()
                    .expect("run xz --list");
                let text = String::from_utf8_lossy(&list.stdout);
                assert!(text.contains("CRC32"), "xz --list: {text}");
                assert!(!text.contains("CRC64"), "xz --list: {text}");
            }
        }
    }

    // Explicit levels work and invalid ones are rejected before anything is written.
    let dest = out.path().join("lvl.cpio.zst");
    let opts = BuildOptions {
        compression: Compression::Zstd,
        level: Some(3),
        mtime: 0,
        owners: Default::default(),
    };
    build(staging.path(), &[], &opts, &dest);
    assert!(read_archive(&decompress(&fs::read(&dest).expect("read")).expect("dec")).is_ok());
    let bad = BuildOptions {
        compression: Compression::Gzip,
        level: Some(12),
        mtime: 0,
        owners: Default::default(),
    };
    let err = write_initramfs(staging.path(), &[], &bad, &out.path().join("bad.gz"))
        .expect_err("invalid level");
    assert!(matches!(err, ImageError::InvalidLevel { .. }), "{err}");
    assert!(!out.path().join("bad.gz").exists());
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).expect("cstring");
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(rc, 0, "mkfifo failed: {}", std::io::Error::last_os_error());
}

#[test]
fn walk_error_leaves_nothing_behind() {
    let staging = tempfile::tempdir().expect("tempdir");
    populate(staging.path());
    // Sorts after most entries, so the walk has made progress when it fails.
    mkfifo(&staging.path().join("usr/lib/zz-fifo"));

    let out = tempfile::tempdir().expect("tempdir");
    let dest = out.path().join("initramfs.cpio.zst");
    let err = write_initramfs(
        staging.path(),
        &extras(),
        &BuildOptions::new(Compression::Zstd),
        &dest,
    )
    .expect_err("fifo must be rejected");
    let msg = err.to_string();
    assert!(
        matches!(err, ImageError::UnsupportedFileType { kind: "fifo", .. }),
        "{msg}"
    );
    assert!(msg.contains("zz-fifo"), "{msg}");
    assert!(msg.contains("remove it in a hook"), "{msg}");
    assert!(!dest.exists());
    assert!(
        dir_names(out.path()).is_empty(),
        "leftovers: {:?}",
        dir_names(out.path())
    );

    // An existing image is left untouched by a failed rebuild.
    fs::write(&dest, b"previous image").expect("write");
    assert!(write_initramfs(
        staging.path(),
        &[],
        &BuildOptions::new(Compression::Xz),
        &dest
    )
    .is_err());
    assert_eq!(fs::read(&dest).expect("read"), b"previous image");
    assert_eq!(dir_names(out.path()), ["initramfs.cpio.zst"]);

    // Sockets are rejected too.
    let staging2 = tempfile::tempdir().expect("tempdir");
    let _listener =
        std::os::unix::net::UnixListener::bind(staging2.path().join("sock")).expect("bind");
    let err = write_initramfs(
        staging2.path(),
        &[],
        &BuildOptions::new(Compression::None),
        &out.path().join("x.cpio"),
    )
    .expect_err("socket must be rejected");
    assert!(err.to_string().contains("socket"), "{err}");
    assert_eq!(dir_names(out.path()), ["initramfs.cpio.zst"]);
}

#[test]
fn other_errors_name_the_problem() {
    let out = tempfile::tempdir().expect("tempdir");
    let staging = tempfile::tempdir().expect("tempdir");
    populate(staging.path());
    let opts = BuildOptions::new(Compression::Gzip);

    // Missing staging directory.
    let missing = out.path().join("no-such-staging");
    let err = write_initramfs(&missing, &[], &opts, &out.path().join("i.gz")).expect_err("missing");
    assert!(err.to_string().contains("no-such-staging"), "{err}");

    // Destination directory missing.
    let dest = out.path().join("nodir/i.gz");
    let err = write_initramfs(staging.path(), &[], &opts, &dest).expect_err("no dest dir");
    assert!(matches!(err, ImageError::Write { .. }), "{err}");
    assert!(err.to_string().contains("nodir"), "{err}");

    // mtime beyond the 32-bit field.
    let big = BuildOptions {
        mtime: 1 << 33,
        ..BuildOptions::new(Compression::None)
    };
    let err =
        write_initramfs(staging.path(), &[], &big, &out.path().join("i.cpio")).expect_err("mtime");
    assert!(matches!(err, ImageError::MtimeOutOfRange { .. }), "{err}");

    // Extra entry below a staged symlink.
    let err = write_initramfs(
        staging.path(),
        &[ExtraEntry::file("bin/tool", 0o755, b"x".to_vec())],
        &opts,
        &out.path().join("i.gz"),
    )
    .expect_err("conflict");
    assert!(matches!(err, ImageError::ExtraConflict { .. }), "{err}");
    assert!(err.to_string().contains("bin/tool"), "{err}");

    // Non-directory extra replacing a non-empty staged directory.
    let err = write_initramfs(
        staging.path(),
        &[ExtraEntry::symlink("usr", "/")],
        &opts,
        &out.path().join("i.gz"),
    )
    .expect_err("conflict");
    assert!(matches!(err, ImageError::ExtraConflict { .. }), "{err}");

    // '..' in an extra path.
    let err = write_initramfs(
        staging.path(),
        &[ExtraEntry::dir("../escape", 0o755)],
        &opts,
        &out.path().join("i.gz"),
    )
    .expect_err("dotdot");
    assert!(matches!(err, ImageError::InvalidPath { .. }), "{err}");

    // Path too long.
    let long = format!("{}/f", "d".repeat(5000));
    let err = write_initramfs(
        staging.path(),
        &[ExtraEntry::file(long, 0o644, Vec::new())],
        &opts,
        &out.path().join("i.gz"),
    )
    .expect_err("too long");
    assert!(
        err.to_string().contains("path too long in archive"),
        "{err}"
    );

    assert!(
        dir_names(out.path()).is_empty(),
        "leftovers: {:?}",
        dir_names(out.path())
    );
}

#[test]
fn owners_are_stored_for_their_paths_and_root_owns_the_rest() {
    let staging = tempfile::tempdir().expect("tempdir");
    let root = staging.path();
    populate(root);
    let out = tempfile::tempdir().expect("tempdir");
    let dest = out.path().join("i.cpio");
    let mut opts = BuildOptions::new(Compression::None);
    for (p, o) in [
        ("usr/bin", (1001, 1002)),
        ("etc/shadow", (0, 42)),
        ("bin", (7, 8)),
    ] {
        opts.owners.insert(p.into(), o);
    }
    build(root, &[], &opts, &dest);
    let entries = entries_of(&dest);
    for e in &entries {
        let want = match e.path.as_str() {
            "usr/bin" => (1001, 1002),
            "etc/shadow" => (0, 42),
            "bin" => (7, 8),
            _ => (0, 0),
        };
        assert_eq!((e.uid, e.gid), want, "{}", e.path);
    }
    assert!(find(&entries, "bin").is_symlink());
    // The same tree with no owners is the image it always was: owners change only their paths.
    let plain = out.path().join("plain.cpio");
    build(root, &[], &BuildOptions::new(Compression::None), &plain);
    let differ: Vec<String> = entries_of(&plain)
        .into_iter()
        .zip(&entries)
        .filter(|(a, b)| a != *b)
        .map(|(a, _)| a.path)
        .collect();
    assert_eq!(differ, ["bin", "etc/shadow", "usr/bin"]);
}

#[test]
fn extras_override_staged_entries_and_hard_links_are_copies() {
    let staging = tempfile::tempdir().expect("tempdir");
    let root = staging.path();
    write_file(root, "etc/hostname", b"staged\n", 0o644);
    write_file(root, "dev/placeholder-file", b"", 0o644);
    fs::hard_link(root.join("etc/hostname"), root.join("etc/hostname.link")).expect("link");

    let out = tempfile::tempdir().expect("tempdir");
    let dest = out.path().join("i.cpio");
    let extra = [
        ExtraEntry::file("etc/hostname", 0o600, b"extra\n".to_vec()),
        ExtraEntry::char_dev("dev/placeholder-file", 0o600, 5, 1),
        ExtraEntry::dir("/", 0o700),
        ExtraEntry::dir("etc", 0o750),
    ];
    build(root, &extra, &BuildOptions::new(Compression::None), &dest);
    let entries = entries_of(&dest);

    assert_eq!(find(&entries, ".").mode, cpio::S_IFDIR | 0o700);
    assert_eq!(find(&entries, "etc").mode, cpio::S_IFDIR | 0o750);
    let e = find(&entries, "etc/hostname");
    assert_eq!(e.data, b"extra\n");
    assert_eq!(e.mode, cpio::S_IFREG | 0o600);
    let e = find(&entries, "dev/placeholder-file");
    assert!(e.is_char_device());
    assert_eq!(e.mtime, 0);

    let link = find(&entries, "etc/hostname.link");
    assert_eq!(link.data, b"staged\n");
    assert_eq!(link.nlink, 1);
    let inos: BTreeSet<u32> = entries.iter().map(|e| e.ino).collect();
    assert_eq!(inos.len(), entries.len(), "inode numbers are unique");

    // Each path appears once.
    let paths: BTreeSet<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths.len(), entries.len());
}

#[test]
fn atomic_write_helper() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("cfg.json");
    kiln_image::atomic_write(&dest, b"{}").expect("write");
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(&dest)
        .expect("open");
    f.write_all(b"\n").expect("append");
    drop(f);
    kiln_image::atomic_write(&dest, b"[1]").expect("rewrite");
    assert_eq!(fs::read(&dest).expect("read"), b"[1]");
    assert_eq!(dir_names(dir.path()), ["cfg.json"]);
}
