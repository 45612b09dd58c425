#!/bin/bash
# The apply script's cost inside Redis, path by path (bench/apply_script.py says which), against
# a local Redis without persistence: the cost of the script alone, without rivetd or a load
# generator sharing the cores. bench/webhook.sh gives the same figure under full load.
#
# Usage: bench/apply_script.sh [BUILD_DIR]    Knob: BENCH_CALLS (100000 per path).
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$top/bench/lib.sh"
for tool in redis-server redis-cli python3; do
    command -v "$tool" >/dev/null || { echo "apply script bench: $tool is missing (make deps)" >&2; exit 1; }
done
tmp=$(mktemp -d /tmp/rivet-bench-script-XXXXXX)
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$(free_port)
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$tmp" \
    --daemonize no --logfile "$tmp/redis.log" &
pid=$!
wait_port "$port"
echo "apply script: src/apply.lua, EVALSHA as rivetd sends it, 64 pipelined; $(redis-server --version | cut -d' ' -f3)"
python3 "$top/bench/apply_script.py" "$port" "$top/src/apply.lua" "${BENCH_CALLS:-100000}"
echo "apply script: target <= 12 us per call (floor: what any script that marks the event, reads the record and appends the entry costs on this Redis)"
