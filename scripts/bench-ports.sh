#!/usr/bin/env bash
# make bench, published ports under load (issue 13): redis-benchmark against recipes/redis and
# wrk against recipes/nginx, each beside the same server run on the host (loopback, a folder of
# its own) in the same run; prints requests/s, errors and the VM/host ratio.
#   RUNS=5 (redis-benchmark runs), WRK_SECONDS=10
# Everything it starts is stopped on exit. Needs wrk, redis-benchmark, redis-server and nginx;
# installs the missing ones with apt without starting Debian's own services.
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-$PWD/target/release/kiln}
RUNS=${RUNS:-5}
WRK_SECONDS=${WRK_SECONDS:-10}

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
command -v redis-server >/dev/null || need+=(redis-server)
command -v nginx >/dev/null || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
    # policy-rc.d 101: Debian's maintainer scripts do not start the packages' services.
    sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
    had_policy=0
    [ -e /usr/sbin/policy-rc.d ] && had_policy=1
    [ $had_policy = 1 ] || printf '#!/bin/sh\nexit 101\n' | sudo_ tee /usr/sbin/policy-rc.d >/dev/null
    sudo_ chmod +x /usr/sbin/policy-rc.d
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
    [ $had_policy = 1 ] || sudo_ rm -f /usr/sbin/policy-rc.d
fi

WORK=$(mktemp -d /tmp/kiln-bench-ports.XXXXXX)
export KILN_STATE_DIR=$WORK/state XDG_RUNTIME_DIR=$WORK/state
mkdir -p "$KILN_STATE_DIR"
PIDS=()
cleanup() {
    "$KILN" rm -f bp-redis bp-nginx >/dev/null 2>&1 || true
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bench-ports: nothing listens on $1" >&2
    return 1
}

# The VMs.
VR=$(port); VN=$(port)
"$KILN" run -d --name bp-redis -p "$VR:6379" recipes/redis >/dev/null
"$KILN" run -d --name bp-nginx -p "$VN:80" recipes/nginx >/dev/null

# The same servers on the host: redis without persistence, nginx serving the recipe's page.
HR=$(port); HN=$(port)
redis-server --port "$HR" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" \
    --logfile "$WORK/redis.log" &
PIDS+=($!)
mkdir -p "$WORK/www" "$WORK/nginx"
chmod 755 "$WORK" "$WORK/www"   # nginx's workers run as an unprivileged user
cp recipes/nginx/files/var/www/index.html "$WORK/www/index.html"
cat >"$WORK/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    server { listen 127.0.0.1:$HN; root $WORK/www; }
}
EOF
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
PIDS+=($!)
wait_port "$HR"; wait_port "$HN"; wait_port "$VR"; wait_port "$VN"

echo "== published ports under load ($(nproc) cores, $(qemu-system-x86_64 --version | head -1))"
redis_runs() { # PORT -> lines "set get errors"
    for i in $(seq 1 "$RUNS"); do
        # A run that stalls (as through a one-deep forward) is stopped and counts as failed.
        out=$(timeout 120 redis-benchmark -q -n 20000 -c 50 -p "$1" -t set,get 2>&1) || { echo "run $i failed: $(echo "$out" | tr "\r" "\n" | tail -2)" >&2; echo "0 0 1"; continue; }
        set_rps=$(echo "$out" | tr '\r' '\n' | awk '/^SET:/ {print $2}' | tail -1)
        get_rps=$(echo "$out" | tr '\r' '\n' | awk '/^GET:/ {print $2}' | tail -1)
        errs=$(echo "$out" | grep -ciE "error|reset" || true)
        echo "${set_rps:-0} ${get_rps:-0} $errs"
    done
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
summary() { # NAME LINES
    local set get errs
    set=$(echo "$2" | awk '{print $1}' | median)
    get=$(echo "$2" | awk '{print $2}' | median)
    errs=$(echo "$2" | awk '{s+=$3} END {print s}')
    ok=$(echo "$2" | awk '$1>0 && $2>0 && $3==0' | wc -l)
    echo "$1 $set $get $errs $ok"
}
vm=$(summary vm "$(redis_runs "$VR")")
host=$(summary host "$(redis_runs "$HR")")
echo "$vm $host" | awk -v runs="$RUNS" '{
  printf "redis-benchmark -q -n 20000 -c 50 -t set,get, %d runs (median requests/s):\n", runs;
  printf "  VM (recipes/redis)  SET %8.0f  GET %8.0f  runs completed %d/%d, error lines %d\n", $2, $3, $5, runs, $4;
  printf "  host redis-server   SET %8.0f  GET %8.0f  runs completed %d/%d, error lines %d\n", $7, $8, $10, runs, $9;
  if ($7 > 0 && $8 > 0) printf "  VM/host             SET %.3fx  GET %.3fx\n", $2/$7, $3/$8 }'

wrk_run() { # PORT -> "rps socket_errors non2xx"
    out=$(wrk -t2 -c50 -d"${WRK_SECONDS}s" "http://127.0.0.1:$1/" 2>&1)
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    errs=$(echo "$out" | awk '/Socket errors/ {gsub(",",""); print $4+$6+$8+$10}')
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
    echo "${rps:-0} ${errs:-0} ${non2xx:-0}"
}
wv=$(wrk_run "$VN")
wh=$(wrk_run "$HN")
echo "$wv $wh" | awk -v s="$WRK_SECONDS" '{
  printf "wrk -t2 -c50 -d%ss:\n", s;
  printf "  VM (recipes/nginx)  %8.0f requests/s, socket errors %d, non-2xx %d\n", $1, $2, $3;
  printf "  host nginx          %8.0f requests/s, socket errors %d, non-2xx %d\n", $4, $5, $6;
  if ($4 > 0) printf "  VM/host             %.3fx\n", $1/$4 }'
