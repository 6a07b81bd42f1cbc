//! The on-full rule: under `delete-oldest`, an origin write that finds the
//! COW device full deletes the origin's oldest snapshots (never an open
//! one, never fewer than `keep_min`) until it fits; under `fail` it fails
//! with ENOSPC. A property test runs random histories against a model.

mod common;

use common::{held_strategy, pattern, read_all, Held};
use dms_engine::io::{Dev, MemDev};
use dms_engine::{Error, FormatOptions, OnFull, Store, StorePolicy};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const CB: usize = 4096;
/// 128 chunks: about one and a half fully rewritten snapshots fill the
/// smallest COW device.
const ORIGIN: usize = 512 << 10;
const COW: u64 = 1 << 20;

fn store(cow_bytes: u64, keep_min: u32, rule: OnFull) -> (Store, Arc<MemDev>, Dev) {
    let cow = Arc::new(MemDev::new("cow", cow_bytes));
    let s = Store::format(cow.clone(), &FormatOptions::default()).unwrap();
    let origin: Dev = Arc::new(MemDev::from_bytes("origin", &pattern(ORIGIN, 7)));
    s.bind("o", origin.clone()).unwrap();
    s.set_policy(StorePolicy {
        on_full: rule,
        keep_min,
        ..Default::default()
    })
    .unwrap();
    (s, cow, origin)
}

fn content(s: &Store, tag: u32) -> Vec<u8> {
    read_all(&s.volume("o", tag).unwrap())
}

#[test]
fn writes_go_on_and_the_oldest_snapshots_go_first() {
    // Room for about three fully rewritten snapshots.
    let (s, cow, origin) = store(2 * COW, 2, OnFull::DeleteOldest);
    let o = s.volume("o", 0).unwrap();
    let mut model: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let mut gone = Vec::new();
    for round in 0..12u8 {
        let tag = s.snapshot_origin("o", "").unwrap();
        model.insert(tag, content(&s, 0));
        // Every chunk of the origin rewritten: every snapshot's copy-outs.
        for c in 0..ORIGIN / CB {
            o.write_at(&[round.wrapping_mul(17) | 1; CB], (c * CB) as u64)
                .unwrap();
        }
        for (origin_id, t) in s.take_sacrificed() {
            assert_eq!(origin_id, "o");
            gone.push(t);
            model.remove(&t);
        }
        let tags: Vec<u32> = model.keys().copied().collect();
        assert_eq!(s.tags("o").unwrap(), tags, "round {round}");
        assert!(tags.len() >= 2.min(round as usize + 1));
        for (t, want) in &model {
            assert!(&content(&s, *t) == want, "round {round}: tag {t} differs");
        }
    }
    // Snapshots went, oldest first, and the newest two are still there.
    assert!(gone.len() >= 5, "{gone:?}");
    assert!(gone.windows(2).all(|w| w[0] < w[1]), "{gone:?}");
    assert!(gone.iter().all(|g| model.keys().all(|k| k > g)));
    assert!(model.len() >= 2);
    assert!(s.check().unwrap().is_clean());
    drop(o);
    drop(s);
    let s = Store::open(cow).unwrap();
    s.attach("o", origin).unwrap();
    for (t, want) in &model {
        assert!(&content(&s, *t) == want);
    }
    assert!(s.check().unwrap().is_clean());
}

#[test]
fn an_open_snapshot_is_never_deleted_and_keep_min_is_kept() {
    let (s, _cow, _origin) = store(COW, 1, OnFull::DeleteOldest);
    let o = s.volume("o", 0).unwrap();
    // Tag 1 is open (exposed) the whole time.
    let first = s.snapshot_origin("o", "").unwrap();
    let exposed = s.volume("o", first).unwrap();
    let kept = read_all(&exposed);
    let mut last = None;
    let mut failed = false;
    'rounds: for round in 0..8u8 {
        last = Some(s.snapshot_origin("o", "").unwrap());
        for c in 0..ORIGIN / CB {
            match o.write_at(&[round | 0x40; CB], (c * CB) as u64) {
                Ok(()) => {}
                Err(Error::NoSpace) => {
                    failed = true;
                    break 'rounds;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    // The open snapshot and the newest one hold two full copies: with
    // keep_min 1 and tag 1 open, the rule ran out of snapshots to give.
    assert!(failed, "the writes never ran out of snapshots to delete");
    let tags = s.tags("o").unwrap();
    assert!(tags.contains(&first), "{tags:?}");
    assert!(tags.contains(&last.unwrap()), "{tags:?}");
    assert_eq!(read_all(&exposed), kept);
    assert!(!s.take_sacrificed().iter().any(|(_, t)| *t == first));
    assert!(s.check().unwrap().is_clean());
}

#[test]
fn snapshots_that_free_nothing_are_not_deleted_for_nothing() {
    let (s, _cow, _origin) = store(COW, 0, OnFull::DeleteOldest);
    let o = s.volume("o", 0).unwrap();
    // Two open snapshots, each with a copy of the whole origin: full.
    let mut open = Vec::new();
    let mut stopped = None;
    'fill: for round in 0..2u8 {
        let t = s.snapshot_origin("o", "").unwrap();
        open.push(s.volume("o", t).unwrap());
        for c in 0..ORIGIN / CB {
            match o.write_at(&[round + 1; CB], (c * CB) as u64) {
                Ok(()) => {}
                Err(Error::NoSpace) => {
                    stopped = Some(c);
                    break 'fill;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    let c = stopped.expect("the device never filled");
    // Two snapshots of the origin as it is own nothing: the copy the write
    // needs is for the open ones too, so deleting them gives nothing back.
    // They stay, and the write fails.
    let a = s.snapshot_origin("o", "").unwrap();
    let b = s.snapshot_origin("o", "").unwrap();
    assert!(matches!(
        o.write_at(&[7; CB], (c * CB) as u64),
        Err(Error::NoSpace)
    ));
    assert!(s.take_sacrificed().is_empty());
    let tags = s.tags("o").unwrap();
    assert!(tags.contains(&a) && tags.contains(&b), "{tags:?}");
}

#[test]
fn under_fail_a_full_device_is_enospc_and_nothing_is_deleted() {
    let (s, _cow, _origin) = store(COW, 0, OnFull::Fail);
    let o = s.volume("o", 0).unwrap();
    let mut hit = false;
    'rounds: for round in 0..4u8 {
        s.snapshot_origin("o", "").unwrap();
        for c in 0..ORIGIN / CB {
            if let Err(e) = o.write_at(&[round | 0x20; CB], (c * CB) as u64) {
                assert!(matches!(e, Error::NoSpace), "{e}");
                hit = true;
                break 'rounds;
            }
        }
    }
    assert!(hit);
    assert!(s.take_sacrificed().is_empty());
    assert_eq!(s.tags("o").unwrap().len(), 2);
}

#[test]
fn many_writers_share_the_room_made() {
    let (s, _cow, _origin) = store(COW, 1, OnFull::DeleteOldest);
    let o = Arc::new(s.volume("o", 0).unwrap());
    for round in 0..6u8 {
        s.snapshot_origin("o", "").unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let o = o.clone();
                std::thread::spawn(move || {
                    for c in (t..ORIGIN / CB).step_by(4) {
                        o.write_at(&[round ^ t as u8 | 1; CB], (c * CB) as u64)
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
    let tags = s.tags("o").unwrap();
    assert!(!tags.is_empty() && tags.len() < 6, "{tags:?}");
    assert!(s.check().unwrap().is_clean());
}

/// One step of a random history.
#[derive(Clone, Debug)]
enum Op {
    /// Write a run of chunks of version `pick` (0 mostly: the origin).
    Write {
        pick: usize,
        chunk: usize,
        chunks: usize,
        seed: u8,
    },
    Snap,
    SnapOf {
        pick: usize,
    },
    Delete {
        pick: usize,
    },
    /// Open a snapshot and keep it open (exposed), or close one.
    Expose {
        pick: usize,
    },
    Unexpose,
    Clean,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let n = ORIGIN / CB;
    prop_oneof![
        10 => (0..8usize, 0..n, 1..n, any::<u8>()).prop_map(move |(p, chunk, chunks, seed)| Op::Write {
            pick: if p < 6 { 0 } else { p },
            chunk,
            chunks: chunks.min(n - chunk),
            seed,
        }),
        4 => Just(Op::Snap),
        1 => any::<usize>().prop_map(|pick| Op::SnapOf { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Delete { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Expose { pick }),
        1 => Just(Op::Unexpose),
        1 => Just(Op::Clean),
        1 => Just(Op::Reopen),
    ]
}

fn history(ops: &[Op], keep_min: u32, held: Held) -> Result<(), TestCaseError> {
    let cow = Arc::new(MemDev::new("cow", COW));
    let mut s = Store::format(cow.clone(), &FormatOptions::default()).unwrap();
    held.apply(&s);
    let origin: Dev = Arc::new(MemDev::from_bytes("origin", &pattern(ORIGIN, 9)));
    s.bind("o", origin.clone()).unwrap();
    s.set_policy(StorePolicy {
        on_full: OnFull::DeleteOldest,
        keep_min,
        ..Default::default()
    })
    .unwrap();
    let mut model: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    model.insert(0, pattern(ORIGIN, 9));
    let mut exposed: Vec<(u32, dms_engine::Volume)> = Vec::new();
    let snaps =
        |m: &BTreeMap<u32, Vec<u8>>| m.keys().copied().filter(|&t| t != 0).collect::<Vec<_>>();
    for (i, op) in ops.iter().enumerate() {
        let before: Vec<u32> = snaps(&model);
        let open: BTreeSet<u32> = exposed.iter().map(|e| e.0).collect();
        let mut writing = None;
        let mut refused = false;
        match op {
            Op::Write {
                pick,
                chunk,
                chunks,
                seed,
            } => {
                let tags: Vec<u32> = model.keys().copied().collect();
                let tag = if *pick == 0 {
                    0
                } else {
                    tags[pick % tags.len()]
                };
                writing = Some(tag);
                let data: Vec<u8> = (0..chunks * CB)
                    .map(|b| seed.wrapping_add((b / 97) as u8) | 1)
                    .collect();
                let at = chunk * CB;
                let v = s.volume("o", tag).unwrap();
                match v.write_at(&data, at as u64) {
                    Ok(()) => {
                        model.get_mut(&tag).unwrap()[at..at + data.len()].copy_from_slice(&data)
                    }
                    Err(Error::NoSpace) => {
                        // Refused only when no snapshot may go; the
                        // batches before the full one are written.
                        let got = read_all(&v);
                        let want = model.get_mut(&tag).unwrap();
                        for b in at..at + data.len() {
                            prop_assert!(
                                got[b] == want[b] || got[b] == data[b - at],
                                "step {i}: byte {b}"
                            );
                        }
                        want.copy_from_slice(&got);
                        refused = true;
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("step {i} {op:?}: {e}"))),
                }
            }
            Op::Snap => {
                let t = s.snapshot_origin("o", "").unwrap();
                model.insert(t, model[&0].clone());
            }
            Op::SnapOf { pick } => {
                let b = snaps(&model);
                if !b.is_empty() {
                    let of = b[pick % b.len()];
                    let t = s.snapshot_of("o", of, "").unwrap();
                    model.insert(t, model[&of].clone());
                }
            }
            Op::Delete { pick } => {
                let b: Vec<u32> = snaps(&model)
                    .into_iter()
                    .filter(|t| !open.contains(t))
                    .collect();
                if !b.is_empty() {
                    let t = b[pick % b.len()];
                    s.delete("o", t).unwrap();
                    model.remove(&t);
                }
            }
            Op::Expose { pick } => {
                let b = snaps(&model);
                if !b.is_empty() && exposed.len() < 2 {
                    let t = b[pick % b.len()];
                    exposed.push((t, s.volume("o", t).unwrap()));
                }
            }
            Op::Unexpose => {
                exposed.pop();
            }
            Op::Clean => {
                s.clean().unwrap();
            }
            Op::Reopen => {
                let tags: Vec<u32> = exposed.iter().map(|e| e.0).collect();
                exposed.clear();
                s.flush().unwrap();
                drop(s);
                s = Store::open(cow.clone()).unwrap();
                held.apply(&s);
                s.attach("o", origin.clone()).unwrap();
                for t in tags {
                    exposed.push((t, s.volume("o", t).unwrap()));
                }
            }
        }
        // What the rule deleted: the oldest snapshots that were not open
        // (and not the one written), never below keep_min.
        let gone: Vec<u32> = s.take_sacrificed().into_iter().map(|(_, t)| t).collect();
        let candidates: Vec<u32> = before[..before.len().saturating_sub(keep_min as usize)]
            .iter()
            .copied()
            .filter(|t| !open.contains(t) && Some(*t) != writing)
            .collect();
        prop_assert!(
            gone.len() <= candidates.len() && gone[..] == candidates[..gone.len()],
            "step {i} {op:?}: deleted {gone:?}, the oldest candidates were {candidates:?}"
        );
        prop_assert!(
            gone.is_empty() || before.len() - gone.len() >= keep_min as usize,
            "step {i}: {} snapshots left, keep_min {keep_min}",
            before.len() - gone.len()
        );
        // ENOSPC only when no candidate is left that owns a copy (one that
        // owns none frees nothing, and is not deleted for nothing).
        let st = s.status().unwrap();
        let owns = |t: u32| {
            st.origins[0]
                .list
                .iter()
                .find(|v| v.tag == t && !v.ghost)
                .map_or(0, |v| v.exceptions)
        };
        let useful = candidates[gone.len().min(candidates.len())..]
            .iter()
            .filter(|t| owns(**t) > 0)
            .count();
        prop_assert!(
            !refused || useful == 0,
            "step {i}: ENOSPC with {} snapshots left, keep_min {keep_min}, {useful} deletable ones owning copies",
            before.len() - gone.len()
        );
        for t in &gone {
            model.remove(t);
        }
        let mut tags = s.tags("o").unwrap();
        tags.insert(0, 0);
        prop_assert_eq!(
            &tags,
            &model.keys().copied().collect::<Vec<_>>(),
            "step {}",
            i
        );
        for (t, want) in &model {
            prop_assert!(&content(&s, *t) == want, "step {i} {op:?}: tag {t} differs");
        }
    }
    exposed.clear();
    s.clean().unwrap();
    let report = s.check().unwrap();
    prop_assert!(report.is_clean(), "{:?}", report.problems);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn random_histories_keep_every_survivor(ops in prop::collection::vec(op(), 1..60), keep_min in 0..3u32, held in held_strategy()) {
        history(&ops, keep_min, held)?;
    }
}
