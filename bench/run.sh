#!/bin/bash
# make bench: every benchmark in turn; each prints its own figures.
set -u
build=${1:-build}
dir=$(dirname "$0")
status=0
for b in health memory checkout webhook apply_script entitlements failover; do
    if [ -x "$dir/$b.sh" ]; then
        echo "== bench: $b"
        "$dir/$b.sh" "$build" || status=1
    fi
done
exit $status
