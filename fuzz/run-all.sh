#!/usr/bin/env bash
# Runs every fuzz target one after another, FUZZ_SECONDS each (default 600), one job
# each. New corpus entries go to a scratch directory ($FUZZ_WORK/corpus/<target>); the
# seeds in fuzz/corpus/<target> are only read. Crashes land in fuzz/artifacts/<target>/.
# Prints one summary line per target and exits non-zero if any target crashed.
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-600}
work=${FUZZ_WORK:-/tmp/serviceq-fuzz}
targets=${FUZZ_TARGETS:-"request_head chunked properties forward_roundtrip"}
target_dir=${CARGO_TARGET_DIR:-$PWD/fuzz/target}
root=$PWD
cargo +nightly fuzz build -a --target-dir "$target_dir" || exit 2
failed=0
for t in $targets; do
    dict=$root/fuzz/http.dict
    [ "$t" = properties ] && dict=$root/fuzz/properties.dict
    mkdir -p "$work/corpus/$t" "$work/logs/$t" "$root/fuzz/artifacts/$t"
    # -jobs=1 makes libFuzzer write its log to fuzz-0.log in the working directory.
    (cd "$work/logs/$t" && "$target_dir/x86_64-unknown-linux-gnu/release/$t" \
        -artifact_prefix="$root/fuzz/artifacts/$t/" -dict="$dict" \
        -max_total_time="$seconds" -jobs=1 -print_final_stats=1 \
        "$work/corpus/$t" "$root/fuzz/corpus/$t" >/dev/null 2>&1)
    rc=$?
    log=$work/logs/$t/fuzz-0.log
    runs=$(grep -Eo 'Done [0-9]+ runs' "$log" | tail -1)
    crashes=$(ls "$root/fuzz/artifacts/$t" 2>/dev/null | wc -l)
    echo "$t: exit $rc, ${runs:-no run count}, $crashes artifact(s), log $log"
    [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ] && failed=1
done
exit $failed
