#!/bin/sh
# Run test binaries one after another; print a summary; fail if any failed.
# Usage: run-tests.sh <suite name> <build dir> <binary>...
set -u
suite=$1; build=$2; shift 2
export RIVET_BUILD="$build"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
failed=""
n=0
for t in "$@"; do
    n=$((n + 1))
    echo "== $suite: $t"
    if ! "$t"; then
        failed="$failed $t"
    fi
done
if [ -n "$failed" ]; then
    echo "FAILED ($suite, $build):$failed"
    exit 1
fi
echo "OK: $n $suite test programs passed ($build)"
