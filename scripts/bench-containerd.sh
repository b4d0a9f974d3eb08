#!/usr/bin/env bash
# make bench, containerd (issue 15): `ctr run --rm` of a small image (static busybox; prints a line
# and exits) to its output, with runtime io.containerd.kiln.v2 (a Kiln microVM) beside
# io.containerd.runc.v2 (runc) in the same run, under a private containerd (its own root, state
# and socket in a temp folder; needs root). Medians of RUNS (default 5) and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
SHIM=$PWD/target/release/containerd-shim-kiln-v2
[ "$(id -u)" = 0 ] || { echo "bench-containerd: needs root (containerd)" >&2; exit 1; }
for t in containerd ctr runc docker-registry skopeo umoci; do
    command -v "$t" >/dev/null || { echo "bench-containerd: $t missing (scripts/setup.sh)" >&2; exit 1; }
done
cargo build --release -q -p kiln-shim
W=$(mktemp -d /tmp/kbc.XXXXXX)
PIDS=()
cleanup() {
    for id in $(ctr --address "$W/c.sock" c ls -q 2>/dev/null); do
        ctr --address "$W/c.sock" t kill -s KILL "$id" >/dev/null 2>&1 || true
        ctr --address "$W/c.sock" c rm "$id" >/dev/null 2>&1 || true
    done
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    umount -R "$W/root" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
RP=$(port)
printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$W/reg" "$RP" > "$W/reg.yml"
docker-registry serve "$W/reg.yml" >"$W/reg.log" 2>&1 & PIDS+=($!)
printf 'version = 2\nroot = "%s"\nstate = "%s"\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "%s"\n[ttrpc]\n  address = "%s"\n' \
    "$W/root" "$W/state" "$W/c.sock" "$W/c.sock.ttrpc" > "$W/containerd.toml"
PATH="$(dirname "$SHIM"):$PATH" KILN_STATE_DIR="$W/kiln" XDG_RUNTIME_DIR="$W/kiln" \
    KILN_INIT="$PWD/target/guest/kiln-init" containerd --config "$W/containerd.toml" >"$W/containerd.log" 2>&1 & PIDS+=($!)
for _ in $(seq 1 300); do
    [ -S "$W/c.sock" ] && curl -sf "http://127.0.0.1:$RP/v2/" >/dev/null && break
    sleep 0.05
done
L=$W/layout B=$W/bundle
umoci init --layout "$L" && umoci new --image "$L:1"
umoci unpack --rootless --image "$L:1" "$B" >/dev/null
mkdir -p "$B/rootfs/bin"; cp /bin/busybox "$B/rootfs/bin/busybox"; ln -s busybox "$B/rootfs/bin/sh"
umoci repack --image "$L:1" "$B" >/dev/null
umoci config --image "$L:1" --config.entrypoint /bin/sh --config.cmd -c --config.cmd 'echo hello from a container'
REF=127.0.0.1:$RP/hello:1
skopeo copy -q --dest-tls-verify=false "oci:$L:1" "docker://$REF"
C() { ctr --address "$W/c.sock" "$@"; }
C images pull --plain-http "$REF" >/dev/null
one() {
    local rt=$1 id=$2 t0 t1 out
    t0=$(date +%s.%N)
    out=$(timeout 300 ctr --address "$W/c.sock" run --rm --runtime "$rt" "$REF" "$id")
    t1=$(date +%s.%N)
    [ "$out" = "hello from a container" ] || { echo "bench-containerd: $rt printed: $out" >&2; exit 1; }
    echo "$t0 $t1" | awk '{printf "%.0f\n", ($2-$1)*1000}'
}
kiln=() runc=()
for i in $(seq 1 "$RUNS"); do
    kiln+=("$(one io.containerd.kiln.v2 k$i)")
    runc+=("$(one io.containerd.runc.v2 r$i)")
done
mk=$(printf '%s\n' "${kiln[@]}" | median); mr=$(printf '%s\n' "${runc[@]}" | median)
echo "bench-containerd: ctr run --rm -> output, median of $RUNS (ms): kiln $mk (${kiln[*]}), runc $mr (${runc[*]})"
awk -v k="$mk" -v r="$mr" 'BEGIN {printf "bench-containerd: kiln / runc %.1fx\n", k/r}'
