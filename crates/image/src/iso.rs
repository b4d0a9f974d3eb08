//! Bootable ISO images (`[image] format = "iso"`): a kernel and its initrd on a hybrid ISO 9660
//! image (Rock Ridge names) that ISOLINUX boots from a CD or, through the isohybrid MBR, from a
//! disk or USB stick, with the kernel's console on the first serial port.
//!
//! The tree (`isolinux/{isolinux.bin,ldlinux.c32,isolinux.cfg}`, `kiln/{bzImage,initrd}`) is
//! staged in a [`WorkDir`](crate::WorkDir) beside the destination with fixed modes and times,
//! and `xorriso -as mkisofs` (Debian's xorriso) writes the image there, with every file owned
//! by root and `SOURCE_DATE_EPOCH` fixing the volume dates, the boot catalogue's time and the
//! MBR's disk id, so the same inputs give the same bytes. The image is renamed into place only
//! when xorriso succeeded; on any failure the work folder is removed and the destination kept.
//! Nothing needs root.

use std::fs::{self, File, FileTimes, Permissions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::rofs::{finish, plain_arg, run, work_beside, ImageStats, Tool, MAX_TIME_32};
use crate::ImageError;

/// What to put on a bootable ISO image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsoOptions {
    /// The kernel (an x86 bzImage).
    pub kernel: PathBuf,
    /// The initrd (e.g. the initramfs [`write_initramfs`](crate::write_initramfs) made).
    pub initrd: PathBuf,
    /// The kernel command line (one line).
    pub cmdline: String,
    /// Volume id, e.g. `KILN_HTTPD`; upper-cased, other characters than A-Z, 0-9 and `_`
    /// become `_`, cut to 32 characters (`KILN` when nothing is left).
    pub label: String,
    /// mtime (seconds since the epoch) of every file, and the volume's dates.
    pub mtime: u64,
}

/// Where the boot loader's parts are, and the Debian packages that have them.
#[derive(Clone, Copy, Debug)]
struct Loader {
    isolinux: (&'static str, &'static str),
    ldlinux: (&'static str, &'static str),
    mbr: (&'static str, &'static str),
}

const LOADER: Loader = Loader {
    isolinux: ("/usr/lib/ISOLINUX/isolinux.bin", "isolinux"),
    ldlinux: (
        "/usr/lib/syslinux/modules/bios/ldlinux.c32",
        "syslinux-common",
    ),
    mbr: ("/usr/lib/ISOLINUX/isohdpfx.bin", "isolinux"),
};

const XORRISO: Tool = Tool {
    program: "xorriso",
    package: "xorriso",
};

/// The longest volume id ISO 9660 holds.
const MAX_LABEL: usize = 32;

/// Write a hybrid ISO image at `dest`, atomically, that boots `opts.kernel` with
/// `opts.initrd` and `opts.cmdline` through ISOLINUX (serial console on the first port,
/// 115200 baud, no prompt).
pub fn write_iso(opts: &IsoOptions, dest: &Path) -> Result<ImageStats, ImageError> {
    iso_with(XORRISO, LOADER, opts, dest)
}

fn iso_with(
    tool: Tool,
    loader: Loader,
    opts: &IsoOptions,
    dest: &Path,
) -> Result<ImageStats, ImageError> {
    if opts.cmdline.contains(['\n', '\r']) {
        return Err(ImageError::InvalidCmdline {
            cmdline: opts.cmdline.clone(),
            reason: "holds a line break; the boot loader's APPEND takes one line",
        });
    }
    if opts.mtime > MAX_TIME_32 {
        return Err(ImageError::TimeOutOfRange {
            format: "ISO",
            mtime: opts.mtime,
            max: MAX_TIME_32,
        });
    }
    for p in [&opts.kernel, &opts.initrd] {
        match fs::metadata(p) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(ImageError::IsoInput {
                    path: p.clone(),
                    error: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
                })
            }
            Err(error) => {
                return Err(ImageError::IsoInput {
                    path: p.clone(),
                    error,
                })
            }
        }
    }
    let work = work_beside(dest)?;
    let stage_err = |error: io::Error| ImageError::Write {
        path: dest.to_path_buf(),
        error,
    };
    let tree = work.path().join("tree");
    fs::create_dir_all(tree.join("isolinux")).map_err(stage_err)?;
    fs::create_dir_all(tree.join("kiln")).map_err(stage_err)?;
    let mut used = 0;
    for (from, package, to) in [
        (
            loader.isolinux.0,
            loader.isolinux.1,
            "isolinux/isolinux.bin",
        ),
        (loader.ldlinux.0, loader.ldlinux.1, "isolinux/ldlinux.c32"),
    ] {
        // A copy: xorriso patches the boot info table into the image's copy only, but the
        // staged file must not be a link to the system's either way.
        used += fs::copy(from, tree.join(to)).map_err(|error| ImageError::PackageFile {
            path: PathBuf::from(from),
            package,
            error,
        })?;
    }
    let mbr = Path::new(loader.mbr.0);
    match fs::metadata(mbr) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(ImageError::PackageFile {
                path: mbr.to_path_buf(),
                package: loader.mbr.1,
                error: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
            })
        }
        Err(error) => {
            return Err(ImageError::PackageFile {
                path: mbr.to_path_buf(),
                package: loader.mbr.1,
                error,
            })
        }
    }
    let cfg = isolinux_cfg(&opts.cmdline);
    fs::write(tree.join("isolinux/isolinux.cfg"), &cfg).map_err(stage_err)?;
    used += cfg.len() as u64;
    for (from, to) in [
        (&opts.kernel, "kiln/bzImage"),
        (&opts.initrd, "kiln/initrd"),
    ] {
        used += fs::copy(from, tree.join(to)).map_err(|error| ImageError::IsoInput {
            path: from.clone(),
            error,
        })?;
    }
    fix_tree(&tree, opts.mtime).map_err(stage_err)?;

    let image = work.path().join("image.iso");
    let mut cmd = Command::new(tool.program);
    cmd.args(["-as", "mkisofs", "-quiet", "-o"])
        .arg(plain_arg(&image))
        .arg("-V")
        .arg(volume_id(&opts.label))
        .args(["-R", "-uid", "0", "-gid", "0", "-isohybrid-mbr"])
        .arg(plain_arg(mbr))
        .args(["-c", "isolinux/boot.cat", "-b", "isolinux/isolinux.bin"])
        .args(["-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"])
        .arg(plain_arg(&tree))
        // Fixes the volume dates, every file's atime and ctime (to its mtime), the boot
        // catalogue's time and the MBR's disk id; TZ keeps local-time offsets out.
        .env("SOURCE_DATE_EPOCH", opts.mtime.to_string())
        .env("TZ", "UTC");
    run(tool, cmd, work.path(), dest)?;
    finish(&image, dest, 0, used)
}

/// The ISOLINUX config: serial console, boot the one entry at once.
fn isolinux_cfg(cmdline: &str) -> String {
    format!(
        "SERIAL 0 115200\nDEFAULT kiln\nPROMPT 0\nTIMEOUT 0\n\nLABEL kiln\n  LINUX /kiln/bzImage\n  INITRD /kiln/initrd\n  APPEND {cmdline}\n"
    )
}

/// `label` as an ISO 9660 volume id: A-Z, 0-9 and `_`, at most 32 characters.
fn volume_id(label: &str) -> String {
    let id: String = label
        .chars()
        .take(MAX_LABEL)
        .map(|c| match c.to_ascii_uppercase() {
            c @ ('A'..='Z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .collect();
    if id.is_empty() {
        "KILN".to_string()
    } else {
        id
    }
}

/// Give the staged tree fixed modes (folders 0755, files 0644) and times (`mtime`), deepest
/// first so setting a folder's time is not undone by writing into it.
fn fix_tree(tree: &Path, mtime: u64) -> io::Result<()> {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(mtime);
    for e in walkdir::WalkDir::new(tree).contents_first(true) {
        let e = e.map_err(|err| {
            err.into_io_error()
                .unwrap_or_else(|| io::Error::other("walk failed"))
        })?;
        let mode = if e.file_type().is_dir() { 0o755 } else { 0o644 };
        fs::set_permissions(e.path(), Permissions::from_mode(mode))?;
        File::open(e.path())?.set_times(FileTimes::new().set_accessed(t).set_modified(t))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rofs::tests::{names, need, touch};

    const T: u64 = 1_700_000_000;

    fn inputs(dir: &Path, variant: u64) -> IsoOptions {
        fs::create_dir_all(dir).expect("mkdir");
        let kernel = dir.join("bzImage");
        let initrd = dir.join("initrd.img");
        // Not a real kernel: the ISO does not look inside.
        let mut k = vec![0u8; 70_000];
        k[0x202..0x206].copy_from_slice(b"HdrS");
        fs::write(&kernel, &k).expect("w");
        fs::write(&initrd, b"070701 not really a cpio archive\n".repeat(100)).expect("w");
        fs::set_permissions(
            &kernel,
            Permissions::from_mode(0o600 + variant as u32 * 0o11),
        )
        .expect("chmod");
        touch(&kernel, 1_000_000 + variant);
        touch(&initrd, 2_000_000 + variant);
        IsoOptions {
            kernel,
            initrd,
            cmdline: "console=ttyS0 quiet kiln.app=httpd".into(),
            label: "kiln-httpd".into(),
            mtime: T,
        }
    }

    /// `path` (an ISO path) extracted from `iso`.
    fn extract(iso: &Path, path: &str, to: &Path) -> Vec<u8> {
        let out = Command::new("xorriso")
            .args(["-osirrox", "on", "-indev"])
            .arg(iso)
            .args(["-extract", path])
            .arg(to)
            .output()
            .expect("xorriso");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::read(to).expect("read")
    }

    #[test]
    fn an_iso_is_reproducible_hybrid_and_holds_the_boot_files() {
        need("xorriso", "xorriso");
        let d = tempfile::tempdir().expect("tmp");
        let one = inputs(&d.path().join("in1"), 0);
        let two = inputs(&d.path().join("in2"), 1);
        let out = d.path().join("out");
        fs::create_dir(&out).expect("mkdir");
        let a = write_iso(&one, &out.join("a.iso")).expect("iso");
        // A second later: nothing may depend on the clock.
        std::thread::sleep(Duration::from_millis(1100));
        let b = write_iso(&two, &out.join("b.iso")).expect("iso");
        assert_eq!(
            a.sha256, b.sha256,
            "same inputs, other file times: same image"
        );
        assert_eq!(a.entries, 0);
        let iso = out.join("a.iso");
        assert_eq!(a.size_bytes, fs::metadata(&iso).expect("stat").len());
        assert!(a.used_bytes > 70_000 + 3_300, "{}", a.used_bytes);
        eprintln!("iso: {a:?}");
        assert_eq!(names(&out), ["a.iso", "b.iso"], "nothing left behind");

        let img = fs::read(&iso).expect("read");
        assert_eq!(&img[510..512], &[0x55, 0xaa], "hybrid MBR signature");
        assert_eq!(&img[0x8001..0x8006], b"CD001", "ISO 9660 volume descriptor");
        assert_eq!(&img[0x8028..0x8028 + 10], b"KILN_HTTPD", "volume id");

        let ls = Command::new("xorriso")
            .args(["-indev"])
            .arg(&iso)
            .args(["-find", "/", "-exec", "lsdl"])
            .output()
            .expect("xorriso");
        assert!(
            ls.status.success(),
            "{}",
            String::from_utf8_lossy(&ls.stderr)
        );
        let ls = String::from_utf8_lossy(&ls.stdout);
        for f in [
            "/isolinux/isolinux.bin",
            "/isolinux/ldlinux.c32",
            "/isolinux/isolinux.cfg",
            "/isolinux/boot.cat",
            "/kiln/bzImage",
            "/kiln/initrd",
        ] {
            let line = ls
                .lines()
                .find(|l| l.ends_with(&format!("'{f}'")))
                .unwrap_or_else(|| panic!("{f} not on the ISO:\n{ls}"));
            assert!(line.contains(" 0        0 "), "owned by root: {line}");
        }
        let x = d.path().join("x");
        fs::create_dir(&x).expect("mkdir");
        let cfg = extract(&iso, "/isolinux/isolinux.cfg", &x.join("cfg"));
        let cfg = String::from_utf8(cfg).expect("utf-8");
        assert!(cfg.starts_with("SERIAL 0 115200\nDEFAULT kiln\n"), "{cfg}");
        assert!(
            cfg.contains("  APPEND console=ttyS0 quiet kiln.app=httpd\n"),
            "{cfg}"
        );
        let kernel = extract(&iso, "/kiln/bzImage", &x.join("k"));
        assert_eq!(kernel, fs::read(&one.kernel).expect("read"));
        let initrd = extract(&iso, "/kiln/initrd", &x.join("i"));
        assert_eq!(initrd, fs::read(&one.initrd).expect("read"));
        // The system's isolinux.bin is untouched (the boot info table went into the copy).
        let sys = fs::read(LOADER.isolinux.0).expect("read");
        let staged = extract(&iso, "/isolinux/isolinux.bin", &x.join("b"));
        assert_eq!(sys.len(), staged.len());
        assert_ne!(sys, staged, "boot info table patched into the ISO's copy");

        let other = IsoOptions {
            cmdline: "console=ttyS0".into(),
            ..one.clone()
        };
        let c = write_iso(&other, &out.join("c.iso")).expect("iso");
        assert_ne!(c.sha256, a.sha256, "the command line is in the image");
    }

    #[test]
    fn iso_refusals_name_what_is_wrong_and_leave_nothing() {
        let d = tempfile::tempdir().expect("tmp");
        let opts = inputs(&d.path().join("in"), 0);
        let dest = d.path().join("out.iso");
        fs::write(&dest, "old").expect("w");

        let bad = IsoOptions {
            cmdline: "console=ttyS0\nDEFAULT evil".into(),
            ..opts.clone()
        };
        let err = write_iso(&bad, &dest).expect_err("newline");
        assert!(matches!(err, ImageError::InvalidCmdline { .. }), "{err}");

        let bad = IsoOptions {
            initrd: d.path().join("no-such-initrd"),
            ..opts.clone()
        };
        let err = write_iso(&bad, &dest).expect_err("missing initrd");
        assert!(err.to_string().contains("no-such-initrd"), "{err}");

        let bad = IsoOptions {
            mtime: 1 << 32,
            ..opts.clone()
        };
        assert!(matches!(
            write_iso(&bad, &dest),
            Err(ImageError::TimeOutOfRange { .. })
        ));

        let no_loader = Loader {
            ldlinux: ("/nonexistent/kiln/ldlinux.c32", "syslinux-common"),
            ..LOADER
        };
        let err = iso_with(XORRISO, no_loader, &opts, &dest).expect_err("no ldlinux");
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/kiln/ldlinux.c32") && msg.contains("syslinux-common"),
            "{msg}"
        );
        let no_mbr = Loader {
            mbr: ("/nonexistent/kiln/isohdpfx.bin", "isolinux"),
            ..LOADER
        };
        let err = iso_with(XORRISO, no_mbr, &opts, &dest).expect_err("no mbr");
        assert!(
            err.to_string().contains("install Debian's isolinux"),
            "{err}"
        );

        let gone = Tool {
            program: "xorriso-kiln-missing",
            package: "xorriso",
        };
        let err = iso_with(gone, LOADER, &opts, &dest).expect_err("no xorriso");
        let msg = err.to_string();
        assert!(
            msg.contains("xorriso-kiln-missing") && msg.contains("install Debian's xorriso"),
            "{msg}"
        );

        assert_eq!(fs::read(&dest).expect("read"), b"old", "old image kept");
        assert_eq!(names(d.path()), ["in", "out.iso"], "nothing left behind");
    }

    #[test]
    fn labels_become_volume_ids() {
        assert_eq!(volume_id("kiln-httpd"), "KILN_HTTPD");
        assert_eq!(volume_id("KILN_HTTPD"), "KILN_HTTPD");
        assert_eq!(volume_id(""), "KILN");
        assert_eq!(volume_id("é.x"), "__X");
        assert_eq!(volume_id(&"a".repeat(40)), "A".repeat(32));
        let cfg = isolinux_cfg("console=ttyS0");
        for line in [
            "SERIAL 0 115200",
            "DEFAULT kiln",
            "PROMPT 0",
            "TIMEOUT 0",
            "LABEL kiln",
            "  LINUX /kiln/bzImage",
            "  INITRD /kiln/initrd",
            "  APPEND console=ttyS0",
        ] {
            assert!(cfg.lines().any(|l| l == line), "{line} missing:\n{cfg}");
        }
    }
}
