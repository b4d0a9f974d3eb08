#!/usr/bin/env bash
# make bench: boot timings, sizes, build times and memory of recipes/httpd beside the plain
# baseline (Debian's kernel + a busybox initramfs started by a hand-written QEMU command), in
# one run, interleaved: first on the default (tiny) kernel, then on Debian's cloud kernel.
# Last, starts from a template: clone boots beside cold boots and the baseline, CLONES clones
# at once (default 20) and the host memory each idle clone takes. Then published ports under load:
# redis-benchmark and wrk against recipes/redis and recipes/nginx beside the same servers on the
# host (scripts/bench-ports.sh). Finally, Kiln nets: VM-to-VM throughput and latency on a net beside
# the same two VMs through slirp, and host-to-VM throughput through Kiln's published port beside
# passt started by hand (scripts/bench-nets.sh). Last, the root formats side by side (scripts/bench-formats.sh).
# BOOTS=N changes the number of boots (default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-target/release/kiln}
BOOTS=${BOOTS:-10}
"$KILN" kernel build
echo "== recipes/httpd, default (tiny) kernel"
"$KILN" bench recipes/httpd --boots "$BOOTS" --baseline --build --min-memory "$@"
echo "== recipes/httpd, Debian's cloud kernel"
"$KILN" bench recipes/httpd --kernel debian --boots "$BOOTS" --baseline --min-memory "$@"
echo "== recipes/httpd from a template (clones), beside cold boots and the baseline"
"$KILN" bench recipes/httpd --template --boots "$BOOTS" --baseline --clones "${CLONES:-20}" "$@"
echo "== published ports under load: recipes/redis and recipes/nginx beside the same servers on the host"
KILN="$KILN" ./scripts/bench-ports.sh
echo "== Kiln nets: VM to VM on a net beside slirp; host to VM through slirp beside passt"
KILN="$KILN" ./scripts/bench-nets.sh
echo "== OCI images: kiln run REF (cold and warm cache) beside recipes/httpd; push and pull"
KILN="$KILN" ./scripts/bench-oci.sh
echo "== an OCI image slimmed: debian minbase + nginx-light, every file beside what kiln trace keeps"
KILN="$KILN" ./scripts/bench-slim.sh
echo "== containerd: ctr run --rm with the kiln runtime beside runc"
./scripts/bench-containerd.sh
echo "== root formats: recipes/httpd as initramfs, disk, qcow2, erofs, squashfs and iso; the ISO on -M pc"
KILN="$KILN" ./scripts/bench-formats.sh
