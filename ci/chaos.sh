#!/usr/bin/env bash
# ci/chaos.sh — the cross-thread protocols under widened race windows.
#
#   bash ci/chaos.sh [seconds]      (default 240)
#
# Builds libfrostheap.so with `--cfg frostheap_chaos` (sync::chaos yields
# the CPU about one time in eight at each step of the remote-free, FULL and
# PENDING, and abandon/adopt protocols) and with debug assertions (the
# class map is checked against the span's meta on every remote free, every
# block the remote cache takes or hands out is checked to be a block of an
# owner's small span, a new span is checked to have no remote frees), in
# target/chaos; runs the frostheap crate's tests on that build, then the C
# stress programs of the capi tests under the library, round after round,
# for about [seconds]:
#   threads       main hands blocks to 4 workers while it allocates, both ways
#   mixer         4 threads swap blocks of 1 B-400 KiB through shared slots,
#                 8 waves of threads (heaps abandoned and adopted meanwhile)
#   thread_churn  10,000 short-lived threads, blocks freed after their
#                 owners exited
#   consumer      threads that only free a producer's blocks (a heap
#                 attached at the first free; the remote cache and batch)
#   mapstress     threads that map, commit, uncommit, replace and unmap
#                 anonymous memory at once, while another forks (the
#                 record of counted and reserved ranges)
#   maprace       16 threads that map, mremap and unmap at once, the
#                 library yielding between each call and its record's
#                 update; nothing may stay counted at exit ("mapped 0 B"
#                 in the statistics)
#   own_cache     2 threads of ~40 MiB each (their frees in the owner's
#                 cache), handing blocks over, trimming, and one fork
#   idle_stress   producers that pause while consumers free their blocks,
#                 a thread trimming in a loop (spans freed whole retired
#                 for their running owners), with and without a limit
#   realloc_cross 4 threads grow and shrink large blocks through shared
#                 slots, each growth of another heap's block a move of its
#                 pages into the grower's heap (both span locks), owners
#                 exiting and adopted meanwhile
# First, interior_free checks that the build's debug checks fire (an
# address inside another thread's block, freed, stops the program).
# Every program checks every block it takes; a failure, a debug check's
# abort or a run past its time limit (120 s) fails the job, with the
# program's output. The release test suite cannot see these: its builds
# have no debug assertions, and without the yields the windows they open
# are hit rarely (the large-block window fixed in 74462d3: about once in
# 200-300 rounds; with a yield in it, 13 runs of `threads` in 20).
set -euo pipefail
cd "$(dirname "$0")/.."

budget=${1:-240}
case "$budget" in
'' | *[!0-9]*)
    echo "ci/chaos.sh: seconds must be a whole number, got '$budget'" >&2
    exit 2
    ;;
esac

# target/chaos, or chaos/ under CARGO_TARGET_DIR when it is set (CI leaves
# it unset): a build of its own either way, apart from the normal one.
chaos=${CARGO_TARGET_DIR:-target}/chaos
case "$chaos" in /*) ;; *) chaos=$PWD/$chaos ;; esac
export RUSTFLAGS="--cfg frostheap_chaos -C debug-assertions" CARGO_TARGET_DIR=$chaos
# The library's own tests first (the heap's unit tests, the `it` binary:
# remote frees by the million, the model tests, thread heaps in the
# global-mode fixtures), on the same kind of build.
cargo test --release -p frostheap
cargo build --release -p frostheap-capi
lib=$chaos/release/libfrostheap.so
bin=$chaos/c
mkdir -p "$bin"
for prog in threads mixer thread_churn consumer mapstress maprace own_cache idle_stress realloc_cross \
    interior_free; do
    cc -O1 -fno-builtin -Wall -Wno-use-after-free -pthread \
        -o "$bin/$prog" "crates/frostheap-capi/tests/c/$prog.c"
done

run() {
    local out rc
    set +e
    out=$(LD_PRELOAD=$lib timeout 120 "$@" 2>&1)
    rc=$?
    set -e
    if [ "$rc" -ne 0 ]; then
        local why="exit $rc"
        [ "$rc" -ne 124 ] || why="timed out after 120 s"
        echo "ci/chaos.sh: FAILED ($why): $*" >&2
        echo "$out" | head -60 >&2
        exit 1
    fi
}

# A program that unmaps all it mapped must leave nothing counted.
run_mapped_nothing() {
    local out
    out=$(FROSTHEAP_STATS=1 LD_PRELOAD=$lib timeout 120 "$@" 2>&1) || {
        echo "ci/chaos.sh: FAILED: $*" >&2
        echo "$out" | head -60 >&2
        exit 1
    }
    case "$out" in
    *"mapped 0 B,"*) ;;
    *)
        echo "ci/chaos.sh: FAILED (mappings still counted at exit): $*" >&2
        echo "$out" | grep -i "mapped" >&2
        exit 1
        ;;
    esac
}

# The build has its checks on: an address inside another thread's block,
# freed, must stop the program with the check's report.
set +e
out=$(LD_PRELOAD=$lib timeout 60 "$bin/interior_free" 2>&1)
set -e
case "$out" in
*"frostheap (debug check): not a block boundary of its span"*) ;;
*)
    echo "ci/chaos.sh: the debug checks did not fire on an interior free:" >&2
    echo "$out" >&2
    exit 1
    ;;
esac

start=$(date +%s)
rounds=0
while :; do
    run "$bin/threads"
    run "$bin/mixer" 4 5000 8
    run "$bin/mixer" 4 2000 4 64
    run "$bin/thread_churn"
    run "$bin/consumer" 50 2000
    run_mapped_nothing "$bin/mapstress" 4 20000
    run_mapped_nothing "$bin/maprace" 16 20000
    run "$bin/own_cache" 2 100000
    run "$bin/idle_stress" 2
    run env FROSTHEAP_MAX=48M "$bin/idle_stress" 2
    run env FROSTHEAP_MAX=256M "$bin/realloc_cross" stress 0 4 2000
    rounds=$((rounds + 1))
    [ $(($(date +%s) - start)) -lt "$budget" ] || break
done
echo "ci/chaos.sh: $rounds rounds of threads, mixer (with and without trims), thread_churn, consumer, mapstress, maprace, own_cache, idle_stress and realloc_cross passed in $(($(date +%s) - start)) s"
