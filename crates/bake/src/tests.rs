//! Unit tests of the pieces of the pipeline that need no downloads.

use super::*;

fn recipe(toml: &str) -> (tempfile::TempDir, Recipe) {
    let d = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(d.path().join("etc")).expect("mkdir");
    std::fs::write(d.path().join("etc/rc"), "exec sh\n").expect("rc");
    std::fs::write(d.path().join("kiln.toml"), toml).expect("toml");
    let r = Recipe::load(d.path()).expect("load");
    (d, r)
}

#[test]
fn init_conf_carries_network_ready_modules_env() {
    let (_d, r) = recipe("name = \"web\"\nready = \"tcp:80\"\n[env]\nA = \"b\"\n");
    let mods = ModuleLines {
        boot: vec!["/lib/modules/v/kernel/virtio.ko".into()],
        share: vec!["/lib/modules/v/kernel/fuse.ko".into()],
    };
    let c = init_conf(&r, &mods);
    assert!(c.contains("hostname=web\n"));
    assert!(c.contains("\nmodule=/lib/modules/v/kernel/virtio.ko\n"));
    assert!(c.contains("\nshare_module=/lib/modules/v/kernel/fuse.ko\n"));
    assert!(c.contains("net=eth0 10.0.2.15/24 10.0.2.2\n"));
    assert!(c.contains("dns=10.0.2.3\n"));
    assert!(c.contains("ready=tcp:80\n"));
    assert!(c.contains("env=A=b\n"));
    let (_d, r) = recipe("name = \"x\"\n[network]\nmode = \"none\"\n");
    assert!(init_conf(&r, &ModuleLines::default()).contains("net=none\n"));
}

#[test]
fn fingerprint_follows_recipe_content() {
    let (d, r) = recipe("name = \"web\"\n");
    let init = d.path().join("init-bin");
    std::fs::write(&init, "x").expect("w");
    let a = fingerprint::compute(&r, "k", None, &init).expect("fp");
    assert_eq!(a, fingerprint::compute(&r, "k", None, &init).expect("fp"));
    assert_ne!(a, fingerprint::compute(&r, "k2", None, &init).expect("fp"));
    std::fs::write(d.path().join("etc/rc"), "exec httpd\n").expect("w");
    assert_ne!(a, fingerprint::compute(&r, "k", None, &init).expect("fp"));
}

#[test]
fn load_image_refuses_non_images() {
    let d = tempfile::tempdir().expect("tmp");
    let e = load_image(d.path()).expect_err("empty folder");
    assert!(e.to_string().contains("is this an image folder"), "{e}");
    std::fs::write(d.path().join(MANIFEST), "{}").expect("w");
    let e = load_image(d.path()).expect_err("bad manifest");
    assert!(e.to_string().contains("not a Kiln manifest"), "{e}");
}

#[test]
fn missing_init_binary_is_refused_before_any_work() {
    let (d, r) = recipe("name = \"web\"\n");
    let opts = BuildOptions {
        out_dir: d.path().join("out"),
        cache_root: d.path().join("cache"),
        init_binary: d.path().join("no-init"),
        refresh: false,
        force: false,
    };
    let e = build(&r, &opts, &Quiet).expect_err("no init");
    assert!(e.to_string().contains("make init"), "{e}");
    assert!(!opts.out_dir.exists());
}

/// The error and its causes, as `kiln` prints them (`{:#}` of anyhow: joined with ": ").
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

#[test]
fn io_errors_say_the_os_error_once() {
    let gone = || std::io::Error::from(std::io::ErrorKind::NotFound);
    let errors: Vec<BuildError> = vec![
        BuildError::Io {
            path: "/x".into(),
            error: gone(),
        },
        kiln_rootfs::RootfsError::Io {
            path: "/x".into(),
            error: gone(),
        }
        .into(),
        kiln_rootfs::RootfsError::Elf(kiln_rootfs::elf::ElfError::Io {
            path: "/x".into(),
            error: gone(),
        })
        .into(),
        kiln_image::ImageError::Write {
            path: "/x".into(),
            error: gone(),
        }
        .into(),
        kiln_recipe::RecipeError::Io {
            path: "/x".into(),
            error: gone(),
        }
        .into(),
        kiln_kernel::tiny::TinyError::Io {
            action: "read",
            path: "/x".into(),
            error: gone(),
        }
        .into(),
        kiln_debpkg::DebError::Io {
            action: "read",
            path: "/x".into(),
            error: gone(),
        }
        .into(),
    ];
    for e in errors {
        let s = with_causes(&e);
        assert_eq!(s.matches("entity not found").count(), 1, "{s}");
    }
}

#[test]
fn recipe_content_errors_are_the_users() {
    let staging = BuildError::from(kiln_rootfs::RootfsError::Staging {
        path: "/etc/passwd".into(),
        message: "/etc/passwd is a file where a folder is needed".into(),
    });
    assert!(staging.is_user_error());
    let timeout = BuildError::from(kiln_rootfs::RootfsError::HookTimedOut {
        hook: "postinst/a.sh".into(),
        limit: 2,
        output: String::new(),
    });
    assert!(timeout.is_user_error());
    let io = BuildError::Io {
        path: "/x".into(),
        error: std::io::Error::from(std::io::ErrorKind::StorageFull),
    };
    assert!(!io.is_user_error());
}
