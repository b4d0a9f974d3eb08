//! Unit tests for recipe parsing and its refusals.

use super::*;
use std::fs;

fn recipe_dir(toml: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    fs::create_dir_all(d.path().join("etc")).expect("mkdir");
    fs::write(d.path().join("etc/rc"), "exec sh\n").expect("rc");
    fs::write(d.path().join("kiln.toml"), toml).expect("toml");
    d
}

fn parse_err(toml: &str) -> (usize, String) {
    let d = recipe_dir(toml);
    match Recipe::load(d.path()) {
        Err(RecipeError::Parse { line, message, .. }) => (line, message),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn minimal_recipe_gets_defaults() {
    let d = recipe_dir("name = \"web\"\n");
    let r = Recipe::load(d.path()).expect("load");
    assert_eq!(r.config.name, "web");
    assert_eq!(r.config.cpus, 1);
    assert_eq!(r.config.memory, 128);
    assert_eq!(r.config.kernel, KernelChoice::Tiny);
    assert_eq!(r.config.ready, Ready::None);
    assert_eq!(r.config.image.compression, Compression::Zstd);
    assert!(r.config.root.busybox);
    assert_eq!(r.config.network.address, "10.0.2.15/24");
}

#[test]
fn full_recipe_parses() {
    let d = recipe_dir(
        r#"
name = "httpd"
description = "busybox httpd"
kernel = "debian:linux-image-6.1.0-56-cloud-amd64"
cmdline = "quiet"
cpus = 2
memory = 64
ports = ["8080:80", "127.0.0.2:5353:53/udp"]
ready = "tcp:80"
ready_timeout = 20
[image]
compression = "xz"
[root]
binaries = ["/bin/true"]
files = ["/etc/hostname:/etc/host-name"]
modules = ["virtio_blk"]
[network]
address = "10.0.2.20/24"
[env]
GREETING = "hi"
"#,
    );
    let r = Recipe::load(d.path()).expect("load");
    let c = &r.config;
    assert_eq!(
        c.kernel,
        KernelChoice::Debian("linux-image-6.1.0-56-cloud-amd64".into())
    );
    assert_eq!(c.cpus, 2);
    assert_eq!(c.ports.len(), 2);
    assert_eq!(c.ports[1].protocol, Protocol::Udp);
    assert_eq!(c.ports[1].host_addr.to_string(), "127.0.0.2");
    assert_eq!(c.ready, Ready::Tcp(80));
    assert_eq!(c.image.compression, Compression::Xz);
    assert_eq!(c.root.binaries[0].get_ref(), "/bin/true");
    assert_eq!(r.line_of(c.root.binaries[0].span().start), 14);
    assert_eq!(c.env["GREETING"], "hi");
}

#[test]
fn missing_kiln_toml_is_refused() {
    let d = tempfile::tempdir().expect("tempdir");
    let e = Recipe::load(d.path()).expect_err("must fail");
    assert!(matches!(e, RecipeError::MissingConfig(_)), "{e}");
    assert!(e.to_string().contains("needs a kiln.toml"), "{e}");
}

#[test]
fn missing_rc_is_refused() {
    let d = recipe_dir("name = \"x\"\n");
    fs::remove_file(d.path().join("etc/rc")).expect("rm");
    let e = Recipe::load(d.path()).expect_err("must fail");
    assert!(e.to_string().contains("etc/rc"), "{e}");
}

#[test]
fn unknown_key_names_line_and_key() {
    let (line, msg) = parse_err("name = \"x\"\nmemroy = 64\n");
    assert_eq!(line, 2);
    assert!(msg.contains("unknown field `memroy`"), "{msg}");
}

#[test]
fn unknown_key_in_table_names_line() {
    let (line, msg) = parse_err("name = \"x\"\n[root]\nbusybox = true\nbinary = []\n");
    assert_eq!(line, 4);
    assert!(msg.contains("binary"), "{msg}");
}

#[test]
fn wrong_type_names_line() {
    let (line, msg) = parse_err("name = \"x\"\n\ncpus = \"two\"\n");
    assert_eq!(line, 3);
    assert!(msg.contains("invalid type"), "{msg}");
}

#[test]
fn missing_name_is_refused() {
    let (_, msg) = parse_err("cpus = 1\n");
    assert!(msg.contains("missing field `name`"), "{msg}");
}

#[test]
fn bad_values_are_refused_with_their_line() {
    let cases = [
        ("name = \"Bad Name\"\n", 1, "name:"),
        ("name = \"x\"\nmemory = 4\n", 2, "out of range"),
        (
            "name = \"x\"\nports = [\"80\"]\n",
            2,
            "expected [HOSTADDR:]",
        ),
        (
            "name = \"x\"\nports = [\"8080:80/sctp\"]\n",
            2,
            "unknown protocol",
        ),
        ("name = \"x\"\nready = \"tcp:http\"\n", 2, "not a TCP port"),
        ("name = \"x\"\nready = \"soon\"\n", 2, "not one of"),
        (
            "name = \"x\"\n[image]\ncompression = \"lz4\"\n",
            3,
            "unknown variant",
        ),
        (
            "name = \"x\"\n[image]\nformat = \"raw\"\n",
            3,
            "not a root format",
        ),
        (
            "name = \"x\"\n[root]\nbinaries = [\"curl\"]\n",
            3,
            "absolute host path",
        ),
        (
            "name = \"x\"\n[network]\naddress = \"10.0.2.15\"\n",
            3,
            "prefix length",
        ),
        (
            "name = \"x\"\n[network]\nmode = \"bridge\"\n",
            3,
            "not one of",
        ),
        ("name = \"x\"\nkernel = \"\"\n", 2, "kernel: empty"),
        (
            "name = \"x\"\n[network]\nnets = [\"back\", \"Front End\"]\n",
            3,
            "network.nets: net name `Front End`",
        ),
    ];
    for (toml, want_line, want_msg) in cases {
        let (line, msg) = parse_err(toml);
        assert!(msg.contains(want_msg), "{toml:?}: {msg}");
        assert_eq!(line, want_line, "{toml:?}: {msg}");
    }
}

#[test]
fn missing_kernel_file_is_refused() {
    let d = recipe_dir("name = \"x\"\nkernel = \"vmlinuz\"\n");
    let e = Recipe::load(d.path()).expect_err("must fail");
    let s = e.to_string();
    assert!(s.contains("vmlinuz") && s.contains("kiln.toml:2"), "{s}");
}

#[test]
fn error_display_has_file_line_column() {
    let d = recipe_dir("name = \"x\"\nbogus = 1\n");
    let e = Recipe::load(d.path()).expect_err("must fail");
    let s = e.to_string();
    assert!(s.contains("kiln.toml:2:1:"), "{s}");
}

#[test]
fn hooks_are_sorted_sh_files() {
    let d = recipe_dir("name = \"x\"\n");
    fs::create_dir(d.path().join("postinst")).expect("mkdir");
    for n in ["20-b.sh", "10-a.sh", "README"] {
        fs::write(d.path().join("postinst").join(n), "true\n").expect("write");
    }
    let r = Recipe::load(d.path()).expect("load");
    let names: Vec<_> = r
        .hooks()
        .expect("hooks")
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["10-a.sh", "20-b.sh"]);
}

#[test]
fn port_forward_round_trips() {
    let p: PortForward = "0.0.0.0:8080:80/tcp".parse().expect("parse");
    assert_eq!(p.to_string(), "0.0.0.0:8080:80/tcp");
    let p: PortForward = "2222:22".parse().expect("parse");
    assert_eq!(p.host_addr, std::net::Ipv4Addr::LOCALHOST);
    assert!("0:80".parse::<PortForward>().is_err());
    assert!("1:2:3:4".parse::<PortForward>().is_err());
}

#[test]
fn packages_and_index_parse() {
    let d = recipe_dir(
        "name = \"web\"\npackages = [\"nginx-light\", \"libc6\"]\nindex = \"files.txt\"\n",
    );
    fs::write(d.path().join("files.txt"), "/usr/sbin/nginx\n").expect("index");
    let r = Recipe::load(d.path()).expect("load");
    assert_eq!(r.config.package_names(), ["nginx-light", "libc6"]);
    assert_eq!(r.index_path(), Some(r.dir.join("files.txt")));
}

#[test]
fn bad_packages_and_index_are_refused_with_their_line() {
    let (line, msg) =
        parse_err("name = \"web\"\npackages = [\n  \"nginx-light\",\n  \"Nginx Light\",\n]\n");
    assert_eq!(line, 4, "{msg}");
    assert!(
        msg.contains("`Nginx Light` is not a Debian package name"),
        "{msg}"
    );
    let (line, msg) = parse_err("name = \"web\"\nindex = \"files.txt\"\n");
    assert_eq!(line, 2);
    assert!(msg.contains("but the recipe has neither"), "{msg}");

    let d = recipe_dir("name = \"web\"\npackages = [\"nginx-light\"]\nindex = \"nope.txt\"\n");
    match Recipe::load(d.path()) {
        Err(e @ RecipeError::MissingFile { .. }) => {
            let t = e.to_string();
            assert!(t.contains("nope.txt") && t.contains("kiln.toml:3"), "{t}");
        }
        other => panic!("expected a missing index, got {other:?}"),
    }
}

#[test]
fn kernel_override_parses_like_the_key() {
    assert_eq!(KernelChoice::parse_override("tiny"), Ok(KernelChoice::Tiny));
    assert_eq!(
        KernelChoice::parse_override("debian"),
        Ok(KernelChoice::Debian("linux-image-cloud-amd64".into()))
    );
    assert!(matches!(
        KernelChoice::parse_override("/boot/vmlinuz"),
        Ok(KernelChoice::File(_))
    ));
    assert!(KernelChoice::parse_override("").is_err());
    // Quotes, backslashes and control characters reach the key as they are (a file name).
    for name in ["/k/a\"b", "/k/a\\b", "/k/tab\tnl\n", "/k/\u{7f}"] {
        match KernelChoice::parse_override(name) {
            Ok(KernelChoice::File(f)) => assert_eq!(f.get_ref(), name),
            other => panic!("{name:?}: {other:?}"),
        }
    }
    // 300 quotes in a row (`make fuzz` found toml's string writer overflowing on them).
    let quotes = "\"".repeat(300);
    assert!(KernelChoice::parse_override(&quotes).is_ok());
}

#[test]
fn kernel_fragments_need_the_tiny_kernel() {
    let (line, msg) =
        parse_err("name = \"x\"\nkernel = \"debian\"\nkernel_fragments = [\"ufs.config\"]\n");
    assert_eq!(line, 3);
    assert!(msg.contains("only the tiny kernel"), "{msg}");
    // The tiny kernel is the default: fragments need no `kernel` key.
    for text in [
        "name = \"x\"\nkernel_fragments = [\"ufs.config\"]\n",
        "name = \"x\"\nkernel = \"tiny\"\nkernel_fragments = [\"ufs.config\"]\n",
    ] {
        let d = recipe_dir(text);
        fs::write(d.path().join("ufs.config"), "CONFIG_UFS_FS=y\n").expect("fragment");
        let r = Recipe::load(d.path()).expect("load");
        assert_eq!(r.config.kernel, KernelChoice::Tiny);
        assert_eq!(r.config.kernel_fragments.len(), 1);
    }
}

#[test]
fn missing_kernel_fragment_is_refused_with_its_line() {
    let d = recipe_dir("name = \"x\"\nkernel_fragments = [\"nope.config\"]\n");
    match Recipe::load(d.path()) {
        Err(e @ RecipeError::MissingFile { .. }) => {
            let s = e.to_string();
            assert!(
                s.contains("nope.config") && s.contains("kiln.toml:2") && !s.contains("os error"),
                "{s}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn disk_format_and_its_size() {
    let d = recipe_dir("name = \"x\"\n[image]\nformat = \"disk\"\nsize_mib = 64\n");
    let r = Recipe::load(d.path()).expect("load");
    assert_eq!(r.config.image.format, "disk");
    assert_eq!(r.config.image.size_mib, Some(64));
    let (line, msg) = parse_err("name = \"x\"\n[image]\nformat = \"vhdx\"\n");
    assert_eq!(line, 3);
    assert!(msg.contains("`vhdx` is not a root format"), "{msg}");
    for f in ["erofs", "squashfs", "qcow2", "iso"] {
        let d = recipe_dir(&format!("name = \"x\"\n[image]\nformat = \"{f}\"\n"));
        assert_eq!(Recipe::load(d.path()).expect("load").config.image.format, f);
    }
    let (line, msg) =
        parse_err("name = \"x\"\nkernel = \"debian\"\n[image]\nformat = \"squashfs\"\n");
    assert_eq!(line, 4);
    assert!(msg.contains("has squashfs only as a module"), "{msg}");
    let (line, msg) = parse_err("name = \"x\"\n[image]\nformat = \"erofs\"\nsize_mib = 64\n");
    assert_eq!(line, 4);
    assert!(msg.contains("only a disk image has a size"), "{msg}");
    let (line, msg) = parse_err("name = \"x\"\n[image]\nformat = \"disk\"\ncompression = \"xz\"\n");
    assert_eq!(line, 4);
    assert!(
        msg.contains("image.compression: format = \"disk\" is not an initramfs"),
        "{msg}"
    );
    let (line, msg) = parse_err("name = \"x\"\n[image]\nformat = \"disk\"\nsize_mib = 4\n");
    assert_eq!(line, 4);
    assert!(msg.contains("out of range"), "{msg}");
    let (line, msg) = parse_err("name = \"x\"\n[image]\nsize_mib = 64\n");
    assert_eq!(line, 3);
    assert!(msg.contains("only a disk image has a size"), "{msg}");
}

#[test]
fn bsd_guests_come_from_sets_and_a_kernel_file() {
    let d = recipe_dir(
        "name = \"nb\"\nguest = \"netbsd\"\nkernel = \"netbsd-SMOL\"\nsets = [\"sets/rescue.tgz\"]\n",
    );
    std::fs::write(d.path().join("netbsd-SMOL"), b"k").expect("kernel");
    let err = Recipe::load(d.path()).expect_err("no set yet").to_string();
    assert!(
        err.contains("sets/rescue.tgz") && err.contains("kiln.toml:4"),
        "{err}"
    );
    std::fs::create_dir_all(d.path().join("sets")).expect("mkdir");
    std::fs::write(d.path().join("sets/rescue.tgz"), b"t").expect("set");
    let r = Recipe::load(d.path()).expect("load");
    assert_eq!(r.config.guest, Guest::Netbsd);
    assert_eq!(r.config.image.format, "disk", "a BSD root is a disk");

    for (text, line, needle) in [
        ("name = \"x\"\nsets = [\"a.tgz\"]\n", 2, "only a BSD guest"),
        ("name = \"x\"\nguest = \"netbsd\"\nkernel = \"k\"\n", 2, "list the sets"),
        ("name = \"x\"\nguest = \"netbsd\"\nsets = [\"a.tgz\"]\n", 2, "kernel you supply"),
        (
            "name = \"x\"\nguest = \"freebsd\"\nkernel = \"tiny\"\nsets = [\"a.tgz\"]\n",
            3,
            "kernel you supply",
        ),
        (
            "name = \"x\"\nguest = \"netbsd\"\nkernel = \"k\"\nsets = [\"a\"]\npackages = [\"nginx\"]\n",
            5,
            "packages: a netbsd guest has no Linux userland",
        ),
        (
            "name = \"x\"\nguest = \"netbsd\"\nkernel = \"k\"\nsets = [\"a\"]\n[root]\nbinaries = [\"/bin/true\"]\n",
            6,
            "binaries: a netbsd guest",
        ),
        (
            "name = \"x\"\nguest = \"freebsd\"\nkernel = \"k\"\nsets = [\"a\"]\n[root]\ndropbear = true\n",
            6,
            "dropbear: a freebsd guest",
        ),
        (
            "name = \"x\"\nguest = \"netbsd\"\nkernel = \"k\"\nsets = [\"a\"]\n[image]\nformat = \"initramfs\"\n",
            6,
            "FFS disk image",
        ),
        ("name = \"x\"\nguest = \"plan9\"\n", 2, "unknown variant `plan9`"),
    ] {
        let (l, msg) = parse_err(text);
        assert_eq!(l, line, "{text}: {msg}");
        assert!(msg.contains(needle), "{text}: {msg}");
    }
}

#[test]
fn a_byte_order_mark_is_refused() {
    let (line, msg) = parse_err("\u{feff}name = \"x\"\n");
    assert_eq!(line, 1);
    assert!(msg.contains("remove the byte-order mark"), "{msg}");
}

#[test]
fn a_cmdline_too_long_for_the_kernel_is_refused_with_its_line() {
    let max = KERNEL_CMDLINE_MAX - KILN_CMDLINE_RESERVE;
    let ok = "a".repeat(max);
    let d = recipe_dir(&format!("name = \"x\"\ncmdline = \"{ok}\"\n"));
    Recipe::load(d.path()).expect("the longest cmdline allowed");
    let (line, msg) = parse_err(&format!("name = \"x\"\ncmdline = \"{ok}b\"\n"));
    assert_eq!(line, 2);
    assert!(
        msg.starts_with("cmdline: 1537 bytes is too long")
            && msg.contains("2048")
            && msg.contains("Kiln keeps 512")
            && msg.contains("at most 1536 bytes"),
        "{msg}"
    );
    let (line, msg) = parse_err("name = \"x\"\ncmdline = \"\"\"\nquiet\nloglevel=7\"\"\"\n");
    assert_eq!(line, 2);
    assert!(msg.contains("control character"), "{msg}");
}

#[test]
fn env_values_and_the_whole_env_are_bounded() {
    let big = "v".repeat(ENV_VALUE_MAX + 1);
    let (line, msg) = parse_err(&format!(
        "name = \"x\"\n[env]\nA = \"1\"\nBIG = \"{big}\"\n"
    ));
    assert_eq!(line, 4);
    assert!(
        msg.contains("env.BIG") && msg.contains("32768 bytes (32 KiB) per variable"),
        "{msg}"
    );
    let part = "v".repeat(ENV_VALUE_MAX - 10);
    let (line, msg) = parse_err(&format!(
        "name = \"x\"\n\n[env]\nA = \"{part}\"\nB = \"{part}\"\nC = \"{part}\"\n"
    ));
    assert_eq!(line, 3, "the [env] header");
    assert!(msg.contains("at most 65536 bytes (64 KiB)"), "{msg}");
    let (line, msg) = parse_err("name = \"x\"\n[env]\nA = \"a\\nrc=/bin/evil\"\n");
    assert_eq!(line, 3);
    assert!(msg.contains("env.A") && msg.contains("newline"), "{msg}");
    let d = recipe_dir(&format!(
        "name = \"x\"\n[env]\nA = \"{part}\"\nB = \"{part}\"\n"
    ));
    Recipe::load(d.path()).expect("two large values within the limits");
}

#[test]
fn hook_timeout_has_a_default_and_a_range() {
    let d = recipe_dir("name = \"x\"\n");
    let r = Recipe::load(d.path()).expect("load");
    assert_eq!(r.config.hook_timeout, 300);
    let d = recipe_dir("name = \"x\"\nhook_timeout = 2\n");
    assert_eq!(Recipe::load(d.path()).expect("load").config.hook_timeout, 2);
    for bad in ["0", "86401", "-1"] {
        let (line, msg) = parse_err(&format!("name = \"x\"\nhook_timeout = {bad}\n"));
        assert_eq!(line, 2, "{bad}");
        assert!(
            msg.contains("hook_timeout (seconds)") && msg.contains("1–86400"),
            "{msg}"
        );
    }
}

#[test]
fn hidden_by_mount_knows_init_mounts_and_var_run() {
    assert_eq!(hidden_by_mount("/run/x.pid"), Some(("/run", "tmpfs")));
    assert_eq!(hidden_by_mount("/var/run/x.pid"), Some(("/run", "tmpfs")));
    assert_eq!(hidden_by_mount("/tmp/./a/b"), Some(("/tmp", "tmpfs")));
    assert_eq!(hidden_by_mount("/etc/../dev/x"), Some(("/dev", "devtmpfs")));
    assert_eq!(
        hidden_by_mount("/tmp"),
        None,
        "the mount point itself is fine"
    );
    assert_eq!(hidden_by_mount("/etc/tmp/x"), None);
    assert_eq!(hidden_by_mount("/runner/x"), None);
}

#[test]
fn root_files_under_init_mounts_are_refused_with_their_line() {
    let (line, msg) =
        parse_err("name = \"x\"\n[root]\nfiles = [\"/etc/hostname:/run/app/host\"]\n");
    assert_eq!(line, 3);
    assert!(
        msg.contains("/run/app/host would be hidden in the guest")
            && msg.contains("fresh tmpfs on /run"),
        "{msg}"
    );
    let (line, msg) = parse_err("name = \"x\"\n[root]\nfiles = [\"/tmp/x\"]\n");
    assert_eq!(line, 3);
    assert!(msg.contains("root.files: `/tmp/x`"), "{msg}");
    let d = recipe_dir("name = \"x\"\n[root]\nfiles = [\"/etc/hostname:/etc/h\"]\n");
    Recipe::load(d.path()).expect("elsewhere is fine");
}

fn refused(d: &tempfile::TempDir) -> String {
    match Recipe::load(d.path()) {
        Err(e @ RecipeError::Refused { .. }) => e.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn files_overlay_under_init_mounts_is_refused() {
    for (rel, guest) in [
        ("files/run/app/app.conf", "/run/app"),
        ("files/var/run/app.pid", "/var/run/app.pid"),
        ("files/tmp/seed", "/tmp/seed"),
    ] {
        let d = recipe_dir("name = \"x\"\n");
        let p = d.path().join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, "x").expect("w");
        let s = refused(&d);
        assert!(
            s.contains(&format!("{guest} would be hidden in the guest")),
            "{rel}: {s}"
        );
    }
    // The same under common/ (installed as /etc/include) is fine.
    let d = recipe_dir("name = \"x\"\n");
    fs::create_dir_all(d.path().join("common/tmp")).expect("mkdir");
    fs::write(d.path().join("common/tmp/x"), "x").expect("w");
    fs::create_dir_all(d.path().join("files/tmp")).expect("mkdir");
    Recipe::load(d.path()).expect("an empty files/tmp and common/tmp are fine");
}

#[test]
fn special_files_in_the_recipe_are_refused() {
    let d = recipe_dir("name = \"x\"\n");
    fs::create_dir_all(d.path().join("files/etc")).expect("mkdir");
    let fifo = d.path().join("files/etc/pipe");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(st.success());
    let s = refused(&d);
    assert!(s.contains("files/etc/pipe: is a FIFO"), "{s}");
}

#[test]
fn rc_and_overlays_may_not_lead_out_of_the_recipe() {
    use std::os::unix::fs::symlink;
    // etc/rc linked to a host file: its bytes would be in the image.
    let d = recipe_dir("name = \"x\"\n");
    let host = tempfile::NamedTempFile::new().expect("tmp");
    fs::remove_file(d.path().join("etc/rc")).expect("rm");
    symlink(host.path(), d.path().join("etc/rc")).expect("ln");
    let s = refused(&d);
    assert!(
        s.contains("etc/rc: leads out of the recipe folder")
            && s.contains("copy it into the recipe"),
        "{s}"
    );
    // ... also through a linked folder.
    let d = recipe_dir("name = \"x\"\n");
    let hostdir = tempfile::tempdir().expect("tmp");
    fs::write(hostdir.path().join("rc"), "exec sh\n").expect("w");
    fs::remove_dir_all(d.path().join("etc")).expect("rm");
    symlink(hostdir.path(), d.path().join("etc")).expect("ln");
    assert!(refused(&d).contains("leads out of the recipe folder"));
    // A link within the recipe is fine.
    let d = recipe_dir("name = \"x\"\n");
    fs::rename(d.path().join("etc/rc"), d.path().join("rc.sh")).expect("mv");
    symlink("../rc.sh", d.path().join("etc/rc")).expect("ln");
    Recipe::load(d.path()).expect("a link inside the recipe");
    // Dangling, looping, a folder.
    let d = recipe_dir("name = \"x\"\n");
    fs::remove_file(d.path().join("etc/rc")).expect("rm");
    symlink("nowhere", d.path().join("etc/rc")).expect("ln");
    assert!(refused(&d).contains("etc/rc: is a symlink to nowhere, which does not exist"));
    fs::remove_file(d.path().join("etc/rc")).expect("rm");
    symlink("rc", d.path().join("etc/rc")).expect("ln");
    assert!(refused(&d).contains("etc/rc: is a symlink loop"));
    fs::remove_file(d.path().join("etc/rc")).expect("rm");
    fs::create_dir(d.path().join("etc/rc")).expect("mkdir");
    assert!(refused(&d).contains("etc/rc: is a folder"));
    // files/ linked to a host folder would copy it into the image; a loop would be skipped.
    let d = recipe_dir("name = \"x\"\n");
    symlink(hostdir.path(), d.path().join("files")).expect("ln");
    assert!(refused(&d).contains("files: leads out of the recipe folder"));
    fs::remove_file(d.path().join("files")).expect("rm");
    symlink("files", d.path().join("files")).expect("ln");
    assert!(refused(&d).contains("files: is a symlink loop"));
    fs::remove_file(d.path().join("files")).expect("rm");
    fs::write(d.path().join("files"), "").expect("w");
    assert!(refused(&d).contains("files: not a folder"));
}

#[test]
fn io_errors_say_the_os_error_once() {
    use std::error::Error;
    let d = recipe_dir("name = \"x\"\n");
    fs::write(d.path().join("postinst"), "").expect("w");
    let r = Recipe::load(d.path()).expect("load");
    let e = r.hooks().expect_err("postinst is a file");
    let s = e.to_string();
    assert!(s.contains("postinst: Not a directory"), "{s}");
    assert!(
        e.source().is_none(),
        "the OS error is in the message already"
    );
}

#[test]
fn a_template_is_saved_at_the_ready_point_only() {
    let d = recipe_dir("name = \"web\"\n[template]\nat = \"ready\"\n");
    let r = Recipe::load(d.path()).expect("load");
    assert_eq!(r.config.template.map(|t| t.at), Some("ready".to_string()));
    assert!(Recipe::load(recipe_dir("name = \"web\"\n").path())
        .expect("load")
        .config
        .template
        .is_none());
    let (line, msg) = parse_err("name = \"web\"\n[template]\nat = \"boot\"\n");
    assert_eq!(line, 3, "{msg}");
    assert!(msg.contains("use at = \"ready\""), "{msg}");
    let (line, msg) = parse_err("name = \"web\"\n[template]\nwhen = \"ready\"\n");
    assert_eq!(line, 3, "{msg}");
}

#[test]
fn applets_ask_for_kilns_busybox_and_need_busybox() {
    let r = Recipe::load(recipe_dir("name = \"web\"\n[root]\napplets = [\"httpd\"]\n").path())
        .expect("load");
    let applets: Vec<String> = r
        .config
        .root
        .applets
        .expect("applets")
        .iter()
        .map(|a| a.get_ref().clone())
        .collect();
    assert_eq!(applets, ["httpd"]);
    assert!(Recipe::load(recipe_dir("name = \"web\"\n").path())
        .expect("load")
        .config
        .root
        .applets
        .is_none());
    let (line, msg) = parse_err("name = \"web\"\n[root]\nbusybox = false\napplets = []\n");
    assert_eq!(line, 4, "{msg}");
    assert!(msg.contains("busybox = false installs none"), "{msg}");
}

#[test]
fn dropbear_is_kilns_own_when_asked() {
    let load = |text: &str| Recipe::load(recipe_dir(text).path()).expect("load");
    assert!(
        load("name = \"j\"\n[root]\ndropbear = true\n")
            .config
            .root
            .dropbear
    );
    assert!(!load("name = \"j\"\n").config.root.dropbear);
    let (line, msg) = parse_err("name = \"j\"\n[root]\ndropbear = \"yes\"\n");
    assert_eq!(line, 3, "{msg}");
}
