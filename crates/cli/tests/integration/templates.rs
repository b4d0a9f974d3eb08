//! Warm starts (issue 12): a template made at build time, clones of it that serve and each
//! have their own entropy, a stale template passed over with its reason, a snapshot of a
//! running VM restored, and the refusals.

use super::lifecycle::{http_ok, Fleet};
use super::*;
use kiln_test_support::{curl, free_port, wait_until};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

/// recipes/httpd plus a CGI page printing 32 bytes read from /dev/urandom at request time,
/// and `/boot-rand`: 32 bytes rc read before httpd started, i.e. in the template's own life
/// (every clone serves the template's, from the memory they share).
fn random_page_recipe() -> tempfile::TempDir {
    let r = scratch_recipe("httpd");
    let rc = r.path().join("etc/rc");
    let text = std::fs::read_to_string(&rc).expect("read rc");
    std::fs::write(
        &rc,
        text.replace(
            "exec httpd",
            "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /var/www/boot-rand\nexec httpd",
        ),
    )
    .expect("write rc");
    let cgi = r.path().join("files/var/www/cgi-bin");
    std::fs::create_dir_all(&cgi).expect("mkdir");
    let script = cgi.join("rand");
    std::fs::write(
        &script,
        "#!/bin/sh\necho 'Content-Type: text/plain'\necho\nhead -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'\necho\n",
    )
    .expect("write cgi");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    r
}

/// Build `recipe` into `out` with a template; the build's output.
fn build_template(f: &Fleet, recipe: &Path, out: &Path) -> String {
    let o = f.ok(&[
        "build",
        &recipe.display().to_string(),
        "-o",
        &out.display().to_string(),
        "--template",
    ]);
    let t = text(&o);
    assert!(t.contains("template of httpd made"), "{t}");
    assert!(out.join("template.json").is_file(), "{t}");
    t
}

/// The random page of the VM on `port`: 64 hex characters.
fn random_bytes(port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/cgi-bin/rand");
    let (_, body) = wait_until(
        "the random page",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || curl(&url, 2.0).filter(|(c, _)| *c == 200),
    );
    let hex = body.trim().to_string();
    assert_eq!(hex.len(), 64, "32 bytes as hex: {body:?}");
    hex
}

#[test]
fn clones_of_a_template_serve_and_each_has_its_own_entropy() {
    let mut f = Fleet::new();
    let recipe = random_page_recipe();
    let img = tempfile::tempdir().expect("tmp");
    let out = img.path().join("httpd");
    build_template(&f, recipe.path(), &out);
    let image = out.display().to_string();
    let mut seen = BTreeSet::new();
    let mut ports = vec![];
    let mut clones = vec![];
    for _ in 0..5 {
        let name = f.name("clone");
        clones.push(name.clone());
        let port = free_port();
        let o = f.ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "-p",
            &format!("{port}:80"),
            &image,
        ]);
        let t = text(&o);
        assert!(!t.contains("booting cold"), "a clone, not a cold boot: {t}");
        ports.push(port);
    }
    // What the template itself read: the same in every clone (their shared memory).
    let own: BTreeSet<String> = ports
        .iter()
        .map(|p| {
            let (code, body) = curl(&format!("http://127.0.0.1:{p}/boot-rand"), 5.0)
                .expect("the template's bytes");
            assert_eq!(code, 200, "{body}");
            body.trim().to_string()
        })
        .collect();
    assert_eq!(
        own.len(),
        1,
        "the clones share the template's memory: {own:?}"
    );
    let template_own = own.into_iter().next().expect("one");
    assert_eq!(template_own.len(), 64, "{template_own:?}");
    seen.insert(template_own.clone());
    for port in &ports {
        http_ok(*port);
        let bytes = random_bytes(*port);
        assert!(
            seen.insert(bytes.clone()),
            "two clones, or a clone and the template, read the same random bytes: {bytes} (the template's: {template_own})"
        );
    }
    // Each clone was thawed (its own identity) rather than booted.
    for n in &clones {
        let log = f.console_log(n);
        assert!(
            log.contains("kiln: thawed in"),
            "{n} was not thawed:\n{log}"
        );
        assert!(
            !log.contains("Linux version"),
            "{n} booted a kernel:\n{log}"
        );
    }
    // A cold boot of the same image reads different bytes too, and says nothing of a template.
    let cold = f.name("cold");
    let port = free_port();
    f.ok(&[
        "run",
        "-d",
        "--cold",
        "--name",
        &cold,
        "-p",
        &format!("{port}:80"),
        &image,
    ]);
    assert!(seen.insert(random_bytes(port)));
}

#[test]
fn a_stale_template_is_passed_over_with_its_reason() {
    let mut f = Fleet::new();
    let img = tempfile::tempdir().expect("tmp");
    let out = img.path().join("httpd");
    build_template(&f, &recipe("httpd"), &out);
    let image = out.display().to_string();
    // Other memory than the template's: a restore would be unsafe, so it boots cold and says why.
    let name = f.name("stale");
    let port = free_port();
    let o = f.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "-m",
        "64",
        "-p",
        &format!("{port}:80"),
        &image,
    ]);
    let t = text(&o);
    assert!(
        t.contains("the template of httpd is not used")
            && t.contains("memory")
            && t.contains("booting cold"),
        "{t}"
    );
    http_ok(port);
    // An image changed under its template: its template.json now names a template of another
    // build of the recipe.
    let changed = scratch_recipe("httpd");
    std::fs::write(changed.path().join("files/var/www/extra.txt"), "changed\n").expect("w");
    let out2 = img.path().join("httpd2");
    f.ok(&[
        "build",
        &changed.path().display().to_string(),
        "-o",
        &out2.display().to_string(),
    ]);
    std::fs::copy(out.join("template.json"), out2.join("template.json")).expect("copy");
    let name2 = f.name("changed");
    let port2 = free_port();
    let o = f.ok(&[
        "run",
        "-d",
        "--name",
        &name2,
        "-p",
        &format!("{port2}:80"),
        &out2.display().to_string(),
    ]);
    let t = text(&o);
    assert!(
        t.contains("the image changed") && t.contains("booting cold"),
        "{t}"
    );
    http_ok(port2);
    // Asked for explicitly, a stale template is refused with the reason.
    let o = f.run(&[
        "run",
        "--from",
        &out.display().to_string(),
        "-m",
        "64",
        &out.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("cannot restore: memory"), "{}", text(&o));
}

#[test]
fn a_snapshot_of_a_running_vm_restores_and_a_share_refuses_one() {
    let mut f = Fleet::new();
    let image = httpd_image().display().to_string();
    let name = f.name("snap");
    let port = free_port();
    f.ok(&[
        "run",
        "-d",
        "--cold",
        "--name",
        &name,
        "-p",
        &format!("{port}:80"),
        &image,
    ]);
    http_ok(port);
    let saved = tempfile::tempdir().expect("tmp");
    let dir = saved.path().join("snap");
    let o = f.ok(&["snapshot", &name, "-o", &dir.display().to_string()]);
    assert!(text(&o).contains("kiln run --from"), "{}", text(&o));
    // The original runs on.
    http_ok(port);
    let restored = f.name("restored");
    let port2 = free_port();
    let o = f.ok(&[
        "run",
        "-d",
        "--from",
        &dir.display().to_string(),
        "--name",
        &restored,
        "-p",
        &format!("{port2}:80"),
    ]);
    assert!(text(&o).contains("ready"), "{}", text(&o));
    http_ok(port2);
    // Saving again into the same folder is refused.
    let o = f.run(&["snapshot", &name, "-o", &dir.display().to_string()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    // A VM with a shared folder cannot be saved: the share's state lives on the host.
    let share = tempfile::tempdir().expect("tmp");
    let shared = f.name("shared");
    let port3 = free_port();
    f.ok(&[
        "run",
        "-d",
        "--cold",
        "--name",
        &shared,
        "--share",
        &format!("{}:/mnt/s", share.path().display()),
        "-p",
        &format!("{port3}:80"),
        &image,
    ]);
    let o = f.run(&["snapshot", &shared]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("shared folder"), "{}", text(&o));
}

#[test]
fn a_recipe_with_a_template_key_starts_clones_and_a_bad_key_is_refused() {
    let mut f = Fleet::new();
    let r = scratch_recipe("httpd");
    let toml = r.path().join("kiln.toml");
    let original = std::fs::read_to_string(&toml).expect("read");
    std::fs::write(&toml, format!("{original}\n[template]\nat = \"ready\"\n")).expect("write");
    // `kiln run RECIPE` builds it, makes the template, and starts a clone of it.
    let name = f.name("keyed");
    let port = free_port();
    let o = f.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "-p",
        &format!("{port}:80"),
        &r.path().display().to_string(),
    ]);
    assert!(!text(&o).contains("booting cold"), "{}", text(&o));
    http_ok(port);
    assert!(
        f.console_log(&name).contains("kiln: thawed in"),
        "not a clone:\n{}",
        f.console_log(&name)
    );
    std::fs::write(&toml, format!("{original}\n[template]\nat = \"boot\"\n")).expect("write");
    let o = f.run(&[
        "build",
        &r.path().display().to_string(),
        "-o",
        &r.path().join("out").display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("use at = \"ready\""), "{}", text(&o));
}

/// No clone answers a forwarded port before its thaw is done: a clone whose `etc/rc.resume`
/// holds the thaw for 3 s refuses every request while it runs (the link is down), and serves
/// once `kiln run -d` says it is ready. rc.resume sees the new hostname.
#[test]
fn a_clone_is_unreachable_until_its_thaw_is_done() {
    let mut f = Fleet::new();
    let recipe = scratch_recipe("httpd");
    let resume = recipe.path().join("files/etc/rc.resume");
    std::fs::create_dir_all(resume.parent().expect("parent")).expect("mkdir");
    std::fs::write(
        &resume,
        "#!/bin/sh\necho \"resume-started as $(hostname)\"\nsleep 3\necho resume-done\n",
    )
    .expect("write rc.resume");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&resume, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let img = tempfile::tempdir().expect("tmp");
    let out = img.path().join("httpd");
    build_template(&f, recipe.path(), &out);

    let name = f.name("held");
    let port = free_port();
    let mut c = f.kiln();
    c.args(["run", "-d", "--name", &name, "-p", &format!("{port}:80")])
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().expect("kiln run -d");
    let started = format!("resume-started as {name}");
    wait_until(
        "rc.resume to start in the clone",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || f.console_log(&name).contains(&started).then_some(()),
    );
    // While rc.resume runs (3 s), the forwarded port must not answer: probe it for 2 s.
    let url = format!("http://127.0.0.1:{port}/");
    let until = std::time::Instant::now() + Duration::from_secs(2);
    let mut probes = 0;
    while std::time::Instant::now() < until {
        let got = curl(&url, 0.3);
        let log = f.console_log(&name);
        if !log.contains("resume-done") {
            assert!(
                !matches!(got, Some((200, _))),
                "the clone answered before its thaw was done:\n{log}"
            );
            probes += 1;
        }
    }
    assert!(probes > 0, "no probe ran while rc.resume held the thaw");
    let o = child.wait_with_output().expect("kiln run -d");
    assert!(o.status.success(), "{}", text(&o));
    http_ok(port);
    f.ok(&["rm", "-f", &name]);
}

/// `kiln bench --template` times clones beside cold boots and starts clones at once; every one
/// of them must answer (a clone whose keeper never brought its link up would not).
#[test]
fn bench_template_times_clones_and_they_all_answer() {
    let f = Fleet::new();
    let o = f.ok(&[
        "bench",
        &recipe("httpd").display().to_string(),
        "--template",
        "-n",
        "1",
        "--clones",
        "3",
        "--json",
    ]);
    let v: Value = serde_json::from_slice(&o.stdout).expect("bench --json");
    let t = &v["template"];
    let first = |k: &str| -> Vec<f64> {
        t[k].as_array()
            .unwrap_or_else(|| panic!("{k}: {t}"))
            .iter()
            .filter_map(Value::as_f64)
            .collect()
    };
    // min / median / p90 of the one round each.
    for k in ["clone_first_200_ms", "cold_first_200_ms"] {
        let v = first(k);
        assert!(v.len() == 3 && v.iter().all(|ms| *ms > 0.0), "{k}: {t}");
    }
    assert_eq!(t["clone_hangs"], 0, "{t}");
    assert!(t["stored_bytes"].as_u64().unwrap_or(0) > 0, "{t}");
    let many = &t["clones_at_once"];
    assert_eq!(many["clones"], 3, "{many}");
    assert_eq!(many["answered"], 3, "{many}");
    assert!(many["all_answered_ms"].as_f64().is_some(), "{many}");
    f.assert_clean();
}
