#!/bin/sh
# Minimise each harness's corpus in the repository together with what make fuzz found: keep the
# smallest set of inputs that covers what all of them cover (libFuzzer's -merge=1).
# Usage: merge.sh <fuzz build dir> <name>...
set -eu
build=$1; shift
for name in "$@"; do
    out="$build/merge/$name"
    found="$build/work/$name/corpus"
    rm -rf "$out"
    mkdir -p "$out" "$found"
    "$build/fuzz_$name" -merge=1 -timeout=10 -rss_limit_mb=2048 "$out" "test/fuzz/corpus/$name" \
        "$found" >"$build/merge/$name.log" 2>&1 || {
        tail -n 30 "$build/merge/$name.log"
        exit 1
    }
    before=$(ls "test/fuzz/corpus/$name" | wc -l)
    rm -rf "test/fuzz/corpus/$name"
    mkdir -p "test/fuzz/corpus/$name"
    cp "$out"/* "test/fuzz/corpus/$name/"
    echo "fuzz-merge $name: $before -> $(ls "test/fuzz/corpus/$name" | wc -l) files," \
        "$(du -sk "test/fuzz/corpus/$name" | cut -f1) KiB"
done
