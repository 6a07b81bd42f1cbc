#!/usr/bin/env bash
# What taking a snapshot costs the running workload, side by side on one
# disk, in one run:
#   fio 4 KiB random writes (libaio, O_DIRECT, iodepth 16) on loop devices
#   (direct I/O) over: a raw image; the dms origin with 0 and 1 snapshot;
#   an image on XFS (mkfs.xfs -m reflink=1) with `cp --reflink` as the
#   snapshot; the same on btrfs. "first" = writes to blocks not written
#   since the snapshot, "again" = the same blocks rewritten, "read" =
#   random reads.
#   pgbench (8 clients) tps in the seconds just before and right after a
#   snapshot (two snapshots in one run), PostgreSQL on ext4 on each of the
#   three (the reflink copies are taken with the filesystem frozen, as dms
#   freezes it itself).
#
# Usage: bench/snapshot-cost.sh [DIR]     (root; default /var/tmp/dms-snap-bench)
#   SIZE_MB (1024) image size; FIRST_IO (64M) bytes per fio write pass;
#   PG_WINDOW (10) seconds per pgbench window; PG_SCALE (20); PG=0 skips pgbench;
#   ROUNDS (5) times each system is measured, in turn (pgbench's after/before
#   moves by about ±0.05 between rounds of one system); FIO=0 skips fio;
#   SYSTEMS ("raw dms xfs btrfs") the systems measured;
#   REPORT_ONLY=1 prints the table and plot again from DIR's results;
#   DMS the dms binary measured, DMS_LABEL its row's name ("dms origin");
#   PLOT (docs/img/snapshot-cost.png) where the plot goes, "" for none.
# Prints a markdown table; writes the plot (gnuplot).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-/var/tmp/dms-snap-bench}
SIZE_MB=${SIZE_MB:-1024}
FIRST_IO=${FIRST_IO:-64M}
RUNTIME=${RUNTIME:-5}
PG=${PG:-1}
PG_WINDOW=${PG_WINDOW:-10}
PG_SCALE=${PG_SCALE:-20}
ROUNDS=${ROUNDS:-5}
SYSTEMS=${SYSTEMS:-raw dms xfs btrfs}
DMS_LABEL=${DMS_LABEL:-dms origin}
PLOT=${PLOT-docs/img/snapshot-cost.png}
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
DMS=${DMS:-$PWD/target/release/dms}
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
RESULTS=$DIR/results.tsv
if [ "${REPORT_ONLY:-0}" != 1 ]; then
rm -rf "$DIR"; mkdir -p "$DIR"
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
    if [ "${FIO:-1}" = 0 ]; then
        [ -n "$snap" ] && eval "$snap"
        FIO_ROW=("$name" - - - -)
        return
    fi
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

# PostgreSQL on ext4 on `dev`: one pgbench run of 5 windows of PG_WINDOW
# seconds with a snapshot at the start of windows 3 and 5; tps per second
# (pgbench -P 1) in the window just before each snapshot and the one right
# after it; PG_BEFORE and PG_AFTER are the means over both snapshots.
PGDATA_DIR=
pg_series() { # dev snapshot-command(with $MNT)
    local dev=$1 snap=$2 w=$PG_WINDOW
    MNT=$DIR/pg
    mkdir -p "$MNT"
    # Inode tables and journal written now: no lazy initialisation writing
    # in the background while pgbench runs.
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$dev"
    mount "$dev" "$MNT"
    MOUNTS+=("$MNT")
    chown postgres "$MNT"
    PGDATA_DIR=$MNT/data
    su postgres -c "$PGBIN/initdb -D $PGDATA_DIR" >/dev/null 2>&1
    su postgres -c "$PGBIN/pg_ctl -D $PGDATA_DIR -w -l $MNT/log -o \"-k $MNT -p 5439 -c listen_addresses='' -c max_wal_size=4GB -c checkpoint_timeout=30min\" start" >/dev/null
    local pgb="$PGBIN/pgbench -h $MNT -p 5439"
    su postgres -c "$pgb -i -q -s $PG_SCALE postgres" >/dev/null 2>&1
    su postgres -c "$PGBIN/psql -h $MNT -p 5439 -q -c checkpoint postgres" >/dev/null
    su postgres -c "$pgb -c 8 -j 2 -T $((5 * w)) -P 1 postgres" >"$DIR/pgbench.out" 2>&1 &
    local pid=$! t0
    t0=$(date +%s.%N)
    timed_snap() { # the snapshot command, its start and length logged
        local s0 s1 w0 w1 stat=/sys/block/${dev#/dev/}/stat
        w0=$(awk '{print $7}' "$stat")
        s0=$(date +%s.%N); eval "$snap"; s1=$(date +%s.%N)
        w1=$(awk '{print $7}' "$stat")
        printf 'snapshot at %.2f s took %.3f s, %d MiB written to the device meanwhile\n' \
            "$(echo "$s0 - $t0" | bc -l)" "$(echo "$s1 - $s0" | bc -l)" $(((w1 - w0) / 2048)) >>"$DIR/pgbench.out.snaps"
    }
    : >"$DIR/pgbench.out.snaps"
    sleep $((2 * w)); timed_snap
    sleep "$(python3 -c "import time; print(max(0, $t0 + 4 * $w - time.time()))")"; timed_snap
    wait $pid
    # Kept per run (pgbench-<n>.out, in the order the runs were made), to
    # look at the seconds around each snapshot.
    PG_RUNS=$((${PG_RUNS:-0} + 1))
    cp "$DIR/pgbench.out" "$DIR/pgbench-$PG_RUNS.out"
    cat "$DIR/pgbench.out.snaps" >>"$DIR/pgbench-$PG_RUNS.out"
    read -r PG_BEFORE PG_AFTER < <(python3 bench/pgbench-windows.py "$DIR/pgbench.out" "$w")
    su postgres -c "$PGBIN/pg_ctl -D $PGDATA_DIR -m fast -w stop" >/dev/null
    PGDATA_DIR=
    umount "$MNT"
    unset 'MOUNTS[${#MOUNTS[@]}-1]'
}

echo "preparing ${SIZE_MB} MiB of random data in $DIR" >&2
dd if=/dev/urandom of="$DIR/fill.raw" bs=1M count="$SIZE_MB" status=none

# A raw image: the floor every system is measured against.
run_raw() {
    cp "$DIR/fill.raw" "$DIR/raw.img"
    L=$(attach "$DIR/raw.img")
    fio_series "raw image" "$L" ""
    local row=("${FIO_ROW[@]}")
    if [ "$PG" = 1 ]; then
        # No snapshot, only the freeze and thaw a snapshot brings: what the
        # before/after figures do by themselves.
        pg_series "$L" 'fsfreeze -f "$MNT"; fsfreeze -u "$MNT"'
        row+=("$PG_BEFORE" "$PG_AFTER")
    else
        row+=(- -)
    fi
    record "${row[@]}"
    detach "$L"; rm -f "$DIR/raw.img"
}

# dms: origin and COW file on the same disk; `dms create --loop` as a user
# would; the snapshot is `dms snapshot`.
run_dms() {
    rm -rf "$DIR/dms"; mkdir -p "$DIR/dms"
    cp "$DIR/fill.raw" "$DIR/dms/origin.raw"
    truncate -s $((SIZE_MB * 3))M "$DIR/dms/cow.img"
    L=$("$DMS" create orig "$DIR/dms/origin.raw" "$DIR/dms/cow.img" -bF --loop)
    LOOPS+=("$L")
    fio_series "$DMS_LABEL" "$L" '"$DMS" snapshot orig -m bench >/dev/null'
    local row=("${FIO_ROW[@]}")
    if [ "$PG" = 1 ]; then
        pg_series "$L" '"$DMS" snapshot orig -m pgbench >/dev/null'
        row+=("$PG_BEFORE" "$PG_AFTER")
    else
        row+=(- -)
    fi
    record "${row[@]}"
    "$DMS" shutdown --force >/dev/null
    LOOPS=()
    rm -rf "$DIR/dms"
}

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

# The systems in turn, ROUNDS times, so that drift of the machine's state
# falls on all of them alike.
for r in $(seq 1 "$ROUNDS"); do
    echo "round $r of $ROUNDS" >&2
    for sys in $SYSTEMS; do
        case $sys in
        raw) run_raw ;;
        dms) run_dms ;;
        xfs) reflink_fs xfs "mkfs.xfs -q -f -m reflink=1" ;;
        btrfs) reflink_fs btrfs "mkfs.btrfs -q -f" ;;
        *) echo "bench: unknown system $sys (raw, dms, xfs, btrfs)" >&2; exit 1 ;;
        esac
    done
done

fi # REPORT_ONLY

# The table: medians over the rounds; the ratios are medians of each
# round's ratio.
python3 - "$RESULTS" "$ROUNDS" > "$DIR/table.md" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
systems = []
for r in rows:
    if r[0] not in systems:
        systems.append(r[0])
num = lambda v: None if v in ("-", "") else float(v)
def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None
fmt = lambda v: "-" if v is None else f"{v:,.0f}"
rat = lambda v: "-" if v is None else f"{v:.2f}"
print(f"Medians of {sys.argv[2]} rounds (ratios: median of each round's ratio).")
print()
print("| system | plain writes | first writes after a snapshot | first/plain | writes again | reads | pgbench tps before | right after | after/before |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
per = {}
for s in systems:
    rs = [[num(x) for x in r[1:]] for r in rows if r[0] == s]
    col = lambda i: [r[i] for r in rs]
    fp = med([f / p if f and p else None for p, f in zip(col(0), col(1))])
    ab = med([a / b if a and b else None for b, a in zip(col(4), col(5))])
    per[s] = col(1)
    print(f"| {s} | {fmt(med(col(0)))} | {fmt(med(col(1)))} | {rat(fp)} | {fmt(med(col(2)))} | {fmt(med(col(3)))} | {fmt(med(col(4)))} | {fmt(med(col(5)))} | {rat(ab)} |")
if "dms origin" in per and "xfs reflink" in per:
    r = med([d / x if d and x else None for d, x in zip(per["dms origin"], per["xfs reflink"])])
    print()
    print(f"dms first writes / XFS reflink first writes (median of rounds): {rat(r)}")
PY
cat "$DIR/table.md"
echo
echo "every round (system, plain, first, again, read, pgbench before, after):"
cat "$RESULTS"

# The plot: plain, first and again for each system; pgbench before/after.
python3 - "$RESULTS" > "$DIR/plot.dat" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
systems = []
for r in rows:
    if r[0] not in systems:
        systems.append(r[0])
for s in systems:
    rs = [r[1:] for r in rows if r[0] == s]
    out = []
    for i in range(6):
        v = [float(r[i]) for r in rs if r[i] not in ("-", "")]
        out.append(f"{statistics.median(v):.0f}" if v else "0")
    print('"' + s + '"', *out, sep="\t")
PY
[ -n "$PLOT" ] || exit 0
gnuplot <<GP
set terminal pngcairo size 1000,460 font "sans,10" noenhanced
set output "$PLOT"
set multiplot layout 1,2 title "What a snapshot costs (medians; higher is better; one run, one disk)"
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
plot "$DIR/plot.dat" using 6:xtic(1) title "before snapshot (raw: a freeze only)", "" using 7 title "right after"
unset multiplot
GP
echo "plot: $PLOT" >&2
