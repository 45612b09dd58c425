#!/bin/bash
# shellcheck disable=SC2317  # cleanup and ready are called indirectly (trap, wait_for).
# Webhook benchmark: signed Stripe events with distinct ids over 64 keep-alive connections,
# verified, de-duplicated and enqueued by rivetd into a local Redis. Three passes: Redis without
# persistence (appendonly no), then with appendonly yes + appendfsync everysec, then without
# persistence again with more connections, until rivetd's own core is the limit (the capacity of
# one worker). Each pass checks that the stream holds exactly one entry per 200 answer.
#
# Usage: bench/webhook.sh [BUILD_DIR]
# Knobs (environment): BENCH_SECONDS (10), BENCH_CONNECTIONS (64), BENCH_PEAK_CONNECTIONS (256;
# 0 skips that pass), BENCH_EVENT (an event JSON, default
# test/events/customer.subscription.created.json), WORKERS (1).
set -eu
build=${1:-build}
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
dur=${BENCH_SECONDS:-10}
conns=${BENCH_CONNECTIONS:-64}
peak_conns=${BENCH_PEAK_CONNECTIONS:-256}
event=${BENCH_EVENT:-test/events/customer.subscription.created.json}
workers=${WORKERS:-1}
secret=whsec_bench_webhook_0123456789
load="$build/bench/webhook_load"

for tool in redis-server redis-cli curl python3; do
    if ! command -v "$tool" >/dev/null; then
        echo "webhook bench: $tool is missing (make deps)" >&2
        exit 1
    fi
done
[ -x "$build/rivetd" ] || { echo "webhook bench: $build/rivetd is missing (make)" >&2; exit 1; }
if [ ! -x "$load" ] || [ bench/webhook_load.c -nt "$load" ]; then
    make -s BUILD="$build" "$load" >/dev/null
fi

tmp=$(mktemp -d /tmp/rivet-bench-webhook-XXXXXX)
pids=""
cleanup() {
    for p in $pids; do
        kill "$p" 2>/dev/null || true
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

# Wait up to 10 s for a command to succeed.
wait_for() {
    local i=0
    until "$@" >/dev/null 2>&1; do
        i=$((i + 1))
        if [ $i -gt 200 ]; then
            echo "webhook bench: timed out waiting for: $*" >&2
            return 1
        fi
        sleep 0.05
    done
}

ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/ready")" = 200 ]; }

# CPU time (user+system, clock ticks) of a process and its threads.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# CPU ticks of rivetd: with WORKERS > 1, the supervisor's children too.
rivetd_ticks() {
    local sum kids
    sum=$(ticks "$1")
    kids=$(cat "/proc/$1/task/$1/children" 2>/dev/null || true)
    for k in $kids; do
        sum=$((sum + $(ticks "$k")))
    done
    echo "$sum"
}

field() { awk -F= -v k="$1" '$1 == k {print $2}' "$2"; }

hz=$(getconf CLK_TCK)
failed=0

# run_pass KEY CONNECTIONS LABEL REDIS_ARGS...
run_pass() {
    local name=$1 conns=$2 label=$3
    shift 3
    local rport lport out
    rport=$(free_port)
    mkdir -p "$tmp/$name"
    redis-server --port "$rport" --bind 127.0.0.1 --save "" --dir "$tmp/$name" --daemonize no \
        --logfile "$tmp/$name/redis.log" "$@" &
    local redis_pid=$!
    pids="$pids $redis_pid"
    wait_for redis-cli -p "$rport" ping

    lport=$(free_port)
    env STRIPE_SECRET_KEY=sk_test_bench_webhook STRIPE_WEBHOOK_SECRET="$secret" \
        STRIPE_PRICE_BASIC=price_basic_local STRIPE_PRICE_PRO=price_pro_local \
        STRIPE_PRICE_ENTERPRISE=price_enterprise_local LOG_LEVEL=warn WORKERS="$workers" \
        RECONCILE_INTERVAL=0 LISTEN="127.0.0.1:$lport" ADMIN_LISTEN= REDIS_URL="redis://127.0.0.1:$rport/0" \
        "$build/rivetd" 2>"$tmp/$name/rivetd.log" &
    local rivetd_pid=$!
    pids="$pids $rivetd_pid"
    wait_for ready "$lport"

    out="$tmp/$name/load.out"
    local r0 d0 t0 t1
    r0=$(rivetd_ticks "$rivetd_pid")
    d0=$(ticks "$redis_pid")
    t0=$(date +%s.%N)
    "$load" -p "$lport" -c "$conns" -d "$dur" -s "$secret" -f "$event" >"$out"
    t1=$(date +%s.%N)
    local r1 d1 rcpu dcpu per
    r1=$(rivetd_ticks "$rivetd_pid")
    d1=$(ticks "$redis_pid")
    rcpu=$(awk -v a="$r0" -v b="$r1" -v hz="$hz" -v s="$t0" -v e="$t1" \
        'BEGIN {printf "%.0f", 100 * (b - a) / hz / (e - s)}')
    dcpu=$(awk -v a="$d0" -v b="$d1" -v hz="$hz" -v s="$t0" -v e="$t1" \
        'BEGIN {printf "%.0f", 100 * (b - a) / hz / (e - s)}')
    # CPU time per accepted event (the answers still due after the timed part are counted too).
    per=$(awk -v ra="$r0" -v rb="$r1" -v da="$d0" -v db="$d1" -v hz="$hz" \
        -v n="$(field ok "$out")" 'BEGIN {
            if (n > 0) printf "rivetd %.1f us   redis-server %.1f us", \
                1e6 * (rb - ra) / hz / n, 1e6 * (db - da) / hz / n
            else printf "no event accepted" }')

    local xlen ok non200 errors unanswered
    xlen=$(redis-cli -p "$rport" xlen rivet:provisioning)
    ok=$(field ok "$out")
    non200=$(field non200 "$out")
    errors=$(field errors "$out")
    unanswered=$(field unanswered "$out")

    echo "webhook: $label"
    echo "  events/s verified+deduplicated+enqueued: $(field rate_ok "$out")" \
        "(${dur}s, $conns keep-alive connections, rivetd WORKERS=$workers, LOG_LEVEL=warn)"
    echo "  event: $event, sent as $(field body_bytes "$out") bytes of compact JSON, distinct ids"
    echo "  answers: 200: $ok   non-200: $non200 (4xx $(field status_4xx "$out")," \
        "5xx $(field status_5xx "$out"))   connection errors: $errors   unanswered: $unanswered"
    echo "  latency: p50 $(field latency_p50_ms "$out") ms" \
        "  p99 $(field latency_p99_ms "$out") ms   max $(field latency_max_ms "$out") ms"
    echo "  CPU (100% = one core): rivetd $rcpu%   redis-server $dcpu%" \
        "  load generator $(field client_cpu_pct "$out")%"
    echo "  CPU per accepted event: $per"
    echo "  stream: XLEN rivet:provisioning = $xlen, 200 answers for distinct ids = $ok"
    # The script's own cost inside Redis (EVALSHA: the apply script; the target is 12 us).
    local script
    script=$(redis-cli -p "$rport" info commandstats | tr -d '\r' |
        awk -F'[:,=]' '/^cmdstat_evalsha:/ {printf "%s calls, %s us per call", $3, $7}')
    echo "  apply script inside Redis: ${script:-no EVALSHA recorded} (target <= 12 us)"
    if [ "$xlen" != "$ok" ]; then
        echo "  FAIL: the stream does not hold exactly one entry per 200 answer" >&2
        failed=1
    fi
    if [ "${ok:-0}" -eq 0 ]; then
        echo "  FAIL: no event was accepted" >&2
        failed=1
    fi
    # Warnings other than the expected one about appendonly.
    local said
    said=$(grep -v 'appendonly is off' "$tmp/$name/rivetd.log" | head -5 || true)
    if [ -n "$said" ]; then
        echo "  rivetd logged:"
        echo "$said" | sed 's/^/    /'
    fi

    kill "$rivetd_pid" "$redis_pid" 2>/dev/null || true
    wait "$rivetd_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
    pids=""
}

echo "webhook bench: $(nproc) cores, load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
run_pass aof-no "$conns" "Redis appendonly no (no persistence: a restart loses the stream)" \
    --appendonly no
run_pass aof-everysec "$conns" "Redis appendonly yes, appendfsync everysec" --appendonly yes \
    --appendfsync everysec
if [ "$peak_conns" -gt 0 ]; then
    run_pass peak "$peak_conns" \
        "capacity: Redis appendonly no, $peak_conns connections (rivetd's core is the limit)" \
        --appendonly no
fi
echo "webhook: target >= 25000 events/s on the 2-core reference machine"
exit $failed
