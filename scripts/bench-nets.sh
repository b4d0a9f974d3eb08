#!/usr/bin/env bash
# make bench, Kiln nets (the last step): in one run,
#  1. VM to VM: two recipes/httpd VMs on one Kiln net (`kiln net create`, `run --net`). VM a
#     fetches a file of MB MiB made with dd in b's RAM root (busybox wget; MB/s from a's own
#     clock), REQS small requests in a row (ms each) and `ping -c 20 b` (avg rtt). The baseline is
#     the same transfer between the same two VMs without the net: a reaches b's published port
#     through QEMU's user networking (10.0.2.2:PORT, i.e. slirp, the host and Kiln's listener).
#     Also frames lost on the net (sent by b's eth1, not received by a's eth1) and b's TCP
#     retransmissions during the run.
#  2. Host to VM: curl fetches the same MB MiB file from the host through Kiln's published port
#     (slirp + Kiln's front listener), through a by-hand QEMU with slirp's own hostfwd, and through
#     passt (not wired into Kiln: started here by hand, with QEMU's `-netdev stream` in place of
#     the user netdev; QEMU's command line is `kiln run --dry-run`'s). Then wrk against each.
# Rounds are interleaved; figures are medians of ROUNDS. Every VM, net and process it starts is
# stopped on exit; any step that fails stops the script with a non-zero status.
#   ROUNDS=5, MB=32, REQS=50, MEM=128 (MiB per VM), WRK_SECONDS=10
#
# passt (Debian 12's 0.0~git20230309), by hand: started as root it runs as nobody, so its socket
# must be in a folder nobody can reach and write (else it still says "UNIX domain socket bound",
# QEMU 7.2 starts with an unconnected NIC and the forwarded port never answers); and it must not
# get --debug/--trace, with which it segfaults (in libc; only with those options) at the first inbound
# TCP connection. -a/-n/-g tell it the guest's static address, netmask and gateway (kiln-init's).
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-$PWD/target/release/kiln}
case "$KILN" in /*) ;; *) KILN=$PWD/$KILN ;; esac
ROUNDS=${ROUNDS:-5}
MB=${MB:-32}
REQS=${REQS:-50}
MEM=${MEM:-128}
WRK_SECONDS=${WRK_SECONDS:-10}
BYTES=$((MB * 1048576))

need=()
command -v passt >/dev/null || need+=(passt)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
    sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# Short: the VMs' unix sockets live under it (107 bytes at most).
WORK=$(mktemp -d /tmp/kbn.XXXXXX)
export KILN_STATE_DIR=$WORK/s XDG_RUNTIME_DIR=$WORK/s
mkdir -p "$KILN_STATE_DIR"
NET=bn
A=bn-a B=bn-b S=bn-s
PIDS=()
cleanup() {
    status=$?
    "$KILN" rm -f "$A" "$B" "$S" >/dev/null 2>&1 || true
    "$KILN" net rm "$NET" >/dev/null 2>&1 || true
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
    [ $status -eq 0 ] || echo "bench-nets: FAILED (status $status)" >&2
}
trap cleanup EXIT
die() { echo "bench-nets: $*" >&2; exit 1; }

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) exit 1; print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
# Wait for PORT to serve PATH with a 200 (a VM started by hand has no readiness check).
wait_200() { # PORT PATH PID... (the processes that must stay up meanwhile)
    local p
    for _ in $(seq 1 600); do
        [ "$(curl -s -m 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1$2" || true)" = 200 ] && return 0
        for p in "${@:3}"; do
            kill -0 "$p" 2>/dev/null || die "a process behind port $1 is gone (pid $p)"
        done
        sleep 0.1
    done
    die "nothing served http://127.0.0.1:$1$2 within 60 s"
}

# The image for the host-to-VM figures: recipes/httpd with the big file made at boot, so a VM
# started by hand (no `kiln exec`) has it too.
cp -r recipes/httpd "$WORK/big"
sed -i "s|^exec httpd|dd if=/dev/zero of=/var/www/big bs=1M count=$MB 2>/dev/null\nexec httpd|" "$WORK/big/etc/rc"
grep -q "of=/var/www/big" "$WORK/big/etc/rc" || die "could not add the big file to the recipe's rc"

echo "== Kiln nets: VM to VM and host to VM ($(nproc) cores, $(qemu-system-x86_64 --version | head -1), $(passt --version 2>/dev/null | head -1 || true) $(dpkg-query -W -f='${Version}' passt 2>/dev/null || true))"
echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"

# --- 1. VM to VM ---------------------------------------------------------------------------
PA=$(port); PB=$(port)
"$KILN" net create "$NET" --subnet 10.88.0.0/24 >/dev/null
"$KILN" run -d --name "$A" --net "$NET" --memory "$MEM" -p "$PA:80" recipes/httpd >/dev/null
"$KILN" run -d --name "$B" --net "$NET" --memory "$MEM" -p "$PB:80" recipes/httpd >/dev/null
"$KILN" exec "$B" -- dd if=/dev/zero of=/var/www/big bs=1M count="$MB" 2>/dev/null \
    || die "could not make a $MB MiB file in $B's /var/www (MEM=$MEM)"
"$KILN" exec "$A" -- grep -qw "$B" /etc/hosts || die "$B is not in $A's /etc/hosts"
NET_URL=http://$B
SLIRP_URL=http://10.0.2.2:$PB
accel=$("$KILN" ps 2>/dev/null | grep -oE '\b(tcg|kvm)\b' | head -1 || true)

# In a: fetch URL, print "start end bytes" (a's uptime, 10 ms steps). wc counts what arrived.
guest_fetch() { # URL
    "$KILN" exec "$A" -- sh -c 's=$(cut -d" " -f1 /proc/uptime); n=$(wget -q -O - "$1" | wc -c); e=$(cut -d" " -f1 /proc/uptime); echo "$s $e $n"' sh "$1"
}
mbps() { # "start end bytes" -> MB/s (10^6 bytes), fails on a short transfer
    read -r s e n <<<"$1"
    [ "$n" = "$BYTES" ] || die "short transfer: $n of $BYTES bytes"
    awk -v s="$s" -v e="$e" -v n="$n" 'BEGIN { if (e <= s) exit 1; printf "%.1f\n", n / (e - s) / 1e6 }'
}
guest_reqs() { # URL -> ms per request over REQS requests in a row
    out=$("$KILN" exec "$A" -- sh -c 's=$(cut -d" " -f1 /proc/uptime); i=0; while [ $i -lt '"$REQS"' ]; do wget -q -O /dev/null "$1" || exit 1; i=$((i+1)); done; e=$(cut -d" " -f1 /proc/uptime); echo "$s $e"' sh "$1") \
        || die "small requests to $1 failed"
    read -r s e <<<"$out"
    awk -v s="$s" -v e="$e" -v n="$REQS" 'BEGIN { printf "%.1f\n", (e - s) * 1000 / n }'
}
stat_() { "$KILN" exec "$1" -- cat "/sys/class/net/eth1/statistics/$2"; }
retrans() { "$KILN" exec "$B" -- awk '/^Tcp:/ && $13 ~ /^[0-9]+$/ {print $13}' /proc/net/snmp; }

# Warm up both paths once (the first request pays ARP, name lookup and translation).
guest_fetch "$NET_URL/" >/dev/null; guest_fetch "$SLIRP_URL/" >/dev/null
tx0=$(stat_ "$B" tx_packets); rx0=$(stat_ "$A" rx_packets); re0=$(retrans)
net_t=(); slirp_t=()
for _ in $(seq 1 "$ROUNDS"); do
    net_t+=("$(mbps "$(guest_fetch "$NET_URL/big")")")
    slirp_t+=("$(mbps "$(guest_fetch "$SLIRP_URL/big")")")
done
tx1=$(stat_ "$B" tx_packets); rx1=$(stat_ "$A" rx_packets); re1=$(retrans)
net_r=(); slirp_r=()
for _ in $(seq 1 "$ROUNDS"); do
    net_r+=("$(guest_reqs "$NET_URL/")")
    slirp_r+=("$(guest_reqs "$SLIRP_URL/")")
done
ping_out=$("$KILN" exec "$A" -- ping -c 20 -i 0.2 "$B") || die "ping $B over the net failed: $ping_out"
loss=$(echo "$ping_out" | grep -oE '[0-9.]+% packet loss')
rtt=$(echo "$ping_out" | awk -F'[/ =]+' '/round-trip/ {print $(NF-3) " / " $(NF-2) " / " $(NF-1)}')
[ -n "$rtt" ] || die "no rtt in ping's output: $ping_out"

nt=$(printf '%s\n' "${net_t[@]}" | median); st=$(printf '%s\n' "${slirp_t[@]}" | median)
nr=$(printf '%s\n' "${net_r[@]}" | median); sr=$(printf '%s\n' "${slirp_r[@]}" | median)
echo "VM to VM (recipes/httpd, --memory $MEM, ${accel:-?}), $ROUNDS rounds interleaved, medians:"
printf '  throughput, wget of %d MiB from b (MB/s)  net %6.1f  [%s]   slirp via b'"'"'s published port %6.1f  [%s]   net/slirp %.2fx\n' \
    "$MB" "$nt" "${net_t[*]}" "$st" "${slirp_t[*]}" "$(awk -v a="$nt" -v b="$st" 'BEGIN {print a/b}')"
printf '  %d small requests in a row (ms each)      net %6.1f  [%s]   slirp via b'"'"'s published port %6.1f  [%s]   net/slirp %.2fx\n' \
    "$REQS" "$nr" "${net_r[*]}" "$sr" "${slirp_r[*]}" "$(awk -v a="$nr" -v b="$sr" 'BEGIN {print a/b}')"
echo "  ping -c 20 b over the net: rtt min / avg / max $rtt ms, $loss (no slirp baseline: slirp answers ICMP to 10.0.2.2 itself and cannot forward it to b)"
echo "  during the $ROUNDS net transfers: b's eth1 sent $((tx1 - tx0)) frames, a's eth1 received $((rx1 - rx0)) (lost $((tx1 - tx0 - (rx1 - rx0)))); b's TCP retransmitted $((re1 - re0)) segments (both paths)"

# --- 2. Host to VM: Kiln's published port, slirp's hostfwd by hand, passt by hand --------------
PS=$(port); PH=$(port); PP=$(port)
"$KILN" run -d --name "$S" --memory "$MEM" -p "$PS:80" "$WORK/big" >/dev/null

# QEMU's command line for the same image, from `kiln run --dry-run` (one argument a line), with
# the console to a file and its sockets in DIR. NETDEV replaces the user netdev ("" keeps it).
hand_vm() { # DIR HOSTPORT NETDEV -> QEMU's pid in DIR/qemu.pid
    local dir=$1 hp=$2 nd=$3 args=() out=() a
    mkdir -p "$dir"
    "$KILN" run --dry-run --name bn-h --memory "$MEM" -p "$hp:80" "$WORK/big" >"$dir/dry" 2>/dev/null
    mapfile -d '' args < <(python3 -c 'import shlex, sys
print("\0".join(shlex.split(open(sys.argv[1]).read().replace("\\\n", " "))), end="\0")' "$dir/dry")
    [ "${args[0]:-}" = qemu-system-x86_64 ] || die "unexpected --dry-run output: $(head -3 "$dir/dry")"
    local n=0
    for a in "${args[@]}"; do
        case "$a" in
            user,id=net0,*) n=1; [ -z "$nd" ] || a=$nd ;;
            socket,id=con0,*) a="file,id=con0,path=$dir/console.log" ;;
        esac
        a=$(sed -E "s#(path=|unix:)[^,]*/([^/,]+\.sock)#\1$dir/\2#" <<<"$a")
        out+=("$a")
    done
    [ $n = 1 ] || die "no user netdev in --dry-run's QEMU command line"
    "${out[@]}" >"$dir/qemu.out" 2>&1 &
    echo $! >"$dir/qemu.pid"
    PIDS+=($!)
}
hand_vm "$WORK/h" "$PH" ""
H_PID=$(cat "$WORK/h/qemu.pid")
mkdir -p "$WORK/p"
# passt started as root runs as nobody: it must reach its folder (and says "bound" even when it
# could not bind there).
chmod 711 "$WORK"
chmod 1777 "$WORK/p"
passt -f -1 -4 -q -a 10.0.2.15 -n 24 -g 10.0.2.2 -s "$WORK/p/passt.sock" -t "$PP:80" >"$WORK/p/passt.out" 2>&1 &
P_PASST=$!
PIDS+=($P_PASST)
for _ in $(seq 1 50); do [ -S "$WORK/p/passt.sock" ] && break; kill -0 $P_PASST 2>/dev/null || break; sleep 0.1; done
[ -S "$WORK/p/passt.sock" ] || die "passt did not bind its socket: $(cat "$WORK/p/passt.out")"
hand_vm "$WORK/p" "$PP" "stream,id=net0,server=off,addr.type=unix,addr.path=$WORK/p/passt.sock"
P_PID=$(cat "$WORK/p/qemu.pid")
wait_200 "$PS" /big $$ # `run -d` returned once ready
wait_200 "$PH" /big "$H_PID"
wait_200 "$PP" /big "$P_PID" "$P_PASST"

host_fetch() { # PORT -> MB/s
    out=$(curl -s -m 120 -o /dev/null -w '%{http_code} %{size_download} %{time_total}' "http://127.0.0.1:$1/big") || die "curl from port $1 failed"
    read -r code n t <<<"$out"
    [ "$code" = 200 ] && [ "$n" = "$BYTES" ] || die "port $1: HTTP $code, $n of $BYTES bytes"
    awk -v n="$n" -v t="$t" 'BEGIN { printf "%.1f\n", n / t / 1e6 }'
}
kiln_h=(); hand_h=(); passt_h=()
for _ in $(seq 1 "$ROUNDS"); do
    kiln_h+=("$(host_fetch "$PS")")
    hand_h+=("$(host_fetch "$PH")")
    passt_h+=("$(host_fetch "$PP")")
done
kill -0 "$P_PASST" 2>/dev/null || die "passt died: $(cat "$WORK/p/passt.out")"
wrk_run() { # PORT -> "rps socket_errors(connect/read/write/timeout) non2xx"
    out=$(wrk -t2 -c50 -d"${WRK_SECONDS}s" "http://127.0.0.1:$1/" 2>&1) || die "wrk on port $1 failed: $out"
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    errs=$(echo "$out" | awk '/Socket errors/ {gsub(",",""); print $4 "/" $6 "/" $8 "/" $10}')
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
    [ -n "$rps" ] || die "no requests/s in wrk's output: $out"
    echo "$rps ${errs:-0/0/0/0} ${non2xx:-0}"
}
wk=$(wrk_run "$PS"); wh=$(wrk_run "$PH"); wp=$(wrk_run "$PP")
kill -0 "$P_PASST" 2>/dev/null || die "passt died: $(cat "$WORK/p/passt.out")"

kt=$(printf '%s\n' "${kiln_h[@]}" | median); ht=$(printf '%s\n' "${hand_h[@]}" | median); pt=$(printf '%s\n' "${passt_h[@]}" | median)
echo "host to VM (recipes/httpd + a $MB MiB file made at boot, --memory $MEM), $ROUNDS rounds interleaved, medians:"
printf '  curl of %d MiB (MB/s)   Kiln published port (slirp + front) %6.1f [%s]   slirp hostfwd by hand %6.1f [%s]   passt %6.1f [%s]   passt/Kiln %.2fx\n' \
    "$MB" "$kt" "${kiln_h[*]}" "$ht" "${hand_h[*]}" "$pt" "${passt_h[*]}" "$(awk -v a="$pt" -v b="$kt" 'BEGIN {print a/b}')"
echo "$wk $wh $wp" | awk -v s="$WRK_SECONDS" '{
  printf "  wrk -t2 -c50 -d%ss /   Kiln published port %6.0f req/s (socket errors connect/read/write/timeout %s, non-2xx %d)   slirp hostfwd by hand %6.0f (%s, %d)   passt %6.0f (%s, %d)   passt/Kiln %.2fx\n",
    s, $1, $2, $3, $4, $5, $6, $7, $8, $9, $7/$1 }'
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
