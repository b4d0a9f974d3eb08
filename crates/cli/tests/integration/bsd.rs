//! BSD guests from sets and a kernel the user supplies (as smolBSD and microbhyve build them):
//! the FFS root image, checked by mounting it in a real Linux VM (the tiny kernel with the UFS
//! fragment); the NetBSD QEMU command line and the FreeBSD bhyve script, on paper since no BSD
//! kernel can be had here; and the refusals.

use super::*;
use std::process::Command;

/// A NetBSD-shaped recipe: a base set with a shell and /dev/MAKEDEV, an etc set overriding
/// etc/rc's neighbour, an ELF standing in for the kernel.
fn bsd_recipe(guest: &str) -> tempfile::TempDir {
    let r = tempfile::tempdir().expect("tmp");
    let src = r.path().join("src");
    for d in ["bin", "dev", "etc", "sbin"] {
        std::fs::create_dir_all(src.join(d)).expect("mkdir");
    }
    std::fs::write(src.join("bin/sh"), "#!/not/a/real/shell\n").expect("w");
    std::fs::write(src.join("dev/MAKEDEV"), "#!/bin/sh\necho makedev\n").expect("w");
    std::fs::write(src.join("etc/motd"), "base motd\n").expect("w");
    let tar = |name: &str, members: &[&str]| {
        let st = Command::new("tar")
            .arg("-czf")
            .arg(r.path().join("sets").join(name))
            .args(members)
            .current_dir(&src)
            .status()
            .expect("tar");
        assert!(st.success());
    };
    std::fs::create_dir_all(r.path().join("sets")).expect("mkdir");
    tar("base.tgz", &["./bin", "./dev", "./etc"]);
    std::fs::write(src.join("etc/motd"), "etc set motd\n").expect("w");
    tar("etc.tgz", &["./etc/motd"]);
    std::fs::remove_dir_all(&src).expect("rm");
    std::fs::copy("/bin/true", r.path().join("kernel.elf")).expect("kernel");
    std::fs::create_dir_all(r.path().join("etc")).expect("mkdir");
    std::fs::write(
        r.path().join("etc/rc"),
        "#!/bin/sh\n. /etc/include/kiln\nkiln_wait_tcp 80\n",
    )
    .expect("rc");
    std::fs::create_dir_all(r.path().join("common")).expect("mkdir");
    std::fs::write(r.path().join("common/basicrc"), "export HOME=/\n").expect("w");
    std::fs::write(
        r.path().join("kiln.toml"),
        format!(
            "name = \"nb\"\nguest = \"{guest}\"\nkernel = \"kernel.elf\"\n\
             sets = [\"sets/base.tgz\", \"sets/etc.tgz\"]\nports = [\"8080:80\"]\nready = \"tcp:80\"\n"
        ),
    )
    .expect("toml");
    r
}

fn reason_of<'a>(m: &'a serde_json::Value, path: &str) -> &'a str {
    m["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["path"] == path)
        .unwrap_or_else(|| panic!("{path} not in the manifest"))["reason"]
        .as_str()
        .expect("reason")
}

#[test]
fn netbsd_image_from_sets_mounts_in_a_vm_and_plans_a_smolbsd_boot() {
    let r = bsd_recipe("netbsd");
    let (d, m) = build_ok(r.path());
    let img = d.path().join("img");
    assert_eq!(m["boot"]["guest"], "netbsd");
    assert_eq!(m["initramfs"]["format"], "disk");
    assert_eq!(
        m["kernel"]["boot"], "elf",
        "no PVH note in the stand-in kernel"
    );
    assert!(reason_of(&m, "/bin/sh").contains("from the set base.tgz"));
    assert!(reason_of(&m, "/etc/motd").contains("etc.tgz"));
    assert!(reason_of(&m, "/etc/rc").contains("run by netbsd's init"));
    assert!(reason_of(&m, "/etc/include/kiln").contains("console protocol"));
    assert!(reason_of(&m, "/etc/include/basicrc").contains("common/"));
    let paths: Vec<&str> = m["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| f["path"].as_str())
        .collect();
    assert!(
        !paths.iter().any(|p| *p == "/init" || p.contains("busybox")),
        "no Linux userland in a BSD root: {paths:?}"
    );

    // The QEMU command line smolBSD's startnb.sh would run.
    let state = tempfile::tempdir().expect("state");
    let mut c = kiln(state.path());
    c.args(["run", "--dry-run"]).arg(&img);
    let o = run(c);
    let argv = text(&o);
    assert!(o.status.success(), "{argv}");
    assert!(
        argv.contains(&format!("-kernel \\\n  {}/kernel", img.display())),
        "{argv}"
    );
    assert!(argv.contains("'console=com root=ld0a -z'"), "{argv}");
    assert!(argv.contains("acpi=off"), "{argv}");
    assert!(
        argv.contains("root.ffs,if=none,id=drive0,format=raw,snapshot=on"),
        "{argv}"
    );
    assert!(!argv.contains("-initrd"), "{argv}");
    assert!(argv.contains("hostfwd=tcp:127.0.0.1:8080-:80"), "{argv}");
    // kiln-init's work is refused by name.
    let mut c = kiln(state.path());
    c.args(["run", "--dry-run", "--readonly-root"]).arg(&img);
    let o = run(c);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--readonly-root: not available for a netbsd guest"));

    // The FFS image is real: a Linux VM (tiny kernel + UFS) mounts it and reads the sets' files,
    // owned by root though built without root.
    let probe = scratch_recipe("httpd");
    // The repository's UFS fragment: `make test` compiles this kernel before the tests run.
    std::fs::copy(
        workspace_root().join("crates/kernel/fragments/ufs.config"),
        probe.path().join("kernel-ufs.config"),
    )
    .expect("fragment");
    let t = std::fs::read_to_string(probe.path().join("kiln.toml")).expect("r");
    std::fs::write(
        probe.path().join("kiln.toml"),
        format!(
            "kernel_fragments = [\"kernel-ufs.config\"]\n{}",
            t.replace("ready = \"tcp:80\"", "ready = \"exit\"")
        ),
    )
    .expect("w");
    std::fs::write(
        probe.path().join("etc/rc"),
        "#!/bin/sh\nmkdir -p /mnt/bsd\n\
         mount -t ufs -o ro,ufstype=44bsd /dev/vda /mnt/bsd || exit 9\n\
         echo \"motd: $(cat /mnt/bsd/etc/motd)\"\n\
         echo \"sh-owner: $(stat -c %u:%g /mnt/bsd/bin/sh)\"\n\
         echo \"makedev: $(head -c 9 /mnt/bsd/dev/MAKEDEV)\"\n\
         grep -q kiln_wait_tcp /mnt/bsd/etc/rc && echo rc-is-the-recipes\n",
    )
    .expect("rc");
    let mut c = kiln(state.path());
    // No network: the recipe's default forward (8080) may be taken by another test.
    c.args(["run", "--network", "none", "--name", "ffsprobe", "--drive"])
        .arg(format!("{}:ro", img.join("root.ffs").display()))
        .arg(probe.path());
    let o = run(c);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("motd: etc set motd"), "the later set wins: {t}");
    assert!(t.contains("sh-owner: 0:0"), "{t}");
    assert!(t.contains("makedev: #!/bin/sh"), "{t}");
    assert!(t.contains("rc-is-the-recipes"), "{t}");
}

#[test]
fn freebsd_image_runs_under_bhyve_on_paper_only() {
    let r = bsd_recipe("freebsd");
    let (d, m) = build_ok(r.path());
    let img = d.path().join("img");
    assert_eq!(m["boot"]["guest"], "freebsd");
    let state = tempfile::tempdir().expect("state");
    let mut c = kiln(state.path());
    c.arg("run").arg(&img);
    let o = run(c);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("boots under bhyve"), "{}", text(&o));
    let mut c = kiln(state.path());
    c.args(["run", "--backend", "bhyve", "--dry-run"]).arg(&img);
    let o = run(c);
    let sh = text(&o);
    assert!(o.status.success(), "{sh}");
    assert!(
        sh.contains("bhyveload -c /dev/nmdm-kiln-nb.0A -m 128M"),
        "{sh}"
    );
    assert!(
        sh.contains(&format!(
            "cp {}/root.ffs /var/tmp/kiln-nb.ffs",
            img.display()
        )),
        "{sh}"
    );
}

/// `kiln build` of `recipe`, which must be refused (exit 2, no image); its output.
fn refused_build(recipe: &Path) -> String {
    let d = tempfile::tempdir().expect("tmp");
    let mut c = kiln(d.path());
    c.arg("build")
        .arg(recipe)
        .arg("-o")
        .arg(d.path().join("img"));
    let o = run(c);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(!d.path().join("img").exists(), "an image was left");
    text(&o)
}

#[test]
fn bsd_refusals_name_the_file_and_line() {
    // A set that is no tarball.
    let r = bsd_recipe("netbsd");
    std::fs::write(r.path().join("sets/etc.tgz"), "not a tarball").expect("w");
    let t = refused_build(r.path());
    assert!(t.contains("set ") && t.contains("etc.tgz"), "{t}");
    // A kernel that is no ELF file.
    let r = bsd_recipe("netbsd");
    std::fs::write(r.path().join("kernel.elf"), "gzip or so").expect("w");
    let t = refused_build(r.path());
    assert!(
        t.contains("kiln.toml:3: kernel:") && t.contains("not an ELF file"),
        "{t}"
    );
    // A missing set.
    let r = bsd_recipe("netbsd");
    std::fs::remove_file(r.path().join("sets/base.tgz")).expect("rm");
    let t = refused_build(r.path());
    assert!(
        t.contains("sets/base.tgz") && t.contains("kiln.toml:4"),
        "{t}"
    );
}

/// examples/netbsd-httpd (smolBSD's bozohttpd service) builds once its sets and kernel are in
/// place (stand-ins here) and plans the smolBSD boot with its port forward.
#[test]
fn the_netbsd_example_builds_from_sets() {
    let src = workspace_root().join("examples/netbsd-httpd");
    let r = tempfile::tempdir().expect("tmp");
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(r.path())
        .status()
        .expect("cp");
    assert!(st.success());
    // Without its kernel and sets the example is refused with the paths to put them at.
    let d = tempfile::tempdir().expect("tmp");
    let refusal = || {
        let mut c = kiln(d.path());
        c.arg("build").arg(r.path());
        let o = run(c);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        text(&o)
    };
    let t = refusal();
    assert!(
        t.contains("netbsd-SMOL") && t.contains("the netbsd kernel"),
        "{t}"
    );
    std::fs::copy("/bin/true", r.path().join("netbsd-SMOL")).expect("kernel");
    let t = refusal();
    assert!(t.contains("sets/base.tgz"), "{t}");
    // Stand-ins: the synthetic sets (and the ELF above as the kernel).
    let fake = bsd_recipe("netbsd");
    std::fs::create_dir_all(r.path().join("sets")).expect("mkdir");
    for set in ["base.tgz", "etc.tgz"] {
        std::fs::copy(
            fake.path().join("sets").join(set),
            r.path().join("sets").join(set),
        )
        .expect("set");
    }
    let (img, m) = build_ok(r.path());
    assert_eq!(m["boot"]["guest"], "netbsd");
    assert!(reason_of(&m, "/etc/include/basicrc").contains("common/"));
    assert!(reason_of(&m, "/var/www/index.html").contains("files/"));
    let mut c = kiln(d.path());
    c.args(["run", "--dry-run"]).arg(img.path().join("img"));
    let o = run(c);
    let argv = text(&o);
    assert!(o.status.success(), "{argv}");
    assert!(argv.contains("'console=com root=ld0a -z'"), "{argv}");
    assert!(argv.contains("hostfwd=tcp:127.0.0.1:8080-:80"), "{argv}");
}

/// The BSD run path on real QEMU, with Kiln's tiny Linux kernel standing in for a NetBSD one
/// (it boots through PVH as netbsd-SMOL would, then finds no root it knows and waits): with
/// `ready = "none"` a detached run counts as ready once QEMU runs (no kiln-init will say so),
/// `ps` lists it, and `kiln stop` ends it through QEMU since no init answers the control port.
#[test]
fn a_bsd_guest_runs_detached_with_no_readiness_check_and_stops() {
    let r = bsd_recipe("netbsd");
    let toml = r.path().join("kiln.toml");
    let t = std::fs::read_to_string(&toml).expect("r");
    std::fs::write(&toml, t.replace("ready = \"tcp:80\"\n", "")).expect("w");
    let m = manifest(httpd_image());
    std::fs::copy(
        httpd_image().join(m["kernel"]["file"].as_str().expect("kernel")),
        r.path().join("kernel.elf"),
    )
    .expect("kernel");
    let (d, m) = build_ok(r.path());
    assert_eq!(m["kernel"]["boot"], "pvh");
    let img = d.path().join("img");
    let state = tempfile::tempdir().expect("state");
    let name = format!("nbrun{}", kiln_test_support::free_port());
    let cmd = |args: &[&str]| {
        let mut c = kiln(state.path());
        c.args(args);
        run(c)
    };
    let o = cmd(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &name,
        img.to_str().expect("utf8"),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cmd(&["ps", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let row = rows
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["name"] == name.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{name} not in ps: {rows}"));
    assert_eq!(row["state"], "running", "{row}");
    let pid = row["pid"].as_u64().expect("pid") as u32;
    assert!(kiln_vm::runner::pid_alive(pid));
    let o = cmd(&["stop", "--timeout", "1", &name]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!kiln_vm::runner::pid_alive(pid), "QEMU outlived kiln stop");
    let o = cmd(&["rm", &name]);
    assert!(o.status.success(), "{}", text(&o));
}

/// A smolBSD service folder as it is (service/NAME with etc/rc, etc/ files, postinst/,
/// options.mk, and the tree's service/common/): `kiln build` of it points to `kiln import
/// smolbsd`, which makes a recipe, reports every options.mk line it did not map, and the recipe
/// builds once the kernel and sets are in place (stand-ins here).
#[test]
fn a_smolbsd_service_folder_imports_and_builds() {
    let tree = tempfile::tempdir().expect("tmp");
    let svc = tree.path().join("service/bozohttpd");
    for d in ["etc", "postinst"] {
        std::fs::create_dir_all(svc.join(d)).expect("mkdir");
    }
    std::fs::create_dir_all(tree.path().join("service/common")).expect("mkdir");
    std::fs::write(
        tree.path().join("service/common/basicrc"),
        "export PATH=/sbin:/bin:/usr/sbin:/usr/bin\n",
    )
    .expect("basicrc");
    std::fs::write(
        svc.join("etc/rc"),
        "#!/bin/sh\n. /etc/include/basicrc\n. /etc/include/kiln\nkiln_ready\n",
    )
    .expect("rc");
    std::fs::write(svc.join("etc/httpd.conf"), "port 80\n").expect("conf");
    std::fs::write(svc.join("postinst/www.sh"), "#!/bin/sh\nmkdir -p var/www\n").expect("hook");
    std::fs::write(
        svc.join("options.mk"),
        "# size of the image\nIMGSIZE=48\nMOUNTRO=y\n.if ${ARCH} != \"amd64\"\nPKGVERS=10.1\n.endif\n",
    )
    .expect("options.mk");

    let d = tempfile::tempdir().expect("tmp");
    // Built as it is: refused, pointing to the import.
    let mut c = kiln(d.path());
    c.arg("build").arg(&svc);
    let o = run(c);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("kiln import smolbsd"), "{}", text(&o));

    let recipe = tree.path().join("bozo-recipe");
    let mut c = kiln(d.path());
    c.args(["import", "smolbsd"])
        .arg(&svc)
        .arg("-o")
        .arg(&recipe);
    let o = run(c);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("mapped: options.mk:2: IMGSIZE=48 → [image] size_mib = 48"),
        "{t}"
    );
    assert!(t.contains("not mapped: options.mk:3: MOUNTRO=y"), "{t}");
    assert!(
        t.contains("not mapped: options.mk:5: PKGVERS=10.1: inside a .if"),
        "{t}"
    );
    assert!(t.contains("not mapped: options.mk:4: `.if"), "{t}");
    assert!(t.contains("netbsd-SMOL"), "{t}");
    let toml = std::fs::read_to_string(recipe.join("kiln.toml")).expect("kiln.toml");
    assert!(
        toml.contains("guest = \"netbsd\"") && toml.contains("size_mib = 48"),
        "{toml}"
    );
    assert!(recipe.join("etc/rc").is_file());
    assert!(recipe.join("files/etc/httpd.conf").is_file());
    assert!(recipe.join("postinst/www.sh").is_file());
    assert!(recipe.join("common/basicrc").is_file());
    // Nothing but the recipe beside it (the temporary folder was renamed into place).
    let beside: Vec<_> = std::fs::read_dir(tree.path())
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(beside.len(), 2, "{beside:?}");

    // Again into the same folder: refused, nothing changed.
    let mut c = kiln(d.path());
    c.args(["import", "smolbsd"])
        .arg(&svc)
        .arg("-o")
        .arg(&recipe);
    let o = run(c);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("exists already"), "{}", text(&o));
    // A folder without etc/rc: refused.
    let mut c = kiln(d.path());
    c.args(["import", "smolbsd"])
        .arg(tree.path().join("service/common"))
        .arg("-o")
        .arg(tree.path().join("other"));
    let o = run(c);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("has no etc/rc"), "{}", text(&o));
    assert!(!tree.path().join("other").exists());

    // With the kernel and sets in place (stand-ins), the imported recipe builds.
    let fake = bsd_recipe("netbsd");
    std::fs::create_dir_all(recipe.join("sets")).expect("mkdir");
    for set in ["base.tgz", "etc.tgz"] {
        std::fs::copy(
            fake.path().join("sets").join(set),
            recipe.join("sets").join(set),
        )
        .expect("set");
    }
    std::fs::copy("/bin/true", recipe.join("netbsd-SMOL")).expect("kernel");
    let (_img, m) = build_ok(&recipe);
    assert_eq!(m["boot"]["guest"], "netbsd");
    assert!(reason_of(&m, "/etc/include/basicrc").contains("common/"));
    assert!(reason_of(&m, "/etc/httpd.conf").contains("files/"));
}

/// smolBSD's bozohttpd-style and rescue-style service folders (written here after the layout
/// in docs/bsd.md: service/NAME/etc/rc, postinst/, options.mk, the tree's service/common/)
/// imported for a Linux guest, built and booted: busybox httpd stands in for bozohttpd and
/// serves what postinst wrote, from the erofs root MOUNTRO asked for; the rescue shell runs
/// commands on the console and ends through the `shutdown` helper Kiln provided; options.mk
/// keys Kiln does not know are reported with their lines.
#[test]
fn smolbsd_service_folders_run_as_linux_guests() {
    let tree = tempfile::tempdir().expect("tmp");
    let svc = tree.path().join("service");
    for d in [
        "bozohttpd/etc",
        "bozohttpd/postinst",
        "rescue/etc",
        "common",
    ] {
        std::fs::create_dir_all(svc.join(d)).expect("mkdir");
    }
    // smolBSD's own basicrc, NetBSD commands and all (they fail harmlessly on Linux).
    std::fs::write(
        svc.join("common/basicrc"),
        "export HOME=/\nexport PATH=/sbin:/bin:/usr/sbin:/usr/bin:/usr/pkg/bin:/usr/pkg/sbin\n\
         umask 022\nmount -a 2>/dev/null\n\
         if ifconfig vioif0 >/dev/null 2>&1; then\n\tifconfig vioif0 10.0.2.15/24\n\troute add default 10.0.2.2\nfi\n\
         ifconfig lo0 127.0.0.1 up 2>/dev/null\nexport TERM=dumb\n",
    )
    .expect("basicrc");
    std::fs::write(
        svc.join("bozohttpd/etc/rc"),
        "#!/bin/sh\n. /etc/include/basicrc\n# busybox httpd stands in for bozohttpd\nexec httpd -f -p 80 -h /var/www\n",
    )
    .expect("rc");
    std::fs::write(
        svc.join("bozohttpd/postinst/www.sh"),
        "#!/bin/sh\nmkdir -p var/www\necho 'bozohttpd stand-in' > var/www/index.html\n",
    )
    .expect("hook");
    std::fs::write(
        svc.join("bozohttpd/options.mk"),
        "IMGSIZE=48\nMOUNTRO=y\nWEBROOT=/var/www\n",
    )
    .expect("options.mk");
    std::fs::write(
        svc.join("rescue/etc/rc"),
        "#!/bin/sh\n. /etc/include/basicrc\nexport PS1='smolrescue# '\n/bin/sh -i\n\
         echo rescue-left-the-shell\n. /etc/include/shutdown\necho not-reached\n",
    )
    .expect("rc");
    std::fs::write(svc.join("rescue/options.mk"), "IMGSIZE=32\n").expect("options.mk");

    let d = tempfile::tempdir().expect("tmp");
    let import = |name: &str| {
        let out = tree.path().join(format!("{name}-linux"));
        let mut c = kiln(d.path());
        c.args(["import", "smolbsd", "--guest", "linux"])
            .arg(svc.join(name))
            .arg("-o")
            .arg(&out);
        let o = run(c);
        assert!(o.status.success(), "{}", text(&o));
        (out, text(&o))
    };

    let (bozo, t) = import("bozohttpd");
    assert!(
        t.contains("mapped: options.mk:2: MOUNTRO=y → [image] format = \"erofs\""),
        "{t}"
    );
    assert!(
        t.contains("not mapped: options.mk:1: IMGSIZE=48: an erofs root is as big as its files"),
        "{t}"
    );
    assert!(
        t.contains("not mapped: options.mk:3: WEBROOT=/var/www: Kiln has no key for WEBROOT"),
        "{t}"
    );
    assert!(
        t.contains("/etc/include/shutdown: the service has none"),
        "{t}"
    );
    let (img, m) = build_ok(&bozo);
    assert_eq!(m["initramfs"]["format"], "erofs");
    assert!(reason_of(&m, "/etc/include/basicrc").contains("common/"));
    let mut f = super::lifecycle::Fleet::new();
    let target = img.path().join("img");
    let (_, port) = f.run_detached("bozo-", target.to_str().expect("utf-8"), 80, &[]);
    let page = super::lifecycle::page(port, "");
    assert!(page.contains("bozohttpd stand-in"), "{page}");

    let (rescue, t) = import("rescue");
    assert!(
        t.contains("mapped: options.mk:1: IMGSIZE=32 → [image] format = \"disk\", size_mib = 32"),
        "{t}"
    );
    let (img, m) = build_ok(&rescue);
    assert_eq!(m["initramfs"]["format"], "disk");
    let mut c = kiln(d.path());
    c.args(["run", "--network", "none", "--name", &f.name("smolrescue-")])
        .arg(img.path().join("img"));
    let (status, out) = console_session(
        c,
        "smolrescue# ",
        b"echo answer-$((6*7)) on $(uname -s)\nexit\n",
        std::time::Duration::from_secs(120),
    );
    assert!(status.success(), "{status:?}\n{out}");
    assert!(out.contains("answer-42 on Linux"), "{out}");
    assert!(out.contains("rescue-left-the-shell"), "{out}");
    assert!(
        !out.contains("not-reached"),
        "the shutdown helper did not end rc: {out}"
    );
}
