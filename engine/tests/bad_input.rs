//! Refusals: each a typed error, and the COW device unchanged.

mod common;

use common::*;
use dms_engine::io::{Dev, MemDev};
use dms_engine::{Error, FormatOptions, Store, MAX_ORIGIN_BYTES};
use std::sync::Arc;

fn store() -> (Arc<MemDev>, Store) {
    let cow = Arc::new(MemDev::new("cow", 16 << 20));
    let store = Store::format(cow.clone(), &FormatOptions::default()).unwrap();
    let origin: Dev = Arc::new(MemDev::from_bytes("origin", &pattern(1 << 20, 1)));
    store.bind(ORIGIN, origin).unwrap();
    (cow, store)
}

/// Run `f`, expect an error matching `want`, and the device untouched.
fn refused(
    cow: &MemDev,
    f: impl FnOnce() -> dms_engine::Result<()>,
    want: impl Fn(&Error) -> bool,
) {
    let before = cow.to_bytes();
    match f() {
        Err(e) => assert!(want(&e), "unexpected error: {e}"),
        Ok(()) => panic!("not refused"),
    }
    assert!(
        cow.to_bytes() == before,
        "a refused command changed the device"
    );
}

#[test]
fn chunk_size_must_be_a_power_of_two_in_range() {
    let cow = Arc::new(MemDev::new("cow", 16 << 20));
    for cp in [0u32, 3, 6, 12, 65, 128] {
        let c = cow.clone();
        refused(
            &cow,
            || {
                Store::format(
                    c,
                    &FormatOptions {
                        chunk_pages: cp,
                        force: true,
                    },
                )
                .map(|_| ())
            },
            |e| matches!(e, Error::BadChunkSize(n) if *n == u64::from(cp)),
        );
    }
    for cp in [1u32, 2, 4, 8, 16, 32, 64] {
        let cow: Dev = Arc::new(MemDev::new("cow", 64 << 20));
        Store::format(
            cow,
            &FormatOptions {
                chunk_pages: cp,
                force: false,
            },
        )
        .unwrap();
    }
}

#[test]
fn formatting_a_store_needs_force() {
    let (cow, store) = store();
    drop(store);
    let c = cow.clone();
    refused(
        &cow,
        || Store::format(c, &FormatOptions::default()).map(|_| ()),
        |e| matches!(e, Error::AlreadyFormatted { .. }),
    );
    let c: Dev = cow.clone();
    Store::format(
        c,
        &FormatOptions {
            chunk_pages: 2,
            force: true,
        },
    )
    .unwrap();
}

#[test]
fn an_origin_larger_than_the_store_can_address() {
    let (cow, store) = store();
    let huge: Dev = Arc::new(MemDev::new("huge", MAX_ORIGIN_BYTES + 4096));
    refused(
        &cow,
        || store.bind("huge", huge),
        |e| matches!(e, Error::OriginTooLarge { .. }),
    );
    let ok: Dev = Arc::new(MemDev::new("big", MAX_ORIGIN_BYTES));
    store.bind("big", ok).unwrap();
}

#[test]
fn snapshot_of_an_unknown_or_deleted_tag() {
    let (cow, store) = store();
    refused(
        &cow,
        || store.snapshot_of(ORIGIN, 7, "").map(|_| ()),
        |e| matches!(e, Error::UnknownTag { tag: 7, .. }),
    );
    let t = store.snapshot_origin(ORIGIN, "").unwrap();
    store.delete(ORIGIN, t).unwrap();
    refused(
        &cow,
        || store.snapshot_of(ORIGIN, t, "").map(|_| ()),
        |e| matches!(e, Error::UnknownTag { .. }),
    );
    refused(
        &cow,
        || store.delete(ORIGIN, t),
        |e| matches!(e, Error::UnknownTag { .. }),
    );
    refused(
        &cow,
        || store.rollback(ORIGIN, t),
        |e| matches!(e, Error::UnknownTag { .. }),
    );
    refused(
        &cow,
        || store.volume(ORIGIN, t).map(|_| ()),
        |e| matches!(e, Error::UnknownTag { .. }),
    );
    refused(
        &cow,
        || store.snapshot_origin("nope", "").map(|_| ()),
        |e| matches!(e, Error::UnknownOrigin(_)),
    );
}

#[test]
fn tag_zero_is_not_a_snapshot() {
    let (cow, store) = store();
    refused(
        &cow,
        || store.delete(ORIGIN, 0),
        |e| matches!(e, Error::TagZero { .. }),
    );
    // A second child of the origin through "ss 0".
    refused(
        &cow,
        || store.snapshot_of(ORIGIN, 0, "").map(|_| ()),
        |e| matches!(e, Error::TagZero { .. }),
    );
    refused(
        &cow,
        || store.rollback(ORIGIN, 0),
        |e| matches!(e, Error::TagZero { .. }),
    );
}

#[test]
fn unbinding_an_origin_with_snapshots() {
    let (cow, store) = store();
    let t = store.snapshot_origin(ORIGIN, "keep").unwrap();
    refused(
        &cow,
        || store.unbind(ORIGIN),
        |e| matches!(e, Error::HasSnapshots { count: 1, .. }),
    );
    store.delete(ORIGIN, t).unwrap();
    store.unbind(ORIGIN).unwrap();
    assert!(store.origins().unwrap().is_empty());
    assert!(store.check().unwrap().is_clean());
}

#[test]
fn names_memos_and_duplicates() {
    let (cow, store) = store();
    let long = "m".repeat(dms_engine::MAX_MEMO + 1);
    refused(
        &cow,
        || store.snapshot_origin(ORIGIN, &long).map(|_| ()),
        |e| matches!(e, Error::MemoTooLong { .. }),
    );
    let dev: Dev = Arc::new(MemDev::new("o", 4096));
    refused(
        &cow,
        || store.bind(ORIGIN, dev.clone()),
        |e| matches!(e, Error::OriginExists(_)),
    );
    refused(
        &cow,
        || store.bind("", dev.clone()),
        |e| matches!(e, Error::BadOriginId(_)),
    );
    let v = store.volume(ORIGIN, 0).unwrap();
    refused(
        &cow,
        || v.write_at(&[1], 1 << 20),
        |e| matches!(e, Error::OutOfRange { .. }),
    );
    // A memo of 255 UTF-8 bytes and more is fine.
    let memo = "é".repeat(300);
    let t = store.snapshot_origin(ORIGIN, &memo).unwrap();
    let st = store.status().unwrap();
    assert_eq!(
        st.origins[0].list.iter().find(|x| x.tag == t).unwrap().memo,
        memo
    );
}

#[test]
fn a_full_cow_device_fails_the_write_and_keeps_every_snapshot() {
    let initial = pattern(4 << 20, 3);
    let cow = Arc::new(MemDev::new("cow", 2 << 20));
    let store = Store::format(cow.clone(), &FormatOptions::default()).unwrap();
    let origin: Dev = Arc::new(MemDev::from_bytes("origin", &initial));
    store.bind(ORIGIN, origin).unwrap();
    let t1 = store.snapshot_origin(ORIGIN, "").unwrap();
    let o = store.volume(ORIGIN, 0).unwrap();
    let mut written = 0u64;
    let err = loop {
        match o.write_at(&[0xEE; 4096], written) {
            Ok(()) => written += 4096,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::NoSpace), "{err}");
    assert_eq!(err.errno(), libc_enospc());
    assert!(written > 0 && written < 4 << 20);
    // The snapshot still reads the old data; the origin holds what was written.
    assert_eq!(read_all(&store.volume(ORIGIN, t1).unwrap()), initial);
    let now = read_all(&o);
    assert!(now[..written as usize].iter().all(|&b| b == 0xEE));
    assert_eq!(now[written as usize..], initial[written as usize..]);
    // Snapshot writes fail too, origin writes to chunks already copied work.
    let s = store.volume(ORIGIN, t1).unwrap();
    assert!(matches!(
        s.write_at(&[1; 4096], 3 << 20),
        Err(Error::NoSpace)
    ));
    o.write_at(&[0xDD; 100], 0).unwrap();
    // Everything survives a reopen; deleting the snapshot frees the space.
    store.flush().unwrap();
    let st = store.status().unwrap();
    assert!(st.used_chunks * 100 / st.total_chunks >= 85, "{st:?}");
    store.delete(ORIGIN, t1).unwrap();
    store.clean().unwrap();
    o.write_at(&[0xCC; 4096], 2 << 20).unwrap();
    assert!(store.check().unwrap().is_clean());
}

fn libc_enospc() -> i32 {
    28
}
