#!/bin/bash
# Entitlement look-ups, as the bot makes one on every message: GET /api/entitlements by Telegram
# user with the bearer token, against a local Redis seeded with linked customers (in the format
# src/apply.lua and the link script write), 64 keep-alive connections on one wrk thread, best of
# several runs; GET /health of the same rivetd in the same run for the ratio (target >= 0.8);
# then the same look-ups with the cache off, each a round trip to Redis.
#
# Usage: bench/entitlements.sh [BUILD_DIR]
# Knobs (environment): BENCH_SECONDS (5), BENCH_ROUNDS (3), BENCH_CUSTOMERS (1000).
set -eu
build=${1:-build}
top=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$top/bench/lib.sh"
dur=${BENCH_SECONDS:-5}
rounds=${BENCH_ROUNDS:-3}
customers=${BENCH_CUSTOMERS:-1000}
token=bench-api-token-0123456789abcdef
first_user=7000000001

for tool in redis-server redis-cli wrk python3 curl; do
    command -v "$tool" >/dev/null || { echo "entitlements bench: $tool is missing (make deps)" >&2; exit 1; }
done
[ -x "$top/$build/rivetd" ] || { echo "entitlements bench: $top/$build/rivetd is missing (make)" >&2; exit 1; }

tmp=$(mktemp -d /tmp/rivet-bench-ent-XXXXXX)
pids=""
cleanup() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    for p in $pids; do wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A local Redis, nothing persisted.
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$tmp" \
    --daemonize no --logfile "$tmp/redis.log" &
pids="$pids $!"
wait_port "$rport"

# Seed linked customers as rivetd keeps them: the customer hash with its subscription, the
# derived entitlement fields and the entitlement JSON in "ent", the Telegram user's and the
# e-mail's index keys. Sent as RESP through redis-cli --pipe.
python3 - "$customers" "$first_user" <<'PY' | redis-cli -p "$rport" --pipe >"$tmp/seed.log"
import sys, time
n, first = int(sys.argv[1]), int(sys.argv[2])
now = int(time.time())
out = sys.stdout.buffer
def cmd(*args):
    out.write(b"*%d\r\n" % len(args))
    for a in args:
        a = str(a).encode()
        out.write(b"$%d\r\n%s\r\n" % (len(a), a))
tiers = ("basic", "pro", "enterprise")
for i in range(n):
    cus = "cus_Bench%010d" % i
    sub = "sub_Bench%010d" % i
    email = "bench%d@example.com" % i
    user = first + i
    tier = tiers[i % 3]
    pe = now + 30 * 86400
    ent = ('{"customer_id":"%s","email":"%s","tier":"%s","status":"active","active":true,'
           '"subscription_id":"%s","current_period_end":%d,"cancel_at_period_end":false,'
           '"telegram_user_id":%d}' % (cus, email, tier, sub, pe, user))
    cmd("HSET", "rivet:customer:" + cus, "customer_id", cus, "email", email, "email_v", now,
        "s:" + sub, "%d|%s|active|%d|0" % (now, tier, pe), "subscription_id", sub, "tier", tier,
        "status", "active", "active", "true", "current_period_end", pe,
        "cancel_at_period_end", "0", "subs", 1, "pd", 0, "telegram_user_id", user,
        "chat_id", user, "ent", ent)
    cmd("SET", "rivet:tg:user:%d" % user, cus)
    cmd("SET", "rivet:email:" + email, cus)
out.flush()
PY
seeded=$(redis-cli -p "$rport" DBSIZE)

# start_rivetd CACHE: a rivetd with ENTITLEMENT_CACHE=CACHE; sets port and rivetd_pid, and checks
# an answer before anything is timed (the last seeded user, by Telegram id).
start_rivetd() {
    port=$(free_port)
    # shellcheck disable=SC2086  # RIVETD_ENV is a list of KEY=VALUE words.
    env $RIVETD_ENV RIVET_API_TOKEN="$token" LISTEN="127.0.0.1:$port" ADMIN_LISTEN= \
        REDIS_URL="redis://127.0.0.1:$rport/0" STRIPE_API_BASE=http://127.0.0.1:1 \
        RECONCILE_INTERVAL=0 ENTITLEMENT_CACHE="$1" "$top/$build/rivetd" 2>"$tmp/rivetd.$1.log" &
    rivetd_pid=$!
    pids="$pids $rivetd_pid"
    wait_port "$port"
    for _ in $(seq 200); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/ready")" = 200 ] && break
        sleep 0.05
    done
    local last want got
    last=$((first_user + customers - 1))
    want="\"telegram_user_id\":$last}"
    got=$(curl -s -H "Authorization: Bearer $token" \
        "http://127.0.0.1:$port/api/entitlements?telegram_user_id=$last")
    case "$got" in
    *"$want") ;;
    *) echo "entitlements bench: unexpected answer for user $last: $got" >&2; exit 1 ;;
    esac
}

# CPU time (user+system, clock ticks) of a process.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
hz=$(getconf CLK_TCK)
redis_pid=$(echo "$pids" | awk '{print $1}')

# Best of several runs, with the CPU each process used in the best one (100% = one core); wrk
# prints a "Non-2xx" line when any answer was not 2xx.
bad=0
best() { # label [wrk script args...]
    local label=$1 b=0 out r cpu="" r0 d0 w
    shift
    for _ in $(seq "$rounds"); do
        r0=$(ticks "$rivetd_pid")
        d0=$(ticks "$redis_pid")
        out=$( { TIMEFORMAT='wrk_cpu %U %S'; time wrk -t1 -c64 -d"${dur}s" "$@"; } 2>&1)
        r=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
        if echo "$out" | grep -q 'Non-2xx'; then
            bad=$((bad + $(echo "$out" | awk '/Non-2xx/ {print $NF}')))
        fi
        w=$(echo "$out" | awk -v d="$dur" '/^wrk_cpu/ {printf "%.0f", 100 * ($2 + $3) / d}')
        if awk -v a="$b" -v c="$r" 'BEGIN{exit !(c > a)}'; then
            b=$r
            cpu=$(awk -v a="$r0" -v b="$(ticks "$rivetd_pid")" -v c="$d0" -v e="$(ticks "$redis_pid")" \
                -v hz="$hz" -v d="$dur" -v w="$w" \
                'BEGIN {printf "rivetd %.0f%%, redis-server %.0f%%, wrk %s%%", 100 * (b - a) / hz / d, 100 * (e - c) / hz / d, w}')
        fi
    done
    echo "$label $b ($cpu)"
}

script="$top/bench/entitlements.lua"
start_rivetd 10000
re=$(best lookup -s "$script" "http://127.0.0.1:$port" -- "$token" "$first_user" "$customers")
rh=$(best health -s "$script" "http://127.0.0.1:$port" -- "$token" "$first_user" "$customers" health)
kill "$rivetd_pid"
wait "$rivetd_pid" 2>/dev/null || true
# The same look-ups with ENTITLEMENT_CACHE=0: each one a round trip to Redis.
start_rivetd 0
ru=$(best lookup -s "$script" "http://127.0.0.1:$port" -- "$token" "$first_user" "$customers")
echo "entitlements: GET /api/entitlements?telegram_user_id=, $customers linked customers ($seeded keys), best of $rounds x wrk -t1 -c64 -d${dur}s, LOG_LEVEL=warn:"
echo "  answered from memory (ENTITLEMENT_CACHE, kept right by Redis): ${re#lookup } req/s"
echo "  GET /health, same rivetd, same wrk script and header:          ${rh#health } req/s"
echo "  every look-up from Redis (ENTITLEMENT_CACHE=0):                ${ru#lookup } req/s"
re=${re#lookup }
re=${re%% *}
rh=${rh#health }
rh=${rh%% *}
ru=${ru#lookup }
ru=${ru%% *}
echo "entitlements: look-up/health = $(awk -v a="$re" -v b="$rh" 'BEGIN{printf "%.2f", a/b}') (target >= 0.80), from Redis every time $(awk -v a="$ru" -v b="$rh" 'BEGIN{printf "%.2f", a/b}'); non-2xx answers: $bad"
[ "$bad" -eq 0 ]
