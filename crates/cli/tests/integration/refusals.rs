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
        format!("{t}\n[root]\nbinaries = [\"/usr/bin/no-such-tool\"]\n")
    });
    let t = refused_build(r.path());
    assert!(
        t.contains("/usr/bin/no-such-tool") && t.contains("kiln.toml:13"),
        "{t}"
    );
}

#[test]
fn modules_on_the_tiny_kernel_are_refused_with_their_line() {
    let r = scratch_recipe("httpd");
    edit_toml(&r, |t| format!("{t}\n[root]\nmodules = [\"vfat\"]\n"));
    let t = refused_build(r.path());
    assert!(
        t.contains("kiln.toml:13") && t.contains("`vfat`") && t.contains("no loadable modules"),
        "{t}"
    );
}

#[test]
fn a_disk_too_small_for_the_root_is_refused_with_what_it_needs() {
    let r = scratch_recipe("httpd");
    edit_toml(&r, |t| {
        t.replace("compression = \"zstd\"", "format = \"disk\"\nsize_mib = 8")
    });
    // More than 8 MiB of files.
    std::fs::write(r.path().join("files/var/www/big.bin"), vec![1u8; 9 << 20]).expect("w");
    let t = refused_build(r.path());
    assert!(
        t.contains("image.size_mib = 8 is too small") && t.contains("needs at least"),
        "{t}"
    );
}

#[test]
fn non_elf_binary_is_refused() {
    let r = scratch_recipe("httpd");
    let script = r.path().join("tool.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").expect("w");
    edit_toml(&r, |t| {
        format!("{t}\n[root]\nbinaries = [\"{}\"]\n", script.display())
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
