//! Kiln's own dropbear: one static musl binary for `[root] dropbear = true`.
//!
//! Debian's dropbear-bin links libtomcrypt, libtommath, libgmp (through
//! libtomcrypt), libcrypt, zlib and glibc: 2.3 MB of libraries for a 176 kB
//! server. Built from Debian's source tarball ([`TARBALL`], sha256 pinned) with
//! its bundled libtom and musl-gcc, `dropbearmulti` holds the server,
//! `dropbearkey` and `scp` (OpenSSH's classic scp, which `scp -O` runs in the
//! guest) in 355 kB with nothing to load.
//!
//! Debian's security fixes that touch the server are applied ([`PATCHES`]).
//! Debian's musl has no `crypt()`, so the server has no password login: keys
//! only, which is how Kiln's sshd recipe runs it anyway (`-s`, accepted as a
//! no-op by Kiln's patch). It runs the
//! SFTP subsystem as `/usr/lib/sftp-server`, where Debian's dropbear looks.
//! zlib compression, lastlog, utmp and wtmp are left out (an image has none of
//! their files); dropbear logs to stderr with `-E`, which is the console.

use crate::build::{Built, Product};
use crate::UserlandError;

/// The dropbear version built (Debian 12's).
pub const VERSION: &str = "2022.83";
/// Debian's source tarball of that version.
pub const TARBALL: &str = "dropbear_2022.83.orig.tar.bz2";
/// Its sha256: a download that differs is refused.
pub const TARBALL_SHA256: &str = "bc5a121ffbc94b5171ad5ebe01be42746d50aa797c9549a4639894a16749443b";
/// The binary package whose mirror directory holds the tarball.
pub const MIRROR_PACKAGE: &str = "dropbear-bin";
/// Bump when the build steps change in a way the inputs below do not show.
const BUILD_VERSION: u32 = 1;

/// Debian's patches (from dropbear 2022.83-1+deb12u3) that fix the server, then Kiln's, in
/// order.
pub const PATCHES: &[(&str, &str)] = &[
    // Terrapin: strict key exchange.
    (
        "CVE-2023-48795.patch",
        include_str!("../patches/dropbear/CVE-2023-48795.patch"),
    ),
    // `-k` keepalives were ignored when remote forwarding is off.
    (
        "fix-noremotetcp-behavior.patch",
        include_str!("../patches/dropbear/fix-noremotetcp-behavior.patch"),
    ),
    // `-s` (no password logins), which recipes written for Debian's dropbear pass, is
    // accepted when password login is not built at all.
    (
        "kiln-accept-s-without-password-auth.patch",
        include_str!("../patches/dropbear/kiln-accept-s-without-password-auth.patch"),
    ),
];

/// `localoptions.h`: the compile-time settings that differ from dropbear's defaults.
pub const LOCAL_OPTIONS: &str = "\
/* Kiln: Debian's musl has no crypt(); key login only. */
#define DROPBEAR_SVR_PASSWORD_AUTH 0
/* Where Debian's dropbear runs the SFTP subsystem from. */
#define SFTPSERVER_PATH \"/usr/lib/sftp-server\"
";

/// `./configure`'s arguments.
const CONFIGURE: &[&str] = &[
    "--enable-static",
    "--enable-bundled-libtom",
    "--disable-zlib",
    "--disable-lastlog",
    "--disable-utmp",
    "--disable-utmpx",
    "--disable-wtmp",
    "--disable-wtmpx",
    "--disable-pututline",
    "--disable-pututxline",
];

/// The programs in the multi-call binary, each with the guest path of its link.
pub const PROGRAMS: &[(&str, &str)] = &[
    ("dropbear", "/usr/sbin/dropbear"),
    ("dropbearkey", "/usr/bin/dropbearkey"),
    ("scp", "/usr/bin/scp"),
];

/// Where the multi-call binary goes in the guest.
pub const BINARY_PATH: &str = "/usr/sbin/dropbearmulti";

pub(crate) const DROPBEAR: Product = Product {
    name: "dropbear",
    tag: "db",
    binary: "dropbearmulti",
    version: VERSION,
    tarball: TARBALL,
    tarball_sha256: TARBALL_SHA256,
    mirror_package: MIRROR_PACKAGE,
    build_version: BUILD_VERSION,
    tools: &["patch"],
};

/// The settings a build is made of, as recorded: patches, options, configure arguments and
/// programs.
pub fn settings() -> Vec<String> {
    let mut out: Vec<String> = PATCHES.iter().map(|(n, _)| format!("patch {n}")).collect();
    out.extend(
        LOCAL_OPTIONS
            .lines()
            .filter(|l| l.starts_with("#define"))
            .map(str::to_string),
    );
    out.extend(CONFIGURE.iter().map(|a| a.to_string()));
    out.extend(PROGRAMS.iter().map(|(p, _)| format!("program {p}")));
    out
}

/// The cache key over the tarball, the patches' text and the settings.
pub fn cache_key() -> String {
    key_of(PATCHES, LOCAL_OPTIONS, &settings())
}

fn key_of(patches: &[(&str, &str)], local_options: &str, settings: &[String]) -> String {
    let patches = patches
        .iter()
        .map(|(name, text)| format!("{name}\n{}\n{text}", text.len()));
    let options = format!("{}\n{local_options}", local_options.len());
    let settings = settings.iter().map(|s| format!("{s}\n"));
    DROPBEAR.key(patches.chain([options]).chain(settings))
}

/// Build (or find in `<cache>/dropbear/`) Kiln's dropbear. `debs` fetches the source
/// tarball; `progress` hears each step's name.
pub fn build(
    cache_root: &std::path::Path,
    jobs: usize,
    debs: &kiln_debpkg::Cache,
    progress: &dyn Fn(&str),
) -> Result<Built, UserlandError> {
    let hash = cache_key();
    DROPBEAR.cached(cache_root, debs, progress, &hash, settings(), |ws| {
        for (name, text) in PATCHES {
            let mut patch = std::process::Command::new("patch");
            patch
                .current_dir(&ws.src)
                .args(["-p1", "--forward", "--batch"])
                .stdin(std::process::Stdio::piped());
            ws.step
                .run_with_input(&format!("patch {name}"), &mut patch, text)?;
        }
        let options = ws.src.join("localoptions.h");
        std::fs::write(&options, LOCAL_OPTIONS).map_err(crate::io_err("write", &options))?;
        progress("dropbear: configuring");
        ws.step.run("configure", &mut ws.configure(CONFIGURE))?;
        progress("dropbear: compiling");
        let programs: Vec<&str> = PROGRAMS.iter().map(|(p, _)| *p).collect();
        let programs = format!("PROGRAMS={}", programs.join(" "));
        let jobs = format!("-j{}", jobs.max(1));
        ws.step
            .run("make", &mut ws.make(&[&jobs, "MULTI=1", &programs]))?;
        ws.strip("dropbearmulti")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_covers_every_setting() {
        let s = settings();
        assert!(s.contains(&"patch CVE-2023-48795.patch".to_string()));
        assert!(s.contains(&"#define DROPBEAR_SVR_PASSWORD_AUTH 0".to_string()));
        assert!(s.contains(&"--disable-zlib".to_string()));
        assert!(s.contains(&"program scp".to_string()));
        let key = cache_key();
        assert_eq!(key.len(), 64);
        // A patch's text, an option's value or a setting makes another build.
        let mut patched = PATCHES.to_vec();
        patched[0].1 = "--- a/x\n+++ b/x\n";
        assert_ne!(key, key_of(&patched, LOCAL_OPTIONS, &s));
        let options = LOCAL_OPTIONS.replace("AUTH 0", "AUTH 1");
        assert_ne!(key, key_of(PATCHES, &options, &s));
        assert_ne!(key, key_of(PATCHES, LOCAL_OPTIONS, &s[1..]));
        assert_eq!(key, key_of(PATCHES, LOCAL_OPTIONS, &s));
    }

    #[test]
    fn the_patches_are_unified_diffs_of_the_source() {
        for (name, text) in PATCHES {
            assert!(
                text.lines().any(|l| l.starts_with("--- a/")),
                "{name} has no `--- a/` header"
            );
            assert!(name.ends_with(".patch"), "{name}");
        }
    }

    #[test]
    fn each_program_has_one_guest_path() {
        let mut paths: Vec<&str> = PROGRAMS.iter().map(|(_, p)| *p).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), PROGRAMS.len());
        assert!(paths.iter().all(|p| p.starts_with("/usr/")));
    }
}
