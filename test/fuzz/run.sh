#!/bin/sh
# Run libFuzzer harnesses one after another and print one line per harness from libFuzzer's final
# statistics; fail if any harness crashed, leaked, timed out or had a sanitizer report.
# Usage: run.sh <fuzz build dir> <seconds> <fresh|keep> <name>...
#   fresh: new inputs go to an emptied scratch directory, <build>/smoke/<name>/corpus (smoke runs
#          are independent of each other);
#   keep:  new inputs accumulate in <build>/work/<name>/corpus across runs (long runs build on
#          the last, and a smoke run meanwhile does not touch them).
# Before fuzzing, every file under test/fuzz/regressions/<name>/ is replayed once.
# New inputs never go into test/fuzz/corpus: that directory is only read.
# FUZZ_FLAGS in the environment adds libFuzzer options to the timed runs.
set -u
build=$1; seconds=$2; scratch_mode=$3; shift 3

# Reports must reach the log this script reads, whatever the caller's environment says.
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

# Markers of a report in a log, in case a harness ever exits 0 after printing one.
report_re='ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:'
report_re="$report_re|SUMMARY: (Address|Undefined|Leak)Sanitizer|fuzz: property failed"

# Larger inputs than libFuzzer's default for the harnesses whose limits lie beyond 4 KiB.
max_len() {
    case $1 in
    http) echo 20000 ;;
    provision | validate) echo 16384 ;;
    *) echo 8192 ;;
    esac
}

# The harnesses whose input is JSON share one dictionary.
dict_of() {
    case $1 in
    provision | validate) echo json ;;
    *) echo "$1" ;;
    esac
}

failed=""
for name in "$@"; do
    bin="$build/fuzz_$name"
    work="$build/work/$name"
    [ "$scratch_mode" = fresh ] && work="$build/smoke/$name"
    corpus="$work/corpus"
    artifacts="$work/artifacts/"
    log="$work/fuzz.log"
    [ "$scratch_mode" = fresh ] && rm -rf "$corpus"
    mkdir -p "$corpus" "$artifacts"
    rm -f "$artifacts"/* "$log"

    status=ok
    regressions="test/fuzz/regressions/$name"
    if [ -d "$regressions" ] && [ -n "$(ls -A "$regressions")" ]; then
        # Given files rather than directories, libFuzzer runs each once and stops at a crash.
        if ! "$bin" -timeout=10 -artifact_prefix="$artifacts" "$regressions"/* \
            >"$work/regressions.log" 2>&1 ||
            grep -Eq "$report_re" "$work/regressions.log"; then
            status="FAILED (regression replay)"
            cat "$work/regressions.log"
        fi
    fi

    dict=""
    [ -f "test/fuzz/$(dict_of "$name").dict" ] && dict="-dict=test/fuzz/$(dict_of "$name").dict"
    # shellcheck disable=SC2086
    "$bin" -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        -max_len="$(max_len "$name")" -artifact_prefix="$artifacts" $dict ${FUZZ_FLAGS:-} \
        "$corpus" "test/fuzz/corpus/$name" >"$log" 2>&1
    rc=$?
    if [ $rc -ne 0 ] || grep -Eq "$report_re" "$log"; then
        status="FAILED (exit $rc)"
        tail -n 60 "$log"
        ls "$artifacts" | sed "s|^|    artifact: $artifacts|"
    fi

    stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -n 1; }
    # The last status line ("#N DONE cov: ... ft: ... corp: ...") carries coverage and corpus.
    last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -n 1)
    field() { echo "$last" | sed -n "s/.* $1: *\([^ ]*\).*/\1/p"; }
    execs=$(stat number_of_executed_units)
    rate=$(stat average_exec_per_sec)
    if [ -z "$execs" ]; then
        # Fork mode prints no final statistics: take the count from the last status line.
        execs=$(echo "$last" | sed -n 's/^#\([0-9]*\).*/\1/p')
        [ -n "$execs" ] && rate=$((execs / seconds))
    fi
    printf 'fuzz %-12s %s: %s execs, %s exec/s, cov %s, ft %s, corpus %s, %s s\n' "$name" \
        "$status" "$execs" "$rate" "$(field cov)" "$(field ft)" "$(field corp)" "$seconds"
    [ "$status" = ok ] || failed="$failed $name"
done

if [ -n "$failed" ]; then
    echo "fuzz: FAILED:$failed (logs and inputs under ${work%/*}/<name>/)"
    exit 1
fi
echo "fuzz: OK: $# harnesses"
