#!/usr/bin/env bash
# Copying a mostly empty disk over NBD, as backup tools do: nbdcopy of a
# 1 GiB origin holding 64 MiB of data (64 pieces of 1 MiB, spread out) to
# a fresh file, dms against qemu-nbd serving the same bytes. Two cases:
#   file:  the origin is a sparse raw file (both servers can seek its holes);
#   block: the origin is a loop device over a fully allocated file, whose
#          empty space was discarded through dms (`fallocate --punch-hole`
#          on the mapper file, as fstrim does through a loop device); dms
#          keeps it in the store's zero map, qemu-nbd serves the device.
# Each copy starts from a dropped page cache, the servers taking turns
# (one alone at a time); time and the bytes the copy allocated are the
# median of ROUNDS rounds; every copy is compared with the source.
#
# Usage: bench/nbdcopy.sh [DIR]   (default /var/tmp/dms-nbdcopy-bench; root)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-/var/tmp/dms-nbdcopy-bench}
ROUNDS=${ROUNDS:-5}
SIZE_MB=${SIZE_MB:-1024}
PIECES=${PIECES:-64}
for t in nbdcopy qemu-nbd losetup fallocate; do
    command -v $t >/dev/null || { echo "bench: $t is required (apt-get install libnbd-bin qemu-utils util-linux)" >&2; exit 1; }
done
cargo build --release -q -p dms-cli
DMS=$PWD/target/release/dms
LOOPS=()
cleanup() {
    "$DMS" shutdown --force >/dev/null 2>&1 || true
    [ -n "${QPID:-}" ] && kill "$QPID" 2>/dev/null || true
    for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null || true; done
}
trap cleanup EXIT
rm -rf "$DIR"; mkdir -p "$DIR"
export DMS_RUN_DIR=$DIR/run
DURI="nbd+unix:///orig?socket=$DMS_RUN_DIR/nbd.sock"
QSOCK=$DIR/qemu.sock
QURI="nbd+unix:///?socket=$QSOCK"
STEP=$((SIZE_MB / PIECES))

# The data: PIECES MiB of random bytes, one MiB every STEP MiB.
put_data() { # file
    for i in $(seq 0 $((PIECES - 1))); do
        dd if=/dev/urandom of="$1" bs=1M seek=$((i * STEP + STEP / 2)) count=1 conv=notrunc status=none
    done
}

# One copy from a URI: "seconds bytes-allocated", the copy compared with REF.
copy() { # uri ref
    rm -f "$DIR/copy.img"
    sync; echo 3 > /proc/sys/vm/drop_caches
    local t0 t1
    t0=$(date +%s.%N)
    nbdcopy "$1" "$DIR/copy.img"
    sync "$DIR/copy.img"
    t1=$(date +%s.%N)
    cmp -s "$DIR/copy.img" "$2" || { echo "bench: the copy of $1 differs" >&2; exit 1; }
    echo "$(echo "$t1 - $t0" | bc -l) $(($(stat -c %b "$DIR/copy.img") * 512))"
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

RESULTS=$DIR/results.tsv
: > "$RESULTS"
for case in file block; do
    rm -f "$DIR/origin.raw" "$DIR/cow.img"
    if [ $case = file ]; then
        truncate -s ${SIZE_MB}M "$DIR/origin.raw"
        put_data "$DIR/origin.raw"
        dev=$DIR/origin.raw
    else
        # Fully allocated: every block of the file written.
        dd if=/dev/zero of="$DIR/origin.raw" bs=1M count=$SIZE_MB status=none
        put_data "$DIR/origin.raw"
        dev=$(losetup --find --show "$DIR/origin.raw")
        LOOPS+=("$dev")
    fi
    cp --sparse=always "$DIR/origin.raw" "$DIR/ref.raw"
    truncate -s 256M "$DIR/cow.img"
    "$DMS" create orig "$dev" "$DIR/cow.img" -bF >/dev/null
    if [ $case = block ]; then
        # Discard the empty space through dms, as a file system's fstrim.
        for i in $(seq 0 $((PIECES - 1))); do
            a=$((i * STEP)); b=$((i * STEP + STEP / 2))
            fallocate --punch-hole --keep-size -o $((a << 20)) -l $(((b - a) << 20)) "$DMS_RUN_DIR/mapper/orig"
            fallocate --punch-hole --keep-size -o $(((b + 1) << 20)) -l $(((STEP - STEP / 2 - 1) << 20)) "$DMS_RUN_DIR/mapper/orig"
        done
        sync "$DMS_RUN_DIR/mapper/orig"
    fi
    "$DMS" shutdown --force >/dev/null
    # Rounds in turn, each server alone while it copies.
    for r in $(seq 1 "$ROUNDS"); do
        "$DMS" list >/dev/null # the daemon comes back with the store
        sleep 1 # both servers settled before their copy
        read -r s b < <(copy "$DURI" "$DIR/ref.raw")
        printf 'dms\t%s\t%s\t%s\n' $case "$s" "$b" | tee -a "$RESULTS" >&2
        "$DMS" shutdown --force >/dev/null
        qemu-nbd -r -t -k "$QSOCK" -f raw "$dev" & QPID=$!
        while [ ! -S "$QSOCK" ]; do sleep 0.1; done
        sleep 1
        read -r s b < <(copy "$QURI" "$DIR/ref.raw")
        printf 'qemu-nbd\t%s\t%s\t%s\n' $case "$s" "$b" | tee -a "$RESULTS" >&2
        kill "$QPID"; wait "$QPID" 2>/dev/null || true; QPID=
        rm -f "$QSOCK"
    done
done

echo "| origin | server | nbdcopy time (s) | bytes the copy allocated | dms / qemu-nbd time |"
echo "|---|---|---:|---:|---:|"
for case in file block; do
    d=$(awk -v c=$case '$1=="dms" && $2==c {print $3}' "$RESULTS" | median)
    q=$(awk -v c=$case '$1=="qemu-nbd" && $2==c {print $3}' "$RESULTS" | median)
    db=$(awk -v c=$case '$1=="dms" && $2==c {print $4}' "$RESULTS" | median)
    qb=$(awk -v c=$case '$1=="qemu-nbd" && $2==c {print $4}' "$RESULTS" | median)
    printf '| %s | dms | %.2f | %s | %.2f |\n' $case "$d" "$db" "$(echo "$d / $q" | bc -l)"
    printf '| %s | qemu-nbd | %.2f | %s | |\n' $case "$q" "$qb"
done
