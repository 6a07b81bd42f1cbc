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
    fn crash_anywhere_chunk_1(ops in prop::collection::vec(op_strategy(ORIGIN_BYTES), 1..25)) {
        crash_case(1, &ops, 40)?;
    }

    #[test]
    fn crash_anywhere_chunk_4(ops in prop::collection::vec(op_strategy(ORIGIN_BYTES), 1..25)) {
        crash_case(4, &ops, 40)?;
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
