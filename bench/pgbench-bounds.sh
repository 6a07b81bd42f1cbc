#!/usr/bin/env bash
# How close to the raw image any engine of this design could bring pgbench
# right after a snapshot, on this machine: the pgbench part of
# bench/snapshot-cost.sh (two snapshots, tps in the window before each and
# the one after), in turn, ROUNDS times, on
#   - the raw image (a freeze and thaw only: the floor);
#   - dms as it is;
#   - dms built with bench/bounds.patch and DMS_BOUND=free-copy-outs: a
#     copy-out neither reads nor writes anything (snapshots keep nothing);
#   - the same with DMS_BOUND=free-syncs: no device sync does anything;
#   - both at once;
#   - XFS with a reflink copy as the snapshot.
# The two patched builds lose data by design; they exist only here, built
# from a scratch worktree of HEAD, and measure what the copy-outs and the
# syncs cost the figure.
#
# Usage: bench/pgbench-bounds.sh [DIR]   (root; default /var/tmp/dms-bounds-bench)
#   ROUNDS (3); PG_WINDOW, PG_SCALE as for snapshot-cost.sh;
#   ROWS ("raw dms copy-outs syncs both xfs") the rows measured.
# Prints each run's after/before and the seconds after the snapshots
# (first second, seconds 2-4, seconds 5-10, as fractions of before), then
# the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-/var/tmp/dms-bounds-bench}
ROUNDS=${ROUNDS:-3}
ROWS=${ROWS:-raw dms copy-outs syncs both xfs}
for r in $ROWS; do
    case $r in
    raw | dms | copy-outs | syncs | both | xfs) ;;
    *) echo "bench: unknown row $r (raw dms copy-outs syncs both xfs)" >&2; exit 1 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "bench: run as root (loop devices, mounts)" >&2; exit 1; }
command -v git >/dev/null || { echo "bench: git is required" >&2; exit 1; }
SRC=$DIR/src
cleanup() {
    set +e
    git worktree remove --force "$SRC" >/dev/null 2>&1
}
trap cleanup EXIT
rm -rf "$DIR"
mkdir -p "$DIR"
git worktree prune
git worktree add -q --detach "$SRC" HEAD
git -C "$SRC" apply "$PWD/bench/bounds.patch"
echo "building dms and the bound build (bench/bounds.patch)" >&2
cargo build --release -q -p dms-cli
CARGO_TARGET_DIR=$DIR/target cargo build --release -q -p dms-cli --manifest-path "$SRC/Cargo.toml"
BOUND=$DIR/target/release/dms

# One pgbench run of one system: a row of after/before and the seconds
# after the snapshots, appended to $DIR/rows.tsv.
one() { # label systems [env...]
    local label=$1 systems=$2
    shift 2
    env "$@" PG=1 FIO=0 ROUNDS=1 SYSTEMS="$systems" PLOT= DMS_LABEL="$label" \
        bench/snapshot-cost.sh "$DIR/run" >"$DIR/last.log" 2>&1 || {
        cat "$DIR/last.log" >&2
        exit 1
    }
    python3 bench/pgbench-windows.py "$DIR/run/pgbench-1.out" "${PG_WINDOW:-10}" "$label" | tee -a "$DIR/rows.tsv"
}

printf 'system\tafter/before\tfirst second\tseconds 2-4\tseconds 5-%s\n' "${PG_WINDOW:-10}"
for r in $(seq 1 "$ROUNDS"); do
    echo "round $r of $ROUNDS" >&2
    for row in $ROWS; do
        case $row in
        raw) one "raw image" raw ;;
        dms) one "dms" dms ;;
        copy-outs) one "dms, copy-outs free" dms DMS="$BOUND" DMS_BOUND=free-copy-outs ;;
        syncs) one "dms, syncs free" dms DMS="$BOUND" DMS_BOUND=free-syncs ;;
        both) one "dms, both free" dms DMS="$BOUND" DMS_BOUND=free-copy-outs,free-syncs ;;
        xfs) one "xfs reflink" xfs ;;
        esac
    done
done

python3 - "$DIR/rows.tsv" "$ROUNDS" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
print()
print(f"Medians of {sys.argv[2]} rounds (pgbench tps right after a snapshot, as a fraction of just before):")
print()
print("| system | after/before | first second | seconds 2-4 | seconds 5-10 |")
print("|---|---:|---:|---:|---:|")
names = []
for r in rows:
    if r[0] not in names:
        names.append(r[0])
for n in names:
    rs = [r for r in rows if r[0] == n]
    med = [statistics.median(float(r[i]) for r in rs) for i in range(1, 5)]
    each = ", ".join(r[1] for r in rs)
    print(f"| {n} | {med[0]:.2f} ({each}) | {med[1]:.2f} | {med[2]:.2f} | {med[3]:.2f} |")
PY
