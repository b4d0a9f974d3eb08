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
    let o = f.ok(&[
        "build",
        &format!("oci:{}:1", layout.display()),
        "-o",
        built.to_str().expect("utf-8"),
    ]);
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
    std::fs::create_dir_all(recipe.join("etc")).expect("mkdir");
    std::fs::create_dir_all(recipe.join("files/www")).expect("mkdir");
    std::fs::write(
        recipe.join("kiln.toml"),
        format!(
            "name = \"fromimage\"\nfrom = \"oci:{}:1\"\nuser = \"www\"\nready = \"tcp:8080\"\n\
             ports = [\"8080:8080\"]\nmemory = 64\n",
            layout.display()
        ),
    )
    .expect("kiln.toml");
    std::fs::write(
        recipe.join("etc/rc"),
        "#!/bin/sh\necho written > /data/by-www\nexec httpd -f -p 8080 -h /www\n",
    )
    .expect("rc");
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
    f.ok(&[
        "build",
        &format!("docker-archive:{}", archive.display()),
        "-o",
        built.to_str().expect("utf-8"),
    ]);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(built.join("manifest.json")).expect("manifest"))
            .expect("json");
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
    let o = f.run(&[
        "build",
        recipe.to_str().expect("utf-8"),
        "-o",
        built.to_str().expect("utf-8"),
    ]);
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
        std::fs::create_dir_all(recipe.join("etc")).expect("mkdir");
        std::fs::write(
            recipe.join("kiln.toml"),
            format!(
                "name = \"owned\"\nfrom = \"oci:{}:1\"\nready = \"none\"\n\n[image]\nformat = \"{format}\"\n",
                layout.display()
            ),
        )
        .expect("kiln.toml");
        std::fs::write(recipe.join("etc/rc"), "#!/bin/sh\nexec sleep 1\n").expect("rc");
        let built = tmp.path().join(format!("out-{format}"));
        let o = f.ok(&[
            "build",
            recipe.to_str().expect("utf-8"),
            "-o",
            built.to_str().expect("utf-8"),
        ]);
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
