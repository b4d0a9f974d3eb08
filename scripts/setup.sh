#!/usr/bin/env bash
# Installs what Kiln needs on a fresh Debian 12 machine. Idempotent: installs only what is
# missing. Runs apt as root (or through sudo).
set -euo pipefail

PKGS=(
  qemu-system-x86   # the VMM (microvm machine)
  busybox-static    # the guest's shell and tools come from this package (fetched by apt-get download)
  bubblewrap        # the sandbox for recipes' build hooks
  strace            # the fault tests hold a build inside its swap into place with it
  curl              # the demo's and tests' HTTP client
  openssh-client    # the tests log into recipes/sshd with ssh and ssh-keygen
  redis-tools       # redis-cli, the tests' client for recipes/redis
  cpio xz-utils zstd file   # tests cross-check images with the standard tools
  e2fsprogs util-linux      # format = "disk": mke2fs -d and debugfs make the ext4 root, unshare maps the builder to root
  makefs                    # BSD guests: the FFS root image (NetBSD's makefs)
  build-essential pkg-config
  libssl-dev                 # kiln-oci's HTTPS to registries (ureq + native-tls, the system's OpenSSL and CA store)
  docker-registry skopeo umoci   # kiln-oci's tests: a real registry on loopback, images made with umoci, copied in with skopeo
  mmdebstrap                 # make bench: a Debian root with nginx as an OCI image, slimmed by kiln trace
  linux-source-6.1 flex bison bc libelf-dev patch   # kiln kernel build: the tiny kernel from source, Kiln's patches
  musl-tools bzip2            # [root] applets and dropbear: Kiln's own static busybox and dropbear, built with musl-gcc from Debian's source tarballs
  chromium chromium-driver   # the web console's browser test (tests/e2e, playwright-core)
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libxml2-utils   # kiln export --to libvirt is run under a private libvirtd; virt-xml-validate
  tmux                       # `kiln exec -t` is tested in a real terminal
  containerd                 # containerd 1.6 and ctr: the tests run containerd-shim-kiln-v2 under a private containerd
  erofs-utils squashfs-tools qemu-utils   # format = "erofs" | "squashfs" | "qcow2": mkfs.erofs, mksquashfs, qemu-img
  xorriso isolinux syslinux-common        # format = "iso": a hybrid ISO booted by ISOLINUX
  ipxe-qemu tftpd-hpa                     # kiln netboot: iPXE ROMs for QEMU's virtio-net-pci, a TFTP server for --listen
)
# Node.js for the browser test: Debian's packages only where no node/npm is installed already
# (a machine with another Node.js build has npm inside it, and Debian's npm would conflict).
command -v node >/dev/null 2>&1 || PKGS+=(nodejs)
command -v npm >/dev/null 2>&1 || PKGS+=(npm)

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# apt-get download (kernel, busybox) needs package lists even when nothing is missing.
lists_empty=$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' 2>/dev/null | head -1)
if [ ${#missing[@]} -gt 0 ] || [ -z "$lists_empty" ]; then
  echo "setup: apt-get update" >&2
  sudo_ apt-get update -q
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Tests start registries of their own; the package's host-wide one (port 5000) is not Kiln's.
if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled docker-registry >/dev/null 2>&1; then
  sudo_ systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi
# Likewise tftpd-hpa: kiln netboot --listen starts one of its own in a folder of its own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled tftpd-hpa >/dev/null 2>&1; then
  sudo_ systemctl disable --now tftpd-hpa >/dev/null 2>&1 || true
fi
# Likewise containerd: the shim's tests start one with a config, root and socket of their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled containerd >/dev/null 2>&1; then
  sudo_ systemctl disable --now containerd >/dev/null 2>&1 || true
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust (https://rustup.rs) and re-run" >&2
  exit 1
fi
# The guest init is smallest as a static musl binary; scripts/build-init.sh falls back to
# glibc +crt-static when the target cannot be had.
if command -v rustup >/dev/null 2>&1; then
  rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-linux-musl \
    || rustup target add x86_64-unknown-linux-musl || echo "setup: musl target unavailable; init will be built with glibc +crt-static" >&2
fi
# The browser test's node packages (playwright-core drives Debian's chromium; nothing is
# downloaded besides the npm packages pinned in tests/e2e/package-lock.json).
e2e="$(cd "$(dirname "$0")/.." && pwd)/tests/e2e"
if [ ! -d "$e2e/node_modules/playwright-core" ] || [ "$e2e/package-lock.json" -nt "$e2e/node_modules/.package-lock.json" ]; then
  echo "setup: npm ci in tests/e2e" >&2
  (cd "$e2e" && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "setup: ok" >&2
