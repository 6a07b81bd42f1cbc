#!/usr/bin/env bash
# How many threads the daemon's FUSE mapper needs: fio 4 KiB random writes
# (libaio, O_DIRECT) on a loop device (direct I/O) over the dms origin, plain
# and first writes after a snapshot, for several thread counts, each count
# measured ROUNDS times in alternation on fresh stores.
#
# Usage: bench/fuse-threads.sh [DIR]   (root; default /var/tmp/dms-fuse-bench)
#   COUNTS ("4 8 16 32"), ROUNDS (2), IODEPTH (16), SIZE_MB (512)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-/var/tmp/dms-fuse-bench}
COUNTS=${COUNTS:-"4 8 16 32"}
ROUNDS=${ROUNDS:-2}
IODEPTH=${IODEPTH:-16}
SIZE_MB=${SIZE_MB:-512}
[ "$(id -u)" = 0 ] || { echo "bench: run as root" >&2; exit 1; }
command -v fio >/dev/null || { echo "bench: fio is required (apt-get install fio)" >&2; exit 1; }
cargo build --release -q -p dms-cli
DMS=$PWD/target/release/dms
export DMS_RUN_DIR=$DIR/run
trap '"$DMS" shutdown --force >/dev/null 2>&1 || true' EXIT
rm -rf "$DIR"; mkdir -p "$DIR"
dd if=/dev/urandom of="$DIR/fill.raw" bs=1M count="$SIZE_MB" status=none
fio_iops() { # dev seed
    fio --name=b --filename="$1" --ioengine=libaio --direct=1 --rw=randwrite --bs=4k \
        --iodepth="$IODEPTH" --size=$((SIZE_MB / 2))M --io_size=64M --randseed="$2" \
        --output-format=json 2>/dev/null |
        python3 -c 'import json,sys; s=sys.stdin.read(); j=json.loads(s[s.index("{"):])["jobs"][0]; print(int(j["write"]["iops"]))'
}
: > "$DIR/results.tsv"
for r in $(seq 1 "$ROUNDS"); do
    for n in $COUNTS; do
        cp "$DIR/fill.raw" "$DIR/origin.raw"
        rm -f "$DIR/cow.img"; truncate -s $((SIZE_MB * 3))M "$DIR/cow.img"
        DMS_FUSE_THREADS=$n "$DMS" daemon >"$DIR/daemon.log" 2>&1 &
        for _ in $(seq 50); do [ -S "$DMS_RUN_DIR/control.sock" ] && break; sleep 0.1; done
        L=$("$DMS" create orig "$DIR/origin.raw" "$DIR/cow.img" -bF --loop)
        plain=$(fio_iops "$L" 3)
        "$DMS" snapshot orig >/dev/null
        first=$(fio_iops "$L" 9)
        printf '%s\t%s\t%s\n' "$n" "$plain" "$first" | tee -a "$DIR/results.tsv" >&2
        "$DMS" shutdown --force >/dev/null
        wait
    done
done
echo "| FUSE threads | plain writes (each round) | first writes after a snapshot (each round) |"
echo "|---:|---:|---:|"
for n in $COUNTS; do
    p=$(awk -F'\t' -v n="$n" '$1==n {printf "%s%s", s, $2; s=", "}' "$DIR/results.tsv")
    f=$(awk -F'\t' -v n="$n" '$1==n {printf "%s%s", s, $3; s=", "}' "$DIR/results.tsv")
    echo "| $n | $p | $f |"
done
