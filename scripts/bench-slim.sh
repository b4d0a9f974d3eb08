#!/usr/bin/env bash
# make bench, slimming an OCI image with `kiln trace` (docs/oci.md): a Debian bookworm minbase
# root with nginx-light installed (what `FROM debian:bookworm-slim` plus `apt-get install
# nginx-light` gives), made with mmdebstrap from Debian's mirror and packed as an OCI layout with
# umoci; a recipe `from` it runs nginx; `kiln trace` with a curl workload writes its index.
# Prints the layer's size, the image with every file and the slim one (initramfs bytes, files)
# and launch -> first HTTP 200 of each, median of RUNS, with the ratios.
#   RUNS=3
# Everything it starts is stopped on exit; the cache is a folder of its own (KILN_CACHE_DIR)
# except the kernels and packages it shares with the host's cache (linked in).
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-$PWD/target/release/kiln}
RUNS=${RUNS:-3}
for t in mmdebstrap umoci curl python3; do
    command -v "$t" >/dev/null || { echo "bench-slim: $t missing (scripts/setup.sh installs it)" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/kiln-bench-slim.XXXXXX)
export KILN_STATE_DIR=$WORK/state XDG_RUNTIME_DIR=$WORK/state KILN_CACHE_DIR=$WORK/cache
mkdir -p "$KILN_STATE_DIR" "$KILN_CACHE_DIR"
cleanup() {
    for n in $("$KILN" ps --json 2>/dev/null | python3 -c 'import json,sys; print(" ".join(r["name"] for r in json.load(sys.stdin)))' 2>/dev/null); do
        "$KILN" rm -f "$n" >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
HOST_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/kiln
for d in kernels debs unpacked apt pvh busybox orig accel-probe.json; do
    [ -e "$HOST_CACHE/$d" ] && ln -s "$HOST_CACHE/$d" "$KILN_CACHE_DIR/$d"
done

# The image: one layer holding the whole Debian root (device nodes are left to the guest).
mmdebstrap --quiet --variant=minbase --include=nginx-light bookworm "$WORK/root.tar"
L=$WORK/layout B=$WORK/bundle
umoci init --layout "$L" && umoci new --image "$L:1"
if [ "$(id -u)" = 0 ]; then umoci unpack --image "$L:1" "$B" >/dev/null; else umoci unpack --rootless --image "$L:1" "$B" >/dev/null; fi
tar -xf "$WORK/root.tar" -C "$B/rootfs" --exclude='./dev/*'
umoci repack --image "$L:1" "$B" >/dev/null
layer=$(python3 - "$L" <<'PY'
import json, os, sys
L = sys.argv[1]
idx = json.load(open(os.path.join(L, "index.json")))
m = json.load(open(os.path.join(L, "blobs", *idx["manifests"][0]["digest"].split(":"))))
print(sum(l["size"] for l in m["layers"]))
PY
)
root_bytes=$(du -sb --apparent-size "$B/rootfs" | cut -f1)
root_files=$(find "$B/rootfs" -mindepth 1 | wc -l)
echo "bench-slim: debian bookworm minbase + nginx-light: OCI layer $layer bytes (gzip), root $root_bytes bytes, $root_files paths"

# The recipe: nginx in the foreground, the folders it writes made at boot.
R=$WORK/recipe
mkdir -p "$R/etc"
cat > "$R/kiln.toml" <<EOF
name = "debnginx"
from = "oci:$L:1"
ready = "tcp:80"
ready_timeout = 120
memory = 256
EOF
cat > "$R/etc/rc" <<'EOF'
#!/bin/sh
mkdir -p /var/lib/nginx /var/log/nginx
exec nginx -g 'daemon off;'
EOF

P=$(port)
t0=$(now)
out=$("$KILN" trace "$R" -p "$P:80" -- "curl -sf -o /dev/null --retry 30 --retry-connrefused --retry-delay 1 -m 10 http://127.0.0.1:$P/" 2>&1) \
    || { echo "$out" >&2; echo "bench-slim: the trace failed" >&2; exit 1; }
t1=$(now)
echo "$out" | grep -E '^kiln: (trace accepted|initramfs with)' | sed 's/^/bench-slim: /'
echo "bench-slim: kiln trace took $(echo "$t0 $t1" | awk '{printf "%.0f", $2-$1}') s (two builds, two boots)"
full=$(ls -d "$KILN_CACHE_DIR"/images/debnginx-*-traced) slim=$(ls -d "$KILN_CACHE_DIR"/images/debnginx-*-minimal)
for d in "$full" "$slim"; do
    python3 - "$d" <<'PY'
import json, sys
m = json.load(open(sys.argv[1] + "/manifest.json"))
i = m["initramfs"]
print(f"bench-slim: {sys.argv[1].rsplit('-', 1)[1]}: initramfs {i['size']} bytes ({i['compression']}), {i['uncompressed_size']} unpacked, {len(m['files'])} paths")
PY
done

# Launch -> first 200, the same memory for both.
boot() {
    local name=$1 target=$2 p t0 t1
    p=$(port)
    t0=$(now)
    "$KILN" run -d --name "$name" --memory 1024 --ready-timeout 300 -p "$p:80" "$target" >/dev/null
    for _ in $(seq 1 30000); do
        curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$p/" && break
        sleep 0.01
    done
    curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$p/" || { echo "bench-slim: $name never answered" >&2; exit 1; }
    t1=$(now)
    "$KILN" rm -f "$name" >/dev/null
    echo "$t0 $t1" | awk '{printf "%.0f\n", ($2-$1)*1000}'
}
f=() s=()
for i in $(seq 1 "$RUNS"); do
    f+=("$(boot full-$i "$full")")
    s+=("$(boot slim-$i "$slim")")
done
mf=$(printf '%s\n' "${f[@]}" | median)
ms=$(printf '%s\n' "${s[@]}" | median)
echo "bench-slim: kiln run -> first HTTP 200, median of $RUNS (ms): every file $mf (${f[*]}), slim $ms (${s[*]})"
awk -v f="$mf" -v s="$ms" 'BEGIN {printf "bench-slim: slim / every file: %.2fx\n", s/f}'
