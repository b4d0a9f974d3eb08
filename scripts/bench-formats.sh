#!/usr/bin/env bash
# make bench, root formats (issue 18): recipes/httpd built as each `[image] format` (initramfs,
# disk, qcow2, erofs, squashfs, iso): the root image's size, the build time, and `kiln run` to the
# first HTTP 200 (median of RUNS boots, `kiln bench`), with the ratio to the initramfs in the same
# run. Then the ISO booted on QEMU's `pc` machine from the CD-ROM (ISOLINUX, bzImage, virtio-net-pci):
# QEMU start to the first HTTP 200, median of ISO_RUNS; and the same image netbooted
# (`kiln netboot`: QEMU's TFTP, iPXE on virtio-net-pci), start to the first HTTP 200.
#   RUNS=5 ISO_RUNS=3
# Everything it starts is stopped on exit; images and state live in a folder of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-$PWD/target/release/kiln}
RUNS=${RUNS:-5}
ISO_RUNS=${ISO_RUNS:-3}
WORK=$(mktemp -d /tmp/kiln-bench-formats.XXXXXX)
export KILN_STATE_DIR=$WORK/state XDG_RUNTIME_DIR=$WORK/state
mkdir -p "$KILN_STATE_DIR"
QPID=
cleanup() {
    [ -n "$QPID" ] && kill "$QPID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf '%-10s %12s %10s %14s %8s\n' format "root bytes" "build s" "HTTP 200 ms" ratio
base=
for fmt in initramfs disk qcow2 erofs squashfs iso; do
    r=$WORK/httpd-$fmt
    cp -r recipes/httpd "$r"
    sed -i "s/^compression = \"zstd\"/format = \"$fmt\"/" "$r/kiln.toml"
    t0=$(now)
    "$KILN" build "$r" -o "$WORK/img-$fmt" >/dev/null 2>&1
    build_s=$(echo "$(now) - $t0" | bc)
    bytes=$(python3 -c "import json; print(json.load(open('$WORK/img-$fmt/manifest.json'))['initramfs']['size'])")
    ms=$("$KILN" bench "$r" --boots "$RUNS" --json 2>/dev/null | python3 -c '
import json, sys
r = json.load(sys.stdin)
m = [x for x in r["metrics"] if x["metric"].startswith("run to first HTTP 200")][0]
print(round(m["kiln"]["median"]))')
    [ -z "$base" ] && base=$ms
    printf '%-10s %12s %10.1f %14s %8.2f\n' "$fmt" "$bytes" "$build_s" "$ms" "$(echo "$ms / $base" | bc -l)"
done

iso=$WORK/img-iso/kiln.iso
echo "iso: $(stat -c %s "$iso") bytes; booted on -M pc from the CD-ROM (TCG):"
# boot_times LABEL COMMAND...: run COMMAND ISO_RUNS times in the background (@PORT@ in its
# arguments becomes a free port forwarded to the guest's 80) and print start → first HTTP 200.
boot_times() {
    local label=$1; shift
    local times=() p t0 deadline m
    for _ in $(seq "$ISO_RUNS"); do
        p=$(port)
        t0=$(now)
        "${@//@PORT@/$p}" >/dev/null 2>&1 &
        QPID=$!
        deadline=$(( $(date +%s) + 180 ))
        until curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$p/" 2>/dev/null; do
            [ "$(date +%s)" -lt "$deadline" ] || { echo "bench-formats: $label did not serve in 180 s" >&2; exit 1; }
            sleep 0.1
        done
        times+=("$(echo "($(now) - $t0) * 1000" | bc | cut -d. -f1)")
        kill "$QPID"; wait "$QPID" 2>/dev/null || true; QPID=
    done
    m=$(printf '%s\n' "${times[@]}" | median)
    echo "$label: start to first HTTP 200 ${times[*]} ms, median $m ms ($(echo "$m / $base" | bc -l | cut -c1-4)x the initramfs microVM)"
}
boot_times "iso on -M pc" qemu-system-x86_64 -M pc -accel tcg -m 128 -nodefaults -no-user-config \
    -display none -no-reboot -cdrom "$iso" -boot d -serial null \
    -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:@PORT@-:80" -device virtio-net-pci,netdev=n0
boot_times "kiln netboot (QEMU TFTP, iPXE, -M pc)" "$KILN" netboot "$WORK/img-iso" -p "127.0.0.1:@PORT@:80"
