#!/usr/bin/env bash
# The web API's load check: a fresh `kiln serve` on a private state folder, 200 concurrent API
# readers while 5 rescue VMs boot (tests/e2e/load.mjs), p50/p90/p99 latency and failures.
# Leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
kiln=${KILN:-target/release/kiln}
[ -x "$kiln" ] || { echo "bench-web: $kiln not built (make build)" >&2; exit 1; }
export KILN_INIT=${KILN_INIT:-$PWD/target/guest/kiln-init}
export KILN_STATE_DIR=$(mktemp -d)
log=$KILN_STATE_DIR/serve.log
"$kiln" serve --listen 127.0.0.1:0 2>"$log" &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  for n in $("$kiln" ps --json | sed -n 's/.*"name": "\(.*\)".*/\1/p'); do "$kiln" stop --timeout 0 "$n" || true; done
  rm -rf "$KILN_STATE_DIR"
}
trap cleanup EXIT
for _ in $(seq 200); do grep -q 'serving on' "$log" && break; sleep 0.05; done
url=$(sed -n 's/^kiln: serving on \(http:[^ ]*\)\/ .*/\1/p' "$log")
[ -n "$url" ] || { cat "$log" >&2; exit 1; }
KILN_URL=$url KILN_TOKEN=$(cat "$KILN_STATE_DIR/serve.token") node tests/e2e/load.mjs
