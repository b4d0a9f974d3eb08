//! Kernel module loading: module names from file paths, per-module parameters
//! taken from the kernel command line (as modprobe does), and the load loop
//! over `finit_module(2)`.

use crate::{report, sys};

/// The module name of a `.ko` file path: the file name without `.ko` (and any
/// compression suffix), with `-` normalised to `_`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let base = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"]
        .iter()
        .find_map(|suffix| file.strip_suffix(suffix))
        .unwrap_or(file);
    base.replace('-', "_")
}

/// Whether the file needs in-kernel decompression
/// (`MODULE_INIT_COMPRESSED_FILE`).
pub fn is_compressed(path: &str) -> bool {
    path.ends_with(".xz") || path.ends_with(".zst") || path.ends_with(".gz")
}

/// Parameters for `module` from the kernel command-line words: every
/// `MODULE.key[=value]` word (module names compared with `-` and `_` treated
/// alike), with the `MODULE.` prefix removed, joined by single spaces.
pub fn params_for(module: &str, words: &[&str]) -> String {
    let want = module.replace('-', "_");
    let mut out = String::new();
    for w in words {
        let Some(dot) = w.find('.') else { continue };
        // A dot after '=' belongs to a value (e.g. `root=/dev/vda.1`).
        if w.find('=').is_some_and(|eq| eq < dot) {
            continue;
        }
        let (name, param) = (&w[..dot], &w[dot + 1..]);
        if param.is_empty() || name.len() != want.len() {
            continue;
        }
        let same = name
            .bytes()
            .zip(want.bytes())
            .all(|(a, b)| a == b || (a == b'-' && b == b'_'));
        if same {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(param);
        }
    }
    out
}

/// `MODULE_INIT_COMPRESSED_FILE` from `<linux/module.h>`.
const MODULE_INIT_COMPRESSED_FILE: u32 = 4;

/// Load each module file in order. `EEXIST` (already loaded or built in) is
/// success; other failures print `kiln: warning: module NAME: ERROR` and
/// loading continues.
pub fn load_all(paths: &[String], cmdline_words: &[&str]) {
    for path in paths {
        let name = module_name(path);
        let params = params_for(&name, cmdline_words);
        let flags = if is_compressed(path) {
            MODULE_INIT_COMPRESSED_FILE
        } else {
            0
        };
        match sys::finit_module(path, &params, flags) {
            Ok(()) => {}
            Err(libc::EEXIST) => {}
            Err(e) => {
                let msg = report::Line::new()
                    .s("warning: module ")
                    .s(&name)
                    .s(": ")
                    .s(&sys::strerror(e))
                    .finish();
                sys::emit(&msg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmdline::words;

    #[test]
    fn names() {
        assert_eq!(
            module_name("/lib/modules/6.1.0-56-cloud-amd64/kernel/drivers/virtio/virtio_ring.ko"),
            "virtio_ring"
        );
        assert_eq!(module_name("/x/virtio-rng.ko.xz"), "virtio_rng");
        assert_eq!(module_name("net_failover.ko.zst"), "net_failover");
        assert_eq!(module_name("/x/odd"), "odd");
        assert!(is_compressed("/x/a.ko.xz"));
        assert!(!is_compressed("/x/a.ko"));
    }

    #[test]
    fn params() {
        let w = words(
            "console=ttyS0 virtio_mmio.device=4K@0xfeb00e00:12 virtio-mmio.device=4K@0xfeb00c00:11 \
             virtio_mmiox.y=1 root=/dev/vda.1 virtio_net.napi_tx=1 virtio_mmio. virtio_mmio.flag \
             foo.bar=\"a b\"",
        );
        assert_eq!(
            params_for("virtio_mmio", &w),
            "device=4K@0xfeb00e00:12 device=4K@0xfeb00c00:11 flag"
        );
        assert_eq!(params_for("virtio-mmio", &w), params_for("virtio_mmio", &w));
        assert_eq!(params_for("virtio_net", &w), "napi_tx=1");
        assert_eq!(params_for("foo", &w), "bar=\"a b\"");
        assert_eq!(params_for("root=/dev/vda", &w), "");
        assert_eq!(params_for("virtio_ring", &w), "");
    }
}
