#!/usr/bin/env bash
# Builds kiln-init, the guest's PID 1, as a static binary into target/guest/kiln-init.
# musl gives the smallest binary; without the musl target, glibc with +crt-static is used.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/guest
mkdir -p "$out"
if rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-linux-musl; then
  cargo build -q -p kiln-init --profile init --target x86_64-unknown-linux-musl
  src=target/x86_64-unknown-linux-musl/init/kiln-init
else
  echo "build-init: musl target missing; building with glibc +crt-static" >&2
  RUSTFLAGS='-C target-feature=+crt-static' cargo build -q -p kiln-init --profile init --target x86_64-unknown-linux-gnu
  src=target/x86_64-unknown-linux-gnu/init/kiln-init
fi
if ! file "$src" | grep -q 'statically linked\|static-pie linked'; then
  echo "build-init: $src is not statically linked: $(file "$src")" >&2
  exit 1
fi
cp "$src" "$out/kiln-init.tmp" && mv "$out/kiln-init.tmp" "$out/kiln-init"
echo "build-init: $(stat -c %s "$out/kiln-init") bytes, $(file -b "$out/kiln-init" | cut -d, -f1-2)" >&2
