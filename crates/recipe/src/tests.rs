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
            "name = \"x\"\n[image]\nformat = \"qcow2\"\n",
            3,
            "not supported",
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
    assert!(msg.contains("lists no packages"), "{msg}");

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
        let r = Recipe::load(d.path()).expect("load");
        assert_eq!(r.config.kernel, KernelChoice::Tiny);
        assert_eq!(r.config.kernel_fragments.len(), 1);
    }
}

#[test]
fn disk_format_and_its_size() {
    let d = recipe_dir("name = \"x\"\n[image]\nformat = \"disk\"\nsize_mib = 64\n");
    let r = Recipe::load(d.path()).expect("load");
    assert_eq!(r.config.image.format, "disk");
    assert_eq!(r.config.image.size_mib, Some(64));
    let (line, msg) = parse_err("name = \"x\"\n[image]\nformat = \"iso\"\n");
    assert_eq!(line, 3);
    assert!(msg.contains("`iso` is not supported"), "{msg}");
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
