#!/usr/bin/env bash
# How long a snapshot keeps a filesystem's writers waiting: the freeze
# writes out every page dirtied since the last writeback, then the snapshot
# is taken. ext4 on a loop device over: a raw image (a freeze and thaw
# only), and the dms origin (`dms snapshot`). Each round dirties DIRTY_MB of
# random 8 KiB pages of a 600 MiB file (buffered writes, no sync), then
# freezes or snapshots and times it. On dms the first round's pages are
# plain writes (no snapshot yet); later rounds' are first writes since the
# previous round's snapshot.
#
# Usage: bench/snapshot-freeze.sh [DIR]   (root; default /var/tmp/dms-freeze-bench)
#   ROUNDS (4) rounds per system; DIRTY_MB (120).
# Prints one line per round and the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-/var/tmp/dms-freeze-bench}
ROUNDS=${ROUNDS:-4}
DIRTY_MB=${DIRTY_MB:-120}
[ "$(id -u)" = 0 ] || { echo "bench: run as root (loop devices, mounts)" >&2; exit 1; }
for t in fio losetup mkfs.ext4 fsfreeze; do
    command -v $t >/dev/null || {
        echo "bench: $t is required (apt-get install fio e2fsprogs util-linux)" >&2
        exit 1
    }
done
cargo build --release -q -p dms-cli
DMS=$PWD/target/release/dms
export DMS_RUN_DIR=$DIR/run
MNT=$DIR/mnt
LOOP=
cleanup() {
    set +e
    mountpoint -q "$MNT" && umount "$MNT"
    [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null
    "$DMS" shutdown --force >/dev/null 2>&1
}
trap cleanup EXIT
cleanup
rm -rf "$DIR"
mkdir -p "$MNT"
dd if=/dev/urandom of="$DIR/fill.raw" bs=1M count=1024 status=none

written() { awk '{print $7}' "/sys/block/${1#/dev/}/stat"; }
# Rounds on the filesystem on `dev`; $2 freezes it (or snapshots it).
rounds() { # name dev command
    local name=$1 dev=$2 cmd=$3 r w0 s0 s1 w1
    mkfs.ext4 -q -F "$dev"
    mount "$dev" "$MNT"
    fio --name=fill --filename="$MNT/data" --size=600M --bs=1M --rw=write \
        --ioengine=psync --end_fsync=1 >/dev/null
    for ((r = 1; r <= ROUNDS; r++)); do
        fio --name=dirty --filename="$MNT/data" --size=600M --bs=8k --rw=randwrite \
            --ioengine=psync --io_size=${DIRTY_MB}M --randrepeat=0 >/dev/null
        w0=$(written "$dev")
        s0=$(date +%s.%N); eval "$cmd"; s1=$(date +%s.%N)
        w1=$(written "$dev")
        printf '%s\t%d\t%.3f\t%d\n' "$name" "$r" "$(echo "$s1 - $s0" | bc -l)" $(((w1 - w0) / 2048))
    done
    umount "$MNT"
}

{
    cp "$DIR/fill.raw" "$DIR/raw.img"
    LOOP=$(losetup --find --show --direct-io=on "$DIR/raw.img")
    rounds "raw image (freeze, thaw)" "$LOOP" 'fsfreeze -f "$MNT"; fsfreeze -u "$MNT"'
    losetup -d "$LOOP"; LOOP=
    rm -f "$DIR/raw.img"
    mkdir -p "$DIR/dms"
    cp "$DIR/fill.raw" "$DIR/dms/origin.raw"
    truncate -s 3G "$DIR/dms/cow.img"
    L=$("$DMS" create orig "$DIR/dms/origin.raw" "$DIR/dms/cow.img" -bF --loop)
    rounds "dms snapshot" "$L" '"$DMS" snapshot orig -m freeze >/dev/null'
    "$DMS" shutdown >/dev/null
} | tee "$DIR/rounds.tsv" | awk -F'\t' '{printf "%-26s round %d: %.3f s, %d MiB written\n", $1, $2, $3, $4}'

python3 - "$DIR/rounds.tsv" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
raw = [float(r[2]) for r in rows if r[0].startswith("raw")]
dms = [r for r in rows if r[0].startswith("dms")]
plain = [float(r[2]) for r in dms if r[1] == "1"]
first = [float(r[2]) for r in dms if r[1] != "1"]
print()
print(f"median time writers wait: raw image {statistics.median(raw):.3f} s; "
      f"dms, plain writes (round 1) {statistics.median(plain):.3f} s; "
      f"dms, first writes since a snapshot {statistics.median(first):.3f} s "
      f"({statistics.median(first) / statistics.median(raw):.1f}x the raw image)")
PY
