#!/usr/bin/env bash
# Soak (issue 16, `make soak`; not part of `make test`): many VMs over time, then a check that
# nothing leaked.
#   (a) churn: SOAK_VMS (20) VMs started concurrently, each fetched with curl, then stopped and
#       removed concurrently, SOAK_ROUNDS (10) times (cold boots of recipes/httpd, built once);
#   (b) hold:  SOAK_IDLE (100) idle VMs — clones of the image's template — held SOAK_MINUTES (10)
#       minutes, each answering HTTP at the start and at the end;
#   (c) before and after: this soak's QEMU and kiln processes, the open fds of this script's
#       process tree, unix sockets (`ss -xa`), state records, listening ports, the cache's size.
# Everything runs in a private state folder and cache (the kernel and packages are the shared
# cache's, linked); everything it starts is stopped on exit, however it exits. Exit status 0 when
# every VM served and nothing leaked. The figures are printed as a Markdown table at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

KILN=${KILN:-$PWD/target/release/kiln}
export KILN_INIT=${KILN_INIT:-$PWD/target/guest/kiln-init}
SOAK_VMS=${SOAK_VMS:-20}
SOAK_ROUNDS=${SOAK_ROUNDS:-10}
SOAK_IDLE=${SOAK_IDLE:-100}
SOAK_MINUTES=${SOAK_MINUTES:-10}
SOAK_PARALLEL=${SOAK_PARALLEL:-10}
SHARED_CACHE=${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}

WORK=$(mktemp -d /tmp/kiln-soak.XXXXXX)
export KILN_STATE_DIR=$WORK/state XDG_RUNTIME_DIR=$WORK/state KILN_CACHE_DIR=$WORK/cache
STATE=$KILN_STATE_DIR
CACHE=$KILN_CACHE_DIR
mkdir -p "$STATE" "$CACHE"
: >"$WORK/graceful"
for part in kernels src debs apt sysroots unpacked; do
    mkdir -p "$SHARED_CACHE/$part"
    ln -s "$SHARED_CACHE/$part" "$CACHE/$part"
done

FAILED=0
log() { printf '%s soak: %s\n' "$(date +%T)" "$*"; }
fail() {
    log "FAIL: $*"
    FAILED=1
}

# ---- cleanup: everything this soak started goes, however it exits ----------------------------
cleanup() {
    local rc=$?
    set +e
    local names
    names=$(ls "$STATE/vms" 2>/dev/null)
    if [ -n "$names" ]; then
        log "cleanup: removing $(echo "$names" | wc -w) VMs"
        # shellcheck disable=SC2086
        echo $names | xargs -n 10 -P "$SOAK_PARALLEL" "$KILN" rm -f >/dev/null 2>&1
    fi
    for p in $(pids_of_soak); do kill -9 "$p" 2>/dev/null; done
    if [ "$rc" != 0 ] && [ "${SOAK_KEEP:-0}" != 1 ]; then
        local logs
        logs=$(mktemp -d /tmp/kiln-soak-logs.XXXXXX)
        cp "$WORK"/*.log "$logs"/ 2>/dev/null
        log "logs kept in $logs"
    fi
    if [ "${SOAK_KEEP:-0}" = 1 ]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- measures ----------------------------------------------------------------------------------
# kiln and QEMU processes started for this soak: their environment names its state folder (QEMU
# inherits it from its supervisor). Prints "PID COMM" lines.
soak_procs() {
    local p c
    for p in /proc/[0-9]*; do
        { read -r c <"$p/comm"; } 2>/dev/null || continue
        case "$c" in kiln | qemu-system*) ;; *) continue ;; esac
        # (a process that just ended, not yet reaped, has no environment to read)
        if grep -qxzF "KILN_STATE_DIR=$STATE" "$p/environ" 2>/dev/null; then
            echo "${p#/proc/} $c"
        fi
    done
}
pids_of_soak() { soak_procs | cut -d' ' -f1; }
count_soak() { soak_procs | awk -v c="$1" 'index($2, c) == 1 {n++} END {print n + 0}'; }
fds_of_soak_vms() {
    local n=0 p
    for p in $(pids_of_soak); do
        n=$((n + $(ls "/proc/$p/fd" 2>/dev/null | wc -l)))
    done
    echo "$n"
}
qemu_rss_mib() {
    local p
    for p in $(soak_procs | awk '$2 ~ /^qemu/ {print $1}'); do
        grep VmRSS "/proc/$p/status" 2>/dev/null || true
    done | awk '{s += $2} END {print int(s / 1024)}'
}
records() { if [ -d "$STATE/vms" ]; then ls "$STATE/vms" | wc -l; else echo 0; fi; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}'; }
# The open fds of this script and its descendants, less the subshells doing the counting.
fds_of_script_tree() {
    local me=$BASHPID n=0 p
    for p in $(ps -e -o pid=,ppid= | awk -v root=$$ '
        { parent[$1] = $2 } END {
            for (p in parent) { q = p; while (q in parent && q != root && q > 1) q = parent[q];
                                if (q == root) print p } }'); do
        [ "$p" = "$me" ] && continue
        [ "$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null)" = "$me" ] && continue
        n=$((n + $(ls "/proc/$p/fd" 2>/dev/null | wc -l)))
    done
    echo "$n"
}
my_listening() { # ports of this soak's VMs that are listening
    local n=0 p open
    open=$(ss -Htln | awk '{print $4}' | sed 's/.*://' | sort -u)
    for p in "${CHURN_PORTS[@]}" "${IDLE_PORTS[@]}"; do
        grep -qx "$p" <<<"$open" && n=$((n + 1))
    done
    echo "$n"
}
declare -A M
measure() { # LABEL: every figure, kept in M[LABEL.key]
    local l=$1
    M[$l.qemu]=$(count_soak qemu-system)
    M[$l.kiln]=$(count_soak kiln)
    M[$l.vmfds]=$(fds_of_soak_vms)
    M[$l.treefds]=$(fds_of_script_tree)
    M[$l.unix]=$(ss -xa | wc -l)
    M[$l.myunix]=$(ss -xa | grep -c "$WORK" || true)
    M[$l.records]=$(records)
    M[$l.listen]=$(ss -Htln | wc -l)
    M[$l.mylisten]=$(my_listening)
    M[$l.cache]=$(du -sb "$CACHE" | cut -f1)
    M[$l.mem]=$(free -m | awk '/^Mem:/ {print $3}')
    log "measure $l: qemu ${M[$l.qemu]}, kiln ${M[$l.kiln]}, VM fds ${M[$l.vmfds]}, script-tree fds ${M[$l.treefds]}, unix sockets ${M[$l.unix]} (this soak's ${M[$l.myunix]}), records ${M[$l.records]}, listening ${M[$l.listen]} (this soak's ${M[$l.mylisten]}), cache ${M[$l.cache]} B, memory used ${M[$l.mem]} MiB, load $(cut -d' ' -f1-3 /proc/loadavg)"
}

# Free TCP ports on 127.0.0.1, N of them, from BASE up.
pick_ports() {
    local want=$1 p=$2 open out=()
    open=$(ss -Htan | awk '{print $4}' | sed 's/.*://' | sort -u)
    while [ ${#out[@]} -lt "$want" ]; do
        grep -qx "$p" <<<"$open" || out+=("$p")
        p=$((p + 1))
    done
    echo "${out[@]}"
}

http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time "${2:-10}" "http://127.0.0.1:$1/" || true; }

# Run "$@" for each line of stdin (NAME PORT), SOAK_PARALLEL at a time; failures counted.
each() {
    local errs=$WORK/errs.$RANDOM
    : >"$errs"
    xargs -P "$SOAK_PARALLEL" -L 1 bash -c '"$@" || echo "$*" >>'"$errs" _ "$@"
    local n
    n=$(wc -l <"$errs")
    if [ "$n" -gt 0 ]; then
        fail "$n of: $* (first: $(head -1 "$errs"))"
    fi
    rm -f "$errs"
}
# Each command's output is taken whole, then logged in one write: kiln's stderr is unbuffered, so
# concurrent commands writing to one file directly would interleave their lines.
start_vm() { # IMAGE NAME PORT
    local out rc=0
    out=$("$KILN" run -d --ready-timeout 180 --name "$2" -p "$3:80" "$1" 2>&1) || rc=$?
    printf '%s\n' "$out" >>"$WORK/run.log"
    return "$rc"
}
stop_vm() { # NAME: a stop that is not graceful fails
    local out rc=0
    out=$("$KILN" stop "$1" --timeout 30 2>&1) || rc=$?
    printf '%s\n' "$out" >>"$WORK/stop.log"
    case "$out" in *"stopped (Graceful)"*) printf '%s\n' "$1" >>"$WORK/graceful" ;; *) rc=1 ;; esac
    return "$rc"
}
check_http() { # NAME PORT
    local code
    code=$(http_code "$2" 20)
    [ "$code" = 200 ] || {
        echo "$1 on $2: HTTP $code" >&2
        return 1
    }
}
export KILN WORK
export -f start_vm stop_vm check_http http_code

# ---- images ------------------------------------------------------------------------------------
log "work folder $WORK; kiln $KILN"
"$KILN" --version 2>/dev/null | head -1 || true
log "building recipes/httpd (cold image) and a copy with a template (clones)"
t=$(date +%s.%N)
"$KILN" build recipes/httpd -o "$WORK/httpd"
"$KILN" build recipes/httpd -o "$WORK/httpd-tpl" --template
log "images built in $(since "$t") s; cache $(du -sb "$CACHE" | cut -f1) B"

read -ra CHURN_PORTS <<<"$(pick_ports "$SOAK_VMS" 21000)"
read -ra IDLE_PORTS <<<"$(pick_ports "$SOAK_IDLE" 22000)"
churn_list() { for i in $(seq 1 "$SOAK_VMS"); do echo "soak-c$i ${CHURN_PORTS[$((i - 1))]}"; done; }
idle_list() { for i in $(seq 1 "$SOAK_IDLE"); do printf 'soak-i%03d %s\n' "$i" "${IDLE_PORTS[$((i - 1))]}"; done; }

measure before

# ---- (a) churn -----------------------------------------------------------------------------------
log "(a) churn: $SOAK_VMS VMs started and stopped concurrently, $SOAK_ROUNDS rounds"
CHURN_START=()
CHURN_STOP=()
for round in $(seq 1 "$SOAK_ROUNDS"); do
    t0=$(date +%s.%N)
    churn_list | SOAK_PARALLEL=$SOAK_VMS each start_vm "$WORK/httpd"
    CHURN_START+=("$(since "$t0")")
    churn_list | SOAK_PARALLEL=$SOAK_VMS each check_http
    running=$("$KILN" ps --json | grep -c '"state": "running"' || true)
    [ "$running" = "$SOAK_VMS" ] || fail "round $round: $running of $SOAK_VMS running"
    t0=$(date +%s.%N)
    churn_list | cut -d' ' -f1 | SOAK_PARALLEL=$SOAK_VMS each stop_vm
    CHURN_STOP+=("$(since "$t0")")
    # shellcheck disable=SC2046
    "$KILN" rm $(churn_list | cut -d' ' -f1) >>"$WORK/stop.log" 2>&1 || fail "round $round: kiln rm"
    left_q=$(count_soak qemu-system)
    left_r=$(records)
    [ "$left_q" = 0 ] && [ "$left_r" = 0 ] || fail "round $round: $left_q QEMU and $left_r records left"
    log "round $round: $SOAK_VMS started in ${CHURN_START[-1]} s, served, stopped in ${CHURN_STOP[-1]} s; load $(cut -d' ' -f1 /proc/loadavg)"
done
measure after-churn

# ---- (b) hold ------------------------------------------------------------------------------------
log "(b) hold: $SOAK_IDLE idle clones for $SOAK_MINUTES minutes"
t0=$(date +%s.%N)
idle_list | each start_vm "$WORK/httpd-tpl"
IDLE_START=$(since "$t0")
log "$SOAK_IDLE VMs started in $IDLE_START s"
if grep -q 'template of httpd is not used' "$WORK/run.log"; then
    fail "clones booted cold: $(grep -m1 'not used' "$WORK/run.log")"
fi
idle_list | each check_http
measure hold-start
RSS_START=$(qemu_rss_mib)
log "QEMU resident memory, all $SOAK_IDLE: $RSS_START MiB"
HOLD_FROM=$SECONDS
for minute in $(seq 1 "$SOAK_MINUTES"); do
    # The hold itself (idle VMs kept for a while; not a wait for an event): until the minute's
    # mark, whatever the checks took.
    left=$((HOLD_FROM + 60 * minute - SECONDS))
    if [ "$left" -gt 0 ]; then sleep "$left"; fi
    running=$("$KILN" ps --json | grep -c '"state": "running"' || true)
    log "minute $minute: $running of $SOAK_IDLE running, QEMU $(count_soak qemu-system), load $(cut -d' ' -f1-3 /proc/loadavg), memory used $(free -m | awk '/^Mem:/ {print $3}') MiB"
    [ "$running" = "$SOAK_IDLE" ] || fail "minute $minute: $running of $SOAK_IDLE running"
done
idle_list | each check_http
restarts=$("$KILN" ps --json | grep '"restarts"' | grep -vc '"restarts": 0' || true)
[ "$restarts" = 0 ] || fail "$restarts VMs were restarted during the hold"
measure hold-end
RSS_END=$(qemu_rss_mib)
t0=$(date +%s.%N)
idle_list | cut -d' ' -f1 | each stop_vm
IDLE_STOP=$(since "$t0")
graceful=$(wc -l <"$WORK/graceful")
# shellcheck disable=SC2046
"$KILN" rm $(idle_list | cut -d' ' -f1) >>"$WORK/stop.log" 2>&1 || fail "kiln rm"
log "$SOAK_IDLE VMs stopped in $IDLE_STOP s"

measure after

# ---- (c) before and after ------------------------------------------------------------------------
for k in qemu kiln vmfds treefds myunix records mylisten; do
    [ "${M[before.$k]}" = "${M[after.$k]}" ] || fail "$k: ${M[before.$k]} before, ${M[after.$k]} after"
done
stops_total=$((SOAK_VMS * SOAK_ROUNDS + SOAK_IDLE))
[ "$graceful" = "$stops_total" ] || fail "$graceful of $stops_total stops were graceful"
sorted() { printf '%s\n' "$@" | sort -n; }
median() { sorted "$@" | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
maxof() { sorted "$@" | tail -1; }

cat <<EOF

## soak figures ($(date -u +%F), $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB; SOAK_VMS=$SOAK_VMS SOAK_ROUNDS=$SOAK_ROUNDS SOAK_IDLE=$SOAK_IDLE SOAK_MINUTES=$SOAK_MINUTES)

| phase | figure |
|---|---|
| (a) churn | $SOAK_ROUNDS rounds of $SOAK_VMS concurrent cold starts: start median $(median "${CHURN_START[@]}") s, max $(maxof "${CHURN_START[@]}") s; stop median $(median "${CHURN_STOP[@]}") s, max $(maxof "${CHURN_STOP[@]}") s |
| (b) hold | $SOAK_IDLE clones started in $IDLE_START s ($SOAK_PARALLEL at a time), all answered HTTP at the start and after $SOAK_MINUTES min; restarts $restarts; QEMU RSS $RSS_START MiB at the start, $RSS_END MiB at the end; stopped in $IDLE_STOP s |
| stops | $graceful of $stops_total graceful |

| measure | before | after churn | hold start | hold end | after |
|---|---|---|---|---|---|
EOF
row() { echo "| $1 | ${M[before.$2]} | ${M[after-churn.$2]} | ${M[hold-start.$2]} | ${M[hold-end.$2]} | ${M[after.$2]} |"; }
row "QEMU processes (this soak's)" qemu
row "kiln processes (this soak's: supervisors)" kiln
row "open fds of those processes" vmfds
row "open fds of the script's own process tree" treefds
row "unix sockets, whole host (\`ss -xa \| wc -l\`)" unix
row "unix sockets in the soak's folders" myunix
row "state records (\`ls \$KILN_STATE_DIR/vms\`)" records
row "listening TCP ports, whole host" listen
row "listening TCP ports of the soak's VMs" mylisten
row "cache size, bytes (\`du -sb\`, private part)" cache
row "host memory used, MiB" mem
echo
if [ "$FAILED" = 0 ]; then
    log "PASS: every VM served, every stop was graceful, nothing leaked"
else
    log "FAILED (see the FAIL lines above)"
fi
exit "$FAILED"
