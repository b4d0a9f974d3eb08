//! OCI images as microVMs (issue 14, part 1) against a real registry: Debian's docker-registry on
//! a loopback port, an image made with umoci from the host's static busybox and copied in with
//! skopeo. `kiln run REF` serves it; its Env and WorkingDir are the service's; whiteouts are
//! honoured; its files keep their owners; a container's exit code is `kiln run`'s; bad references are refused clearly.

use super::lifecycle::{page, Fleet};
use super::*;
use kiln_test_support::free_port;
use kiln_test_support::registry::{httpd_layout, tag_hello, tools_missing, Registry};

fn skip() -> bool {
    if let Some(t) = tools_missing() {
        eprintln!("skipped: {t} is not installed (scripts/setup.sh installs it)");
        return true;
    }
    false
}

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `kiln build TARGET -o OUT` (not checked: the caller says what it expects).
fn build(f: &Fleet, target: &str, out: &Path) -> std::process::Output {
    f.run(&["build", target, "-o", out.to_str().expect("utf-8")])
}

/// `build`, which must succeed.
fn build_ok(f: &Fleet, target: &str, out: &Path) -> std::process::Output {
    let o = build(f, target, out);
    assert!(o.status.success(), "{}", text(&o));
    o
}

/// A recipe folder `dir` on `layout`'s `httpd:1`: kiln.toml is `name`, the `from` line, then
/// `toml`; etc/rc is `rc`.
fn recipe_on(layout: &Path, dir: &Path, name: &str, toml: &str, rc: &str) {
    std::fs::create_dir_all(dir.join("etc")).expect("mkdir");
    std::fs::write(
        dir.join("kiln.toml"),
        format!(
            "name = \"{name}\"\nfrom = \"oci:{}:1\"\n{toml}",
            layout.display()
        ),
    )
    .expect("kiln.toml");
    std::fs::write(dir.join("etc/rc"), format!("#!/bin/sh\n{rc}\n")).expect("rc");
}

#[test]
fn an_oci_image_from_a_registry_runs_as_a_microvm() {
    if skip() {
        return;
    }
    let reg = Registry::start();
    let tmp = tempfile::tempdir().expect("tmp");
    let layout = httpd_layout(tmp.path());
    reg.push_layout(&layout, "1", "httpd:1");
    let mut f = Fleet::new();
    let (name, port) = f.run_detached("oci", &reg.reference("httpd:1"), 80, &[]);
    let body = page(port, "");
    assert!(body.contains("Hello from an OCI image"), "{body}");
    // The service runs in the image's WorkingDir with its Env.
    let sh = |script: &str| out(&f.ok(&["exec", &name, "--", "sh", "-c", script]));
    let cwd = sh("readlink /proc/$(pidof httpd)/cwd");
    assert_eq!(cwd.trim(), "/www");
    let env = sh("tr '\\0' '\\n' < /proc/$(pidof httpd)/environ");
    assert!(env.lines().any(|l| l == "GREETING=hello from OCI"), "{env}");
    // Layer 2's whiteouts removed layer 1's files.
    let www = sh("ls /www");
    assert!(
        www.contains("index.html") && !www.contains("secret"),
        "{www}"
    );
    let data = sh("ls /data");
    assert_eq!(data.split_whitespace().collect::<Vec<_>>(), ["new.txt"]);
    f.ok(&["rm", "-f", &name]);

    // The same image from its OCI layout folder builds without the registry.
    let built = tmp.path().join("out");
    let o = build_ok(&f, &format!("oci:{}:1", layout.display()), &built);
    assert!(built.join("manifest.json").is_file(), "{}", text(&o));

    // Refusals: a tag the registry does not have, a registry nobody serves, an image with
    // nothing to run.
    let o = f.run(&["build", &reg.reference("httpd:nosuch")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("nosuch"), "{}", text(&o));
    let dead = format!("127.0.0.1:{}/httpd:1", free_port());
    let o = f.run(&["build", &dead]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(&dead[..dead.find('/').unwrap_or(0)]),
        "{}",
        text(&o)
    );
    let empty = tmp.path().join("empty");
    for args in [
        vec!["init", "--layout", empty.to_str().expect("utf-8")],
        vec!["new", "--image", &format!("{}:1", empty.display())],
    ] {
        let o = std::process::Command::new("umoci")
            .args(&args)
            .output()
            .expect("umoci");
        assert!(o.status.success(), "{}", text(&o));
    }
    let o = f.run(&["build", &format!("oci:{}:1", empty.display())]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("no Entrypoint and no Cmd"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_containers_exit_code_is_kiln_runs() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let layout = httpd_layout(tmp.path());
    tag_hello(&layout);
    let f = Fleet::new();
    let o = f.run(&[
        "run",
        "--ready-timeout",
        "150",
        &format!("oci:{}:hello", layout.display()),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("hello from hello from OCI in /www"),
        "{}",
        text(&o)
    );
}

/// The files of an image folder with their bytes (the template, machine-made, aside).
fn folder(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read image folder")
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_kiln_image_travels_through_a_registry_byte_for_byte() {
    if skip() {
        return;
    }
    let reg = Registry::start();
    let f = Fleet::new();
    let image = httpd_image();
    let reference = reg.reference("kiln-httpd:1");
    let o = f.ok(&["push", image.to_str().expect("utf-8"), &reference]);
    assert!(text(&o).contains("3 blobs sent"), "{}", text(&o));
    // Again: nothing is sent twice.
    let o = f.ok(&["push", image.to_str().expect("utf-8"), &reference]);
    assert!(
        text(&o).contains("0 blobs sent") && text(&o).contains("3 already there"),
        "{}",
        text(&o)
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let pulled = tmp.path().join("pulled");
    f.ok(&["pull", &reference, "-o", pulled.to_str().expect("utf-8")]);
    assert_eq!(
        folder(&pulled),
        folder(image),
        "the pulled folder is the pushed one"
    );

    // `kiln run REF` of a Kiln image boots it as it is.
    let mut f = f;
    let (name, port) = f.run_detached("pulled", &reference, 80, &[]);
    page(port, "");
    f.ok(&["rm", "-f", &name]);

    // A container image is not a Kiln image: pull says what to do instead.
    let layout = httpd_layout(tmp.path());
    reg.push_layout(&layout, "1", "httpd:1");
    let o = f.run(&[
        "pull",
        &reg.reference("httpd:1"),
        "-o",
        pulled.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not a Kiln image"), "{}", text(&o));
    assert_eq!(
        folder(&pulled),
        folder(image),
        "a refused pull leaves the folder alone"
    );
}

#[test]
fn a_recipe_builds_on_an_image_and_runs_as_its_user() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let layout = httpd_layout(tmp.path());
    let recipe = tmp.path().join("recipe");
    recipe_on(
        &layout,
        &recipe,
        "fromimage",
        "user = \"www\"\nready = \"tcp:8080\"\nports = [\"8080:8080\"]\nmemory = 64\n",
        "echo written > /data/by-www\nexec httpd -f -p 8080 -h /www",
    );
    std::fs::create_dir_all(recipe.join("files/www")).expect("mkdir");
    std::fs::write(recipe.join("files/www/extra.html"), "from the recipe\n").expect("extra");
    let mut f = Fleet::new();
    let (name, port) = f.run_detached("from", recipe.to_str().expect("utf-8"), 8080, &[]);
    for (path, want) in [
        ("index.html", "Hello from an OCI image"),
        ("extra.html", "from the recipe"),
    ] {
        let body = page(port, path);
        assert!(body.contains(want), "{path}: {body}");
    }
    let status = out(&f.ok(&[
        "exec",
        &name,
        "--",
        "sh",
        "-c",
        "grep -E '^(Uid|Gid):' /proc/$(pidof httpd)/status",
    ]));
    let ids: Vec<Vec<&str>> = status
        .lines()
        .map(|l| l.split_whitespace().skip(1).collect())
        .collect();
    assert_eq!(ids, [vec!["33"; 4], vec!["33"; 4]], "{status}");
    // The image's /data is www's (its layer says so, though the build unpacked it without
    // root), so the service could write there; the recipe's files stay root's.
    let owned = out(&f.ok(&[
        "exec",
        &name,
        "--",
        "sh",
        "-c",
        "cat /data/by-www; ls -lnd /data /data/new.txt /data/by-www /www/extra.html",
    ]));
    assert!(owned.starts_with("written\n"), "{owned}");
    for (path, owner) in [
        ("/data", "33 33"),
        ("/data/new.txt", "33 33"),
        ("/data/by-www", "33 33"),
        ("/www/extra.html", "0 0"),
    ] {
        let l = owned
            .lines()
            .find(|l| l.ends_with(&format!(" {path}")))
            .unwrap_or_else(|| panic!("{path} not listed: {owned}"));
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(format!("{} {}", f[2], f[3]), owner, "{l}");
    }
    f.ok(&["rm", "-f", &name]);

    // A `docker save` tarball of the same image builds too.
    let archive = tmp.path().join("httpd.tar");
    let o = std::process::Command::new("skopeo")
        .args([
            "copy",
            "-q",
            &format!("oci:{}:1", layout.display()),
            &format!("docker-archive:{}:httpd:1", archive.display()),
        ])
        .output()
        .expect("skopeo");
    assert!(o.status.success(), "{}", text(&o));
    let built = tmp.path().join("from-archive");
    build_ok(&f, &format!("docker-archive:{}", archive.display()), &built);
    let m = manifest(&built);
    assert_eq!(m["name"], "httpd");
    // The manifest lists each path's owner when it is not root's.
    let files = m["files"].as_array().expect("files");
    let entry = |p: &str| files.iter().find(|f| f["path"] == p).expect("listed");
    assert_eq!(
        (&entry("/data")["uid"], &entry("/data")["gid"]),
        (&33.into(), &33.into())
    );
    assert!(entry("/bin/busybox").get("uid").is_none());
    // An unknown user is refused with its kiln.toml line.
    let toml = std::fs::read_to_string(recipe.join("kiln.toml")).expect("read");
    std::fs::write(
        recipe.join("kiln.toml"),
        toml.replace("\"www\"", "\"nosuch\""),
    )
    .expect("w");
    let o = build(&f, recipe.to_str().expect("utf-8"), &built);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("kiln.toml:3") && text(&o).contains("nosuch"),
        "{}",
        text(&o)
    );
}

/// The same image as a squashfs root keeps /data www's (mksquashfs pseudo definitions); as an
/// erofs root, which Debian's mkfs.erofs cannot give owners per file, the build warns and names
/// the first path.
#[test]
fn read_only_roots_keep_owners_or_say_they_cannot() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let layout = httpd_layout(tmp.path());
    let f = Fleet::new();
    for format in ["squashfs", "erofs"] {
        let recipe = tmp.path().join(format!("recipe-{format}"));
        recipe_on(
            &layout,
            &recipe,
            "owned",
            &format!("ready = \"none\"\n\n[image]\nformat = \"{format}\"\n"),
            "exec sleep 1",
        );
        let built = tmp.path().join(format!("out-{format}"));
        let o = build_ok(&f, recipe.to_str().expect("utf-8"), &built);
        let root = built.join(format!("root.{format}"));
        let warned = text(&o).contains("erofs cannot keep owners");
        if format == "erofs" {
            assert!(warned && text(&o).contains("/data 33:33"), "{}", text(&o));
            continue;
        }
        assert!(!warned, "{}", text(&o));
        let ls = std::process::Command::new("unsquashfs")
            .args(["-lln", "-d", "/r"])
            .arg(&root)
            .output()
            .expect("unsquashfs");
        let ls = String::from_utf8_lossy(&ls.stdout);
        for (end, owner) in [
            ("/r/data", "33/33"),
            ("/r/data/new.txt", "33/33"),
            ("/r/etc/rc", "0/0"),
        ] {
            let line = ls
                .lines()
                .find(|l| l.ends_with(end))
                .unwrap_or_else(|| panic!("{end} not listed: {ls}"));
            assert_eq!(line.split_whitespace().nth(1), Some(owner), "{line}");
        }
    }
}

/// `kiln trace` of a recipe on an image: the image's files the service reads make the index,
/// and the image built from it (only those, their ELF closure and the user database) serves
/// the same page with fewer files.
#[test]
fn trace_slims_an_image_to_what_the_service_reads() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let layout = httpd_layout(tmp.path());
    let recipe = tmp.path().join("recipe");
    recipe_on(
        &layout,
        &recipe,
        "slim",
        "ready = \"tcp:80\"\nmemory = 64\n",
        "exec httpd -f -p 80 -h /www",
    );
    let f = Fleet::new();
    let port = free_port();
    let o = f.run(&[
        "trace",
        recipe.to_str().expect("utf-8"),
        "-p",
        &format!("{port}:80"),
        "--",
        &format!(
            "curl -sf --retry 20 --retry-connrefused --retry-delay 1 -m 10 http://127.0.0.1:{port}/index.html"
        ),
    ]);
    let t = text(&o);
    assert!(o.status.success() && t.contains("trace accepted"), "{t}");
    let index = std::fs::read_to_string(recipe.join("files.txt")).expect("index");
    let lines: Vec<&str> = index.lines().filter(|l| !l.starts_with('#')).collect();
    for want in ["/bin/busybox", "/bin/httpd", "/www/index.html"] {
        assert!(lines.contains(&want), "{want} not in the index:\n{index}");
    }
    assert!(
        !lines.contains(&"/data/new.txt") && !lines.contains(&"/opt/unused.bin"),
        "{index}"
    );
    let (full, min) = trace_sizes(&t);
    eprintln!("trace of an image: (bytes, files) {full:?} -> {min:?}");
    assert!(min.1 < full.1, "the minimal image has fewer files: {t}");
    assert!(
        min.0 + 200e3 < full.0,
        "the unused 256 kB file is not in the minimal image: {t}"
    );

    // With `index` the recipe builds the slim image: the image's other files are not in it.
    let toml = std::fs::read_to_string(recipe.join("kiln.toml")).expect("read");
    std::fs::write(
        recipe.join("kiln.toml"),
        format!("index = \"files.txt\"\n{toml}"),
    )
    .expect("w");
    let built = tmp.path().join("slim");
    build_ok(&f, recipe.to_str().expect("utf-8"), &built);
    let m = manifest(&built);
    let base = m["base"].as_str().expect("base").to_string();
    assert!(base.contains("@sha256:"), "{base}");
    let files = m["files"].as_array().expect("files");
    let has = |p: &str| files.iter().any(|f| f["path"] == p);
    assert!(has("/www/index.html") && has("/etc/passwd"), "{m}");
    assert!(!has("/data/new.txt"), "{m}");
    let from_image = files
        .iter()
        .filter(|f| f["source"] == base.as_str())
        .count();
    assert!(from_image >= 3, "{m}");

    // A line the image has nothing for is refused with its line, even when this host has it:
    // nothing of the host's enters an image built on another.
    let mut lines = index.clone();
    lines.push_str("/etc/debian_version\n");
    std::fs::write(recipe.join("files.txt"), &lines).expect("w");
    let o = build(&f, recipe.to_str().expect("utf-8"), &built);
    let n = lines.lines().count();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("files.txt:{n}"))
            && text(&o).contains("/etc/debian_version")
            && text(&o).contains("the `from` image"),
        "{}",
        text(&o)
    );
    assert!(
        built.join("manifest.json").is_file(),
        "the image built before stays"
    );
}

/// A Dockerfile on the OCI test image is a recipe: COPY brings the build context's files, RUN
/// runs inside the root (in its WORKDIR, with its ENV and ARG values), ENV and ENTRYPOINT + CMD
/// are the service's; what Kiln cannot do is refused with the file's line.
#[test]
fn a_dockerfile_builds_and_serves() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let layout = httpd_layout(tmp.path());
    let ctx = tmp.path().join("web");
    std::fs::create_dir_all(ctx.join("site")).expect("mkdir");
    std::fs::write(ctx.join("site/page.html"), "copied from the context\n").expect("w");
    std::fs::write(ctx.join("site/notes.txt"), "left out\n").expect("w");
    std::fs::write(ctx.join(".dockerignore"), "site/*.txt\n").expect("w");
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "# a page on the OCI test image\n\
             ARG WHO=docker\n\
             FROM oci:{}:1\n\
             ENV GREETING=\"from a $WHO file\"\n\
             COPY site /www/\n\
             RUN echo \"made by RUN as $(busybox id -u) in $(pwd), $GREETING\" > /www/run.html\n\
             WORKDIR /www/sub\n\
             RUN echo \"in $(pwd)\" > where.html\n\
             ENTRYPOINT [\"/bin/httpd\"]\n\
             CMD [\"-f\", \"-p\", \"80\", \"-h\", \"/www\"]\n",
            layout.display()
        ),
    )
    .expect("Dockerfile");
    let mut f = Fleet::new();
    let (name, port) = f.run_detached("docker", ctx.to_str().expect("utf-8"), 80, &[]);
    for (path, want) in [
        ("page.html", "copied from the context"),
        ("run.html", "made by RUN as 0 in /, from a docker file"),
        ("sub/where.html", "in /www/sub"),
        ("index.html", "Hello from an OCI image"),
    ] {
        let body = page(port, path);
        assert!(body.contains(want), "{path}: {body}");
    }
    let listing = out(&f.ok(&["exec", &name, "--", "ls", "/www"]));
    assert!(
        listing.contains("page.html") && !listing.contains("notes.txt"),
        ".dockerignore leaves site/notes.txt out: {listing}"
    );
    let env = out(&f.ok(&[
        "exec",
        &name,
        "--",
        "sh",
        "-c",
        "tr '\\0' '\\n' < /proc/$(pidof httpd)/environ",
    ]));
    // etc/rc started it in the WORKDIR (httpd -h then moves to /www itself).
    for want in ["GREETING=from a docker file", "PWD=/www/sub"] {
        assert!(env.lines().any(|l| l == want), "{want}: {env}");
    }
    f.ok(&["rm", "-f", &name]);

    // A failing RUN names its line; an instruction Kiln cannot follow is refused before any
    // build, with its line.
    let dockerfile = ctx.join("Dockerfile");
    let good = std::fs::read_to_string(&dockerfile).expect("read");
    for (change, says) in [
        (
            good.replace("RUN echo \"in", "RUN false\nRUN echo \"in"),
            "Dockerfile:8: RUN failed",
        ),
        (
            good.replace("WORKDIR /www/sub", "HEALTHCHECK CMD true"),
            "Dockerfile:7: HEALTHCHECK",
        ),
    ] {
        std::fs::write(&dockerfile, change).expect("w");
        let o = build(
            &f,
            dockerfile.to_str().expect("utf-8"),
            &tmp.path().join("out"),
        );
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains(says), "{says}: {}", text(&o));
        assert!(
            !tmp.path().join("out").exists(),
            "a refused build left an image"
        );
    }
}
