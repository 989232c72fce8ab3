#!/usr/bin/env bash
# Bounded fuzz smoke run (called by .ci/run; also usable by hand): builds every cargo-fuzz target
# on the stable toolchain and runs each from its committed seeds (fuzz/seeds/<target>/) for a few
# seconds. Fails on any crash, assertion, timeout or sanitizer report, printing the reproducer.
#
#   FUZZ_SECS   seconds per target (default 8)
#
# Stable Rust is enough: RUSTC_BOOTSTRAP=1 lets it accept cargo-fuzz's only -Z flag (the address
# sanitizer). The default build keeps debug assertions and overflow checks (do not pass -O).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${FUZZ_SECS:-8}
export RUSTC_BOOTSTRAP=1

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi

t0=$(date +%s)
cargo fuzz build
t1=$(date +%s)
echo "fuzz build: $((t1 - t0)) s"

bin=fuzz/target/x86_64-unknown-linux-gnu/release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0
for t in $(cargo fuzz list); do
    if [ ! -d "fuzz/seeds/$t" ]; then
        echo "fuzz $t: no seeds in fuzz/seeds/$t"
        failed=1
        continue
    fi
    # New inputs go to a scratch corpus (the first directory), never into the committed seeds.
    mkdir -p "$work/$t" "fuzz/artifacts/$t"
    if "$bin/$t" -max_total_time="$secs" -timeout=30 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" "$work/$t" "fuzz/seeds/$t" >"$work/$t.log" 2>&1; then
        runs=$(grep -Eo 'stat::number_of_executed_units: [0-9]+' "$work/$t.log" | awk '{print $2}')
        cov=$(grep -Eo 'cov: [0-9]+' "$work/$t.log" | tail -1 | awk '{print $2}')
        echo "fuzz $t: ok (${runs:-?} runs, coverage ${cov:-?})"
    else
        echo "fuzz $t: FAILED; reproducer in fuzz/artifacts/$t/, log:"
        tail -n 60 "$work/$t.log"
        failed=1
    fi
done
echo "fuzz smoke: $(($(date +%s) - t0)) s in total"
exit "$failed"
