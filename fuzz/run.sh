#!/usr/bin/env bash
# Fuzz every target for a while: ./fuzz/run.sh [seconds per target] [targets...]
# Stable Rust, no sanitizer (the engine is safe Rust), debug assertions and
# overflow checks on; corpora grow in
# fuzz/corpus/<target>, findings land in fuzz/artifacts/<target>.
# For an AddressSanitizer build: RUSTC_BOOTSTRAP=1 cargo fuzz run <target>.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(table metadata ops stream nbd)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p logs
status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    cp -n "seeds/$t"/* "corpus/$t/" 2>/dev/null || true
    echo "== $t: ${secs} s"
    # -a: debug assertions, so that an arithmetic overflow is a finding.
    if ! cargo fuzz run -s none -a "$t" -- -max_total_time="$secs" -timeout=60 \
        -max_len=400 -print_final_stats=1 >"logs/$t.log" 2>&1; then
        status=1
        grep -E "panicked|SUMMARY|Timeout" -A3 "logs/$t.log" | head -20
    fi
    grep -E "^Done|stat::number_of_executed_units|stat::peak_rss" "logs/$t.log" || true
    echo "corpus: $(ls "corpus/$t" | wc -l) inputs"
done
exit $status
