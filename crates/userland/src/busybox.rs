//! Kiln's own busybox: a static musl build with only the applets a recipe asks for.
//!
//! Debian's busybox-static has 269 applets and weighs 1.98 MB (1.02 MB of a
//! zstd initramfs); most services run a shell and a handful of tools. A
//! recipe that lists `[root] applets = ["httpd"]` gets busybox built from
//! Debian's source tarball ([`TARBALL`], fetched from the mirror apt uses and
//! checked against [`TARBALL_SHA256`]) with `musl-gcc`, static and stripped,
//! holding Kiln's [`CORE_APPLETS`] plus the listed ones (an entry may also be
//! a raw `CONFIG_*` symbol, for a feature of an applet).
//!
//! [`build`] runs `make allnoconfig`, turns on the requested symbols, runs
//! `make oldconfig`, checks that each one stayed on (an applet busybox does
//! not have is named in the error), compiles and stores the binary in
//! `<cache>/busybox/bb-<hash16>/`, keyed by the tarball and the symbols.
//! The build folder is a temp folder renamed into place: an entry is complete
//! or absent. `SOURCE_DATE_EPOCH` is fixed, so the binary is reproducible.

use std::path::PathBuf;
use std::process::Stdio;

use kiln_kernel::tiny::{parse_dot_config, FragmentOption, OptionValue};

use crate::build::{Built, Product};
use crate::{io_err, UserlandError};

/// The busybox version built.
pub const VERSION: &str = "1.35.0";
/// Debian's source tarball of that version.
pub const TARBALL: &str = "busybox_1.35.0.orig.tar.bz2";
/// Its sha256: a download that differs is refused.
pub const TARBALL_SHA256: &str = "faeeb244c35a348a334f4a59e44626ee870fb07b6884d68c10ae8bc19f83a694";
/// The binary package whose mirror directory holds the tarball.
pub const MIRROR_PACKAGE: &str = "busybox-static";
/// Bump when the build steps change in a way the symbols do not show.
const BUILD_VERSION: u32 = 1;

/// Applets every Kiln busybox has: a shell for etc/rc and `kiln exec`, and the tools
/// scripts and people reach for first.
pub const CORE_APPLETS: &[&str] = &[
    "sh",
    "test",
    "[",
    "[[",
    "echo",
    "printf",
    "true",
    "false",
    "env",
    "expr",
    "sleep",
    "timeout",
    "xargs",
    "seq",
    "basename",
    "dirname",
    "readlink",
    "realpath",
    "which",
    "tee",
    "id",
    "date",
    "uname",
    "hostname",
    "yes",
    "cat",
    "ls",
    "cp",
    "mv",
    "rm",
    "ln",
    "mkdir",
    "rmdir",
    "chmod",
    "chown",
    "touch",
    "stat",
    "du",
    "df",
    "find",
    "head",
    "tail",
    "wc",
    "sort",
    "uniq",
    "cut",
    "tr",
    "grep",
    "egrep",
    "fgrep",
    "sed",
    "awk",
    "od",
    "md5sum",
    "sha256sum",
    "dd",
    "sync",
    "ps",
    "kill",
    "killall",
    "pidof",
    "free",
    "uptime",
    "dmesg",
    "mount",
    "umount",
    "ip",
    "ifconfig",
    "route",
    "wget",
    "nc",
    "ping",
    "more",
    "clear",
    "tty",
    "stty",
];

/// Features of the core applets, turned on with them.
const CORE_FEATURES: &[&str] = &[
    "BUSYBOX",
    "FEATURE_INSTALLER",
    "STATIC",
    "LONG_OPTS",
    "FEATURE_USE_SENDFILE",
    "ASH_OPTIMIZE_FOR_SIZE",
    "ASH_BASH_COMPAT",
    "ASH_JOB_CONTROL",
    "ASH_ECHO",
    "ASH_PRINTF",
    "ASH_TEST",
    "ASH_GETOPTS",
    "ASH_CMDCMD",
    "FEATURE_SH_MATH",
    "FEATURE_EDITING",
    "FEATURE_EDITING_FANCY_PROMPT",
    // The fuller, POSIX-leaning variants of applets (od's -A and -t, ps -o, ...).
    "DESKTOP",
    "FEATURE_TAB_COMPLETION",
    "FEATURE_FANCY_ECHO",
    "FEATURE_FANCY_SLEEP",
    "FLOAT_DURATION",
    "FEATURE_FANCY_HEAD",
    "FEATURE_FANCY_TAIL",
    "FEATURE_LS_FILETYPES",
    "FEATURE_LS_FOLLOWLINKS",
    "FEATURE_LS_SORTFILES",
    "FEATURE_LS_TIMESTAMPS",
    "FEATURE_LS_USERNAME",
    "FEATURE_FIND_TYPE",
    "FEATURE_FIND_MAXDEPTH",
    "FEATURE_FIND_EXEC",
    "FEATURE_STAT_FORMAT",
    "FEATURE_DATE_ISOFMT",
    "FEATURE_XARGS_SUPPORT_ZERO_TERM",
    "FEATURE_MOUNT_FLAGS",
    "FEATURE_IFCONFIG_STATUS",
    "FEATURE_IP_ADDRESS",
    "FEATURE_IP_LINK",
    "FEATURE_IP_ROUTE",
    "FEATURE_WGET_TIMEOUT",
    "NC_SERVER",
    "FEATURE_FANCY_PING",
];

/// The configuration symbols (without `CONFIG_`) that give applet `name`; a `CONFIG_X`
/// entry is the symbol `X` itself.
pub fn symbols(name: &str) -> Result<Vec<String>, UserlandError> {
    if let Some(sym) = name.strip_prefix("CONFIG_") {
        let ok = !sym.is_empty()
            && sym
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        return if ok {
            Ok(vec![sym.to_string()])
        } else {
            Err(UserlandError::BadName(name.to_string()))
        };
    }
    Ok(match name {
        "sh" | "ash" => vec!["SH_IS_ASH".into(), "ASH".into()],
        "[" => vec!["TEST".into(), "TEST1".into()],
        "[[" => vec!["TEST".into(), "TEST2".into()],
        _ => {
            let ok = !name.is_empty()
                && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
            if !ok {
                return Err(UserlandError::BadName(name.to_string()));
            }
            vec![name.to_ascii_uppercase().replace('-', "_")]
        }
    })
}

/// Every symbol a build with the core and `extra` applets turns on, each with the name it
/// came from, in order, without repeats.
pub fn requested(extra: &[String]) -> Result<Vec<(String, String)>, UserlandError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let names = CORE_APPLETS
        .iter()
        .map(|s| s.to_string())
        .chain(CORE_FEATURES.iter().map(|f| format!("CONFIG_{f}")))
        .chain(extra.iter().cloned());
    for name in names {
        for sym in symbols(&name)? {
            if !out.iter().any(|(s, _)| *s == sym) {
                out.push((sym, name.clone()));
            }
        }
    }
    // busybox 1.35's httpd truncates the index.html it appends to a directory URL for the
    // password check and restores it only when basic auth is built: with CGI and without
    // auth, `/` answers 404.
    let has = |sym: &str| out.iter().any(|(s, _)| s == sym);
    if has("FEATURE_HTTPD_CGI") && !has("FEATURE_HTTPD_BASIC_AUTH") {
        out.push((
            "FEATURE_HTTPD_BASIC_AUTH".into(),
            "CONFIG_FEATURE_HTTPD_CGI".into(),
        ));
    }
    Ok(out)
}

/// The cache key over the tarball, the symbols (in any order) and the build steps' version.
pub fn cache_key(symbols: &[(String, String)]) -> String {
    let mut syms: Vec<&str> = symbols.iter().map(|(s, _)| s.as_str()).collect();
    syms.sort_unstable();
    BUSYBOX.key(syms.iter().map(|s| format!("{s}\n")))
}

/// Rewrite a `.config`: every symbol in `on` set to `y`, its old line dropped (busybox's
/// `.config` is Kconfig's, read and written by kiln-kernel's fragment code).
pub fn merge_config(config: &str, on: &[(String, String)]) -> String {
    let requested: Vec<FragmentOption> = on
        .iter()
        .map(|(sym, name)| FragmentOption {
            name: sym.clone(),
            value: OptionValue::Yes,
            fragment: name.clone(),
            line: 0,
        })
        .collect();
    kiln_kernel::tiny::merge_config(config, &requested)
}

/// Check the configuration `make oldconfig` wrote against what was asked.
pub fn check_config(config: &str, on: &[(String, String)]) -> Result<(), UserlandError> {
    let got = parse_dot_config(config);
    for (sym, name) in on {
        let (name, symbol) = (name.clone(), format!("CONFIG_{sym}"));
        match got.get(sym) {
            Some(OptionValue::Yes) => {}
            Some(_) => return Err(UserlandError::NotApplied { name, symbol }),
            None => return Err(UserlandError::Unknown { name, symbol }),
        }
    }
    Ok(())
}

/// A built busybox in the cache.
pub type Busybox = Built;

/// busybox's builds.
pub(crate) const BUSYBOX: Product = Product {
    name: "busybox",
    tag: "bb",
    binary: "busybox",
    version: VERSION,
    tarball: TARBALL,
    tarball_sha256: TARBALL_SHA256,
    mirror_package: MIRROR_PACKAGE,
    build_version: BUILD_VERSION,
    tools: &[],
};

/// What to build.
#[derive(Debug, Clone)]
pub struct Options {
    /// Kiln's cache folder (`busybox/` and `orig/` go under it).
    pub cache_root: PathBuf,
    /// Applets (or `CONFIG_` symbols) besides [`CORE_APPLETS`].
    pub applets: Vec<String>,
    /// `make -j`.
    pub jobs: usize,
}

/// Build (or find in the cache) busybox with the core applets and `opts.applets`. `debs`
/// fetches the source tarball; `progress` hears each step's name.
pub fn build(
    opts: &Options,
    debs: &kiln_debpkg::Cache,
    progress: &dyn Fn(&str),
) -> Result<Busybox, UserlandError> {
    let on = requested(&opts.applets)?;
    let hash = cache_key(&on);
    let symbols = on.iter().map(|(s, _)| s.clone()).collect();
    BUSYBOX.cached(&opts.cache_root, debs, progress, &hash, symbols, |ws| {
        let cflags = format!("EXTRA_CFLAGS=-I{}", ws.kinc.display());
        progress("busybox: configuring");
        ws.step
            .run("make allnoconfig", &mut ws.make(&["allnoconfig", &cflags]))?;
        let dot = ws.src.join(".config");
        let base = std::fs::read_to_string(&dot).map_err(io_err("read", &dot))?;
        std::fs::write(&dot, merge_config(&base, &on)).map_err(io_err("write", &dot))?;
        // oldconfig asks about options new to it: the default answer (an empty line) for each.
        let mut oldconfig = ws.make(&["oldconfig", &cflags]);
        oldconfig.stdin(Stdio::piped());
        ws.step
            .run_with_input("make oldconfig", &mut oldconfig, &"\n".repeat(4000))?;
        let config = std::fs::read_to_string(&dot).map_err(io_err("read", &dot))?;
        check_config(&config, &on)?;
        progress("busybox: compiling");
        let jobs = format!("-j{}", opts.jobs.max(1));
        ws.step.run("make", &mut ws.make(&[&jobs, &cflags]))?;
        ws.strip("busybox")
    })
}

#[cfg(test)]
mod tests;
