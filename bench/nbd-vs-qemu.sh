#!/usr/bin/env bash
# Side-by-side over NBD, same files, same fio jobs: dms (origin with 0, 1,
# 100, 1000 snapshots) against qemu-nbd serving a raw file and a qcow2 with
# the same number of internal snapshots. fio: 4 KiB random I/O, iodepth 16.
# Each snapshot count starts from a fresh store (and a fresh qcow2 image):
# "first" = writes to blocks not written since the last snapshot (each one a
# copy-out), "again" = the same blocks rewritten, "read" = random reads.
#
# Usage: bench/nbd-vs-qemu.sh [DIR]   (default /var/tmp/dms-nbd-bench)
# Prints a markdown table and writes docs/img/nbd-iops.png (gnuplot).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-/var/tmp/dms-nbd-bench}
SIZE_MB=${SIZE_MB:-512}
RUNTIME=${RUNTIME:-5}
FIRST_IO=${FIRST_IO:-64M}
COUNTS=${COUNTS:-"0 1 100 1000"}
for t in fio qemu-nbd qemu-img gnuplot; do
    command -v $t >/dev/null || { echo "bench: $t is required (apt-get install fio qemu-utils gnuplot-nox)" >&2; exit 1; }
done
cargo build --release -q -p dms-cli
DMS=$PWD/target/release/dms
rm -rf "$DIR"; mkdir -p "$DIR"
export DMS_RUN_DIR=$DIR/run
RESULTS=$DIR/results.tsv
: > "$RESULTS"

fio_iops() { # uri rw extra...
    local uri=$1 rw=$2; shift 2
    fio --name=b --ioengine=nbd --uri="$uri" --rw="$rw" --bs=4k --iodepth=16 --numjobs=1 \
        --size=$((SIZE_MB / 2))M --output-format=json "$@" 2>/dev/null |
        python3 -c 'import json,sys; s=sys.stdin.read(); j=json.loads(s[s.index("{"):])["jobs"][0]; print(int(j["write"]["iops"] + j["read"]["iops"]))'
}
measure() { # system count uri
    local sys=$1 n=$2 uri=$3 first again read
    first=$(fio_iops "$uri" randwrite --io_size=$FIRST_IO --randseed=$((n + 7)))
    again=$(fio_iops "$uri" randwrite --io_size=$FIRST_IO --randseed=$((n + 7)))
    read=$(fio_iops "$uri" randread --runtime=$RUNTIME --time_based)
    printf '%s\t%s\t%s\t%s\t%s\n' "$sys" "$n" "$first" "$again" "$read" | tee -a "$RESULTS" >&2
}

echo "preparing ${SIZE_MB} MiB images in $DIR" >&2
dd if=/dev/urandom of="$DIR/fill.raw" bs=1M count="$SIZE_MB" status=none
cp "$DIR/fill.raw" "$DIR/plain.raw"

# dms: a fresh store for each snapshot count, so that the count is the only
# difference between the measured points.
URI="nbd+unix:///orig?socket=$DMS_RUN_DIR/nbd.sock"
for n in $COUNTS; do
    cp "$DIR/fill.raw" "$DIR/origin.raw"
    rm -f "$DIR/cow.img"; truncate -s $((SIZE_MB * 4))M "$DIR/cow.img"
    "$DMS" create orig "$DIR/origin.raw" "$DIR/cow.img" -bF >/dev/null
    for i in $(seq 1 "$n"); do "$DMS" snapshot orig -m bench; done
    measure dms "$n" "$URI"
    "$DMS" shutdown --force
done

# qemu-nbd on raw
SOCK=$DIR/qemu.sock
qemu-nbd -t -k "$SOCK" -f raw "$DIR/plain.raw" & QPID=$!
while [ ! -S "$SOCK" ]; do sleep 0.1; done
measure raw 0 "nbd+unix:///?socket=$SOCK"
kill $QPID; wait $QPID 2>/dev/null || true

# qemu-nbd on qcow2 with internal snapshots, a fresh image for each count.
for n in $COUNTS; do
    rm -f "$DIR/disk.qcow2"
    qemu-img convert -f raw -O qcow2 "$DIR/fill.raw" "$DIR/disk.qcow2"
    for i in $(seq 1 "$n"); do qemu-img snapshot -c "s$i" "$DIR/disk.qcow2"; done
    rm -f "$SOCK"
    qemu-nbd -t -k "$SOCK" -f qcow2 "$DIR/disk.qcow2" & QPID=$!
    while [ ! -S "$SOCK" ]; do sleep 0.1; done
    measure qcow2 "$n" "nbd+unix:///?socket=$SOCK"
    kill $QPID; wait $QPID 2>/dev/null || true
done

# The table.
echo "| system | snapshots | first write IOPS | write again IOPS | read IOPS |"
echo "|---|---:|---:|---:|---:|"
while IFS=$'\t' read -r sys n first again read; do
    echo "| $sys | $n | $first | $again | $read |"
done < "$RESULTS"

# The plot: IOPS against snapshots, dms and qcow2.
awk -F'\t' '$1=="dms"' "$RESULTS" > "$DIR/dms.dat"
awk -F'\t' '$1=="qcow2"' "$RESULTS" > "$DIR/qcow2.dat"
RAW_W=$(awk -F'\t' '$1=="raw"{print $3}' "$RESULTS")
gnuplot <<GP
set terminal pngcairo size 900,520 font "sans,10"
set output "docs/img/nbd-iops.png"
set title "4 KiB random writes over NBD, iodepth 16 (higher is better)"
set xlabel "snapshots of the origin"
set ylabel "IOPS"
set key outside right
set grid ytics
set xtics ("0" 0, "1" 1, "100" 2, "1000" 3)
set yrange [0:*]
plot "$DIR/dms.dat" using 0:3 with linespoints lw 2 title "dms, first write", \
     "$DIR/dms.dat" using 0:4 with linespoints lw 2 title "dms, write again", \
     "$DIR/qcow2.dat" using 0:3 with linespoints lw 2 dt 2 title "qcow2, first write", \
     "$DIR/qcow2.dat" using 0:4 with linespoints lw 2 dt 2 title "qcow2, write again", \
     $RAW_W with lines lc rgb "gray" title "qemu-nbd raw"
GP
echo "plot: docs/img/nbd-iops.png" >&2
