#!/bin/bash
# shellcheck disable=SC2317  # cleanup and the predicates are called indirectly (trap, wait_for).
# Failover benchmark: Redis primary + replica under three sentinels, two rivetd finding the
# primary through them, webhook load (bench/webhook_load) through both instances, kill -9 of the
# primary during the load, and the old primary restarted on its port and directory (the sentinels
# turn it into a replica of the new primary). Three passes: REDIS_MIN_REPLICAS=1 with one
# replica, =1 with two replicas, =0 with one. Each prints the events acknowledged and refused,
# how long webhooks were refused (first non-200 to last non-200 answer) and the longest time
# without any acknowledgement, and holds the final primary's stream against the 200 answers:
# every acknowledged event must be there exactly once (required with REDIS_MIN_REPLICAS=1; with
# 0, acknowledged events that had not reached the replica when the primary died are counted).
#
# Then capacity figures: one instance's webhook rate with REDIS_MIN_REPLICAS=0 and =1 (with the
# replica), and the Redis primary's cost per event (INFO commandstats: the apply script's
# usec_per_call, and redis-server's CPU time per acknowledged event).
#
# Usage: bench/failover.sh [BUILD_DIR]
# Knobs (environment): FAILOVER_SECONDS (20: the load; the sentinels wait about 10 s after the
# old primary is back before they convert it, and the load should outlast that), KILL_AT (3),
# FAILOVER_PASSES ("1:1 1:2 0:1", MIN_REPLICAS:replicas), CAPACITY_PASSES ("0 1"),
# BENCH_SECONDS (5: each capacity run), BENCH_CONNECTIONS (64), BENCH_EVENT.
set -eu
build=${1:-build}
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
fdur=${FAILOVER_SECONDS:-20}
kill_at=${KILL_AT:-3}
cdur=${BENCH_SECONDS:-5}
conns=${BENCH_CONNECTIONS:-64}
event=${BENCH_EVENT:-test/events/customer.subscription.created.json}
secret=whsec_bench_failover_0123456789
load="$build/bench/webhook_load"
master=rivetbench

for tool in redis-server redis-cli curl python3; do
    if ! command -v "$tool" >/dev/null; then
        echo "failover bench: $tool is missing (make deps)" >&2
        exit 1
    fi
done
[ -x "$build/rivetd" ] || { echo "failover bench: $build/rivetd is missing (make)" >&2; exit 1; }
if [ ! -x "$load" ] || [ bench/webhook_load.c -nt "$load" ]; then
    make -s BUILD="$build" "$load" >/dev/null
fi

tmp=$(mktemp -d /tmp/rivet-bench-failover-XXXXXX)
pids=""
cleanup() {
    for p in $pids; do
        kill -9 "$p" 2>/dev/null || true
    done
    for p in $pids; do
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

# Wait up to $WAIT_LIMIT (default 10) seconds for a command to succeed.
wait_for() {
    local i=0 limit=$((${WAIT_LIMIT:-10} * 20))
    until "$@" >/dev/null 2>&1; do
        i=$((i + 1))
        if [ $i -gt $limit ]; then
            echo "failover bench: timed out waiting for: $*" >&2
            return 1
        fi
        sleep 0.05
    done
}

ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/ready")" = 200 ]; }
field() { awk -F= -v k="$1" '$1 == k {print $2}' "$2"; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
now_ms() { awk '{printf "%d", $1 * 1000}' /proc/uptime; }
hz=$(getconf CLK_TCK)
failed=0

# redis_start NAME PORT [MASTER_PORT]: a data node in $tmp/NAME (kept across restarts); sets
# $redis_pid.
redis_start() {
    local name=$1 port=$2
    mkdir -p "$tmp/$name"
    local extra=()
    [ $# -ge 3 ] && extra=(--replicaof 127.0.0.1 "$3")
    redis-server --port "$port" --bind 127.0.0.1 --dir "$tmp/$name" --appendonly yes \
        --appendfsync everysec --save "" --repl-diskless-sync-delay 0 \
        --replica-announce-ip 127.0.0.1 --daemonize no --logfile "$tmp/$name/redis.log" \
        "${extra[@]}" &
    redis_pid=$!
    pids="$pids $redis_pid"
    wait_for redis-cli -p "$port" ping
}

linked() { redis-cli -p "$1" info replication | tr -d '\r' | grep -q '^master_link_status:up'; }
is_slave() { [ "$(redis-cli -p "$1" role | head -1)" = slave ] && linked "$1"; }
named() { redis-cli -p "$1" sentinel get-master-addr-by-name "$master" | tail -1; }
promoted() { [ "$(named "$1")" != "$2" ]; }
settled() {
    local out
    out=$(redis-cli -p "$1" sentinel master "$master" | tr -d '\r')
    echo "$out" | grep -A1 '^num-slaves$' | tail -1 | grep -qx "$2" &&
        echo "$out" | grep -A1 '^num-other-sentinels$' | tail -1 | grep -qx 2
}

# rivetd_start NAME MIN_REPLICAS REDIS_SETTING...: sets $rivetd_pid and $rivetd_port.
rivetd_start() {
    local name=$1 min=$2
    shift 2
    rivetd_port=$(free_port)
    env STRIPE_SECRET_KEY=sk_test_bench_failover STRIPE_WEBHOOK_SECRET="$secret" \
        STRIPE_PRICE_BASIC=price_basic_local STRIPE_PRICE_PRO=price_pro_local \
        STRIPE_PRICE_ENTERPRISE=price_enterprise_local LOG_LEVEL=warn ADMIN_LISTEN= \
        RECONCILE_INTERVAL=0 LISTEN="127.0.0.1:$rivetd_port" REDIS_MIN_REPLICAS="$min" "$@" \
        "$build/rivetd" 2>"$tmp/$name.log" &
    rivetd_pid=$!
    pids="$pids $rivetd_pid"
    wait_for ready "$rivetd_port"
}

# The final primary's stream, one stripe_event_id a line.
stream_ids() {
    redis-cli -p "$1" --raw xrange rivet:provisioning - + | awk 'p {print; p = 0} /^stripe_event_id$/ {p = 1}'
}

# ---- failover under load ------------------------------------------------------------------------

# failover_pass MIN_REPLICAS REPLICAS
failover_pass() {
    local min=$1 nrep=$2 name="fo$1-$2"
    local dir="$tmp/$name"
    mkdir -p "$dir"
    local pport rport rports="" r
    pport=$(free_port)
    redis_start "$name/primary" "$pport"
    local ppid=$redis_pid
    for r in $(seq "$nrep"); do
        rport=$(free_port)
        redis_start "$name/replica$r" "$rport" "$pport"
        wait_for linked "$rport"
        rports="$rports $rport"
    done
    local sports="" s sp
    for s in 1 2 3; do
        sp=$(free_port)
        mkdir -p "$dir/s$s"
        printf '%s\n' "port $sp" "bind 127.0.0.1" "daemonize no" "dir $dir/s$s" \
            "logfile $dir/s$s/sentinel.log" "sentinel monitor $master 127.0.0.1 $pport 2" \
            "sentinel down-after-milliseconds $master 1000" \
            "sentinel failover-timeout $master 3000" >"$dir/s$s/sentinel.conf"
        redis-server "$dir/s$s/sentinel.conf" --sentinel &
        pids="$pids $!"
        wait_for redis-cli -p "$sp" ping
        sports="$sports $sp"
    done
    for sp in $sports; do WAIT_LIMIT=30 wait_for settled "$sp" "$nrep"; done
    local list
    list=$(for sp in $sports; do printf '127.0.0.1:%s,' "$sp"; done)
    rivetd_start "$name/rivetd1" "$min" REDIS_SENTINELS="${list%,}" REDIS_SENTINEL_MASTER=$master
    local port1=$rivetd_port
    rivetd_start "$name/rivetd2" "$min" REDIS_SENTINELS="${list%,}" REDIS_SENTINEL_MASTER=$master
    local port2=$rivetd_port

    local half=$((conns / 2))
    "$load" -p "$port1" -c "$half" -d "$fdur" -s "$secret" -f "$event" -o "$dir/a1.txt" >"$dir/l1.out" &
    local l1=$!
    "$load" -p "$port2" -c "$half" -d "$fdur" -s "$secret" -f "$event" -o "$dir/a2.txt" >"$dir/l2.out" &
    local l2=$!
    sleep "$kill_at"
    local t_kill t_promoted t_restart t_rejoined
    t_kill=$(now_ms)
    kill -9 "$ppid"
    wait "$ppid" 2>/dev/null || true
    local first
    first=$(echo "$sports" | awk '{print $1}')
    WAIT_LIMIT=30 wait_for promoted "$first" "$pport"
    t_promoted=$(now_ms)
    local newport
    newport=$(named "$first")
    redis_start "$name/primary" "$pport"
    t_restart=$(now_ms)
    WAIT_LIMIT=40 wait_for is_slave "$pport" || failed=1
    t_rejoined=$(now_ms)
    wait "$l1" "$l2"

    # Every acknowledged event in the new primary's stream exactly once.
    stream_ids "$newport" | sort >"$dir/stream.txt"
    cat "$dir/a1.txt" "$dir/a2.txt" >"$dir/answers.txt"
    awk '$2 == 200 {print $1}' "$dir/answers.txt" | sort >"$dir/acked.txt"
    local acked refused errors dups missing xlen
    acked=$(wc -l <"$dir/acked.txt")
    refused=$(awk '$2 != 200 && $2 != 0' "$dir/answers.txt" | wc -l)
    errors=$(awk '$2 == 0' "$dir/answers.txt" | wc -l)
    xlen=$(wc -l <"$dir/stream.txt")
    dups=$(uniq -d "$dir/stream.txt" | wc -l)
    missing=$(comm -23 "$dir/acked.txt" <(uniq "$dir/stream.txt") | wc -l)
    local f1 f2 l1b l2b window
    f1=$(field first_non200_mono_ms "$dir/l1.out")
    f2=$(field first_non200_mono_ms "$dir/l2.out")
    l1b=$(field last_non200_mono_ms "$dir/l1.out")
    l2b=$(field last_non200_mono_ms "$dir/l2.out")
    window=$(awk -v a="$f1" -v b="$f2" -v c="$l1b" -v d="$l2b" 'BEGIN {
        f = (a > 0 && (b == 0 || a < b)) ? a : b; l = c > d ? c : d;
        print (f > 0 ? l - f : 0) }')
    local gap
    gap=$(awk '$2 == 200 {print $3}' "$dir/answers.txt" | sort -n |
        awk 'NR > 1 && $1 - p > m {m = $1 - p} {p = $1} END {print m + 0}')

    echo "failover: REDIS_MIN_REPLICAS=$min with $nrep replica(s), ${fdur}s of webhooks through" \
        "2 instances ($half connections each), kill -9 of the primary at ${kill_at}s"
    echo "  events acknowledged (200): $acked   refused (non-200): $refused" \
        "  connection errors: $errors"
    echo "  webhooks refused for $window ms (first non-200 to last non-200 answer);" \
        "longest time without a 200: $gap ms"
    echo "  kill -9 -> sentinels promoted the replica: $((t_promoted - t_kill)) ms;" \
        "old primary restarted -> a replica again: $((t_rejoined - t_restart)) ms"
    echo "  final primary's stream: $xlen entries, $dups event ids more than once," \
        "$missing acknowledged events missing"
    if [ "$dups" -ne 0 ]; then
        echo "  FAIL: an event is in the stream more than once" >&2
        failed=1
    fi
    if [ "$missing" -ne 0 ]; then
        if [ "$min" -ge 1 ]; then
            echo "  FAIL: acknowledged events are missing" >&2
            failed=1
        else
            echo "  (REDIS_MIN_REPLICAS=0: acknowledged before the replica had them, lost with" \
                "the primary)"
        fi
    else
        echo "  check: every 200 is in the final primary's stream exactly once"
    fi
    if [ "$acked" -eq 0 ]; then
        echo "  FAIL: nothing was acknowledged" >&2
        failed=1
    fi
    cleanup_pass
}

cleanup_pass() {
    for p in $pids; do
        kill -9 "$p" 2>/dev/null || true
    done
    for p in $pids; do
        wait "$p" 2>/dev/null || true
    done
    pids=""
}

# ---- capacity -----------------------------------------------------------------------------------

# capacity_pass MIN_REPLICAS: one rivetd on a primary with one replica.
capacity_pass() {
    local min=$1 dir="$tmp/cap$1"
    mkdir -p "$dir"
    local pport rport
    pport=$(free_port)
    rport=$(free_port)
    redis_start "cap$min/primary" "$pport"
    local ppid=$redis_pid
    redis_start "cap$min/replica" "$rport" "$pport"
    wait_for linked "$rport"
    rivetd_start "cap$min/rivetd" "$min" REDIS_URL="redis://127.0.0.1:$pport/0"
    redis-cli -p "$pport" config resetstat >/dev/null
    local m0 m1
    m0=$(redis-cli -p "$pport" info memory | tr -d '\r' | awk -F: '$1 == "used_memory" {print $2}')
    local d0 t0 t1
    d0=$(ticks "$ppid")
    t0=$(now_ms)
    "$load" -p "$rivetd_port" -c "$conns" -d "$cdur" -s "$secret" -f "$event" >"$dir/load.out"
    t1=$(now_ms)
    local ok d1 stats
    ok=$(field ok "$dir/load.out")
    d1=$(ticks "$ppid")
    stats=$(redis-cli -p "$pport" info commandstats | tr -d '\r')
    m1=$(redis-cli -p "$pport" info memory | tr -d '\r' | awk -F: '$1 == "used_memory" {print $2}')
    local evalsha wait_us cpu_pct cpu_per_event
    evalsha=$(echo "$stats" | awk -F'[:,=]' '/^cmdstat_evalsha:/ {print $7}')
    wait_us=$(echo "$stats" | awk -F'[:,=]' '/^cmdstat_wait:/ {print $7}')
    cpu_pct=$(awk -v a="$d0" -v b="$d1" -v hz="$hz" -v s="$t0" -v e="$t1" \
        'BEGIN {printf "%.0f", 100 * (b - a) / hz / ((e - s) / 1000)}')
    cpu_per_event=$(awk -v a="$d0" -v b="$d1" -v hz="$hz" -v n="$ok" \
        'BEGIN {printf "%.1f", (n > 0 ? 1e6 * (b - a) / hz / n : 0)}')
    echo "capacity: one rivetd, REDIS_MIN_REPLICAS=$min (primary + 1 replica, appendonly yes" \
        "everysec), $conns connections, ${cdur}s"
    echo "  events/s acknowledged: $(field rate_ok "$dir/load.out")   non-200:" \
        "$(field non200 "$dir/load.out")   latency p50 $(field latency_p50_ms "$dir/load.out") ms" \
        "p99 $(field latency_p99_ms "$dir/load.out") ms"
    echo "  Redis primary: apply script ${evalsha:-?} us per call${wait_us:+, WAIT $wait_us us per call};" \
        "redis-server CPU $cpu_pct% of a core = $cpu_per_event us per acknowledged event" \
        "(one core: about $(awk -v c="$cpu_per_event" 'BEGIN {printf "%d", (c > 0 ? 1e6 / c : 0)}')" \
        "events/s)"
    echo "  memory: $(awk -v a="$m0" -v b="$m1" -v n="$ok" 'BEGIN {printf "%d", (n > 0 ? (b - a) / n : 0)}')" \
        "bytes of Redis memory per event (stream entry, event id, customer record)"
    cleanup_pass
}

echo "failover bench: $(nproc) cores, load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for p in ${FAILOVER_PASSES-1:1 1:2 0:1}; do failover_pass "${p%:*}" "${p#*:}"; done
for m in ${CAPACITY_PASSES-0 1}; do capacity_pass "$m"; done
exit $failed
