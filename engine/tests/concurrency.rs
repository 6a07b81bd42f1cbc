//! Many threads writing and reading overlapping ranges of the origin and of
//! snapshots at once. Every sector must end up holding one whole write, the
//! last one to finish among those that overlapped in time, and versions no
//! one wrote must read exactly as they were, throughout.

mod common;

use common::*;
use dms_engine::io::{Dev, MemDev};
use dms_engine::{FormatOptions, Store};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const SIZE: usize = 2 << 20;
const SECTOR: usize = 512;

fn sector_bytes(id: u64, sector: usize, tag: u32) -> [u8; SECTOR] {
    let mut b = [0u8; SECTOR];
    for (i, x) in b.iter_mut().enumerate() {
        *x = (id as u8).wrapping_mul(13) ^ (i as u8) ^ (sector as u8).wrapping_mul(7) ^ tag as u8;
    }
    b[..8].copy_from_slice(&id.to_le_bytes());
    b[8..16].copy_from_slice(&(sector as u64).to_le_bytes());
    b[16..20].copy_from_slice(&tag.to_le_bytes());
    b
}

struct WriteRec {
    tag: u32,
    first: usize,
    count: usize,
    start: u64,
    end: u64,
}

fn run(chunk_pages: u32) {
    let initial = pattern(SIZE, 0x77);
    let origin: Dev = Arc::new(MemDev::from_bytes("origin", &initial));
    let cow: Dev = Arc::new(MemDev::new("cow", 256 << 20));
    let store = Store::format(
        cow,
        &FormatOptions {
            chunk_pages,
            force: false,
        },
    )
    .unwrap();
    store.bind(ORIGIN, origin).unwrap();
    assert_eq!(store.snapshot_origin(ORIGIN, "frozen").unwrap(), 1);
    assert_eq!(store.snapshot_of(ORIGIN, 1, "written").unwrap(), 2);
    assert_eq!(store.snapshot_origin(ORIGIN, "written").unwrap(), 3);
    assert_eq!(store.snapshot_origin(ORIGIN, "frozen").unwrap(), 4);
    let writable = [0u32, 2, 3];
    let frozen = [1u32, 4];
    let clock = Arc::new(AtomicU64::new(1));
    let log: Arc<Mutex<HashMap<u64, WriteRec>>> = Arc::default();
    let stop = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for t in 0..6u64 {
        let (store, clock, log) = (store.clone(), clock.clone(), log.clone());
        handles.push(std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(t * 1000 + u64::from(chunk_pages));
            let vols: Vec<_> = writable
                .iter()
                .map(|&tag| store.volume(ORIGIN, tag).unwrap())
                .collect();
            for _ in 0..250 {
                let vi = rng.gen_range(0..vols.len());
                let tag = writable[vi];
                // A hot region so that writes overlap often.
                let first = rng.gen_range(0..(256 * 1024 / SECTOR));
                let count = rng.gen_range(1..=40);
                let id = clock.fetch_add(1, Ordering::SeqCst);
                let mut buf = Vec::with_capacity(count * SECTOR);
                for s in first..first + count {
                    buf.extend_from_slice(&sector_bytes(id, s, tag));
                }
                let start = clock.fetch_add(1, Ordering::SeqCst);
                vols[vi].write_at(&buf, (first * SECTOR) as u64).unwrap();
                let end = clock.fetch_add(1, Ordering::SeqCst);
                log.lock().unwrap().insert(
                    id,
                    WriteRec {
                        tag,
                        first,
                        count,
                        start,
                        end,
                    },
                );
                if rng.gen_range(0..20) == 0 {
                    vols[vi].flush().unwrap();
                }
            }
        }));
    }
    let mut readers = Vec::new();
    for r in 0..2u64 {
        let (store, stop, initial) = (store.clone(), stop.clone(), initial.clone());
        readers.push(std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(99 + r);
            let vols: Vec<_> = frozen
                .iter()
                .map(|&tag| store.volume(ORIGIN, tag).unwrap())
                .collect();
            let mut reads = 0u64;
            while stop.load(Ordering::SeqCst) == 0 || reads < 50 {
                let v = &vols[rng.gen_range(0..vols.len())];
                let off = rng.gen_range(0..SIZE - 65536);
                let len = rng.gen_range(1..65536);
                let mut buf = vec![0u8; len];
                v.read_at(&mut buf, off as u64).unwrap();
                assert_eq!(
                    buf,
                    initial[off..off + len],
                    "frozen tag {} changed at {off}",
                    v.tag()
                );
                reads += 1;
            }
            reads
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    stop.store(1, Ordering::SeqCst);
    for r in readers {
        assert!(r.join().unwrap() >= 50);
    }
    // Every sector of every written version holds the right write.
    let log = log.lock().unwrap();
    let mut covering: HashMap<(u32, usize), Vec<u64>> = HashMap::new();
    for (&id, w) in log.iter() {
        for s in w.first..w.first + w.count {
            covering.entry((w.tag, s)).or_default().push(id);
        }
    }
    for tag in writable {
        let got = read_all(&store.volume(ORIGIN, tag).unwrap());
        for s in 0..SIZE / SECTOR {
            let sec = &got[s * SECTOR..(s + 1) * SECTOR];
            let cands = covering.get(&(tag, s));
            match cands {
                None => assert_eq!(
                    sec,
                    &initial[s * SECTOR..(s + 1) * SECTOR],
                    "tag {tag} sector {s} never written"
                ),
                Some(c) => {
                    let id = u64::from_le_bytes(sec[..8].try_into().unwrap());
                    assert!(
                        c.contains(&id),
                        "tag {tag} sector {s} holds write {id}, not one of {c:?}"
                    );
                    assert_eq!(
                        sec,
                        &sector_bytes(id, s, tag)[..],
                        "tag {tag} sector {s} is torn"
                    );
                    let w = &log[&id];
                    for other in c {
                        assert!(
                            log[other].start < w.end,
                            "tag {tag} sector {s}: write {id} ended before {other} began, yet won"
                        );
                    }
                }
            }
        }
    }
    for tag in frozen {
        assert_eq!(
            read_all(&store.volume(ORIGIN, tag).unwrap()),
            initial,
            "frozen tag {tag}"
        );
    }
    let report = store.check().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

#[test]
fn overlapping_writers_and_readers_chunk_1() {
    run(1);
}

#[test]
fn overlapping_writers_and_readers_chunk_4() {
    run(4);
}

/// A background rollback merging with several threads while writers change
/// the origin (partial chunks, which merge first, and whole chunks, which
/// only mark) and readers watch two snapshots: the writes land, the rest of
/// the origin is the snapshot's content, the snapshots never change.
#[test]
fn a_parallel_rollback_under_origin_writers_and_snapshot_readers() {
    const SIZE: usize = 16 << 20;
    const CB: usize = 4096;
    let a = pattern(SIZE, 0x11);
    let origin: Dev = Arc::new(MemDev::from_bytes("origin", &a));
    let cow: Dev = Arc::new(MemDev::new("cow", 64 << 20));
    let store = Store::format(cow.clone(), &FormatOptions::default()).unwrap();
    store.set_rollback_workers(4);
    store.bind(ORIGIN, origin.clone()).unwrap();
    let o = store.volume(ORIGIN, 0).unwrap();
    let t1 = store.snapshot_origin(ORIGIN, "A").unwrap();
    let b = pattern(SIZE, 0x22);
    o.write_at(&b, 0).unwrap();
    let t2 = store.snapshot_origin(ORIGIN, "B").unwrap();
    // The origin differs from both snapshots on every other chunk.
    for c in (0..SIZE / CB).step_by(2) {
        o.write_at(&[0xcc; CB], (c * CB) as u64).unwrap();
    }
    store.rollback_start(ORIGIN, t1).unwrap();
    let bg = {
        let store = store.clone();
        std::thread::spawn(move || store.finish_rollback(ORIGIN))
    };
    let mut writers = Vec::new();
    for t in 0..3usize {
        let store = store.clone();
        writers.push(std::thread::spawn(move || {
            let o = store.volume(ORIGIN, 0).unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
            let mut mine: Vec<(usize, Vec<u8>)> = Vec::new();
            let mut during = 0;
            for i in 0..2000 {
                // Thread t owns the chunks c with c % 3 == t.
                let c = rng.gen_range(0..SIZE / CB / 3) * 3 + t;
                let (off, len) = if i % 4 == 0 {
                    (0, CB)
                } else {
                    let off = rng.gen_range(0..CB - 1);
                    (off, rng.gen_range(1..=CB - off))
                };
                let data = vec![(i as u8) | 1; len];
                let at = c * CB + off;
                during += usize::from(store.rollback_pending(ORIGIN).unwrap().is_some());
                o.write_at(&data, at as u64).unwrap();
                mine.push((at, data));
            }
            (mine, during)
        }));
    }
    let mut readers = Vec::new();
    for (tag, want) in [(t1, a.clone()), (t2, b.clone())] {
        let store = store.clone();
        readers.push(std::thread::spawn(move || {
            let v = store.volume(ORIGIN, tag).unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(tag) + 50);
            for _ in 0..300 {
                let off = rng.gen_range(0..SIZE - 65536);
                let mut buf = vec![0u8; rng.gen_range(1..65536)];
                v.read_at(&mut buf, off as u64).unwrap();
                assert!(
                    buf == want[off..off + buf.len()],
                    "tag {tag} changed at {off}"
                );
            }
        }));
    }
    let mut want = a.clone();
    let mut during = 0;
    for w in writers {
        let (mine, n) = w.join().unwrap();
        for (at, data) in mine {
            want[at..at + data.len()].copy_from_slice(&data);
        }
        during += n;
    }
    assert!(during > 100, "only {during} writes met the rollback");
    for r in readers {
        r.join().unwrap();
    }
    bg.join().unwrap().unwrap();
    assert_eq!(store.rollback_pending(ORIGIN).unwrap(), None);
    let check = |store: &Store| {
        assert!(
            read_all(&store.volume(ORIGIN, 0).unwrap()) == want,
            "origin"
        );
        assert!(
            read_all(&store.volume(ORIGIN, t1).unwrap()) == a,
            "tag {t1}"
        );
        assert!(
            read_all(&store.volume(ORIGIN, t2).unwrap()) == b,
            "tag {t2}"
        );
        let report = store.check().unwrap();
        assert!(report.is_clean(), "{:?}", report.problems);
    };
    check(&store);
    drop(o);
    drop(store);
    let store = Store::open(cow).unwrap();
    store.attach(ORIGIN, origin).unwrap();
    check(&store);
}
