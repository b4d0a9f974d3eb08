//! Bad input: each refusal has a clear message, exit code 2, and leaves no partial image.

use super::*;

fn edit_toml(r: &tempfile::TempDir, f: impl FnOnce(String) -> String) {
    let p = r.path().join("kiln.toml");
    let t = std::fs::read_to_string(&p).expect("read");
    std::fs::write(&p, f(t)).expect("write");
}

/// Build `recipe` into a fresh folder; assert exit code 2 and no image/temp folder left.
fn refused_build(recipe_dir: &Path) -> String {
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("img");
    let mut c = kiln(d.path());
    c.arg("build").arg(recipe_dir).arg("-o").arg(&out);
    let o = run(c);
    let t = text(&o);
    assert_eq!(
        o.status.code(),
        Some(2),
        "expected exit 2, got {:?}:\n{t}",
        o.status
    );
    assert!(
        !out.exists(),
        "a partial image was left at {}",
        out.display()
    );
    let left: Vec<_> = std::fs::read_dir(d.path())
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "temporary folders left: {left:?}");
    assert!(!t.contains("panicked"), "{t}");
    t
}

#[test]
fn missing_kiln_toml() {
    let d = tempfile::tempdir().expect("tmp");
    let t = refused_build(d.path());
    assert!(
        t.contains("kiln.toml") && t.contains("needs a kiln.toml"),
        "{t}"
    );
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let r = scratch_recipe("httpd");
    edit_toml(&r, |t| t.replace("memory = 128", "memroy = 128"));
    let t = refused_build(r.path());
    assert!(
        t.contains("kiln.toml:4:1") && t.contains("unknown field `memroy`"),
        "{t}"
    );
}

#[test]
fn wrong_type_names_line() {
    let r = scratch_recipe("httpd");
    edit_toml(&r, |t| t.replace("memory = 128", "memory = \"lots\""));
    let t = refused_build(r.path());
    assert!(
        t.contains("kiln.toml:4:") && t.contains("invalid type"),
        "{t}"
    );
}

#[test]
fn missing_binary_names_it_and_its_line() {
    let r = scratch_recipe("httpd");
    edit_toml(&r, |t| {
        with_root_key(&t, "binaries = [\"/usr/bin/no-such-tool\"]")
    });
    let t = refused_build(r.path());
    assert!(
        t.contains("/usr/bin/no-such-tool")
            && t.contains(&format!("kiln.toml:{}", root_key_line(r.path()))),
        "{t}"
    );
}

#[test]
fn modules_on_the_tiny_kernel_are_refused_with_their_line() {
    let r = scratch_recipe("httpd");
    edit_toml(&r, |t| with_root_key(&t, "modules = [\"vfat\"]"));
    let t = refused_build(r.path());
    assert!(
        t.contains(&format!("kiln.toml:{}", root_key_line(r.path())))
            && t.contains("`vfat`")
            && t.contains("no loadable modules"),
        "{t}"
    );
}

#[test]
fn a_disk_too_small_for_the_root_is_refused_with_what_it_needs() {
    for format in ["disk", "qcow2"] {
        let r = scratch_recipe("httpd");
        edit_toml(&r, |t| {
            t.replace(
                "compression = \"zstd\"",
                &format!("format = \"{format}\"\nsize_mib = 8"),
            )
        });
        // More than 8 MiB of files.
        std::fs::write(r.path().join("files/var/www/big.bin"), vec![1u8; 9 << 20]).expect("w");
        let t = refused_build(r.path());
        assert!(
            t.contains("image.size_mib = 8 is too small") && t.contains("needs at least"),
            "{format}: {t}"
        );
    }
}

#[test]
fn non_elf_binary_is_refused() {
    let r = scratch_recipe("httpd");
    let script = r.path().join("tool.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").expect("w");
    edit_toml(&r, |t| {
        with_root_key(&t, &format!("binaries = [\"{}\"]", script.display()))
    });
    let t = refused_build(r.path());
    assert!(t.contains("not an ELF"), "{t}");
}

#[test]
fn hook_writing_outside_staging_fails_and_host_is_untouched() {
    let r = scratch_recipe("httpd");
    // /var/tmp is visible (read-only) in the sandbox, unlike /tmp, which it replaces; the write
    // must meet the read-only host, wherever the checkout is.
    let host = tempfile::tempdir_in("/var/tmp").expect("tmp");
    let victim = host.path().join("victim");
    std::fs::write(&victim, "original").expect("w");
    std::fs::create_dir(r.path().join("postinst")).expect("mkdir");
    std::fs::write(
        r.path().join("postinst/10-escape.sh"),
        format!("echo ok > ./inside\necho pwned > {}\n", victim.display()),
    )
    .expect("w");
    let t = refused_build(r.path());
    assert!(
        t.contains("10-escape.sh") && t.contains("Read-only file system"),
        "{t}"
    );
    assert_eq!(std::fs::read_to_string(&victim).expect("read"), "original");
}

#[test]
fn hook_inside_staging_works() {
    let r = scratch_recipe("httpd");
    std::fs::create_dir(r.path().join("postinst")).expect("mkdir");
    std::fs::write(
        r.path().join("postinst/10-page.sh"),
        "echo from-hook > var/www/hook.txt\n",
    )
    .expect("w");
    let (_d, m) = build_ok(r.path());
    let f = m["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["path"] == "/var/www/hook.txt")
        .cloned();
    assert_eq!(
        f.expect("hook file in image")["reason"],
        "made by a build hook"
    );
}

#[test]
fn missing_rc_is_refused() {
    let r = scratch_recipe("httpd");
    std::fs::remove_file(r.path().join("etc/rc")).expect("rm");
    let t = refused_build(r.path());
    assert!(t.contains("etc/rc"), "{t}");
}

#[test]
fn run_of_a_nonexistent_target_is_refused() {
    let d = tempfile::tempdir().expect("tmp");
    let mut c = kiln(d.path());
    c.arg("run").arg(d.path().join("nothing-here"));
    let o = run(c);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("no such recipe or image folder"),
        "{}",
        text(&o)
    );
}

#[test]
fn bad_port_flag_is_refused() {
    let d = tempfile::tempdir().expect("tmp");
    let mut c = kiln(d.path());
    c.args(["run", "-p", "80"]).arg(httpd_image());
    let o = run(c);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("HOSTPORT:GUESTPORT"), "{}", text(&o));
}

#[test]
fn host_port_in_use_is_refused_before_qemu_starts() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let d = tempfile::tempdir().expect("tmp");
    let name = format!("porttest{port}");
    let mut c = kiln(d.path());
    c.args(["run", "--name", &name, "-p", &format!("{port}:80")])
        .arg(httpd_image());
    let o = run(c);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("127.0.0.1:{port}/tcp is already in use")),
        "{}",
        text(&o)
    );
    assert!(kiln_test_support::qemu_pids_with(&format!("kiln-{name}")).is_empty());
}

#[test]
fn corrupt_cached_kernel_is_refused() {
    // A private cache: fetch Debian's kernel into it, then flip bytes in every cached .deb.
    let d = tempfile::tempdir().expect("tmp");
    let cache = d.path().join("cache");
    let out = d.path().join("img");
    let build = || {
        let mut c = kiln(d.path());
        c.env("KILN_CACHE_DIR", &cache)
            .arg("build")
            .arg(recipe("httpd"))
            .args(["--kernel", "debian", "-o"])
            .arg(&out)
            .arg("--force");
        run(c)
    };
    let o = build();
    assert!(o.status.success(), "{}", text(&o));
    std::fs::remove_dir_all(&out).expect("rm image");
    let mut corrupted = 0;
    for e in std::fs::read_dir(cache.join("debs"))
        .expect("debs")
        .flatten()
    {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "deb") {
            let mut bytes = std::fs::read(&p).expect("read");
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            std::fs::write(&p, bytes).expect("write");
            corrupted += 1;
        }
    }
    assert!(
        corrupted > 0,
        "no cached .deb found under {}",
        cache.display()
    );
    let o = build();
    let t = text(&o);
    assert!(!o.status.success(), "a corrupt cache must be refused:\n{t}");
    assert!(t.contains("corrupt") && t.contains("--refresh"), "{t}");
    assert!(
        !out.exists(),
        "no image may be written from a corrupt cache"
    );
}

/// The man pages and shell completions are generated from the same flag definitions as
/// `--help`; an unknown subcommand or shell is refused.
#[test]
fn man_pages_and_completions_come_from_the_flags() {
    let d = tempfile::tempdir().expect("tmp");
    let out = |args: &[&str]| {
        let mut c = kiln(d.path());
        c.args(args);
        run(c)
    };
    let o = out(&["man"]);
    let page = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        page.starts_with(".ie") && page.contains(".TH kiln 1"),
        "{page}"
    );
    for sub in ["build", "run", "kernel", "cache", "serve"] {
        assert!(page.contains(&format!("kiln\\-{sub}(1)")), "{sub} missing");
    }
    assert!(!page.contains("__supervise"), "internal command listed");
    let o = out(&["man", "run"]);
    let page = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        page.contains(".TH kiln-run 1") && page.contains("\\-\\-detach"),
        "{page}"
    );
    let help = text(&out(&["run", "--help"]));
    assert!(help.contains("--detach"), "{help}");
    let o = out(&["man", "nosuch"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no subcommand `nosuch`"), "{}", text(&o));

    let o = out(&["completions", "bash"]);
    let bash = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success());
    assert!(bash.contains("_kiln()") && bash.contains("prune"), "{bash}");
    let o = out(&["completions", "fish"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("complete -c kiln"));
    let o = out(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// How many times `needle` occurs in `hay`.
fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

#[test]
fn files_the_guest_would_never_see_under_tmp_or_run_are_refused() {
    // files/: kiln-init mounts a fresh tmpfs on /run (and /tmp) at boot, over the image's.
    let r = scratch_recipe("httpd");
    std::fs::create_dir_all(r.path().join("files/var/run/httpd")).expect("mkdir");
    std::fs::write(r.path().join("files/var/run/httpd/seed"), "x").expect("w");
    let t = refused_build(r.path());
    assert!(
        t.contains("files/var/run/httpd: /var/run/httpd would be hidden in the guest")
            && t.contains("fresh tmpfs on /run at boot"),
        "{t}"
    );
    // root.files and root.binaries, with their line.
    let r = scratch_recipe("httpd");
    edit_toml(&r, |t| {
        with_root_key(&t, "files = [\"/etc/hostname:/tmp/hostname\"]")
    });
    let t = refused_build(r.path());
    assert!(
        t.contains(&format!("kiln.toml:{}:", root_key_line(r.path())))
            && t.contains("/tmp/hostname would be hidden in the guest"),
        "{t}"
    );
    // A host binary in /tmp is staged at its path there.
    let r = scratch_recipe("httpd");
    let tool = r.path().join("tool");
    assert!(r.path().starts_with("/tmp"), "scratch recipes live in /tmp");
    std::fs::copy("/bin/true", &tool).expect("copy /bin/true");
    edit_toml(&r, |t| {
        with_root_key(&t, &format!("binaries = [\"{}\"]", tool.display()))
    });
    let t = refused_build(r.path());
    assert!(
        t.contains(&format!(
            "kiln.toml:{1}: root.binaries: `{0}`: {0} would be hidden in the guest",
            tool.display(),
            root_key_line(r.path())
        )),
        "{t}"
    );
}

/// A minimal 64-bit little-endian ELF executable for `machine` (EM_AARCH64 = 183): the header
/// and, when `interp` is given, a PT_INTERP program header naming it.
fn tiny_elf(machine: u16, interp: Option<&str>) -> Vec<u8> {
    let mut b = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
    b.resize(16, 0);
    b.extend(2u16.to_le_bytes()); // e_type: EXEC
    b.extend(machine.to_le_bytes());
    b.extend(1u32.to_le_bytes()); // e_version
    b.extend(0x40_0000u64.to_le_bytes()); // e_entry
    let phnum: u16 = interp.map_or(0, |_| 1);
    b.extend((if phnum > 0 { 64u64 } else { 0 }).to_le_bytes()); // e_phoff
    b.extend(0u64.to_le_bytes()); // e_shoff
    b.extend(0u32.to_le_bytes()); // e_flags
    b.extend(64u16.to_le_bytes()); // e_ehsize
    b.extend(56u16.to_le_bytes()); // e_phentsize
    b.extend(phnum.to_le_bytes());
    b.extend(64u16.to_le_bytes()); // e_shentsize
    b.extend([0u8; 4]); // e_shnum, e_shstrndx
    if let Some(i) = interp {
        let len = i.len() as u64 + 1;
        b.extend(3u32.to_le_bytes()); // PT_INTERP
        b.extend(4u32.to_le_bytes()); // PF_R
        for v in [120u64, 0x40_0078, 0x40_0078, len, len, 1] {
            b.extend(v.to_le_bytes());
        }
        b.extend(i.as_bytes());
        b.push(0);
    }
    b
}

#[test]
fn a_binary_for_another_architecture_is_refused_naming_it_and_its_key() {
    for (name, interp) in [
        ("tool-static", None),
        ("tool-dynamic", Some("/lib/ld-linux-aarch64.so.1")),
    ] {
        let r = scratch_recipe("httpd");
        let bin = r.path().join(name);
        std::fs::write(&bin, tiny_elf(183, interp)).expect("w");
        edit_toml(&r, |t| {
            with_root_key(&t, &format!("binaries = [\"{}\"]", bin.display()))
        });
        let t = refused_build(r.path());
        assert!(
            t.contains(&format!(
                "kiln.toml:{}: root.binaries: {}: is an ELF for aarch64; the guest is x86-64",
                root_key_line(r.path()),
                bin.display()
            )),
            "{name}: {t}"
        );
        assert!(!t.contains("not found"), "{name}: {t}");
    }
}

#[test]
fn unbounded_values_are_refused_with_their_line_and_limit() {
    let r = scratch_recipe("httpd");
    edit_toml(&r, |t| {
        t.replace(
            "memory = 128",
            &format!("memory = 128\ncmdline = \"{}\"", "loglevel=7 ".repeat(150)),
        )
    });
    let t = refused_build(r.path());
    assert!(
        t.contains("kiln.toml:5:")
            && t.contains("cmdline: 1650 bytes is too long")
            && t.contains("Kiln keeps 512"),
        "{t}"
    );
    let r = scratch_recipe("httpd");
    // The lines appended below start after the recipe's own.
    let lines = std::fs::read_to_string(r.path().join("kiln.toml"))
        .expect("read")
        .lines()
        .count();
    edit_toml(&r, |t| {
        format!(
            "{t}\n[env]\nSMALL = \"1\"\nBIG = \"{}\"\n",
            "x".repeat(40_000)
        )
    });
    let t = refused_build(r.path());
    assert!(
        t.contains(&format!("kiln.toml:{}:", lines + 4))
            && t.contains("env.BIG")
            && t.contains("32 KiB"),
        "{t}"
    );
    let r = scratch_recipe("httpd");
    let v = "x".repeat(30_000);
    edit_toml(&r, |t| {
        format!("{t}\n[env]\nA = \"{v}\"\nB = \"{v}\"\nC = \"{v}\"\n")
    });
    let t = refused_build(r.path());
    assert!(
        t.contains(&format!("kiln.toml:{}:", lines + 2))
            && t.contains("at most 65536 bytes (64 KiB)"),
        "{t}"
    );
    let r = scratch_recipe("httpd");
    edit_toml(&r, |t| format!("\u{feff}{t}"));
    let t = refused_build(r.path());
    assert!(
        t.contains("kiln.toml:1:1:") && t.contains("remove the byte-order mark"),
        "{t}"
    );
}

#[test]
fn an_rc_or_files_linked_to_host_files_is_refused() {
    let r = scratch_recipe("httpd");
    std::fs::remove_file(r.path().join("etc/rc")).expect("rm");
    std::os::unix::fs::symlink("/etc/hostname", r.path().join("etc/rc")).expect("ln");
    let t = refused_build(r.path());
    assert!(
        t.contains("etc/rc: leads out of the recipe folder (to /etc/hostname)"),
        "{t}"
    );
    // files/ as a link to a host folder would copy that folder into the image.
    let r = scratch_recipe("httpd");
    std::fs::remove_dir_all(r.path().join("files")).expect("rm");
    std::os::unix::fs::symlink("/etc/apt", r.path().join("files")).expect("ln");
    let t = refused_build(r.path());
    assert!(t.contains("files: leads out of the recipe folder"), "{t}");
}

#[test]
fn a_hook_past_its_time_limit_is_killed_and_the_build_fails() {
    let r = scratch_recipe("httpd");
    edit_toml(&r, |t| {
        t.replace("memory = 128", "memory = 128\nhook_timeout = 2")
    });
    std::fs::create_dir(r.path().join("postinst")).expect("mkdir");
    std::fs::write(
        r.path().join("postinst/50-forever.sh"),
        "echo waiting forever\nsleep 600\n",
    )
    .expect("w");
    let started = std::time::Instant::now();
    let t = refused_build(r.path());
    assert!(
        t.contains("50-forever.sh")
            && t.contains("time limit of 2 s")
            && t.contains("hook_timeout"),
        "{t}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn an_interrupted_builds_temp_folder_is_swept_by_the_next_build() {
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("img");
    let temps = || -> Vec<PathBuf> {
        std::fs::read_dir(d.path())
            .expect("ls")
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(".img.tmp-"))
            })
            .collect()
    };
    // A build stuck in a hook, killed like Ctrl-C's harsher cousin.
    let r = scratch_recipe("httpd");
    std::fs::create_dir(r.path().join("postinst")).expect("mkdir");
    std::fs::write(
        r.path().join("postinst/10-slow.sh"),
        "touch ./hook-started\nsleep 600\n",
    )
    .expect("w");
    let mut c = kiln(d.path());
    c.arg("build").arg(r.path()).arg("-o").arg(&out);
    c.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = kiln_test_support::KillOnDrop(c.spawn().expect("spawn kiln build"));
    let stuck = kiln_test_support::wait_until(
        "the hook to start",
        std::time::Duration::from_secs(120),
        std::time::Duration::from_millis(50),
        || {
            temps()
                .into_iter()
                .find(|t| t.join("root/hook-started").exists())
        },
    );
    child.0.kill().expect("kill");
    child.0.wait().expect("wait");
    assert!(stuck.is_dir(), "a killed build leaves its folder");
    // The next build of the same output sweeps it (its builder is gone) and succeeds.
    let mut c = kiln(d.path());
    c.arg("build").arg(recipe("httpd")).arg("-o").arg(&out);
    run_ok(c);
    assert!(out.join("manifest.json").is_file());
    assert_eq!(temps(), Vec::<PathBuf>::new(), "stale folders left");
}

#[test]
fn bad_files_in_the_recipe_exit_2_and_say_the_os_error_once() {
    // A FIFO and a device node in files/.
    let r = scratch_recipe("httpd");
    let fifo = r.path().join("files/var/www/pipe");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(st.success());
    let t = refused_build(r.path());
    assert!(t.contains("files/var/www/pipe: is a FIFO"), "{t}");
    let r = scratch_recipe("httpd");
    let node = r.path().join("files/var/www/null");
    // mknod needs root (the test suite runs as root); without it, this part is skipped.
    let made = std::process::Command::new("mknod")
        .arg(&node)
        .args(["c", "1", "3"])
        .status()
        .is_ok_and(|s| s.success());
    if made {
        let t = refused_build(r.path());
        assert!(
            t.contains("files/var/www/null: is a character device node"),
            "{t}"
        );
    }
    // Unreadable as they are (tests run as root, who reads anything, so: a file where a folder
    // is needed, a folder where a file is, a looping symlink, a missing fragment).
    let r = scratch_recipe("httpd");
    std::fs::write(r.path().join("postinst"), "").expect("w");
    let t = refused_build(r.path());
    assert!(t.contains("postinst: Not a directory"), "{t}");
    assert_eq!(count(&t, "os error 20"), 1, "{t}");
    let r = scratch_recipe("httpd");
    edit_toml(&r, |t| format!("kernel_fragments = [\"nope.config\"]\n{t}"));
    let t = refused_build(r.path());
    assert!(
        t.contains("nope.config") && t.contains("kiln.toml:1"),
        "{t}"
    );
    let r = scratch_recipe("httpd");
    std::fs::remove_file(r.path().join("etc/rc")).expect("rm");
    std::fs::create_dir(r.path().join("etc/rc")).expect("mkdir");
    let t = refused_build(r.path());
    assert!(t.contains("etc/rc: is a folder"), "{t}");
    let r = scratch_recipe("httpd");
    std::fs::remove_dir_all(r.path().join("files")).expect("rm");
    std::os::unix::fs::symlink("files", r.path().join("files")).expect("ln");
    let t = refused_build(r.path());
    assert!(t.contains("files: is a symlink loop"), "{t}");
}

#[test]
fn an_output_folder_that_is_not_an_image_is_left_alone() {
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("mine");
    std::fs::create_dir(&out).expect("mkdir");
    std::fs::write(out.join("notes.txt"), "precious").expect("w");
    let mut c = kiln(d.path());
    c.arg("build").arg(recipe("httpd")).arg("-o").arg(&out);
    let o = run(c);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("is a folder that is not a Kiln image"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).expect("still there"),
        "precious"
    );
}
