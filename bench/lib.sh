# Shared helpers for the benchmark scripts (sourced).
free_port() {
    python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}
wait_port() {
    i=0
    while ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
        i=$((i + 1))
        [ $i -gt 200 ] && { echo "bench: nothing listens on port $1" >&2; return 1; }
        sleep 0.05
    done
}
# Test configuration for rivetd (required keys).
RIVETD_ENV="STRIPE_SECRET_KEY=sk_test_bench_key_0000 STRIPE_WEBHOOK_SECRET=whsec_bench_secret_0000
STRIPE_PRICE_BASIC=price_basic_bench STRIPE_PRICE_PRO=price_pro_bench
STRIPE_PRICE_ENTERPRISE=price_enterprise_bench LOG_LEVEL=warn RATE_LIMIT_PER_MIN=0"
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
