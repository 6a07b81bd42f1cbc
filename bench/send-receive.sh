#!/usr/bin/env bash
# Send and receive throughput against copying the same bytes with dd on the
# same disk, in one run, caches dropped before each step:
#
#   full send         dms send COW 1 > file          vs  dd origin -> file
#   full receive      dms receive O2 C2 -b -f < file  vs  dd file -> origin copy (fsync)
#   incremental send  dms send COW 2 --from 1 > file  vs  the changed MiBs read from
#                     their places into a file; and dd of as many bytes in a row
#   incremental recv  dms receive O2 C2 < file        vs  those MiBs written to their
#                     places in a copy of the origin; and dd in a row; and
#                     the least a store that keeps the base snapshot must do:
#                     for each MiB, the old one read and written to another
#                     file, the new one written in its place
#
# Sends go through the daemon (the store is held, its origin exposed);
# receives run offline (no daemon holds the new store) and, with VIA=daemon,
# through the daemon. Every time includes an fsync of what was written.
#
# Usage: bench/send-receive.sh [DIR]   (root; default /var/tmp/dms-send-bench)
#   SIZE_MB (1024): origin data; INC_MB (256): changed between the tags;
#   ROUNDS (2); CHUNK (1): chunk size in 4 KiB pages
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-/var/tmp/dms-send-bench}
SIZE_MB=${SIZE_MB:-1024}
INC_MB=${INC_MB:-256}
ROUNDS=${ROUNDS:-2}
CHUNK=${CHUNK:-1}
[ "$(id -u)" = 0 ] || { echo "bench: run as root (it drops the page cache)" >&2; exit 1; }
cargo build --release -q -p dms-cli
DMS=$PWD/target/release/dms
export DMS_RUN_DIR=$DIR/run
trap '"$DMS" shutdown --force >/dev/null 2>&1 || true' EXIT
"$DMS" shutdown --force >/dev/null 2>&1 || true
rm -rf "$DIR"; mkdir -p "$DIR"
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
secs() { # command... -> elapsed seconds on stdout
    local t0 t1
    drop
    t0=$(date +%s.%N)
    "$@"
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc -l
}
dd_copy() { # src dst bytes
    dd if="$1" of="$2" bs=1M count="$3" iflag=count_bytes conv=fsync status=none
}
# The same bytes at the same places: the changed MiBs read from the origin
# file into one file, or written from one file to their places in a copy.
places() { # read|write src dst
    python3 - "$1" "$2" "$3" "$DIR/places.txt" <<'EOF'
import os, sys
mode, src, dst, places = sys.argv[1:5]
offs = [int(x) << 20 for x in open(places).read().split()]
s = os.open(src, os.O_RDONLY)
d = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o644)
for i, off in enumerate(offs):
    if mode == "read":
        os.pwrite(d, os.pread(s, 1 << 20, off), i << 20)
    else:
        os.pwrite(d, os.pread(s, 1 << 20, i << 20), off)
os.fsync(d)
EOF
}
# What an incremental receive must do at the least when the origin keeps
# the newest data and the base snapshot the old (the versioned-pointer
# rule): each changed MiB's old content read and written to a second file
# (the copy-out), the new MiB written in its place; both files fsynced.
keep_old() { # src dst cow
    python3 - "$1" "$2" "$3" "$DIR/places.txt" <<'EOF'
import os, sys
src, dst, cow, places = sys.argv[1:5]
offs = [int(x) << 20 for x in open(places).read().split()]
s = os.open(src, os.O_RDONLY)
d = os.open(dst, os.O_RDWR)
c = os.open(cow, os.O_WRONLY | os.O_CREAT, 0o644)
for i, off in enumerate(offs):
    os.pwrite(c, os.pread(d, 1 << 20, off), i << 20)
    os.pwrite(d, os.pread(s, 1 << 20, i << 20), off)
os.fsync(c)
os.fsync(d)
EOF
}
send() { # file args...
    local f=$1; shift
    "$DMS" send "$@" > "$f" && sync "$f"
}
receive() { # file args...
    local f=$1; shift
    "$DMS" receive "$@" < "$f" > /dev/null
}
mbps() { echo "scale=0; $1 / 1048576 / $2" | bc -l; }
ratio() { echo "scale=2; $1 / $2" | bc -l; }

# The source: SIZE_MB of data, snapshot 1, INC_MB changed in 1 MiB pieces, snapshot 2.
head -c $((SIZE_MB << 20)) /dev/urandom > "$DIR/o.img"
truncate -s $((SIZE_MB * 3))M "$DIR/c.img"
"$DMS" create src "$DIR/o.img" "$DIR/c.img" -bf -c "$CHUNK" >/dev/null
"$DMS" snapshot src >/dev/null
python3 - "$DMS_RUN_DIR/mapper/src" "$SIZE_MB" "$INC_MB" "$DIR/places.txt" <<'EOF'
import os, random, sys
path, size, inc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
random.seed(7)
places = sorted(random.sample(range(size), inc))
with open(path, "r+b") as f:
    for mib in places:
        f.seek(mib << 20)
        f.write(os.urandom(1 << 20))
    f.flush()
    os.fsync(f.fileno())
with open(sys.argv[4], "w") as p:
    p.write("\n".join(str(m) for m in places) + "\n")
EOF
"$DMS" snapshot src >/dev/null

printf 'round\tstep\tdms_s\tdd_s\tbytes\tdms_MBps\tdd_MBps\tratio\n' | tee "$DIR/results.tsv"
for r in $(seq 1 "$ROUNDS"); do
    rm -f "$DIR"/o2.img "$DIR"/c2.img "$DIR"/*.dms "$DIR"/*.raw
    truncate -s $((SIZE_MB))M "$DIR/o2.img"
    truncate -s $((SIZE_MB * 3))M "$DIR/c2.img"
    t=$(secs send "$DIR/full.dms" "$DIR/c.img" 1)
    n=$(stat -c %s "$DIR/full.dms")
    b=$(secs dd_copy "$DIR/o.img" "$DIR/copy.raw" "$n")
    printf '%s\tfull send\t%.2f\t%.2f\t%s\t%s\t%s\t%s\n' "$r" "$t" "$b" "$n" "$(mbps "$n" "$t")" "$(mbps "$n" "$b")" "$(ratio "$b" "$t")" | tee -a "$DIR/results.tsv"
    t=$(secs receive "$DIR/full.dms" "$DIR/o2.img" "$DIR/c2.img" -b -f -c "$CHUNK")
    rm -f "$DIR/copy2.raw"
    b=$(secs dd_copy "$DIR/full.dms" "$DIR/copy2.raw" "$n")
    printf '%s\tfull receive\t%.2f\t%.2f\t%s\t%s\t%s\t%s\n' "$r" "$t" "$b" "$n" "$(mbps "$n" "$t")" "$(mbps "$n" "$b")" "$(ratio "$b" "$t")" | tee -a "$DIR/results.tsv"
    t=$(secs send "$DIR/inc.dms" "$DIR/c.img" 2 --from 1)
    n=$(stat -c %s "$DIR/inc.dms")
    rm -f "$DIR/inc.raw"
    b=$(secs places read "$DIR/o.img" "$DIR/inc.raw")
    printf '%s\tincremental send (same places)\t%.2f\t%.2f\t%s\t%s\t%s\t%s\n' "$r" "$t" "$b" "$n" "$(mbps "$n" "$t")" "$(mbps "$n" "$b")" "$(ratio "$b" "$t")" | tee -a "$DIR/results.tsv"
    rm -f "$DIR/inc2.raw"
    b=$(secs dd_copy "$DIR/o.img" "$DIR/inc2.raw" "$n")
    printf '%s\tincremental send (dd in a row)\t%.2f\t%.2f\t%s\t%s\t%s\t%s\n' "$r" "$t" "$b" "$n" "$(mbps "$n" "$t")" "$(mbps "$n" "$b")" "$(ratio "$b" "$t")" | tee -a "$DIR/results.tsv"
    if [ "${VIA:-}" = daemon ]; then
        "$DMS" create dst1 "$DIR/o2.img" "$DIR/c2.img" 1 --read-only >/dev/null
    fi
    t=$(secs receive "$DIR/inc.dms" "$DIR/o2.img" "$DIR/c2.img")
    b=$(secs places write "$DIR/inc.raw" "$DIR/copy.raw")
    printf '%s\tincremental receive (same places)\t%.2f\t%.2f\t%s\t%s\t%s\t%s\n' "$r" "$t" "$b" "$n" "$(mbps "$n" "$t")" "$(mbps "$n" "$b")" "$(ratio "$b" "$t")" | tee -a "$DIR/results.tsv"
    rm -f "$DIR/keep.raw"
    cp --sparse=always "$DIR/copy.raw" "$DIR/copy3.raw"
    b=$(secs keep_old "$DIR/inc.raw" "$DIR/copy3.raw" "$DIR/keep.raw")
    printf '%s\tincremental receive (keeping the old: read, copy, write)\t%.2f\t%.2f\t%s\t%s\t%s\t%s\n' "$r" "$t" "$b" "$n" "$(mbps "$n" "$t")" "$(mbps "$n" "$b")" "$(ratio "$b" "$t")" | tee -a "$DIR/results.tsv"
    rm -f "$DIR/keep.raw" "$DIR/copy3.raw" "$DIR/copy2.raw"
    b=$(secs dd_copy "$DIR/inc.dms" "$DIR/copy2.raw" "$n")
    printf '%s\tincremental receive (dd in a row)\t%.2f\t%.2f\t%s\t%s\t%s\t%s\n' "$r" "$t" "$b" "$n" "$(mbps "$n" "$t")" "$(mbps "$n" "$b")" "$(ratio "$b" "$t")" | tee -a "$DIR/results.tsv"
    "$DMS" remove dst1 >/dev/null 2>&1 || true
done
echo "ratio = dd time / dms time (1.0: as fast as copying the bytes; target >= 0.8)"
