#!/usr/bin/env bash
# The demo: build recipes/httpd, boot it detached, fetch its page with curl, show the timing.
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-target/release/kiln}
PORT=${PORT:-8080}
NAME=demo-httpd

"$KILN" stop "$NAME" >/dev/null 2>&1 || true
# The default kernel is Kiln's tiny one: compiled once (a few minutes on 2 cores), cached after.
"$KILN" kernel build
"$KILN" build recipes/httpd -o out/httpd
start=$(date +%s%N)
"$KILN" run out/httpd --detach --name "$NAME" -p "$PORT:80" &
runpid=$!
# Poll with short, overlapping attempts: slirp accepts a connection before the guest is up.
deadline=$(( $(date +%s) + 60 ))
until code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 0.5 "http://127.0.0.1:$PORT/") && [ "$code" = 200 ]; do
  if [ "$(date +%s)" -ge "$deadline" ]; then echo "demo: no HTTP 200 within 60 s" >&2; exit 1; fi
done
end=$(date +%s%N)
wait "$runpid"
echo
curl -s "http://127.0.0.1:$PORT/"
echo
printf 'demo: kiln run -> first HTTP 200 in %d ms\n' $(( (end - start) / 1000000 ))
"$KILN" ps
"$KILN" stop "$NAME"
"$KILN" rm "$NAME" >/dev/null
