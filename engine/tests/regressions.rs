//! Regression tests for failure modes known from dm-snap-mv and its kin,
//! each named after the failure it pins.

mod common;

use common::*;
use dms_engine::io::{Dev, FaultController, FaultDev, MemDev};
use dms_engine::{Error, FormatOptions, Store};
use std::sync::Arc;

const MIB: u64 = 1 << 20;

fn store(cow_bytes: u64, chunk_pages: u32) -> (Arc<MemDev>, Store) {
    let cow = Arc::new(MemDev::new("cow", cow_bytes));
    let store = Store::format(
        cow.clone(),
        &FormatOptions {
            chunk_pages,
            force: false,
        },
    )
    .unwrap();
    (cow, store)
}

fn origin(bytes: u64, seed: u8) -> Dev {
    Arc::new(MemDev::from_bytes("origin", &pattern(bytes as usize, seed)))
}

#[test]
fn snapshot_of_tag_zero_is_refused_not_a_second_child_of_the_origin() {
    let (_, st) = store(16 * MIB, 1);
    st.bind(ORIGIN, origin(MIB, 1)).unwrap();
    assert!(matches!(
        st.snapshot_of(ORIGIN, 0, ""),
        Err(Error::TagZero { .. })
    ));
    let t = st.snapshot_origin(ORIGIN, "").unwrap();
    st.volume(ORIGIN, 0)
        .unwrap()
        .write_at(&[9; 4096], 0)
        .unwrap();
    assert_eq!(
        read_all(&st.volume(ORIGIN, t).unwrap()),
        pattern(MIB as usize, 1)
    );
}

#[test]
fn a_second_origin_larger_than_the_first_keeps_both_right() {
    let (_, st) = store(64 * MIB, 1);
    st.bind("small", origin(MIB, 1)).unwrap();
    st.bind("large", origin(16 * MIB, 2)).unwrap();
    let ts = st.snapshot_origin("small", "").unwrap();
    let tl = st.snapshot_origin("large", "").unwrap();
    // Writes at the far end of the larger origin, and all over the small one.
    st.volume("large", 0)
        .unwrap()
        .write_at(&[7; 8192], 16 * MIB - 8192)
        .unwrap();
    st.volume("small", 0)
        .unwrap()
        .write_at(&[8; 65536], 0)
        .unwrap();
    assert_eq!(
        read_all(&st.volume("large", tl).unwrap()),
        pattern(16 * MIB as usize, 2)
    );
    assert_eq!(
        read_all(&st.volume("small", ts).unwrap()),
        pattern(MIB as usize, 1)
    );
    let big = read_all(&st.volume("large", 0).unwrap());
    assert!(big[(16 * MIB - 8192) as usize..].iter().all(|&b| b == 7));
    assert!(st.check().unwrap().is_clean());
}

#[test]
fn a_chunk_size_that_is_not_a_power_of_two_is_refused() {
    for cp in [3u32, 5, 6, 7, 12, 48, 65] {
        let cow: Dev = Arc::new(MemDev::new("cow", 16 * MIB));
        assert!(matches!(
            Store::format(
                cow,
                &FormatOptions {
                    chunk_pages: cp,
                    force: false
                }
            ),
            Err(Error::BadChunkSize(_))
        ));
    }
}

#[test]
fn overlapping_in_flight_writes_to_one_chunk_are_serialised() {
    for cp in [1u32, 4] {
        let (_, st) = store(64 * MIB, cp);
        st.bind(ORIGIN, origin(MIB, 3)).unwrap();
        let t = st.snapshot_origin(ORIGIN, "").unwrap();
        let s2 = st.snapshot_of(ORIGIN, t, "").unwrap();
        let mut threads = Vec::new();
        for i in 0..8u8 {
            let st = st.clone();
            threads.push(std::thread::spawn(move || {
                let tag = [0, t][i as usize % 2];
                let v = st.volume(ORIGIN, tag).unwrap();
                for k in 0..200u64 {
                    // Every write overlaps the same first chunk.
                    v.write_at(&[i; 3000], (k * 7 + u64::from(i) * 100) % 4000)
                        .unwrap();
                }
            }));
        }
        for th in threads {
            th.join().unwrap();
        }
        // The frozen snapshot of the snapshot never moved; the metadata is whole.
        assert_eq!(
            read_all(&st.volume(ORIGIN, s2).unwrap()),
            pattern(MIB as usize, 3)
        );
        assert!(st.check().unwrap().is_clean());
    }
}

#[test]
fn writes_after_enospc_leave_every_snapshot_right() {
    let (_, st) = store(2 * MIB, 1);
    st.bind(ORIGIN, origin(4 * MIB, 4)).unwrap();
    let t = st.snapshot_origin(ORIGIN, "").unwrap();
    let o = st.volume(ORIGIN, 0).unwrap();
    let mut failures = 0;
    for k in 0..1024u64 {
        if let Err(e) = o.write_at(&[0xEE; 4096], k * 4096) {
            assert!(matches!(e, Error::NoSpace));
            failures += 1;
        }
    }
    assert!(failures > 0);
    // Keep writing after ENOSPC: snapshots stay exact, the metadata whole.
    let s = st.volume(ORIGIN, t).unwrap();
    for k in 0..64u64 {
        let _ = s.write_at(&[1; 4096], k * 8192);
        let _ = o.write_at(&[2; 100], k * 3000);
    }
    st.flush().unwrap();
    let snap = read_all(&st.volume(ORIGIN, t).unwrap());
    let orig0 = pattern(4 * MIB as usize, 4);
    for (k, chunk) in snap.chunks(4096).enumerate() {
        let ok = chunk == &orig0[k * 4096..(k + 1) * 4096] || chunk.iter().all(|&b| b == 1);
        assert!(
            ok,
            "snapshot chunk {k} holds neither its old data nor the write"
        );
    }
    assert!(st.check().unwrap().is_clean());
}

#[test]
fn writes_after_an_io_error_do_not_make_snapshots_silently_wrong() {
    let ctl = FaultController::new();
    let initial = pattern(MIB as usize, 5);
    let cow = Arc::new(FaultDev::new(
        "cow",
        vec![0u8; 16 * MIB as usize],
        ctl.clone(),
    ));
    let org = Arc::new(FaultDev::new("origin", initial.clone(), ctl.clone()));
    let st = Store::format(cow.clone(), &FormatOptions::default()).unwrap();
    st.bind(ORIGIN, org.clone()).unwrap();
    let t = st.snapshot_origin(ORIGIN, "").unwrap();
    let o = st.volume(ORIGIN, 0).unwrap();
    ctl.fail_writes_after(5);
    let mut errors = 0;
    for k in 0..64u64 {
        if o.write_at(&[0xAB; 4096], k * 4096).is_err() {
            errors += 1;
        }
    }
    assert!(errors > 0);
    // Whatever the running store says now, a reopen shows the snapshot exact.
    drop((o, st));
    let cow2: Dev = Arc::new(MemDev::from_bytes("cow", &cow.volatile_image()));
    let org2: Dev = Arc::new(MemDev::from_bytes("origin", &org.volatile_image()));
    let st = Store::open(cow2).unwrap();
    st.attach(ORIGIN, org2).unwrap();
    assert!(st.check().unwrap().is_clean());
    assert_eq!(
        read_all(&st.volume(ORIGIN, t).unwrap()),
        initial,
        "the snapshot changed after I/O errors"
    );
}

#[test]
fn deleting_a_tag_under_background_rollback_is_refused() {
    let (_, st) = store(16 * MIB, 1);
    st.bind(ORIGIN, origin(MIB, 6)).unwrap();
    let t = st.snapshot_origin(ORIGIN, "").unwrap();
    st.volume(ORIGIN, 0)
        .unwrap()
        .write_at(&[1; 65536], 0)
        .unwrap();
    st.rollback_start(ORIGIN, t).unwrap();
    assert!(matches!(st.delete(ORIGIN, t), Err(Error::Busy { .. })));
    assert!(matches!(
        st.rollback_start(ORIGIN, t),
        Err(Error::Busy { .. })
    ));
    assert!(matches!(
        st.snapshot_origin(ORIGIN, ""),
        Err(Error::Busy { .. })
    ));
    assert!(matches!(
        st.unbind(ORIGIN),
        Err(Error::HasSnapshots { .. }) | Err(Error::Busy { .. })
    ));
    st.finish_rollback(ORIGIN).unwrap();
    st.delete(ORIGIN, t).unwrap();
    assert_eq!(
        read_all(&st.volume(ORIGIN, 0).unwrap()),
        pattern(MIB as usize, 6)
    );
}

#[test]
fn unbinding_before_the_cleaner_finishes_leaks_nothing() {
    let (_, st) = store(64 * MIB, 1);
    let before = st.status().unwrap().used_chunks;
    st.bind(ORIGIN, origin(4 * MIB, 7)).unwrap();
    for i in 0..10u64 {
        st.snapshot_origin(ORIGIN, "").unwrap();
        st.volume(ORIGIN, 0)
            .unwrap()
            .write_at(&[i as u8; 65536], i * 65536)
            .unwrap();
    }
    for t in st.tags(ORIGIN).unwrap() {
        st.delete(ORIGIN, t).unwrap();
    }
    // No cleaning: unbind right away.
    assert!(st.cleaning_pending().unwrap());
    st.unbind(ORIGIN).unwrap();
    let report = st.check().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.data_chunks, 0);
    assert_eq!(st.status().unwrap().used_chunks, before);
}

#[test]
fn running_out_of_space_in_the_middle_of_a_snapshot_changes_nothing() {
    let (_, st) = store(2 * MIB, 1);
    st.bind(ORIGIN, origin(4 * MIB, 8)).unwrap();
    let t = st.snapshot_origin(ORIGIN, "").unwrap();
    let o = st.volume(ORIGIN, 0).unwrap();
    for k in 0..1024u64 {
        if o.write_at(&[3; 4096], k * 4096).is_err() {
            break;
        }
    }
    assert!(st.status().unwrap().full);
    // Snapshots keep being taken (metadata has its reserve) or fail cleanly.
    let mut made = Vec::new();
    for _ in 0..50 {
        match st.snapshot_origin(ORIGIN, "late") {
            Ok(tag) => made.push(tag),
            Err(e) => {
                assert!(matches!(e, Error::NoSpace), "{e}");
                break;
            }
        }
    }
    assert!(st.check().unwrap().is_clean());
    assert_eq!(
        read_all(&st.volume(ORIGIN, t).unwrap()),
        pattern(4 * MIB as usize, 8)
    );
    let now = read_all(&o);
    for tag in made {
        assert_eq!(read_all(&st.volume(ORIGIN, tag).unwrap()), now);
    }
}

#[test]
fn running_out_of_versions_in_the_middle_of_a_snapshot_changes_nothing() {
    use dms_engine::testing::{set_version_counter, MAX_VERSION_ID};
    let (cow, st) = store(8 * MIB, 1);
    let dev = origin(MIB, 4);
    st.bind(ORIGIN, dev.clone()).unwrap();
    let a = st.snapshot_origin(ORIGIN, "a").unwrap();
    let o = st.volume(ORIGIN, 0).unwrap();
    o.write_at(&[1; 10000], 0).unwrap();
    let b = st.snapshot_of(ORIGIN, a, "b").unwrap();
    st.volume(ORIGIN, a)
        .unwrap()
        .write_at(&[2; 5000], 70000)
        .unwrap();
    let contents = |st: &Store| -> Vec<(u32, Vec<u8>)> {
        std::iter::once(0)
            .chain(st.tags(ORIGIN).unwrap())
            .map(|t| (t, read_all(&st.volume(ORIGIN, t).unwrap())))
            .collect()
    };
    let before = contents(&st);
    // One version id left. A snapshot of `a`, which already has a child,
    // needs two (the new version, and a new leaf keeping `a`'s tag while
    // `a` becomes a ghost): the second runs out.
    set_version_counter(&st, ORIGIN, MAX_VERSION_ID - 1).unwrap();
    match st.snapshot_of(ORIGIN, a, "c") {
        Err(Error::LimitReached(what)) => assert!(what.contains("versions"), "{what}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(contents(&st), before);
    assert!(st.check().unwrap().is_clean());
    // The last id still makes a snapshot that needs one; then none is left.
    let c = st.snapshot_origin(ORIGIN, "c").unwrap();
    assert!(matches!(
        st.snapshot_origin(ORIGIN, "d"),
        Err(Error::LimitReached(_))
    ));
    assert!(matches!(
        st.snapshot_of(ORIGIN, b, "d"),
        Err(Error::LimitReached(_))
    ));
    let mut after = before.clone();
    after.push((c, before[0].1.clone()));
    assert_eq!(contents(&st), after);
    // Writes go on, and all of it survives a reopen.
    o.write_at(&[5; 4096], 8192).unwrap();
    let after = contents(&st);
    drop(o);
    st.flush().unwrap();
    drop(st);
    let st = Store::open(cow).unwrap();
    st.attach(ORIGIN, dev).unwrap();
    assert_eq!(contents(&st), after);
    assert!(st.check().unwrap().is_clean());
}

#[test]
fn a_store_holds_65536_origins() {
    let (_, st) = store(512 * MIB, 1);
    let n = std::env::var("DMS_MANY_ORIGINS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(65_536u32);
    for i in 0..n {
        let dev: Dev = Arc::new(MemDev::new("o", 4096));
        st.bind(&format!("origin-{i}"), dev).unwrap();
    }
    assert_eq!(st.origins().unwrap().len(), n as usize);
    let last = format!("origin-{}", n - 1);
    let t = st.snapshot_origin(&last, "").unwrap();
    st.volume(&last, 0)
        .unwrap()
        .write_at(&[1; 4096], 0)
        .unwrap();
    assert_eq!(read_all(&st.volume(&last, t).unwrap()), vec![0u8; 4096]);
    assert!(st.check().unwrap().is_clean());
}

/// A million versions in one store (100 origins of 10,000 snapshots each).
/// Opt in: `cargo test --release -p dms-engine --test regressions -- --ignored a_store_holds_a_million_versions`
#[test]
#[ignore = "builds 1,000,000 versions: about two minutes in release"]
fn a_store_holds_a_million_versions() {
    let (cow, st) = store(1 << 30, 1);
    let per_origin = 10_000u32;
    for o in 0..100u32 {
        let id = format!("o{o}");
        st.bind(&id, Arc::new(MemDev::new("o", 64 * 1024))).unwrap();
        for _ in 0..per_origin {
            st.snapshot_origin(&id, "").unwrap();
        }
    }
    let status = st.status().unwrap();
    assert_eq!(status.used_versions, 100 * (u64::from(per_origin) + 1));
    assert!(status.used_versions > 1_000_000);
    // Every version survives a reopen and the metadata checks clean.
    drop(st);
    let cow: Dev = cow;
    let st = Store::open(cow).unwrap();
    assert_eq!(
        st.status().unwrap().used_versions,
        100 * (u64::from(per_origin) + 1)
    );
    assert_eq!(st.tags("o99").unwrap().len(), per_origin as usize);
    assert!(st.check().unwrap().is_clean());
}

#[test]
fn a_panic_while_the_metadata_lock_is_held_fails_the_store() {
    let (cow, st) = store(16 * MIB, 1);
    st.bind(ORIGIN, origin(MIB, 12)).unwrap();
    let t = st.snapshot_origin(ORIGIN, "").unwrap();
    let o = st.volume(ORIGIN, 0).unwrap();
    o.write_at(&[0x31; 8192], 4096).unwrap();
    st.flush().unwrap();
    let before = cow.to_bytes();
    dms_engine::testing::panic_holding_the_metadata_lock(&st);
    // Nothing goes on with metadata that may be half changed.
    for r in [
        o.write_at(&[0x32; 4096], 0),
        st.flush(),
        st.snapshot_origin(ORIGIN, "").map(|_| ()),
        st.delete(ORIGIN, t),
    ] {
        assert!(matches!(r, Err(Error::Failed(_))), "{r:?}");
    }
    assert!(!st.status().unwrap().valid);
    drop((o, st));
    assert!(
        cow.to_bytes() == before,
        "a failed store wrote to its device"
    );
    let st = Store::open(Arc::new(MemDev::from_bytes("cow", &before))).unwrap();
    st.attach(ORIGIN, origin(MIB, 12)).unwrap();
    assert!(st.check().unwrap().is_clean());
    assert_eq!(
        read_all(&st.volume(ORIGIN, t).unwrap()),
        pattern(MIB as usize, 12)
    );
}
