#!/usr/bin/env bash
# Run ferry's fuzz targets, each for a bounded time, starting from the seed
# corpora in fuzz/seeds (copied, so the repository's seeds stay small).
# Fails on the first crash and prints the reproducer.
#
#   fuzz/run.sh 60                 # every target in TARGETS, 60 s each
#   fuzz/run.sh 3600 frames        # one target for an hour
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`); it builds with the stable
# toolchain's unstable flags (RUSTC_BOOTSTRAP=1), as no nightly is at hand.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    targets=(frames lines event_at_rest stored_block config record_batch kafka_responses murmur2 heartbeat fetched_batches mqtt_packets)
fi
export RUSTC_BOOTSTRAP=1
# A smoke run (a minute or less per target, CI's 10 s) builds without
# optimisation: the build takes 3 minutes here instead of 7.5, and the
# slower executions still go through the seeds and past them. Longer runs
# build optimised.
if [ "$seconds" -le 60 ]; then profile=--dev; else profile=-O; fi
cargo fuzz build "$profile"
work=$(mktemp -d)
for t in "${targets[@]}"; do
    mkdir -p "$work/$t"
    cp fuzz/seeds/"$t"/* "$work/$t"/ 2>/dev/null || true
    echo "fuzz: $t for ${seconds}s"
    if ! cargo fuzz run "$profile" "$t" "$work/$t" -- -max_total_time="$seconds" \
        -print_final_stats=1 >"$work/$t.log" 2>&1; then
        tail -n 60 "$work/$t.log"
        for a in fuzz/artifacts/"$t"/*; do
            [ -f "$a" ] || continue
            echo "reproducer: $a"
            od -A x -t x1z "$a" | head -n 20
        done
        echo "fuzz: $t crashed; reproduce with: RUSTC_BOOTSTRAP=1 cargo fuzz run $profile $t <reproducer>"
        exit 1
    fi
    grep -E "^stat::number_of_executed_units|^Done" "$work/$t.log" | tail -n 2
done
rm -rf "$work"
