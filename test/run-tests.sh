#!/bin/sh
# Run test binaries one after another; print a summary; fail if any failed.
# Usage: run-tests.sh <suite name> <build dir> <binary>...
set -u
suite=$1; build=$2; shift 2
export RIVET_BUILD="$build"
# Sanitizer reports of every process (tests and the daemons they start) go to files, so a report
# from a child process that a test does not look at still fails the run.
reports="$build/sanitizer-reports/$suite"
rm -rf "$reports"
mkdir -p "$reports"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:halt_on_error=1:log_path=$PWD/$reports/asan}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1:log_path=$PWD/$reports/ubsan}"
failed=""
n=0
for t in "$@"; do
    n=$((n + 1))
    echo "== $suite: $t"
    if ! "$t"; then
        failed="$failed $t"
    fi
done
if [ -n "$(ls -A "$reports")" ]; then
    for f in "$reports"/*; do echo "== sanitizer report $f"; cat "$f"; done
    failed="$failed (sanitizer reports)"
fi
if [ -n "$failed" ]; then
    echo "FAILED ($suite, $build):$failed"
    exit 1
fi
echo "OK: $n $suite test programs passed ($build)"
