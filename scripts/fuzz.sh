#!/usr/bin/env bash
# Fuzz every target (or those named) for SECS seconds each under libFuzzer with
# cargo-fuzz (nightly toolchain, `cargo install cargo-fuzz`), niced, one after another:
#
#   scripts/fuzz.sh [-t SECS] [-j JOBS] [TARGET...]       (default: 300 s, 1 job, all)
#
# Each target starts from its checked-in corpus (fuzz/corpus/<target>/) and works in
# target/fuzz-corpus/<target>/ (kept between runs, not tracked). Bounds per input: 10 s
# (-timeout, a hang), 2 GiB of RSS and 512 MiB in one allocation. A crash, hang or
# out-of-memory input lands in fuzz/artifacts/<target>/ and the script goes on with the
# next target and exits 1 at the end; turn each one into a regression input
# (fuzz/corpus/<target>/regress-<what>, which `cargo test` replays) and fix the bug.
#
# Results (executions, executions per second, coverage, corpus size, verdict) go to
# stdout and to target/fuzz-results.tsv, one line per target and run.
#
# Without cargo-fuzz (or for a quick run on stable), the same bodies run under the
# test-suite driver for as long as asked:
#   FERROVM_FUZZ_SECS=SECS FERROVM_FUZZ_INPUTS=100000000 \
#     cargo test --release -p fuzz-targets --test fuzz_smoke
set -uo pipefail
cd "$(dirname "$0")/.."

secs=300
jobs=1
while getopts "t:j:h" opt; do
    case $opt in
    t) secs=$OPTARG ;;
    j) jobs=$OPTARG ;;
    *) sed -n '2,20p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: needs the nightly toolchain and cargo-fuzz (rustup toolchain install nightly; cargo install cargo-fuzz)" >&2
    exit 2
fi

cd fuzz
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

if [ $# -eq 0 ]; then
    # All at once up front (`fuzz run` builds only the target it runs).
    echo "fuzz.sh: building ${#targets[@]} targets (release, ASan)" >&2
    nice cargo +nightly fuzz build -O || exit 1
fi

results=../target/fuzz-results.tsv
[ -s "$results" ] || printf 'date\ttarget\tfuzz_s\twall_s\texecs\texecs_per_s\tcov\tcorpus\tverdict\n' >"$results"
failed=0
for t in "${targets[@]}"; do
    work=../target/fuzz-corpus/$t
    mkdir -p "$work" "artifacts/$t"
    log=../target/fuzz-$t.log
    start=$(date +%s)
    par=()
    [ "$jobs" -gt 1 ] && par=(-jobs="$jobs" -workers="$jobs")
    nice cargo +nightly fuzz run -O "$t" "$work" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 \
        "${par[@]}" -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$log" 2>&1
    rc=$?
    took=$(($(date +%s) - start))
    # With -jobs the per-job logs are fuzz-<n>.log in the current directory.
    if [ "$jobs" -gt 1 ]; then cat fuzz-*.log >>"$log" 2>/dev/null; rm -f fuzz-*.log; fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | awk '{s+=$2} END {print s+0}')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | awk '{print $2}')
    corpus=$(find "$work" -type f | wc -l)
    if [ $rc -eq 0 ]; then
        verdict=ok
    else
        verdict="FAILED (rc $rc; see $log and fuzz/artifacts/$t/)"
        failed=1
    fi
    # libFuzzer's own time ("Done N runs in S second(s)"); the wall time also holds the
    # build that `fuzz run` does first when sources changed.
    fuzzed=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | awk '{s+=$5} END {print s+0}')
    [ "$fuzzed" -gt 0 ] || fuzzed=$took
    rate=$((execs / (fuzzed > 0 ? fuzzed : 1)))
    line=$(printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s' "$(date -u +%FT%TZ)" "$t" "$fuzzed" "$took" "$execs" "$rate" "${cov:-?}" "$corpus" "$verdict")
    echo "$line"
    echo "$line" >>"$results"
done
exit $failed
