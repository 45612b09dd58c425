#!/bin/bash
# Run rivetd with the local development setup: Redis and (unless real Stripe is configured) the
# fake Stripe in the background, rivetd in the foreground. Ctrl-C stops all three.
# Usage: conf/run-local.sh [BUILD_DIR]
set -eu
build=${1:-build}
top=$(cd "$(dirname "$0")/.." && pwd)
state=${RIVET_LOCAL_DIR:-$top/build/local}
mkdir -p "$state"
pids=""
cleanup() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

wait_port() {
    i=0
    while ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
        i=$((i + 1))
        if [ $i -gt 100 ]; then echo "run-local: nothing listens on port $1" >&2; exit 1; fi
        sleep 0.1
    done
}

# Redis with the durable settings of conf/redis-rivet.conf, data kept in build/local.
redis-server "$top/conf/redis-rivet.conf" --port 6390 --bind 127.0.0.1 --dir "$state" \
    --daemonize no --logfile "$state/redis.log" &
pids="$pids $!"

api_base=${STRIPE_API_BASE:-http://127.0.0.1:12111}
case "$api_base" in
http://127.0.0.1:12111)
    python3 "$top/test/fake_stripe.py" --port 12111 \
        --prices price_basic_local,price_pro_local,price_enterprise_local \
        >"$state/fake-stripe.log" 2>&1 &
    pids="$pids $!"
    wait_port 12111
    # As Stripe would, the fake signs every event it records from now on and delivers it to
    # rivetd's webhook endpoint (retrying until rivetd listens).
    listen=${LISTEN:-127.0.0.1:8000}
    secret=${STRIPE_WEBHOOK_SECRET:-whsec_local_development_secret}
    curl -s -o /dev/null -X POST http://127.0.0.1:12111/_fake/webhooks \
        -d "{\"url\":\"http://$listen/api/webhooks/stripe\",\"secret\":\"${secret%%,*}\"}" ||
        echo "run-local: could not point the fake's webhooks at rivetd" >&2
    echo "run-local: fake Stripe on 127.0.0.1:12111 (log: $state/fake-stripe.log), webhooks to http://$listen"
    ;;
*)
    echo "run-local: using Stripe at $api_base"
    ;;
esac
wait_port 6390
echo "run-local: Redis on 127.0.0.1:6390 (data: $state)"
echo "run-local: rivetd on http://127.0.0.1:8000 (admin http://127.0.0.1:8001); Ctrl-C stops"
"$top/$build/rivetd" --config "$top/conf/rivet.local.env" &
pids="$pids $!"
wait $!
