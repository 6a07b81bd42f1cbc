#!/usr/bin/env bash
# What taking a snapshot costs the running workload, side by side on one
# disk, in one run:
#   fio 4 KiB random writes (libaio, O_DIRECT, iodepth 16) on loop devices
#   (direct I/O) over: a raw image; the dms origin with 0 and 1 snapshot;
#   an image on XFS (mkfs.xfs -m reflink=1) with `cp --reflink` as the
#   snapshot; the same on btrfs. "first" = writes to blocks not written
#   since the snapshot, "again" = the same blocks rewritten, "read" =
#   random reads.
#   pgbench (8 clients) tps just before and right after a snapshot,
#   PostgreSQL on ext4 on each of the three (the reflink copies are taken
#   with the filesystem frozen, as dms freezes it itself).
#
# Usage: bench/snapshot-cost.sh [DIR]     (root; default /var/tmp/dms-snap-bench)
#   SIZE_MB (1024) image size; FIRST_IO (64M) bytes per fio write pass;
#   PG_SECONDS (20) per pgbench run; PG_SCALE (20); PG=0 skips pgbench.
# Prints a markdown table; writes docs/img/snapshot-cost.png (gnuplot).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-/var/tmp/dms-snap-bench}
SIZE_MB=${SIZE_MB:-1024}
FIRST_IO=${FIRST_IO:-64M}
RUNTIME=${RUNTIME:-5}
PG=${PG:-1}
PG_SECONDS=${PG_SECONDS:-20}
PG_SCALE=${PG_SCALE:-20}
[ "$(id -u)" = 0 ] || { echo "bench: run as root (loop devices, mounts)" >&2; exit 1; }
for t in fio losetup mkfs.xfs mkfs.btrfs mkfs.ext4 gnuplot fsfreeze; do
    command -v $t >/dev/null || {
        echo "bench: $t is required (apt-get install fio xfsprogs btrfs-progs e2fsprogs gnuplot-nox util-linux)" >&2
        exit 1
    }
done
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ "$PG" = 1 ] && [ ! -x "$PGBIN/initdb" ]; then
    echo "bench: PostgreSQL is required for pgbench (apt-get install postgresql), or PG=0" >&2
    exit 1
fi
cargo build --release -q -p dms-cli
DMS=$PWD/target/release/dms
export DMS_RUN_DIR=$DIR/run
LOOPS=()
MOUNTS=()
cleanup() {
    set +e
    [ -n "${PGDATA_DIR:-}" ] && su postgres -c "$PGBIN/pg_ctl -D $PGDATA_DIR -m immediate stop" >/dev/null 2>&1
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount "${MOUNTS[$i]}" 2>/dev/null; done
    for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null; done
    "$DMS" shutdown --force >/dev/null 2>&1
}
trap cleanup EXIT
cleanup
rm -rf "$DIR"; mkdir -p "$DIR"
RESULTS=$DIR/results.tsv
: > "$RESULTS"

attach() { # file -> loop device (direct I/O)
    local l
    l=$(losetup --find --show --direct-io=on "$1")
    LOOPS+=("$l")
    echo "$l"
}
detach() { losetup -d "$1"; }
fio_iops() { # device rw extra...
    local dev=$1 rw=$2; shift 2
    fio --name=b --filename="$dev" --ioengine=libaio --direct=1 --rw="$rw" --bs=4k \
        --iodepth=16 --numjobs=1 --size=$((SIZE_MB / 2))M --output-format=json "$@" 2>/dev/null |
        python3 -c 'import json,sys; s=sys.stdin.read(); j=json.loads(s[s.index("{"):])["jobs"][0]; print(int(j["write"]["iops"] + j["read"]["iops"]))'
}
# system, plain, first, again, read, pg before, pg after
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" | tee -a "$RESULTS" >&2; }

# fio on one device: plain writes, then the snapshot, then first writes,
# writes again, reads. $2 takes the snapshot ("" = none possible).
fio_series() { # name dev snapshot-command
    local name=$1 dev=$2 snap=$3 plain first=- again read
    plain=$(fio_iops "$dev" randwrite --io_size="$FIRST_IO" --randseed=3)
    if [ -n "$snap" ]; then
        eval "$snap"
        first=$(fio_iops "$dev" randwrite --io_size="$FIRST_IO" --randseed=9)
        again=$(fio_iops "$dev" randwrite --io_size="$FIRST_IO" --randseed=9)
    else
        again=$(fio_iops "$dev" randwrite --io_size="$FIRST_IO" --randseed=3)
    fi
    read=$(fio_iops "$dev" randread --runtime="$RUNTIME" --time_based)
    FIO_ROW=("$name" "$plain" "$first" "$again" "$read")
}

# PostgreSQL on ext4 on `dev`: tps of a pgbench run, a snapshot, tps again.
PGDATA_DIR=
pg_series() { # dev snapshot-command(with $MNT) -> PG_BEFORE PG_AFTER
    local dev=$1 snap=$2
    MNT=$DIR/pg
    mkdir -p "$MNT"
    mkfs.ext4 -q -F "$dev"
    mount "$dev" "$MNT"
    MOUNTS+=("$MNT")
    chown postgres "$MNT"
    PGDATA_DIR=$MNT/data
    su postgres -c "$PGBIN/initdb -D $PGDATA_DIR" >/dev/null 2>&1
    su postgres -c "$PGBIN/pg_ctl -D $PGDATA_DIR -w -l $MNT/log -o \"-k $MNT -p 5439 -c listen_addresses=''\" start" >/dev/null
    local pgb="$PGBIN/pgbench -h $MNT -p 5439"
    su postgres -c "$pgb -i -q -s $PG_SCALE postgres" >/dev/null 2>&1
    su postgres -c "$PGBIN/psql -h $MNT -p 5439 -q -c checkpoint postgres" >/dev/null
    tps() { su postgres -c "$pgb -c 8 -j 2 -T $PG_SECONDS postgres" 2>/dev/null | awk '/^tps/ {print int($3); exit}'; }
    PG_BEFORE=$(tps)
    eval "$snap"
    PG_AFTER=$(tps)
    : "${PG_BEFORE:=-}" "${PG_AFTER:=-}"
    su postgres -c "$PGBIN/pg_ctl -D $PGDATA_DIR -m fast -w stop" >/dev/null
    PGDATA_DIR=
    umount "$MNT"
    unset 'MOUNTS[${#MOUNTS[@]}-1]'
}

echo "preparing ${SIZE_MB} MiB of random data in $DIR" >&2
dd if=/dev/urandom of="$DIR/fill.raw" bs=1M count="$SIZE_MB" status=none

# A raw image: the floor every system is measured against.
cp "$DIR/fill.raw" "$DIR/raw.img"
L=$(attach "$DIR/raw.img")
fio_series "raw image" "$L" ""
record "${FIO_ROW[@]}" - -
detach "$L"; rm -f "$DIR/raw.img"

# dms: origin and COW file on the same disk; `dms create --loop` as a user
# would; the snapshot is `dms snapshot`.
mkdir -p "$DIR/dms"
cp "$DIR/fill.raw" "$DIR/dms/origin.raw"
truncate -s $((SIZE_MB * 3))M "$DIR/dms/cow.img"
L=$("$DMS" create orig "$DIR/dms/origin.raw" "$DIR/dms/cow.img" -bF --loop)
LOOPS+=("$L")
fio_series "dms origin" "$L" '"$DMS" snapshot orig -m bench >/dev/null'
DMS_ROW=("${FIO_ROW[@]}")
if [ "$PG" = 1 ]; then
    pg_series "$L" '"$DMS" snapshot orig -m pgbench >/dev/null'
    DMS_ROW+=("$PG_BEFORE" "$PG_AFTER")
else
    DMS_ROW+=(- -)
fi
record "${DMS_ROW[@]}"
"$DMS" shutdown --force >/dev/null
LOOPS=()

# An image on a reflink filesystem; the snapshot is a reflink copy.
reflink_fs() { # name mkfs-command
    local name=$1 mkfs=$2 fsl img
    truncate -s $((SIZE_MB * 3))M "$DIR/$name.fs"
    fsl=$(attach "$DIR/$name.fs")
    eval "$mkfs \"$fsl\"" >/dev/null
    mkdir -p "$DIR/$name"
    mount "$fsl" "$DIR/$name"
    MOUNTS+=("$DIR/$name")
    img=$DIR/$name/disk.img
    cp "$DIR/fill.raw" "$img"
    sync
    L=$(attach "$img")
    local n=0
    snap_cmd="n=\$((n + 1)); cp --reflink=always \"$img\" \"$DIR/$name/snap\$n.img\""
    fio_series "$name reflink" "$L" "$snap_cmd"
    local row=("${FIO_ROW[@]}")
    if [ "$PG" = 1 ]; then
        pg_series "$L" "fsfreeze -f \"\$MNT\"; $snap_cmd; fsfreeze -u \"\$MNT\""
        row+=("$PG_BEFORE" "$PG_AFTER")
    else
        row+=(- -)
    fi
    record "${row[@]}"
    detach "$L"
    umount "$DIR/$name"
    unset 'MOUNTS[${#MOUNTS[@]}-1]'
    detach "$fsl"
    rm -f "$DIR/$name.fs"
}
reflink_fs xfs "mkfs.xfs -q -f -m reflink=1"
reflink_fs btrfs "mkfs.btrfs -q -f"

# The table, and the ratios that matter.
echo "| system | plain writes | first writes after a snapshot | first/plain | writes again | reads | pgbench tps before | right after | after/before |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
ratio() {
    case "$1$2" in *-* | "" | "$1" | "$2") echo - ;; *) python3 -c "print(f'{$1/$2:.2f}')" ;; esac
}
while IFS=$'\t' read -r sys plain first again read b a; do
    echo "| $sys | $plain | $first | $(ratio "$first" "$plain") | $again | $read | $b | $a | $(ratio "$a" "$b") |"
done < "$RESULTS"
DMS_FIRST=$(awk -F'\t' '$1=="dms origin"{print $3}' "$RESULTS")
XFS_FIRST=$(awk -F'\t' '$1=="xfs reflink"{print $3}' "$RESULTS")
echo
echo "dms first writes / XFS reflink first writes: $(ratio "$DMS_FIRST" "$XFS_FIRST")"

# The plot: plain, first and again for each system; pgbench before/after.
awk -F'\t' 'BEGIN{OFS="\t"} {gsub(/ /,"_",$1); for(i=2;i<=7;i++) if($i=="-") $i=0; print}' "$RESULTS" > "$DIR/plot.dat"
gnuplot <<GP
set terminal pngcairo size 1000,460 font "sans,10"
set output "docs/img/snapshot-cost.png"
set multiplot layout 1,2 title "What a snapshot costs (higher is better; one run, one disk)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set grid ytics
set yrange [0:*]
set key top right
set xtics rotate by -20
set title "fio 4 KiB random writes, iodepth 16 (IOPS)"
plot "$DIR/plot.dat" using 2:xtic(1) title "plain", "" using 3 title "first after snapshot", "" using 4 title "again"
set title "pgbench, 8 clients (tps)"
plot "$DIR/plot.dat" every ::1 using 6:xtic(1) title "before snapshot", "" every ::1 using 7 title "right after"
unset multiplot
GP
echo "plot: docs/img/snapshot-cost.png" >&2
