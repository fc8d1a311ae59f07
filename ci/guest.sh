#!/usr/bin/env bash
# ci/guest.sh — CI's protection-key job: the workspace's release test
# binaries, `frostheap tour` and the freeze benchmark, run inside a
# QEMU/TCG guest whose CPU has protection keys (ci/pkey-vm.sh), so the
# `pkey` backend is tested for real even though CI's machine has no pkeys.
#
#   bash ci/guest.sh          (after `cargo test --workspace --release`)
#
# It reuses that build (plus the `freeze` benchmark binary, built here),
# copies every test binary cargo made into the guest with the fixtures and
# libraries they need, and runs, in order:
#   1. the frostheap library's unit tests;
#   2. the `it` integration binary twice: with four test threads (sorted
#      order), and with two in a shuffled order (the seed is printed, and
#      `--shuffle-seed N` replays it) — each with FROSTHEAP_TEST_REQUIRE=pkey,
#      so a skipped pkey case fails; its global-mode and crash tests run the
#      fixture programs as children in the guest too. The shuffled run leaves
#      out the allocator-model tests (fuzz_replay, heap_model): no heap is
#      guarded in them, so their order cannot matter to the backend, and
#      they are the slowest under TCG (minutes each); the first run has them;
#   3. every other test binary of the workspace, except those listed in
#      NOT_IN_GUEST below with the reason;
#   4. `FROSTHEAP_PROTECT=pkey frostheap tour`;
#   5. the freeze benchmark in a short mode (16, 64 and 256 MiB): its
#      `pkey vs mprotect (...)` lines give mprotect/pkey freeze + thaw cost
#      as ratios measured within the guest (its absolute timings are
#      emulated and mean nothing).
# Then ci/guest_report.py reads the console log and fails the job on any
# failed command or test, a timeout, a guest without pku/ospke, or a pkey
# case that did not run.
#
# Time: boot ~10 s; the whole guest part is meant to stay under 15 min on
# a quiet 2-core machine (each `it` run takes minutes under TCG). Limits,
# so that a hang costs minutes, not the job: GUEST_CMD_TIMEOUT (per command,
# default 1200 s), GUEST_TIMEOUT (the whole VM, default 2400 s); inside,
# FROSTHEAP_TEST_TIMEOUT=900 bounds one test and
# FROSTHEAP_TEST_CHILD_TIMEOUT=300 one child process (10,000 phases in a
# child take over 2 minutes in a loaded guest).
set -euo pipefail
cd "$(dirname "$0")/.."

# Test binaries that cannot run in the busybox guest, and why.
declare -A NOT_IN_GUEST=(
    [frostheap-capi/preload]="compiles its C programs with cc and runs CPython's own tests under LD_PRELOAD: the busybox guest has neither cc nor python3 (they run on the host)"
    [frostheap-cli/run]="runs python3 under \`frostheap run\`: the busybox guest has no python3 (it runs on the host)"
)

# Tests left out of the guest run of a binary that otherwise runs there,
# and why: each is "<binary>" -> "<test> <test> ...", with its reason.
declare -A SKIP_IN_GUEST=(
    [frostheap-cli/serve]="header_body_and_idle_timeouts_are_enforced_and_counted slow_headers_on_2000_connections_do_not_starve_a_prompt_client shed_clients_with_large_bodies_all_read_their_503"
)
declare -A SKIP_IN_GUEST_WHY=(
    [frostheap-cli/serve]="load tests with wall-clock deadlines (timeouts of a few hundred ms, 2,000 connections, clients' read timeouts): TCG runs ~10x slower than the host, and no protection backend is involved (the server runs no phases); they run on the host"
)

t_start=$(date +%s)
echo "=== guest: building the freeze benchmark"
cargo build --release -p frostheap-bench --bin freeze
target=$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
freeze_bench=$target/release/freeze

# Every executable `cargo test --workspace --release` built, as
# "<package dir>/<target> <kind> <test?> <path>" lines.
artifacts=$(cargo test --workspace --release --no-run --message-format=json 2>/dev/null | python3 -c '
import json, os, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    pkg = os.path.basename(os.path.dirname(m["manifest_path"]))
    kind = m["target"]["kind"][0]
    test = "test" if m["profile"]["test"] else "build"
    name, exe = m["target"]["name"], m["executable"]
    print(f"{pkg}/{name} {kind} {test} {exe}")
' | sort)

includes=(-i "$freeze_bench")
unit=
it=
others=()        # test binaries, and
other_names=()   # their <package dir>/<target> (<kind>)
not_run=()
while read -r name kind mode exe; do
    [ -n "$name" ] || continue
    if [ "$mode" = build ]; then
        # Binaries the tests run: fixtures, the frostheap command.
        includes+=(-i "$exe")
        continue
    fi
    if [ -n "${NOT_IN_GUEST[$name]+x}" ]; then
        not_run+=("$name: ${NOT_IN_GUEST[$name]}")
        continue
    fi
    if [ "$name" = frostheap/frostheap ] && [ "$kind" = lib ]; then
        unit=$exe
    elif [ "$name" = frostheap/it ]; then
        it=$exe
    else
        skips=
        if [ -n "${SKIP_IN_GUEST[$name]+x}" ]; then
            for t in ${SKIP_IN_GUEST[$name]}; do
                skips+=" --skip $t"
                not_run+=("$name::$t: ${SKIP_IN_GUEST_WHY[$name]}")
            done
        fi
        others+=("$exe$skips")
        other_names+=("$name ($kind)")
    fi
done <<< "$artifacts"
[ -n "$unit" ] || { echo "guest: no unit-test binary of the frostheap library among cargo's artifacts" >&2; exit 1; }
[ -n "$it" ] || { echo "guest: no \`it\` test binary among cargo's artifacts" >&2; exit 1; }
# The shared library the frostheap command preloads, beside it.
[ -f "$target/release/libfrostheap.so" ] && includes+=(-i "$target/release/libfrostheap.so")

# Tests of `it` left out of both guest runs, and why. Only tests that
# involve no protection key belong here (the pkey cases are what the guest
# is for).
IT_SKIP="recovery::three_thousand_runtimes_give_back_their_threads_slots_and_memory"
IT_SKIP_WHY="an mprotect-only soak (3,000 runtimes built and dropped, 6,000 thread starts): beyond the child's 300 s under TCG; it runs on the host, and its pkey counterpart five_thousand_violations_under_rollback_pkey runs here"
it_skips=
for t in $IT_SKIP; do
    it_skips+=" --skip $t"
    not_run+=("frostheap/it::$t: $IT_SKIP_WHY")
done

echo "=== guest: not run in the guest:"
for n in "${not_run[@]}"; do echo "  $n"; done

# The console is a terminal: no colour codes in the log.
require="FROSTHEAP_TEST_REQUIRE=pkey"
cmds=(
    "$unit --test-threads=2 --color never"
    "$require $it --test-threads=4$it_skips --color never"
    "$require $it --test-threads=2 --shuffle --skip fuzz_replay:: --skip heap_model::$it_skips --color never"
)
labels=(
    "frostheap: the library's unit tests"
    "frostheap/it, 4 threads"
    "frostheap/it, 2 threads, shuffled"
)
for i in "${!others[@]}"; do
    cmds+=("${others[$i]} --test-threads=2 --color never")
    labels+=("${other_names[$i]}")
done
cmds+=(
    "FROSTHEAP_PROTECT=pkey $target/release/frostheap tour"
    "$freeze_bench --max 256M --budget-ms 100 --out-dir /tmp/freeze-bench"
)
labels+=("frostheap tour (FROSTHEAP_PROTECT=pkey)" "freeze benchmark, short")
printf '%s\n' "${labels[@]}" > "$target/pkey-guest.labels"

log=$target/pkey-guest.log
t_built=$(date +%s)
set +e
bash ci/pkey-vm.sh -m 4G -s 2 \
    -T "${GUEST_CMD_TIMEOUT:-1200}" -t "${GUEST_TIMEOUT:-2400}" -l "$log" \
    -e FROSTHEAP_TEST_TIMEOUT=900 -e FROSTHEAP_TEST_CHILD_TIMEOUT=300 \
    "${includes[@]}" "${cmds[@]}"
vm_rc=$?
set -e
t_end=$(date +%s)

python3 ci/guest_report.py "$log" "$target/pkey-guest.labels" "$vm_rc" \
    "$((t_built - t_start))" "$((t_end - t_built))" "${not_run[@]}"
