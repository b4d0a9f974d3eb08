use super::*;

fn frag(name: &str, text: &str) -> Fragment {
    Fragment {
        name: name.into(),
        text: text.into(),
    }
}

fn base() -> Fragment {
    frag(BASE_FRAGMENT_NAME, BASE_FRAGMENT)
}

#[test]
fn cache_key_changes_with_fragments_and_source() {
    let src = "debian linux-source-6.1 6.1.192-2";
    let k0 = cache_key(src, &[base()]);
    assert_eq!(k0.len(), 64);
    assert_eq!(k0, cache_key(src, &[base()]), "deterministic");
    let k1 = cache_key(src, &[base(), frag("ufs.config", UFS_FRAGMENT)]);
    assert_ne!(k0, k1, "an added fragment changes the key");
    let k2 = cache_key(
        src,
        &[
            base(),
            frag("ufs.config", "CONFIG_UFS_FS=y\nCONFIG_UFS_DEBUG=y\n"),
        ],
    );
    assert_ne!(k1, k2, "a changed fragment changes the key");
    assert_eq!(
        k1,
        cache_key(src, &[base(), frag("elsewhere/ufs.config", UFS_FRAGMENT)]),
        "only contents count, not names"
    );
    assert_ne!(
        k0,
        cache_key("debian linux-source-6.1 6.1.193-1", &[base()])
    );
    // Moving text between fragments is a different build order: a different key.
    assert_ne!(
        cache_key(src, &[frag("a", "CONFIG_A=y\n"), frag("b", "")]),
        cache_key(src, &[frag("a", ""), frag("b", "CONFIG_A=y\n")])
    );
}

#[test]
fn load_fragments_puts_the_base_first_and_reads_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("ufs.config");
    std::fs::write(&p, UFS_FRAGMENT).expect("write");
    let f = load_fragments(std::slice::from_ref(&p)).expect("load");
    assert_eq!(f.len(), 2);
    assert_eq!(f[0].name, BASE_FRAGMENT_NAME);
    assert_eq!(f[1].text, UFS_FRAGMENT);
    let missing = dir.path().join("nope.config");
    let err = load_fragments(&[missing]).expect_err("missing");
    assert!(err.to_string().contains("nope.config"), "{err}");
}

#[test]
fn missing_debian_source_says_how_to_install_it() {
    let opts = TinyOptions {
        source: TinySource::Debian {
            package: "linux-source-0.0-kiln-test".into(),
        },
        ..TinyOptions::new(tempfile::tempdir().expect("tmp").path())
    };
    let err = build_tiny(&opts, &|_| {}).expect_err("no such package");
    assert!(
        err.to_string()
            .contains("apt-get install linux-source-0.0-kiln-test"),
        "{err}"
    );
}

#[test]
fn a_bad_extra_fragment_fails_before_anything_is_built() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("x.config");
    std::fs::write(&p, "CONFIG_UFS_FS=y\nUFS_FS=y\n").expect("write");
    let opts = TinyOptions {
        source: TinySource::Tree(dir.path().join("no-tree")),
        extra_fragments: vec![p],
        ..TinyOptions::new(dir.path().join("cache"))
    };
    match build_tiny(&opts, &|_| {}) {
        Err(TinyError::BadFragment { fragment, line, .. }) => {
            assert!(fragment.ends_with("x.config"));
            assert_eq!(line, 2);
        }
        other => panic!("{other:?}"),
    }
    assert!(!dir.path().join("cache").exists());
}

#[test]
fn tree_source_must_be_a_clean_kernel_tree() {
    let dir = tempfile::tempdir().expect("tmp");
    let t = dir.path();
    let err = source::Source::resolve(&TinySource::Tree(t.to_path_buf()));
    assert!(matches!(err, Err(TinyError::NotASourceTree { .. })));
    std::fs::write(
        t.join("Makefile"),
        "VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 9\nEXTRAVERSION =\n",
    )
    .expect("w");
    std::fs::write(t.join("Kconfig"), "config FOO\n").expect("w");
    std::fs::create_dir_all(t.join("arch/x86")).expect("mkdir");
    assert_eq!(source::makefile_version(t).as_deref(), Some("6.1.9"));
    let a = source::Source::resolve(&TinySource::Tree(t.to_path_buf()))
        .expect("tree")
        .identity;
    assert!(a.contains("version=6.1.9"), "{a}");
    std::fs::write(t.join("arch/x86/new.c"), "int x;\n").expect("w");
    let b = source::Source::resolve(&TinySource::Tree(t.to_path_buf()))
        .expect("tree")
        .identity;
    assert_ne!(a, b, "an added file changes the identity");
    std::fs::write(t.join(".config"), "").expect("w");
    let err = source::Source::resolve(&TinySource::Tree(t.to_path_buf()));
    assert!(
        matches!(&err, Err(TinyError::NotASourceTree { reason, .. }) if reason.contains("mrproper")),
        "{:?}",
        err.err()
    );
}

fn fake_entry(root: &Path, hash: &str, built_at: u64) -> PathBuf {
    let dir = entry_dir(root, hash);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("vmlinux"), b"v").expect("w");
    std::fs::write(dir.join("bzImage"), b"b").expect("w");
    std::fs::write(dir.join(".config"), "CONFIG_HZ_250=y\nCONFIG_HZ=250\n").expect("w");
    let r = Record {
        kiln_fragment_version: FRAGMENT_VERSION,
        version: "6.1.192-kiln-tiny".into(),
        config_hash: hash.into(),
        source: "test".into(),
        fragments: vec![FragmentRecord {
            name: BASE_FRAGMENT_NAME.into(),
            sha256: "x".into(),
        }],
        patches: Vec::new(),
        size_vmlinux: 1,
        size_bzimage: 1,
        cc_lines: built_at * 10,
        build_seconds: 1,
        built_at,
    };
    std::fs::write(dir.join(RECORD), serde_json::to_vec(&r).expect("json")).expect("w");
    dir
}

#[test]
fn list_shows_complete_entries_newest_first() {
    let root = tempfile::tempdir().expect("tmp");
    assert!(list_tiny(root.path()).is_empty());
    let old = fake_entry(root.path(), &"a".repeat(64), 100);
    let new = fake_entry(root.path(), &"b".repeat(64), 200);
    // Incomplete: no bzImage.
    let broken = fake_entry(root.path(), &"c".repeat(64), 300);
    std::fs::remove_file(broken.join("bzImage")).expect("rm");
    // A build in progress.
    std::fs::create_dir_all(root.path().join("kernels/.tmp-tiny-x")).expect("mkdir");
    let l = list_tiny(root.path());
    let dirs: Vec<&Path> = l.iter().map(|k| k.dir.as_path()).collect();
    assert_eq!(dirs, [new.as_path(), old.as_path()]);
    assert_eq!(l[0].version, "6.1.192-kiln-tiny");
    assert_eq!(l[0].vmlinux, new.join("vmlinux"));
    assert_eq!(l[0].fragments, [BASE_FRAGMENT_NAME]);
    assert_eq!(l[0].hz, 250);
    assert_eq!(previous_cc_lines(&root.path().join("kernels")), Some(3000));
}

#[test]
fn pvh_check_refuses_non_elf_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("vmlinux");
    std::fs::write(&p, b"not an elf").expect("w");
    assert!(matches!(check_pvh(&p), Err(TinyError::BadOutput { .. })));
}

/// The one real build: unpacks Debian's linux-source-6.1 (`apt-get install
/// linux-source-6.1`), builds the base configuration (about 5 minutes with 2
/// CPUs, 1.5 GB of disk under the cache) and checks the result. Ignored by
/// default; CI runs it with a long timeout:
/// `cargo test -p kiln-kernel -- --ignored builds_the_tiny_kernel`.
/// `KILN_TINY_CACHE` picks the cache folder (default: a temp folder).
#[test]
#[ignore = "builds a Linux kernel: minutes of CPU, needs linux-source-6.1"]
fn builds_the_tiny_kernel() {
    let (_keep, root) = match std::env::var_os("KILN_TINY_CACHE") {
        Some(p) => (None, PathBuf::from(p)),
        None => {
            let t = tempfile::tempdir().expect("tmp");
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let opts = TinyOptions::new(&root);
    let phases = std::cell::RefCell::new(Vec::new());
    let k = build_tiny(&opts, &|p| {
        let name = match p {
            TinyProgress::Compiling { .. } => "compile",
            TinyProgress::Configuring { step } => step,
            TinyProgress::Unpacking { .. } => "unpack",
            TinyProgress::Waiting { .. } => "wait",
            TinyProgress::Cached { .. } => "cached",
            TinyProgress::Finishing => "finish",
            TinyProgress::Done { .. } => "done",
        };
        let mut v = phases.borrow_mut();
        if v.last() != Some(&name) {
            v.push(name);
        }
    })
    .unwrap_or_else(|e| panic!("build: {e}"));
    eprintln!("{k:#?}\nphases: {:?}", phases.borrow());
    assert!(
        k.size_bzimage <= 2 * 1024 * 1024,
        "bzImage is {} bytes",
        k.size_bzimage
    );
    assert!(
        k.version.starts_with("6.1.") && k.version.ends_with("-kiln-tiny"),
        "{}",
        k.version
    );
    check_pvh(&k.vmlinux).expect("PVH note");
    assert_eq!(k.hz, 100);
    assert_eq!(
        crate::inspect_kernel(&k.vmlinux).expect("vmlinux").format,
        crate::ImageFormat::Vmlinux
    );
    for f in ["vmlinux", "bzImage", ".config", "build.log", "kernel.json"] {
        assert!(k.dir.join(f).is_file(), "{f}");
    }
    assert_eq!(list_tiny(&root).first(), Some(&k));
    // A second call is a cache hit.
    let again = build_tiny(&opts, &|p| {
        assert!(matches!(p, TinyProgress::Cached { .. }), "{p:?}");
    })
    .expect("cached");
    assert_eq!(again, k);
}

#[test]
fn a_second_build_of_the_same_key_waits_for_the_first() {
    let dir = tempfile::tempdir().expect("tmp");
    let hash = "ab".repeat(32);
    let first = lock_key(dir.path(), &hash, &|_| {}).expect("first lock");
    let (tx, rx) = std::sync::mpsc::channel();
    let kernels = dir.path().to_path_buf();
    let h = hash.clone();
    let waiter = std::thread::spawn(move || {
        let tx2 = tx.clone();
        let held = lock_key(&kernels, &h, &move |p| {
            if matches!(p, TinyProgress::Waiting { .. }) {
                let _ = tx2.send("waiting");
            }
        })
        .expect("second lock");
        let _ = tx.send("locked");
        drop(held);
    });
    let deadline = std::time::Duration::from_secs(10);
    assert_eq!(rx.recv_timeout(deadline), Ok("waiting"), "reported waiting");
    assert!(
        rx.try_recv().is_err(),
        "the second build must not get the lock while the first holds it"
    );
    drop(first);
    assert_eq!(
        rx.recv_timeout(deadline),
        Ok("locked"),
        "got it once released"
    );
    waiter.join().expect("join");
    // Another key is not held up.
    let other = lock_key(dir.path(), &"cd".repeat(32), &|p| {
        assert!(
            !matches!(p, TinyProgress::Waiting { .. }),
            "other key waited"
        )
    });
    assert!(other.is_ok());
}
