//! Extents: where each part of a version reads from (NBD block status and
//! `qemu-img map` show them): the depth in the version tree of the copy
//! it reads, and the holes of a sparse origin file.

use dms_engine::io::{FileDev, MemDev};
use dms_engine::{Extent, FormatOptions, Store};
use std::sync::Arc;

const CB: u64 = 4096;

fn ext(offset: u64, chunks: u64, depth: u32, hole: bool) -> Extent {
    Extent {
        offset: offset * CB,
        len: chunks * CB,
        depth,
        hole,
    }
}

#[test]
fn depth_counts_the_steps_to_the_version_holding_the_copy() {
    let store = Store::format(
        Arc::new(MemDev::new("cow", 4 << 20)),
        &FormatOptions::default(),
    )
    .unwrap();
    store
        .bind("o", Arc::new(MemDev::new("origin", 64 * CB)))
        .unwrap();
    let o = store.volume("o", 0).unwrap();
    let t1 = store.snapshot_origin("o", "").unwrap();
    o.write_at(&[1; 4096], 2 * CB).unwrap(); // copy of chunk 2 for t1
    let t2 = store.snapshot_origin("o", "").unwrap();
    o.write_at(&[2; 4096], 5 * CB).unwrap(); // copy of chunk 5 for t2 (t1 shares it)
    let v1 = store.volume("o", t1).unwrap();
    let v2 = store.volume("o", t2).unwrap();
    // The origin reads its device everywhere; MemDev cannot tell holes.
    assert_eq!(o.extents(0, 64 * CB).unwrap(), vec![ext(0, 64, 0, false)]);
    assert_eq!(
        v2.extents(0, 64 * CB).unwrap(),
        vec![
            ext(0, 5, 0, false),
            ext(5, 1, 1, false),
            ext(6, 58, 0, false)
        ]
    );
    // t1 sits below t2: chunk 2 is its own copy, chunk 5 is t2's.
    assert_eq!(
        v1.extents(0, 64 * CB).unwrap(),
        vec![
            ext(0, 2, 0, false),
            ext(2, 1, 1, false),
            ext(3, 2, 0, false),
            ext(5, 1, 2, false),
            ext(6, 58, 0, false),
        ]
    );
    // A write to snapshot t1 makes its own copy.
    v1.write_at(&[3; 100], 5 * CB + 7).unwrap();
    assert_eq!(v1.extents(5 * CB, 1).unwrap(), vec![ext(5, 1, 1, false)]);
    // Unaligned requests give the chunks they touch; empty ones nothing;
    // past the end an error.
    assert_eq!(
        v1.extents(CB + 1, 2 * CB).unwrap(),
        vec![
            ext(1, 1, 0, false),
            ext(2, 1, 1, false),
            ext(3, 1, 0, false)
        ]
    );
    assert!(v1.extents(10, 0).unwrap().is_empty());
    assert!(v1.extents(63 * CB, 2 * CB).is_err());
    assert!(v1.extents(u64::MAX, 2).is_err());
    // Changed since: what delta says.
    assert_eq!(v2.changed_since(t1).unwrap(), vec![2, 5]); // 5: t1 was written
    assert_eq!(o.changed_since(t2).unwrap(), vec![5]);
}

#[test]
fn holes_of_a_sparse_origin_file_and_held_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("origin.img");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(256 * CB).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[9; 8192], 16 * CB).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let store = Store::format(
        Arc::new(MemDev::new("cow", 4 << 20)),
        &FormatOptions::default(),
    )
    .unwrap();
    store
        .bind("o", Arc::new(FileDev::open(&path, true).unwrap()))
        .unwrap();
    let o = store.volume("o", 0).unwrap();
    assert_eq!(
        o.extents(0, 256 * CB).unwrap(),
        vec![
            ext(0, 16, 0, true),
            ext(16, 2, 0, false),
            ext(18, 238, 0, true)
        ]
    );
    // A snapshot reads the same holes (it shares the origin there).
    let t1 = store.snapshot_origin("o", "").unwrap();
    let v1 = store.volume("o", t1).unwrap();
    assert_eq!(
        v1.extents(0, 256 * CB).unwrap(),
        o.extents(0, 256 * CB).unwrap()
    );
    // A write into a hole after the snapshot, held in memory (the committer
    // stopped): data at once, for the origin; the snapshot's copy of zeros
    // is a copy (depth 1), not a hole.
    dms_engine::testing::set_background_committer(&store, false);
    o.write_at(&[7; 4096], 100 * CB).unwrap();
    assert_eq!(
        o.extents(100 * CB, CB).unwrap(),
        vec![ext(100, 1, 0, false)]
    );
    assert_eq!(
        v1.extents(100 * CB, CB).unwrap(),
        vec![ext(100, 1, 1, false)]
    );
    store.flush().unwrap();
    assert_eq!(
        o.extents(100 * CB, CB).unwrap(),
        vec![ext(100, 1, 0, false)]
    );
    assert_eq!(o.extents(101 * CB, CB).unwrap(), vec![ext(101, 1, 0, true)]);
}

#[test]
fn a_discard_through_dms_gives_a_sparse_origin_its_holes_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("origin.img");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(64 * CB).unwrap();
    drop(f);
    let store = Store::format(
        Arc::new(MemDev::new("cow", 4 << 20)),
        &FormatOptions::default(),
    )
    .unwrap();
    store
        .bind("o", Arc::new(FileDev::open(&path, true).unwrap()))
        .unwrap();
    let o = store.volume("o", 0).unwrap();
    o.write_at(&[5; 16 * 4096], 8 * CB).unwrap();
    o.flush().unwrap();
    assert_eq!(
        o.extents(8 * CB, 16 * CB).unwrap(),
        vec![ext(8, 16, 0, false)]
    );
    // A snapshot keeps what it had; the origin's discarded chunks become
    // holes again (the partial chunks at the ends stay data, zeroed).
    let t1 = store.snapshot_origin("o", "").unwrap();
    o.discard(10 * CB - 100, 4 * CB + 200).unwrap();
    assert_eq!(
        o.extents(8 * CB, 16 * CB).unwrap(),
        vec![
            ext(8, 2, 0, false),
            ext(10, 4, 0, true),
            ext(14, 10, 0, false)
        ]
    );
    let mut b = vec![1u8; 6 * 4096];
    o.read_at(&mut b, 9 * CB).unwrap();
    assert!(b[..CB as usize - 100].iter().all(|&x| x == 5));
    assert!(b[CB as usize - 100..5 * CB as usize + 100]
        .iter()
        .all(|&x| x == 0));
    let v1 = store.volume("o", t1).unwrap();
    let mut s = vec![0u8; 16 * 4096];
    v1.read_at(&mut s, 8 * CB).unwrap();
    assert!(s.iter().all(|&x| x == 5), "the snapshot kept its data");
    assert_eq!(v1.extents(10 * CB, CB).unwrap(), vec![ext(10, 1, 1, false)]);
    // The file has holes there.
    use std::os::unix::fs::MetadataExt;
    let blocks = std::fs::metadata(&path).unwrap().blocks() * 512;
    assert!(blocks <= 12 * CB, "{blocks} bytes allocated");
    assert!(store.check().unwrap().is_clean());
}

/// What a store with origin "o" on `origin` reads back after a flush and
/// a restart.
fn reopen(store: Store, cow: &Arc<MemDev>, origin: &Arc<MemDev>) -> Store {
    store.flush().unwrap();
    drop(store);
    let store = Store::open(cow.clone()).unwrap();
    store.attach("o", origin.clone()).unwrap();
    store
}

#[test]
fn a_device_without_holes_keeps_its_discarded_chunks_in_the_zero_map() {
    use dms_engine::testing::{verify_zero_maps, zero_map};
    let cow = Arc::new(MemDev::new("cow", 4 << 20));
    let origin = Arc::new(MemDev::from_bytes("origin", &vec![7u8; 64 * CB as usize]));
    let store = Store::format(cow.clone(), &FormatOptions::default()).unwrap();
    store.bind("o", origin.clone()).unwrap();
    let t1 = store.snapshot_origin("o", "").unwrap();
    let o = store.volume("o", 0).unwrap();
    // Chunks 10..14 whole; the partial chunks at the ends stay data.
    o.discard(10 * CB - 100, 4 * CB + 200).unwrap();
    assert_eq!(zero_map(&store, "o").unwrap(), vec![(10, 4)]);
    let want = vec![
        ext(0, 10, 0, false),
        ext(10, 4, 0, true),
        ext(14, 50, 0, false),
    ];
    assert_eq!(o.extents(0, 64 * CB).unwrap(), want);
    // The snapshot kept its data: its own copies there.
    let v1 = store.volume("o", t1).unwrap();
    assert_eq!(v1.extents(10 * CB, CB).unwrap(), vec![ext(10, 1, 1, false)]);
    drop((o, v1));
    // The map is on disk: a restart sees the same.
    let store = reopen(store, &cow, &origin);
    let o = store.volume("o", 0).unwrap();
    assert_eq!(o.extents(0, 64 * CB).unwrap(), want);
    // A snapshot taken now reads the zeros through the origin: holes too.
    let t2 = store.snapshot_origin("o", "").unwrap();
    let v2 = store.volume("o", t2).unwrap();
    assert_eq!(
        v2.extents(10 * CB, 4 * CB).unwrap(),
        vec![ext(10, 4, 0, true)]
    );
    // Discarding them again writes nothing there: no copy of the zeros for
    // the snapshot; chunks 9 and 14 join the map (their data copied out).
    let used = store.status().unwrap().used_chunks;
    o.discard(9 * CB, 6 * CB).unwrap();
    store.flush().unwrap();
    assert_eq!(
        v2.extents(10 * CB, 4 * CB).unwrap(),
        vec![ext(10, 4, 0, true)]
    );
    assert_eq!(zero_map(&store, "o").unwrap(), vec![(9, 6)]);
    assert_eq!(store.status().unwrap().used_chunks, used + 2);
    // A write to a discarded chunk takes it out of the map, durably: after
    // a restart it is data on the origin, and the snapshot has its own copy
    // of the zeros.
    o.write_at(&[9; 100], 11 * CB + 5).unwrap();
    assert_eq!(zero_map(&store, "o").unwrap(), vec![(9, 2), (12, 3)]);
    drop((o, v2));
    let store = reopen(store, &cow, &origin);
    assert_eq!(zero_map(&store, "o").unwrap(), vec![(9, 2), (12, 3)]);
    let o = store.volume("o", 0).unwrap();
    assert_eq!(
        o.extents(10 * CB, 4 * CB).unwrap(),
        vec![
            ext(10, 1, 0, true),
            ext(11, 1, 0, false),
            ext(12, 2, 0, true)
        ]
    );
    let mut b = vec![1u8; CB as usize];
    o.read_at(&mut b, 11 * CB).unwrap();
    assert!(b[..5].iter().chain(&b[105..]).all(|&x| x == 0));
    assert!(b[5..105].iter().all(|&x| x == 9));
    let v2 = store.volume("o", t2).unwrap();
    assert_eq!(v2.extents(11 * CB, CB).unwrap(), vec![ext(11, 1, 1, false)]);
    v2.read_at(&mut b, 11 * CB).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    verify_zero_maps(&store).unwrap();
    assert!(store.check().unwrap().is_clean());
}

#[test]
fn a_zero_map_of_many_runs_keeps_the_longest_within_its_bound() {
    use dms_engine::testing::{verify_zero_maps, zero_map};
    let chunks = 8192u64;
    let cow = Arc::new(MemDev::new("cow", 4 << 20));
    let origin = Arc::new(MemDev::new("origin", chunks * CB));
    let store = Store::format(cow.clone(), &FormatOptions::default()).unwrap();
    store.bind("o", origin.clone()).unwrap();
    let o = store.volume("o", 0).unwrap();
    o.write_at(&vec![3u8; (chunks * CB) as usize], 0).unwrap();
    // 2,000 runs of one chunk, far apart, then one long run.
    for i in 0..2000 {
        o.discard((i * 4 + 1) * CB, CB).unwrap();
    }
    o.discard(8100 * CB, 50 * CB).unwrap();
    drop(o);
    let store = reopen(store, &cow, &origin);
    let runs = zero_map(&store, "o").unwrap();
    assert!(runs.len() > 100 && runs.len() < 2000, "{} runs", runs.len());
    assert!(runs.contains(&(8100, 50)), "the longest run is kept");
    verify_zero_maps(&store).unwrap();
    assert!(store.check().unwrap().is_clean());
}
