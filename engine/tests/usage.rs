//! `Store::usage` (`dms du`): what each snapshot owns and shares, and what
//! deleting it frees, checked by deleting it and letting the cleaner run.

use dms_engine::io::MemDev;
use dms_engine::{FormatOptions, Store};
use proptest::prelude::*;
use std::sync::Arc;

const CB: usize = 4096;
const CHUNKS: usize = 32;

#[derive(Clone, Debug)]
enum Op {
    /// Write one chunk of a version (0 = the origin; else the n-th live tag).
    Write {
        pick: usize,
        chunk: usize,
    },
    SnapOrigin,
    /// A snapshot of the n-th live tag (a ghost appears above it).
    SnapOf {
        pick: usize,
    },
    Delete {
        pick: usize,
    },
    Clean,
}

fn store() -> Store {
    let s = Store::format(
        Arc::new(MemDev::new("cow", 4 << 20)),
        &FormatOptions::default(),
    )
    .unwrap();
    s.bind("o", Arc::new(MemDev::new("origin", (CHUNKS * CB) as u64)))
        .unwrap();
    s
}

fn tag_of(s: &Store, pick: usize) -> Option<u32> {
    let tags = s.tags("o").unwrap();
    (!tags.is_empty()).then(|| tags[pick % tags.len()])
}

fn run(s: &Store, ops: &[Op]) {
    for (i, op) in ops.iter().enumerate() {
        match *op {
            Op::Write { pick, chunk } => {
                let tag = if pick % 3 == 0 {
                    Some(0)
                } else {
                    tag_of(s, pick)
                };
                if let Some(t) = tag {
                    s.volume("o", t)
                        .unwrap()
                        .write_at(&[i as u8 | 1; CB], (chunk * CB) as u64)
                        .unwrap();
                }
            }
            Op::SnapOrigin => {
                s.snapshot_origin("o", "").unwrap();
            }
            Op::SnapOf { pick } => {
                if let Some(t) = tag_of(s, pick) {
                    s.snapshot_of("o", t, "").unwrap();
                }
            }
            Op::Delete { pick } => {
                if let Some(t) = tag_of(s, pick) {
                    s.delete("o", t).unwrap();
                }
            }
            Op::Clean => {
                s.clean().unwrap();
            }
        }
    }
}

fn data_chunks(s: &Store) -> u64 {
    let r = s.check().unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    r.data_chunks
}

/// For every tag: delete it on a store with the same history, clean, and
/// compare the chunks given back with what `usage` said.
fn check_frees(ops: &[Op]) {
    let s = store();
    run(&s, ops);
    let u = s.usage("o").unwrap();
    // What the cleaner frees anyway.
    let before = data_chunks(&s);
    s.clean().unwrap();
    let base = data_chunks(&s);
    assert_eq!(before - base, u.pending_free, "pending frees");
    for t in &u.tags {
        let s = store();
        run(&s, ops);
        s.clean().unwrap();
        let before = data_chunks(&s);
        s.delete("o", t.tag).unwrap();
        s.clean().unwrap();
        let after = data_chunks(&s);
        assert_eq!(before - after, t.freed_if_deleted, "tag {}: {u:?}", t.tag);
        assert!(t.shared <= t.owned);
    }
}

#[test]
fn a_leaf_frees_its_own_copies_and_a_middle_one_passes_them_on() {
    let s = store();
    let o = s.volume("o", 0).unwrap();
    let t1 = s.snapshot_origin("o", "").unwrap();
    for c in 0..3 {
        o.write_at(&[1; CB], (c * CB) as u64).unwrap(); // t1 owns 0, 1, 2
    }
    let t2 = s.snapshot_origin("o", "").unwrap();
    o.write_at(&[2; CB], (5 * CB) as u64).unwrap(); // t2 owns 5; t1 reads it
    o.write_at(&[2; CB], 0).unwrap(); // t2 owns 0 too (t1 has its own)
    let u = s.usage("o").unwrap();
    let get = |t: u32| *u.tags.iter().find(|x| x.tag == t).unwrap();
    assert_eq!(u.chunks, 5);
    assert_eq!((get(t1).owned, get(t1).shared), (3, 0));
    assert_eq!(
        (get(t2).owned, get(t2).shared),
        (2, 1),
        "t1 reads t2's chunk 5"
    );
    // t1 is a leaf: its three go. t2 sits above t1: chunk 5 passes to t1,
    // chunk 0 goes (t1 has its own).
    assert_eq!(get(t1).freed_if_deleted, 3);
    assert_eq!(get(t2).freed_if_deleted, 1);
    assert_eq!(u.pending_free, 0);
    // A snapshot of t1 makes a ghost above it: t1 then has a sibling, and
    // deleting it frees only what neither needs.
    let t3 = s.snapshot_of("o", t1, "").unwrap();
    let u = s.usage("o").unwrap();
    let get = |t: u32| *u.tags.iter().find(|x| x.tag == t).unwrap();
    assert_eq!(get(t3).owned, 0);
    assert_eq!(get(t1).freed_if_deleted, 0, "t3 still reads what t1 read");
    check_frees(&[]);
}

#[test]
fn deleted_but_not_cleaned_snapshots_are_pending() {
    let s = store();
    let o = s.volume("o", 0).unwrap();
    let t1 = s.snapshot_origin("o", "").unwrap();
    o.write_at(&[1; CB * 4], 0).unwrap();
    s.delete("o", t1).unwrap();
    let u = s.usage("o").unwrap();
    assert_eq!(u.pending_free, 4);
    assert!(u.tags.is_empty());
    s.clean().unwrap();
    assert_eq!(s.usage("o").unwrap().chunks, 0);
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<usize>(), 0..CHUNKS).prop_map(|(pick, chunk)| Op::Write { pick, chunk }),
        2 => Just(Op::SnapOrigin),
        1 => any::<usize>().prop_map(|pick| Op::SnapOf { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Delete { pick }),
        1 => Just(Op::Clean),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("DMS_USAGE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
    ))]
    #[test]
    fn deleting_a_tag_frees_what_usage_says(ops in proptest::collection::vec(op(), 1..40)) {
        check_frees(&ops);
    }
}

/// More exceptions than one lookup batch (4096), and chunks with several
/// exceptions across a batch's end: none is missed by usage or extents.
#[test]
fn many_exceptions_across_lookup_batches() {
    let n = 6000usize;
    let s = Store::format(
        Arc::new(MemDev::new("cow", 256 << 20)),
        &FormatOptions::default(),
    )
    .unwrap();
    s.bind("o", Arc::new(MemDev::new("origin", (n * CB) as u64)))
        .unwrap();
    let o = s.volume("o", 0).unwrap();
    // Chunk 0 gets one more exception, so that batch ends fall inside chunks.
    let t0 = s.snapshot_origin("o", "").unwrap();
    o.write_at(&[9; CB], 0).unwrap();
    let t1 = s.snapshot_origin("o", "").unwrap();
    o.write_at(&vec![1; n * CB], 0).unwrap();
    let t2 = s.snapshot_origin("o", "").unwrap();
    o.write_at(&vec![2; n * CB], 0).unwrap();
    let u = s.usage("o").unwrap();
    assert_eq!(u.chunks, 2 * n as u64 + 1);
    for t in &u.tags {
        let want = if t.tag == t0 { 1 } else { n as u64 };
        assert_eq!(t.owned, want, "{t:?}");
    }
    let v1 = s.volume("o", t1).unwrap();
    let v2 = s.volume("o", t2).unwrap();
    let e1 = v1.extents(0, (n * CB) as u64).unwrap();
    let e2 = v2.extents(0, (n * CB) as u64).unwrap();
    assert_eq!(e1.len(), 1, "{e1:?}");
    assert_eq!((e1[0].depth, e1[0].len), (1, (n * CB) as u64));
    assert_eq!((e2[0].depth, e2.len()), (1, 1));
}
