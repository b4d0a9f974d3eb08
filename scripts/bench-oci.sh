#!/usr/bin/env bash
# make bench, OCI images (issue 14): time from `kiln run -d REF` to the first HTTP 200 for an
# httpd container image in a local registry, with a cold cache (no blobs, no recipe, no image
# folder of it) and a warm one, beside recipes/httpd (`kiln run -d recipes/httpd`, image built
# already) in the same run; medians of RUNS each, and the ratios. Also `kiln push`/`kiln pull`
# of the recipe's image folder: bytes sent and seconds.
#   RUNS=5
# Everything it starts is stopped on exit; the cache is a folder of its own (KILN_CACHE_DIR)
# except the kernel and busybox it shares with the host's cache (linked in, read only).
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-$PWD/target/release/kiln}
RUNS=${RUNS:-5}
for t in docker-registry skopeo umoci curl; do
    command -v "$t" >/dev/null || { echo "bench-oci: $t missing (scripts/setup.sh installs it)" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/kiln-bench-oci.XXXXXX)
export KILN_STATE_DIR=$WORK/state XDG_RUNTIME_DIR=$WORK/state
mkdir -p "$KILN_STATE_DIR"
PIDS=()
cleanup() {
    for n in $("$KILN" ps --json 2>/dev/null | python3 -c 'import json,sys; print(" ".join(r["name"] for r in json.load(sys.stdin)))' 2>/dev/null); do
        "$KILN" rm -f "$n" >/dev/null 2>&1 || true
    done
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# The registry.
RP=$(port)
cat > "$WORK/reg.yml" <<YML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $WORK/registry
http:
  addr: 127.0.0.1:$RP
YML
docker-registry serve "$WORK/reg.yml" >"$WORK/reg.log" 2>&1 & PIDS+=($!)
for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$RP/v2/" >/dev/null && break; sleep 0.05; done
curl -sf "http://127.0.0.1:$RP/v2/" >/dev/null || { echo "bench-oci: registry did not start" >&2; exit 1; }

# The image: static busybox httpd serving a page, made with umoci.
L=$WORK/layout B=$WORK/bundle
umoci init --layout "$L" && umoci new --image "$L:1"
umoci unpack --rootless --image "$L:1" "$B" >/dev/null
mkdir -p "$B/rootfs/bin" "$B/rootfs/www"
cp /bin/busybox "$B/rootfs/bin/busybox"
for a in sh httpd; do ln -s busybox "$B/rootfs/bin/$a"; done
echo '<h1>Hello from an OCI image</h1>' > "$B/rootfs/www/index.html"
umoci repack --image "$L:1" "$B" >/dev/null
umoci config --image "$L:1" --config.entrypoint /bin/httpd --config.cmd -f --config.cmd -p \
    --config.cmd 80 --config.cmd -h --config.cmd /www --config.exposedports 80/tcp
REF=127.0.0.1:$RP/bench/httpd:1
skopeo copy -q --dest-tls-verify=false "oci:$L:1" "docker://$REF"

# Boot REF (or a recipe) detached and time it to the first 200 on a fresh host port.
boot() {
    local name=$1 target=$2 p t0 t1
    p=$(port)
    t0=$(now)
    "$KILN" run -d --name "$name" -p "$p:80" "$target" >/dev/null
    for _ in $(seq 1 3000); do
        curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$p/" && break
        sleep 0.01
    done
    curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$p/" || { echo "bench-oci: $name never answered" >&2; exit 1; }
    t1=$(now)
    "$KILN" rm -f "$name" >/dev/null
    echo "$t0 $t1" | awk '{printf "%.0f\n", ($2-$1)*1000}'
}

# A cache of its own per cold run, sharing the host's kernels and packages (not the point here).
HOST_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/kiln
"$KILN" build recipes/httpd -o "$WORK/httpd-image" >/dev/null
cold=() warm=() recipe=()
for i in $(seq 1 "$RUNS"); do
    C=$WORK/cache-$i
    mkdir -p "$C"
    for d in kernels debs unpacked apt pvh accel-probe.json; do
        [ -e "$HOST_CACHE/$d" ] && ln -s "$HOST_CACHE/$d" "$C/$d"
    done
    cold+=("$(KILN_CACHE_DIR=$C boot oci-cold-$i "$REF")")
    warm+=("$(KILN_CACHE_DIR=$C boot oci-warm-$i "$REF")")
    recipe+=("$(boot recipe-$i recipes/httpd)")
done
mc=$(printf '%s\n' "${cold[@]}" | median)
mw=$(printf '%s\n' "${warm[@]}" | median)
mr=$(printf '%s\n' "${recipe[@]}" | median)
echo "bench-oci: kiln run REF -> first HTTP 200, median of $RUNS (ms): cold cache $mc (${cold[*]}), warm cache $mw (${warm[*]}); recipes/httpd $mr (${recipe[*]})"
awk -v c="$mc" -v w="$mw" -v r="$mr" 'BEGIN {printf "bench-oci: ratios to the recipe: cold %.2fx, warm %.2fx\n", c/r, w/r}'

# push / pull of the recipe's image folder.
t0=$(now); out=$("$KILN" push "$WORK/httpd-image" "127.0.0.1:$RP/bench/kiln-httpd:1" 2>&1); t1=$(now)
echo "bench-oci: push: $out ($(echo "$t0 $t1" | awk '{printf "%.2f", $2-$1}') s)"
t0=$(now); out=$("$KILN" push "$WORK/httpd-image" "127.0.0.1:$RP/bench/kiln-httpd:1" 2>&1); t1=$(now)
echo "bench-oci: push again: $out ($(echo "$t0 $t1" | awk '{printf "%.2f", $2-$1}') s)"
P=$WORK/cache-pull; mkdir -p "$P"
t0=$(now); KILN_CACHE_DIR=$P "$KILN" pull "127.0.0.1:$RP/bench/kiln-httpd:1" -o "$WORK/pulled" >/dev/null 2>&1; t1=$(now)
echo "bench-oci: pull into an empty cache: $(echo "$t0 $t1" | awk '{printf "%.2f", $2-$1}') s, $(du -sb "$WORK/registry" | cut -f1) bytes in the registry; image folder $(du -sb --apparent-size "$WORK/httpd-image" | cut -f1) bytes"
cmp -s "$WORK/pulled/manifest.json" "$WORK/httpd-image/manifest.json" && cmp -s "$WORK/pulled/vmlinux" "$WORK/httpd-image/vmlinux" \
    || { echo "bench-oci: the pulled folder differs" >&2; exit 1; }
