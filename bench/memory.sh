#!/bin/bash
# Resident memory of rivetd: idle, with 10,000 idle keep-alive connections, and after a long
# constant load (growth check).
set -eu
build=${1:-build}
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/bench/lib.sh"
tmp=$(mktemp -d)
pids=""
cleanup() { for p in $pids; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

port=$(free_port)
env $RIVETD_ENV LISTEN=127.0.0.1:$port ADMIN_LISTEN= REDIS_URL=redis://127.0.0.1:1/0 \
    MAX_CONNECTIONS=20000 IDLE_TIMEOUT_MS=600000 "$top/$build/rivetd" 2>"$tmp/r.log" &
pid=$!
pids="$pids $pid"
wait_port "$port"
sleep 0.5
echo "memory: idle resident size: $(rss_kib $pid) KiB (target <= 10240)"

python3 - "$port" "$tmp/ready" <<'PY' &
import socket, sys, time, resource
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
port = int(sys.argv[1])
socks = []
for i in range(10000):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    socks.append(s)
ok = 0
for s in socks:
    if s.recv(4096).startswith(b"HTTP/1.1 200"):
        ok += 1
open(sys.argv[2], "w").write(str(ok))
time.sleep(600)
PY
cpid=$!
pids="$pids $cpid"
for _ in $(seq 600); do [ -s "$tmp/ready" ] && break; sleep 0.1; done
echo "memory: with $(cat "$tmp/ready") idle keep-alive connections (each answered once): $(rss_kib $pid) KiB (target <= 65536)"
kill "$cpid"; wait "$cpid" 2>/dev/null || true

before=$(rss_kib $pid)
wrk -t1 -c64 -d10s "http://127.0.0.1:$port/health" >/dev/null
mid=$(rss_kib $pid)
wrk -t1 -c64 -d10s "http://127.0.0.1:$port/health" >/dev/null
after=$(rss_kib $pid)
echo "memory: constant load, RSS before/after 10 s/after 20 s: $before / $mid / $after KiB"

# Anonymous attacks on a daemon with the default limits (MAX_BODY_BUFFER, MAX_CONNECTIONS):
# bodies, headers, pipelined input and answers it could be made to hold.
kill "$pid"; wait "$pid" 2>/dev/null || true
port=$(free_port)
env $RIVETD_ENV LISTEN=127.0.0.1:$port ADMIN_LISTEN= REDIS_URL=redis://127.0.0.1:1/0 \
    "$top/$build/rivetd" 2>"$tmp/h.log" &
pid=$!
pids="$pids $pid"
wait_port "$port"
python3 "$top/bench/hostile_memory.py" "$port" "$pid"
