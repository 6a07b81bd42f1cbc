//! Crash consistency: workloads crash at every N-th device write or sync.
//! The restarted machine finds the durable image plus an arbitrary subset of
//! unsynced writes, some torn. After reopening, the metadata must check
//! clean and every version must read as the model at the last durable point,
//! where bytes written since then may read old or new, and nothing else.

mod common;

use common::crashsim::*;
use common::*;
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("DMS_CRASH_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn crash_anywhere_chunk_1(ops in ops_strategy(ORIGIN_BYTES, 1..25)) {
        crash_case(1, &ops, 40)?;
    }

    #[test]
    fn crash_anywhere_chunk_4(ops in ops_strategy(ORIGIN_BYTES, 1..25)) {
        crash_case(4, &ops, 40)?;
    }

    /// A full COW device under `delete-oldest`: crashes while writes
    /// delete and clean the oldest snapshots.
    #[test]
    fn crash_anywhere_on_a_full_device(ops in ops_strategy(Rig::FULL.origin_bytes, 1..25), four in any::<bool>()) {
        crash_case_on(Rig::FULL, if four { 4 } else { 1 }, &ops, 40)?;
    }
}

/// Writes that fill the device under `delete-oldest` and delete the oldest
/// snapshots, crashed at every single write and sync.
#[test]
fn crash_at_every_point_of_an_on_full_deletion() {
    // Three fully rewritten snapshots fill the device.
    let rig = Rig {
        origin_bytes: 256 << 10,
        ..Rig::FULL
    };
    let size = rig.origin_bytes;
    let whole = |seed| Op::Write {
        pick: 0,
        offset: 0,
        len: size,
        seed,
    };
    let ops = vec![
        whole(1),
        Op::SnapOrigin,
        whole(2),
        Op::SnapOrigin,
        whole(3),
        Op::SnapOrigin,
        whole(4),
        Op::SnapOrigin,
        whole(5),
        Op::SnapOrigin,
        whole(6),
        Op::Flush,
    ];
    for cp in [1, 4] {
        let gone = sacrificed_on(rig, cp, &ops);
        assert!(
            !gone.is_empty(),
            "chunk {cp}: the workload never filled the device"
        );
        let crashes = crash_case_on(rig, cp, &ops, u64::MAX).unwrap();
        assert!(crashes > 100, "chunk {cp}: {crashes} crash points");
    }
}

/// A fixed workload crashed at every single write and sync, with several
/// tearing patterns each.
#[test]
fn crash_at_every_point_of_a_snapshot_workload() {
    let ops = vec![
        Op::Write {
            pick: 0,
            offset: 0,
            len: 9000,
            seed: 1,
        },
        Op::SnapOrigin,
        Op::Write {
            pick: 0,
            offset: 4000,
            len: 9000,
            seed: 2,
        },
        Op::SnapOf { pick: 0 },
        Op::Write {
            pick: 1,
            offset: 100,
            len: 5000,
            seed: 3,
        },
        Op::Flush,
        Op::Delete { pick: 0 },
        Op::Rollback { pick: 0 },
        Op::Write {
            pick: 0,
            offset: 20000,
            len: 3000,
            seed: 4,
        },
        Op::Clean,
    ];
    let mut total = 0;
    for cp in [1, 4] {
        total += crash_case(cp, &ops, u64::MAX).unwrap();
    }
    assert!(total > 100, "only {total} crash points");
}

/// Found by the crash campaign: a rollback merge skipped the copy-out because
/// the origin's child had its own copy of the chunk, but that copy came from
/// an unflushed write; the merge overwrote the origin before it was durable.
#[test]
fn a_rollback_merge_waits_for_the_childs_unflushed_copy() {
    let ops = vec![
        Op::Flush,
        Op::Reopen,
        Op::Write {
            pick: 3767364804414782946,
            offset: 1450,
            len: 3440,
            seed: 252,
        },
        Op::Write {
            pick: 3337257720534338864,
            offset: 18947,
            len: 13821,
            seed: 29,
        },
        Op::Write {
            pick: 5853865872118659550,
            offset: 4562,
            len: 5764,
            seed: 112,
        },
        Op::SnapOrigin,
        Op::Write {
            pick: 17686030629278703887,
            offset: 26864,
            len: 4480,
            seed: 83,
        },
        Op::Clean,
        Op::SnapOrigin,
        Op::Write {
            pick: 2980781092674469590,
            offset: 4938,
            len: 512,
            seed: 253,
        },
        Op::Clean,
        Op::RollbackBg {
            pick: 10778315063075619692,
        },
        Op::Write {
            pick: 1013214373392369773,
            offset: 20913,
            len: 11855,
            seed: 186,
        },
        Op::Finish,
        Op::Write {
            pick: 174281374806093422,
            offset: 30334,
            len: 2434,
            seed: 213,
        },
        Op::Clean,
        Op::Write {
            pick: 6534775400862866694,
            offset: 32723,
            len: 45,
            seed: 61,
        },
        Op::Write {
            pick: 9729613798348629001,
            offset: 13349,
            len: 320,
            seed: 187,
        },
        Op::SnapOrigin,
    ];
    for cp in [4, 1] {
        crash_case(cp, &ops, u64::MAX).unwrap();
    }
}

/// Held overwrites crashed at every write and sync: first writes after a
/// snapshot held (overlapping, partial, whole chunks), read and rewritten,
/// a snapshot of the origin and of a snapshot over them, settling (the
/// committer's commit and device writes), a background rollback, a delete,
/// a reopen, and flushes between them.
#[test]
fn crash_at_every_point_of_a_held_workload() {
    let w = |offset, len, seed| Op::Write {
        pick: 0,
        offset,
        len,
        seed,
    };
    let ops = vec![
        Op::SnapOrigin,
        w(100, 9000, 1),
        w(4000, 3000, 2),
        w(16384, 8192, 3),
        Op::SnapOf { pick: 0 },
        Op::Write {
            pick: 1,
            offset: 5000,
            len: 6000,
            seed: 4,
        },
        w(6000, 100, 5),
        Op::Settle,
        w(20000, 5000, 6),
        Op::SnapOrigin,
        w(0, 12000, 7),
        Op::Flush,
        w(24000, 4000, 8),
        Op::RollbackBg { pick: 0 },
        w(2000, 7000, 9),
        Op::Finish,
        w(9000, 9000, 10),
        Op::Delete { pick: 1 },
        w(9100, 50, 11),
        Op::Reopen,
        w(30000, 2000, 12),
        Op::Settle,
        w(31000, 1000, 13),
        Op::Flush,
    ];
    // The default held-data limit (held_for picks it by length): data stays
    // held until a settle, a flush or a structural command.
    assert!(held_for(&ops).limit.is_none());
    let mut total = 0;
    for cp in [1, 4] {
        total += crash_case(cp, &ops, u64::MAX).unwrap();
    }
    assert!(total > 200, "only {total} crash points");
}

/// A receive crashed at every write and sync: afterwards the metadata
/// checks clean and either the new snapshot is there and reads as sent,
/// or it is not and every snapshot reads as before; a receive left in
/// progress resumes with its token, or aborts back to the base, and one
/// that never began durably leaves an origin that takes the stream again.
#[test]
fn crash_at_every_point_of_a_receive() {
    use dms_engine::io::{Dev, FaultController, FaultDev, MemDev};
    use dms_engine::stream::{ReceiveOptions, SendOptions};
    use dms_engine::{Error, FormatOptions, Store};
    use std::sync::Arc;

    const SIZE: usize = 128 * 1024;
    // Progress made durable every few chunks: resume points inside.
    dms_engine::testing::set_receive_progress_every(16 * 1024);
    let read = |s: &Store, tag: u32| read_all(&s.volume(ORIGIN, tag).unwrap());
    // The sender: snapshot 1, then some chunks changed (some to zeros),
    // snapshot 2.
    let a = Store::format(
        Arc::new(MemDev::new("a-cow", 4 << 20)),
        &FormatOptions::default(),
    )
    .unwrap();
    a.bind(
        ORIGIN,
        Arc::new(MemDev::from_bytes("a", &pattern(SIZE, 0x21))),
    )
    .unwrap();
    a.snapshot_origin(ORIGIN, "one").unwrap();
    let o = a.volume(ORIGIN, 0).unwrap();
    o.write_at(&pattern(9000, 0x55), 3000).unwrap();
    o.write_at(&[0u8; 8192], 40960).unwrap();
    o.write_at(&pattern(100, 0x77), 60000).unwrap();
    o.write_at(&pattern(30000, 0x78), 80000).unwrap();
    // Chunks apart from the others: each goes to the device by itself.
    for (at, v) in [(16384 + 10, 0x79), (24576, 0x7a), (120000, 0x7b)] {
        o.write_at(&pattern(2000, v), at).unwrap();
    }
    a.snapshot_origin(ORIGIN, "two").unwrap();
    let send = |from: Option<u32>, tag: u32, resume: Option<String>| {
        let mut out = Vec::new();
        let opts = SendOptions {
            from,
            resume,
            ..Default::default()
        };
        a.send(ORIGIN, tag, &opts, &mut out, &mut |_, _| {})
            .unwrap();
        out
    };
    let (full, inc) = (send(None, 1, None), send(Some(1), 2, None));
    let (want1, want2) = (read(&a, 1), read(&a, 2));
    let recv = |s: &Store, stream: &[u8]| {
        let mut input = stream;
        s.receive(
            ORIGIN,
            &ReceiveOptions::default(),
            &mut input,
            &mut |_, _| {},
        )
    };

    // The receiver, crashed at op `at` of the incremental (or, with
    // `in_full`, of the full stream, into an origin of zeros or, with
    // `dirty`, one holding data: the two ways an abort goes back).
    let dirty_origin = pattern(SIZE, 0x33);
    let run = |at: Option<u64>, in_full: bool, dirty: bool| -> (u64, bool) {
        let ctl = FaultController::new();
        let before_bytes = if dirty {
            dirty_origin.clone()
        } else {
            vec![0u8; SIZE]
        };
        let origin = Arc::new(FaultDev::new("origin", before_bytes.clone(), ctl.clone()));
        let cow = Arc::new(FaultDev::new("cow", vec![0u8; 4 << 20], ctl.clone()));
        let store = Store::format(cow.clone(), &FormatOptions::default()).unwrap();
        let dev: Dev = origin.clone();
        store.bind(ORIGIN, dev).unwrap();
        let mut start = ctl.ops();
        if in_full {
            if let Some(at) = at {
                ctl.crash_after(start + at);
            }
        }
        let r = recv(&store, &full);
        if !in_full {
            r.unwrap();
            store.flush().unwrap();
            // Crash points count within the incremental stream only.
            start = ctl.ops();
            if let Some(at) = at {
                ctl.crash_after(ctl.ops() + at);
            }
            let _ = recv(&store, &inc);
        }
        let used = ctl.ops() - start;
        if !ctl.crashed() {
            return (used, false);
        }
        let at = at.unwrap();
        let seed = at.wrapping_mul(0x9E37_79B9) ^ u64::from(in_full);
        let (oi, ci) = (origin.crash_image(seed), cow.crash_image(seed ^ 0xFFFF));
        drop(store);
        let ctl = FaultController::new();
        let store = Store::open(Arc::new(FaultDev::new("cow", ci, ctl.clone())))
            .unwrap_or_else(|e| panic!("crash at {at}: open: {e}"));
        store
            .attach(ORIGIN, Arc::new(FaultDev::new("origin", oi, ctl)))
            .unwrap();
        let report = store.check().unwrap();
        assert!(report.is_clean(), "crash at {at}: {:?}", report.problems);
        let tags = store.tags(ORIGIN).unwrap();
        let (base, target, stream): (Option<&Vec<u8>>, &Vec<u8>, &[u8]) = if in_full {
            (Some(&before_bytes), &want1, &full)
        } else {
            assert_eq!(read(&store, 1), want1, "crash at {at}: snapshot 1");
            (Some(&want1), &want2, &inc)
        };
        let before = usize::from(!in_full);
        if tags.len() > before {
            // It finished before the crash.
            assert_eq!(read(&store, tags[before]), *target, "crash at {at}");
        } else if let Some(token) = store.receive_token(ORIGIN).unwrap() {
            if at % 2 == 0 {
                let rest = send(None, if in_full { 1 } else { 2 }, Some(token));
                let t = recv(&store, &rest)
                    .map(|r| r.tag)
                    .unwrap_or_else(|e| panic!("resume after {at}: {e}"));
                assert_eq!(read(&store, t), *target, "resumed after crash at {at}");
            } else {
                store.receive_abort(ORIGIN).unwrap();
                if let Some(b) = base {
                    assert_eq!(read(&store, 0), *b, "aborted after crash at {at}");
                }
                let t = recv(&store, stream)
                    .map(|r| r.tag)
                    .unwrap_or_else(|e| panic!("again after {at}: {e}"));
                assert_eq!(
                    read(&store, t),
                    *target,
                    "received again after crash at {at}"
                );
            }
        } else {
            // It never began durably: the origin is as it was.
            if let Some(b) = base {
                assert_eq!(read(&store, 0), *b, "crash at {at}: origin");
            }
            match recv(&store, stream).map(|r| r.tag) {
                Ok(t) => assert_eq!(read(&store, t), *target, "after crash at {at}"),
                Err(e @ Error::WrongBase(_)) => panic!("after crash at {at}: {e}"),
                Err(e) => panic!("after crash at {at}: {e}"),
            }
        }
        store.clean().unwrap();
        assert!(
            store.check().unwrap().is_clean(),
            "crash at {at}: after clean"
        );
        (used, true)
    };
    let mut points = 0;
    for (in_full, dirty) in [(true, false), (true, true), (false, false)] {
        let (total, _) = run(None, in_full, dirty);
        let stride = (total / 150).max(1);
        let mut at = 1;
        while at <= total {
            if run(Some(at), in_full, dirty).1 {
                points += 1;
            }
            at += stride;
        }
    }
    assert!(points > 80, "only {points} crash points");
}

/// An origin grown between snapshots, with writes into the new space
/// before and after a snapshot of the grown origin, crashed at every
/// single write and sync: the origin has the old size or the new, every
/// snapshot its own, every flushed write there.
#[test]
fn crash_at_every_point_of_an_origin_grow() {
    let w = |offset, len, seed| Op::Write {
        pick: 0,
        offset,
        len,
        seed,
    };
    let end = ORIGIN_BYTES - 6000;
    let ops = vec![
        w(0, 9000, 1),
        Op::SnapOrigin,
        w(4000, 9000, 2),
        Op::GrowOrigin { bytes: 12288 },
        w(end, 6000, 3),
        Op::SnapOrigin,
        w(end - 3000, 6000, 4),
        Op::GrowOrigin { bytes: 6144 },
        w(end, 6000, 5),
        Op::Flush,
    ];
    for cp in [1, 4] {
        let crashes = crash_case(cp, &ops, u64::MAX).unwrap();
        assert!(crashes > 40, "chunk {cp}: {crashes} crash points");
    }
}

/// Discards into the zero map (the origin device has no holes) and writes
/// back into the discarded chunks, crashed at every single write and sync:
/// after the crash no chunk the map names holds data, block status calls
/// no data a hole, and every version reads as before.
#[test]
fn crash_at_every_point_of_a_discard_and_rewrite() {
    let w = |offset, len, seed| Op::Write {
        pick: 0,
        offset,
        len,
        seed,
    };
    let z = |offset, len| Op::Zero {
        pick: 0,
        offset,
        len,
    };
    let ops = vec![
        z(4000, 20000),
        Op::SnapOrigin,
        w(9000, 100, 1),
        z(0, 12288),
        Op::Flush,
        w(16384, 5000, 2),
        Op::SnapOrigin,
        w(4096, 4096, 3),
        Op::Settle,
        z(16384, 16384),
        Op::Reopen,
        w(20000, 3000, 4),
        Op::Rollback { pick: 0 },
        z(8192, 8192),
        w(8192, 10, 5),
        Op::Flush,
    ];
    for cp in [1, 4] {
        let crashes = crash_case(cp, &ops, u64::MAX).unwrap();
        assert!(crashes > 40, "chunk {cp}: {crashes} crash points");
    }
}
