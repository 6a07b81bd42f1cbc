//! Growing a COW device online: a store that ran out of space takes the
//! same writes after the device was made larger and `grow` ran; shrinking
//! is refused; a crash anywhere in a grow leaves the old size or the new,
//! both clean, every snapshot as it was.

use dms_engine::io::{Dev, FaultController, FaultDev, FileDev, MemDev};
use dms_engine::{Error, FormatOptions, Store};
use std::sync::Arc;

const CB: usize = 4096;
const ORIGIN: usize = 2 << 20;

fn read_all(s: &Store, tag: u32) -> Vec<u8> {
    let v = s.volume("o", tag).unwrap();
    let mut b = vec![0u8; v.size() as usize];
    v.read_at(&mut b, 0).unwrap();
    b
}

/// Snapshot 1 of an origin of pattern 1, then origin writes of pattern 2,
/// chunk by chunk, until the COW device is full; returns the chunks
/// written.
fn fill(s: &Store) -> usize {
    let o = s.volume("o", 0).unwrap();
    o.write_at(&vec![1u8; ORIGIN], 0).unwrap();
    s.snapshot_origin("o", "").unwrap();
    for c in 0..ORIGIN / CB {
        match o.write_at(&[2u8; CB], (c * CB) as u64) {
            Ok(()) => {}
            Err(Error::NoSpace) => return c,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the COW device never filled");
}

#[test]
fn a_full_cow_device_grown_online_takes_the_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cow.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let cow: Dev = Arc::new(FileDev::open(&path, true).unwrap());
    let s = Store::format(cow.clone(), &FormatOptions::default()).unwrap();
    s.bind("o", Arc::new(MemDev::new("origin", ORIGIN as u64)))
        .unwrap();
    let done = fill(&s);
    assert!(done < ORIGIN / CB);
    let snap = read_all(&s, 1);
    let total = s.status().unwrap().total_chunks;
    // Not grown yet: grow changes nothing.
    assert_eq!(s.grow().unwrap(), (1 << 20, 1 << 20));
    // Larger underneath, then grow: the rest of the writes go through.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    assert_eq!(s.grow().unwrap(), (1 << 20, 8 << 20));
    assert_eq!(s.status().unwrap().total_chunks, 8 * total);
    let o = s.volume("o", 0).unwrap();
    for c in done..ORIGIN / CB {
        o.write_at(&[2u8; CB], (c * CB) as u64).unwrap();
    }
    assert_eq!(read_all(&s, 1), snap);
    assert!(read_all(&s, 0).iter().all(|&b| b == 2));
    assert!(s.check().unwrap().is_clean());
    s.flush().unwrap();
    drop(o);
    drop(s);
    drop(cow);
    // Reopened: the new size. (The committer thread lets the device go
    // just after the store is dropped.)
    let dev = (0..200)
        .find_map(|_| {
            FileDev::open(&path, true).ok().or_else(|| {
                std::thread::sleep(std::time::Duration::from_millis(10));
                None
            })
        })
        .expect("the device is let go");
    let s = Store::open(Arc::new(dev)).unwrap();
    assert_eq!(s.status().unwrap().total_chunks, 8 * total);
    assert!(s.check().unwrap().is_clean());
    // Smaller: refused, nothing changed.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let e = s.grow().unwrap_err();
    assert!(matches!(e, Error::CowShrunk { .. }), "{e}");
    assert_eq!(s.status().unwrap().total_chunks, 8 * total);
}

#[test]
fn a_crash_anywhere_in_a_grow_leaves_the_old_size_or_the_new() {
    let small = 1 << 20;
    let large = 3 << 20;
    // How many device operations the grow takes.
    let ops = {
        let ctl = FaultController::new();
        let cow = Arc::new(FaultDev::new("cow", vec![0u8; small], ctl.clone()));
        let s = Store::format(cow.clone(), &FormatOptions::default()).unwrap();
        s.bind("o", Arc::new(MemDev::new("origin", ORIGIN as u64)))
            .unwrap();
        fill(&s);
        s.flush().unwrap();
        cow.grow(large);
        let before = ctl.ops();
        s.grow().unwrap();
        ctl.ops() - before
    };
    assert!(ops > 2, "{ops}");
    let mut outcomes = (0, 0);
    for at in 1..=ops {
        let ctl = FaultController::new();
        let cow = Arc::new(FaultDev::new("cow", vec![0u8; small], ctl.clone()));
        let s = Store::format(cow.clone(), &FormatOptions::default()).unwrap();
        s.bind("o", Arc::new(MemDev::new("origin", ORIGIN as u64)))
            .unwrap();
        let done = fill(&s);
        s.flush().unwrap();
        let snap = read_all(&s, 1);
        let origin_now = read_all(&s, 0);
        let old_total = s.status().unwrap().total_chunks;
        cow.grow(large);
        ctl.crash_after(at);
        let _ = s.grow();
        assert!(ctl.crashed(), "crash point {at} of {ops}");
        let image = cow.crash_image(at * 7919);
        drop(s);
        let s = Store::open(Arc::new(MemDev::from_bytes("cow", &image)))
            .unwrap_or_else(|e| panic!("crash at {at}: {e}"));
        let origin = Arc::new(MemDev::from_bytes("origin", &origin_now));
        s.attach("o", origin).unwrap();
        assert!(s.check().unwrap().is_clean(), "crash at {at}");
        assert_eq!(read_all(&s, 1), snap, "crash at {at}: snapshot");
        let total = s.status().unwrap().total_chunks;
        if total == old_total {
            outcomes.0 += 1;
            // Not grown: grow again works.
            s.grow().unwrap();
        } else {
            outcomes.1 += 1;
        }
        assert_eq!(s.status().unwrap().total_chunks, 3 * old_total);
        let o = s.volume("o", 0).unwrap();
        for c in done..ORIGIN / CB {
            o.write_at(&[2u8; CB], (c * CB) as u64).unwrap();
        }
        assert_eq!(
            read_all(&s, 1),
            snap,
            "crash at {at}: snapshot after the writes"
        );
        assert!(s.check().unwrap().is_clean());
    }
    assert!(outcomes.0 > 0 && outcomes.1 > 0, "{outcomes:?}");
}

#[test]
fn the_space_policy_is_kept_in_the_store() {
    let cow: Dev = Arc::new(MemDev::new("cow", 4 << 20));
    let s = Store::format(cow.clone(), &FormatOptions::default()).unwrap();
    assert_eq!(s.policy().unwrap(), dms_engine::StorePolicy::default());
    let p = dms_engine::StorePolicy {
        low_water: 80,
        hook: "lvextend -L+1G vg/cow && dms grow orig".into(),
        ..Default::default()
    };
    s.set_policy(p.clone()).unwrap();
    let bad = dms_engine::StorePolicy {
        low_water: 101,
        ..Default::default()
    };
    assert!(matches!(s.set_policy(bad), Err(Error::BadPolicy(_))));
    assert!(s.check().unwrap().is_clean());
    drop(s);
    let s = Store::open(cow.clone()).unwrap();
    assert_eq!(s.policy().unwrap(), p);
    assert!(s.check().unwrap().is_clean());
    // The on-full rule and keep-min are kept too (a kind 6 record).
    let p = dms_engine::StorePolicy {
        on_full: dms_engine::OnFull::DeleteOldest,
        keep_min: 3,
        ..p
    };
    s.set_policy(p.clone()).unwrap();
    drop(s);
    let s = Store::open(cow.clone()).unwrap();
    assert_eq!(s.policy().unwrap(), p);
    // The longest hook fits the catalog; a longer one is refused.
    let long = dms_engine::StorePolicy {
        hook: "x".repeat(1024),
        ..p.clone()
    };
    s.set_policy(long.clone()).unwrap();
    let too_long = dms_engine::StorePolicy {
        hook: "x".repeat(1025),
        ..p
    };
    assert!(matches!(s.set_policy(too_long), Err(Error::BadPolicy(_))));
    drop(s);
    let s = Store::open(cow).unwrap();
    assert_eq!(s.policy().unwrap(), long);
    assert!(s.check().unwrap().is_clean());
}

#[test]
fn an_origin_grown_underneath_takes_the_new_size_and_its_snapshots_keep_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("origin.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(ORIGIN as u64)
        .unwrap();
    let cow: Dev = Arc::new(MemDev::new("cow", 64 << 20));
    let s = Store::format(cow.clone(), &FormatOptions::default()).unwrap();
    s.bind("o", Arc::new(FileDev::open(&path, true).unwrap()))
        .unwrap();
    let o = s.volume("o", 0).unwrap();
    o.write_at(&vec![1u8; ORIGIN], 0).unwrap();
    let old = s.snapshot_origin("o", "before").unwrap();
    let before = read_all(&s, old);
    // Not grown yet: nothing to do; a smaller device is refused.
    assert_eq!(s.grow_origin("o").unwrap(), (ORIGIN as u64, ORIGIN as u64));
    let set_len = |n: u64| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(n)
            .unwrap()
    };
    set_len(2 * ORIGIN as u64 + 512);
    let big = 2 * ORIGIN as u64 + 512;
    assert_eq!(s.grow_origin("o").unwrap(), (ORIGIN as u64, big));
    // The open origin volume sees the new size at once; the snapshot has
    // its own.
    assert_eq!(o.size(), big);
    let snap = s.volume("o", old).unwrap();
    assert_eq!(snap.size(), ORIGIN as u64);
    assert!(matches!(
        snap.read_at(&mut [0u8; 1], ORIGIN as u64),
        Err(Error::OutOfRange { .. })
    ));
    // Writes into the new space copy nothing out for the old snapshot.
    let used = s.check().unwrap().data_chunks;
    o.write_at(&vec![2u8; ORIGIN + 512], ORIGIN as u64).unwrap();
    assert_eq!(s.check().unwrap().data_chunks, used);
    // A snapshot of the grown origin has its size; a write there now does.
    let new = s.snapshot_origin("o", "after").unwrap();
    assert_eq!(s.volume("o", new).unwrap().size(), big);
    let after = read_all(&s, new);
    o.write_at(&[3u8; CB], ORIGIN as u64).unwrap();
    assert_eq!(s.check().unwrap().data_chunks, used + 1);
    assert!(read_all(&s, new) == after);
    assert!(read_all(&s, old) == before);
    // A snapshot of the old snapshot has the old size.
    let of_old = s.snapshot_of("o", old, "").unwrap();
    assert_eq!(s.volume("o", of_old).unwrap().size(), ORIGIN as u64);
    // The sizes are in the status.
    let st = s.status().unwrap();
    let sizes: Vec<(u32, u64)> = st.origins[0]
        .list
        .iter()
        .filter(|v| !v.ghost)
        .map(|v| (v.tag, v.size))
        .collect();
    assert!(
        sizes.contains(&(0, big))
            && sizes.contains(&(old, ORIGIN as u64))
            && sizes.contains(&(new, big)),
        "{sizes:?}"
    );
    // The old snapshot cannot be rolled back into the larger origin; the
    // new one can. An incremental stream across the grow is refused; delta
    // counts the new space as changed.
    assert!(matches!(s.rollback("o", old), Err(Error::SizeDiffers(_))));
    let d = s.delta("o", old, new).unwrap();
    let first_new = (ORIGIN / CB) as u64;
    assert!(
        (first_new..=(big / CB as u64)).all(|c| d.contains(&c)),
        "{:?}",
        &d[d.len().saturating_sub(4)..]
    );
    let mut sink = Vec::new();
    let opts = dms_engine::stream::SendOptions {
        from: Some(old),
        ..Default::default()
    };
    assert!(matches!(
        s.send("o", new, &opts, &mut sink, &mut |_, _| {}),
        Err(Error::SizeDiffers(_))
    ));
    s.rollback("o", new).unwrap();
    let now = read_all(&s, 0);
    let diff = now.iter().zip(&after).position(|(a, b)| a != b);
    assert!(
        now.len() == after.len() && diff.is_none(),
        "{} vs {} bytes, first difference at {diff:?}",
        now.len(),
        after.len()
    );
    assert!(s.check().unwrap().is_clean());
    // Reopened: the sizes are kept.
    drop((o, snap));
    drop(s);
    let s = Store::open(cow).unwrap();
    s.attach("o", Arc::new(FileDev::open(&path, true).unwrap()))
        .unwrap();
    assert_eq!(s.volume("o", 0).unwrap().size(), big);
    assert_eq!(s.volume("o", old).unwrap().size(), ORIGIN as u64);
    assert_eq!(s.volume("o", of_old).unwrap().size(), ORIGIN as u64);
    assert!(read_all(&s, old) == before);
    assert!(read_all(&s, new) == after);
    assert!(s.check().unwrap().is_clean());
    // A device that shrank is refused, and the origin kept as it is.
    set_len(ORIGIN as u64);
    assert!(matches!(
        s.grow_origin("o"),
        Err(Error::OriginShrunk { .. })
    ));
    assert_eq!(s.volume("o", 0).unwrap().size(), big);
}
