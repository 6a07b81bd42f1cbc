//! Engine benchmark: `cargo bench -p dms-engine [-- --snapshots N --dir DIR]`.
//!
//! Prints the figures docs/benchmarks.md records: origin 4 KiB random write
//! IOPS as the snapshot chain grows (first write after a snapshot, and
//! rewrite), snapshot read IOPS (newest and oldest of the chain), snapshot
//! create and delete latency, and metadata bytes per exception.
//! Files go to DIR (default /dev/shm, which measures the engine rather than
//! the disk; pass --dir /var/tmp for a disk).

use dms_engine::io::{Dev, FileDev};
use dms_engine::{FormatOptions, Store, Volume};
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::Instant;

const ORIGIN: &str = "origin";
const ORIGIN_BYTES: u64 = 256 << 20;
const COW_BYTES: u64 = 8 << 30;
const BLOCK: usize = 4096;

struct Args {
    snapshots: u32,
    dir: String,
    ops: u32,
}

fn args() -> Args {
    let mut a = Args {
        snapshots: 10_000,
        dir: "/dev/shm".into(),
        ops: 20_000,
    };
    let v: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < v.len() {
        match v[i].as_str() {
            "--snapshots" => a.snapshots = v[i + 1].parse().expect("--snapshots N"),
            "--dir" => a.dir = v[i + 1].clone(),
            "--ops" => a.ops = v[i + 1].parse().expect("--ops N"),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

fn file(dir: &std::path::Path, name: &str, size: u64) -> Dev {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    std::sync::Arc::new(FileDev::open(&p, true).unwrap())
}

fn iops(n: u32, secs: f64) -> String {
    format!("{:>10.0}", f64::from(n) / secs)
}

/// First writes: one write to each of `chunks`, then a flush, so that the
/// held data is committed and on the origin; returns IOPS over both.
fn first_writes(store: &Store, v: &Volume, chunks: &[u64]) -> f64 {
    let buf = vec![0x6bu8; BLOCK];
    let t = Instant::now();
    for &c in chunks {
        v.write_at(&buf, c * BLOCK as u64).unwrap();
    }
    store.flush().unwrap();
    chunks.len() as f64 / t.elapsed().as_secs_f64()
}

/// The same from `threads` threads at once (each its share of `chunks`).
fn first_writes_parallel(store: &Store, v: &Arc<Volume>, chunks: &[u64], threads: usize) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for k in 0..threads {
            let v = v.clone();
            s.spawn(move || {
                let buf = vec![0x6cu8; BLOCK];
                for &c in chunks.iter().skip(k).step_by(threads) {
                    v.write_at(&buf, c * BLOCK as u64).unwrap();
                }
            });
        }
    });
    store.flush().unwrap();
    chunks.len() as f64 / t.elapsed().as_secs_f64()
}

/// Resident memory of this process, bytes.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).map(str::to_string))
        .and_then(|p| p.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Memory per held chunk: hold `n` first writes (no committer), compare
/// resident memory before and after.
fn held_memory(dir: &std::path::Path, n: u64) -> (f64, u64) {
    let origin = file(dir, "held-origin.img", n * BLOCK as u64);
    let cow = file(dir, "held-cow.img", 4 * n * BLOCK as u64 + (64 << 20));
    let store = Store::format(cow, &FormatOptions::default()).unwrap();
    dms_engine::testing::set_background_committer(&store, false);
    store.set_held_limit(u64::MAX);
    store.bind(ORIGIN, origin).unwrap();
    store.snapshot_origin(ORIGIN, "held").unwrap();
    let v = store.volume(ORIGIN, 0).unwrap();
    let buf = vec![1u8; BLOCK];
    // A first batch, held too, warms the allocator and the tables.
    for c in 0..n / 8 {
        v.write_at(&buf, c * BLOCK as u64).unwrap();
    }
    let before = rss();
    for c in n / 8..n {
        v.write_at(&buf, c * BLOCK as u64).unwrap();
    }
    let after = rss();
    let held = store.held();
    assert_eq!(held.chunks, n);
    let per = after.saturating_sub(before) as f64 / (n - n / 8) as f64;
    store.flush().unwrap();
    (per, held.bytes / held.chunks)
}

/// Random 4 KiB writes to the given chunks; returns IOPS.
fn write_chunks(v: &Volume, chunks: &[u64], rng: &mut impl Rng, ops: u32) -> f64 {
    let buf = vec![0x5au8; BLOCK];
    let t = Instant::now();
    for i in 0..ops {
        let c = chunks[if ops as usize == chunks.len() {
            i as usize
        } else {
            rng.gen_range(0..chunks.len())
        }];
        v.write_at(&buf, c * BLOCK as u64).unwrap();
    }
    f64::from(ops) / t.elapsed().as_secs_f64()
}

/// Median of five runs of `f`.
fn median(mut f: impl FnMut() -> f64) -> f64 {
    let mut v: Vec<f64> = (0..5).map(|_| f()).collect();
    v.sort_by(f64::total_cmp);
    v[2]
}

fn read_random(v: &Volume, rng: &mut impl Rng, ops: u32) -> f64 {
    let mut buf = vec![0u8; BLOCK];
    let chunks = ORIGIN_BYTES / BLOCK as u64;
    let t = Instant::now();
    for _ in 0..ops {
        v.read_at(&mut buf, rng.gen_range(0..chunks) * BLOCK as u64)
            .unwrap();
    }
    f64::from(ops) / t.elapsed().as_secs_f64()
}

fn distinct(rng: &mut impl Rng, n: usize) -> Vec<u64> {
    let total = ORIGIN_BYTES / BLOCK as u64;
    let mut set = std::collections::BTreeSet::new();
    while set.len() < n {
        set.insert(rng.gen_range(0..total));
    }
    let mut v: Vec<u64> = set.into_iter().collect();
    // Shuffle so the writes are random, not ascending.
    for i in (1..v.len()).rev() {
        v.swap(i, rng.gen_range(0..=i));
    }
    v
}

fn main() {
    let a = args();
    let dir = tempfile::Builder::new()
        .prefix("dms-bench")
        .tempdir_in(&a.dir)
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let origin = file(dir.path(), "origin.img", ORIGIN_BYTES);
    let cow = file(dir.path(), "cow.img", COW_BYTES);
    let store = Store::format(
        cow,
        &FormatOptions {
            chunk_pages: 1,
            force: false,
        },
    )
    .unwrap();
    store.bind(ORIGIN, origin).unwrap();
    let o = store.volume(ORIGIN, 0).unwrap();
    // A second store that stays at one snapshot, measured alternately with
    // the first at the end, so that drift in the machine's state cancels.
    let origin_a = file(dir.path(), "origin-a.img", ORIGIN_BYTES);
    let cow_a = file(dir.path(), "cow-a.img", 1 << 30);
    let store_a = Store::format(
        cow_a,
        &FormatOptions {
            chunk_pages: 1,
            force: false,
        },
    )
    .unwrap();
    store_a.bind(ORIGIN, origin_a).unwrap();
    let oa = store_a.volume(ORIGIN, 0).unwrap();
    let fill = vec![0x11u8; 1 << 20];
    for i in 0..ORIGIN_BYTES >> 20 {
        oa.write_at(&fill, i << 20).unwrap();
    }
    store_a.snapshot_origin(ORIGIN, "one").unwrap();
    let chunks_a = distinct(&mut rng, 2000);
    write_chunks(&oa, &chunks_a, &mut rng, chunks_a.len() as u32);
    // Fill the origin so reads hit real data.
    for i in 0..ORIGIN_BYTES >> 20 {
        o.write_at(&fill, i << 20).unwrap();
    }
    store.flush().unwrap();
    println!(
        "dms-engine benchmark: origin {} MiB, chunk 4 KiB, files in {}",
        ORIGIN_BYTES >> 20,
        a.dir
    );
    println!();
    let (per, counted) = held_memory(dir.path(), 65_536);
    println!(
        "held overwrites: {per:.0} bytes of memory per held 4 KiB chunk ({counted} counted against the limit); \
         the default limit, {} MiB, holds {} chunks",
        dms_engine::DEFAULT_HELD_LIMIT >> 20,
        dms_engine::DEFAULT_HELD_LIMIT / counted
    );
    println!();
    println!(
        "{:>10} {:>18} {:>18} {:>18}",
        "snapshots", "first-write IOPS", "16 threads", "rewrite IOPS"
    );
    let all: Vec<u64> = (0..ORIGIN_BYTES / BLOCK as u64).collect();
    let r = median(|| write_chunks(&o, &all, &mut rng, a.ops));
    println!("{:>10} {:>18} {:>18} {:>18.0}", 0, "-", "-", r);
    let first_n = 20_000usize;
    let o = Arc::new(o);
    let mut taken = 0u32;
    let mut rewrite_at = Vec::new();
    let mut last_chunks = Vec::new();
    let mut tags = Vec::new();
    // Grow the chain; between snapshots, 100 chunks of the origin change
    // (each a copy-out for the newest snapshot).
    for target in [1u32, 100, a.snapshots] {
        while taken + 1 < target {
            tags.push(store.snapshot_origin(ORIGIN, "chain").unwrap());
            taken += 1;
            let c = rng.gen_range(0..ORIGIN_BYTES / BLOCK as u64 - 100);
            o.write_at(&vec![taken as u8; 100 * BLOCK], c * BLOCK as u64)
                .unwrap();
        }
        tags.push(store.snapshot_origin(ORIGIN, "measured").unwrap());
        taken += 1;
        let chunks = distinct(&mut rng, 2 * first_n);
        let first = first_writes(&store, &o, &chunks[..first_n]);
        let parallel = first_writes_parallel(&store, &o, &chunks[first_n..], 16);
        let again = median(|| write_chunks(&o, &chunks, &mut rng, a.ops));
        rewrite_at.push((target, again));
        last_chunks = chunks.clone();
        println!(
            "{:>10} {:>18.0} {:>18.0} {:>18.0}",
            target, first, parallel, again
        );
    }
    let one = rewrite_at[0].1;
    let last = rewrite_at[rewrite_at.len() - 1].1;
    println!(
        "rewrite IOPS at {} snapshots vs 1, measured in sequence: {:+.1}%",
        a.snapshots,
        (last / one - 1.0) * 100.0
    );
    let (mut s1, mut sn) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        s1.push(write_chunks(&oa, &chunks_a, &mut rng, a.ops));
        sn.push(write_chunks(&o, &last_chunks, &mut rng, a.ops));
    }
    s1.sort_by(f64::total_cmp);
    sn.sort_by(f64::total_cmp);
    println!(
        "rewrite IOPS measured alternately (medians of 7): 1 snapshot {:.0}, {} snapshots {:.0}: {:+.1}%",
        s1[3],
        a.snapshots,
        sn[3],
        (sn[3] / s1[3] - 1.0) * 100.0
    );
    println!();
    let newest = store.volume(ORIGIN, *tags.last().unwrap()).unwrap();
    let oldest = store.volume(ORIGIN, tags[0]).unwrap();
    // Newest and oldest alternately, medians of 7.
    let (mut vn, mut vo) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        vn.push(read_random(&newest, &mut rng, a.ops));
        vo.push(read_random(&oldest, &mut rng, a.ops));
    }
    vn.sort_by(f64::total_cmp);
    vo.sort_by(f64::total_cmp);
    let (rn, ro) = (vn[3], vo[3]);
    let rorig = median(|| read_random(&o, &mut rng, a.ops));
    println!(
        "4 KiB random read IOPS: origin {}, newest snapshot {}, oldest of {} {}",
        iops(1, 1.0 / rorig),
        iops(1, 1.0 / rn),
        a.snapshots,
        iops(1, 1.0 / ro)
    );
    println!("oldest/newest read cost: {:.2}x", rn / ro);
    drop((newest, oldest));
    let n = 100u32;
    let t = Instant::now();
    let mut extra = Vec::new();
    for _ in 0..n {
        extra.push(store.snapshot_origin(ORIGIN, "latency").unwrap());
    }
    let create = t.elapsed().as_secs_f64() / f64::from(n);
    let t = Instant::now();
    for tag in &extra {
        store.delete(ORIGIN, *tag).unwrap();
    }
    let delete = t.elapsed().as_secs_f64() / f64::from(n);
    println!(
        "snapshot create at {} snapshots: {:.0} us; delete: {:.0} us (each durable on return)",
        taken,
        create * 1e6,
        delete * 1e6
    );
    let t = Instant::now();
    let report = store.clean().unwrap();
    println!(
        "cleaner: {} versions removed in {:.1} ms",
        report.versions_removed,
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    let check = store.check().unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(check.is_clean(), "{:?}", check.problems);
    println!(
        "check (cache warm): {:.2} s for {} exceptions, {:.2} s per million",
        secs,
        check.exceptions,
        secs / check.exceptions as f64 * 1e6
    );
    // The same on a freshly opened store: every block read from the device.
    let cow_path = dir.path().join("cow.img");
    drop((o, oa, store, store_a));
    let t = Instant::now();
    let reopened =
        Store::open(std::sync::Arc::new(FileDev::open(&cow_path, true).unwrap())).unwrap();
    let opened = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let cold = reopened.check().unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "open: {:.3} s; check after open (every block read): {:.2} s, {:.2} s per million exceptions",
        opened,
        secs,
        secs / cold.exceptions as f64 * 1e6
    );
    println!(
        "metadata: {} exceptions, exception tree {} nodes ({:.2} bytes/exception), all metadata {:.2} bytes/exception",
        check.exceptions,
        check.exception_nodes,
        (check.exception_nodes * 4096) as f64 / check.exceptions as f64,
        (check.metadata_pages * 4096) as f64 / check.exceptions as f64
    );
}
