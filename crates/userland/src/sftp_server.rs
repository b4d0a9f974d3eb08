//! Kiln's own OpenSSH sftp-server: static musl, for `[root] dropbear = true`.
//!
//! dropbear serves SFTP (how today's `scp` and `sftp` move files) by running
//! `/usr/lib/sftp-server`, which it does not have; Debian's is OpenSSH's and
//! links glibc (1.9 MB). Built from Debian's source tarball ([`TARBALL`],
//! sha256 pinned) with musl-gcc, without OpenSSL or zlib (sftp-server uses
//! neither), it is one static 256 kB binary, so an image with Kiln's dropbear
//! needs no C library at all. Debian's patches to OpenSSH do not touch
//! sftp-server's code and are not applied.

use crate::build::{Built, Product};
use crate::UserlandError;

/// The OpenSSH version built (Debian 12's).
pub const VERSION: &str = "9.2p1";
/// Debian's source tarball of that version.
pub const TARBALL: &str = "openssh_9.2p1.orig.tar.gz";
/// Its sha256: a download that differs is refused.
pub const TARBALL_SHA256: &str = "3f66dbf1655fb45f50e1c56da62ab01218c228807b21338d634ebcdf9d71cf46";
/// The binary package whose mirror directory holds the tarball.
pub const MIRROR_PACKAGE: &str = "openssh-sftp-server";
/// Bump when the build steps change in a way [`CONFIGURE`] does not show.
const BUILD_VERSION: u32 = 1;

/// Where dropbear runs it from (its `SFTPSERVER_PATH`, as Debian's dropbear has it).
pub const GUEST_PATH: &str = "/usr/lib/sftp-server";

/// `./configure`'s arguments: nothing sftp-server does not use.
pub const CONFIGURE: &[&str] = &[
    "--without-openssl",
    "--without-zlib",
    "--without-pam",
    "--without-selinux",
    "--without-libedit",
    "--without-kerberos5",
    "--without-security-key-builtin",
    "--disable-lastlog",
    "--disable-utmp",
    "--disable-utmpx",
    "--disable-wtmp",
    "--disable-wtmpx",
];

pub(crate) const SFTP_SERVER: Product = Product {
    name: "sftp-server",
    tag: "sf",
    binary: "sftp-server",
    version: VERSION,
    tarball: TARBALL,
    tarball_sha256: TARBALL_SHA256,
    mirror_package: MIRROR_PACKAGE,
    build_version: BUILD_VERSION,
    tools: &[],
};

/// The cache key over the tarball, the configure arguments and the build steps' version.
pub fn cache_key() -> String {
    key_of(CONFIGURE)
}

fn key_of(configure: &[&str]) -> String {
    SFTP_SERVER.key(configure.iter().map(|a| format!("{a}\n")))
}

/// Build (or find in `<cache>/sftp-server/`) Kiln's sftp-server. `debs` fetches the source
/// tarball; `progress` hears each step's name.
pub fn build(
    cache_root: &std::path::Path,
    jobs: usize,
    debs: &kiln_debpkg::Cache,
    progress: &dyn Fn(&str),
) -> Result<Built, UserlandError> {
    let settings = CONFIGURE.iter().map(|a| a.to_string()).collect();
    SFTP_SERVER.cached(cache_root, debs, progress, &cache_key(), settings, |ws| {
        progress("sftp-server: configuring");
        ws.step.run("configure", &mut ws.configure(CONFIGURE))?;
        progress("sftp-server: compiling");
        let jobs = format!("-j{}", jobs.max(1));
        ws.step.run("make", &mut ws.make(&[&jobs, "sftp-server"]))?;
        ws.strip("sftp-server")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_follows_the_configure_arguments() {
        assert_eq!(cache_key(), key_of(CONFIGURE));
        assert_ne!(cache_key(), key_of(&CONFIGURE[1..]));
        assert!(CONFIGURE.contains(&"--without-openssl"));
    }
}
