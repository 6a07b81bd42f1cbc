//! Flipping bytes in metadata: every damaged block gives a typed error
//! naming that block, at open, at read or at check. Never a panic.

mod common;

use common::*;
use dms_engine::io::{BlockDev, Dev, MemDev};
use dms_engine::{Error, FormatOptions, Store};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

const PAGE: u64 = 4096;

/// A store with origins, snapshots, ghosts and enough exceptions for a
/// multi-level tree.
fn build() -> (Vec<u8>, Vec<u8>, Vec<u64>) {
    let initial = pattern(4 << 20, 9);
    let origin = Arc::new(MemDev::from_bytes("origin", &initial));
    let cow = Arc::new(MemDev::new("cow", 32 << 20));
    let store = Store::format(
        cow.clone(),
        &FormatOptions {
            chunk_pages: 1,
            force: false,
        },
    )
    .unwrap();
    let dev: Dev = origin.clone();
    store.bind(ORIGIN, dev).unwrap();
    let o = store.volume(ORIGIN, 0).unwrap();
    for round in 0..4u8 {
        store
            .snapshot_origin(ORIGIN, &format!("round {round}"))
            .unwrap();
        for i in 0..1000u64 {
            o.write_at(&[round; 100], (i * 5 + u64::from(round)) * 4096 % (4 << 20))
                .unwrap();
        }
    }
    store.snapshot_of(ORIGIN, 2, "child").unwrap();
    store.delete(ORIGIN, 3).unwrap();
    drop(o);
    let report = store.check().unwrap();
    assert!(report.is_clean());
    assert!(report.exception_tree_depth >= 2, "want a multi-level tree");
    (origin.to_bytes(), cow.to_bytes(), report.metadata)
}

/// Open, attach, check and read everything; the first error.
fn exercise(origin: &[u8], cow: &[u8]) -> Result<(), Error> {
    let cow: Dev = Arc::new(MemDev::from_bytes("cow", cow));
    let store = Store::open(cow)?;
    let dev: Dev = Arc::new(MemDev::from_bytes("origin", origin));
    store.attach(ORIGIN, dev)?;
    for tag in std::iter::once(0).chain(store.tags(ORIGIN)?) {
        let v = store.volume(ORIGIN, tag)?;
        let mut buf = vec![0u8; v.size() as usize];
        v.read_at(&mut buf, 0)?;
    }
    let report = store.check()?;
    assert!(report.is_clean(), "{:?}", report.problems);
    Ok(())
}

#[test]
fn a_flipped_byte_in_any_metadata_block_names_that_block() {
    let (origin, cow, pages) = build();
    assert!(pages.len() > 10, "{} metadata pages", pages.len());
    exercise(&origin, &cow).unwrap();
    let mut tried = 0;
    for &page in &pages {
        for off in [
            0usize, 15, 16, 20, 24, 32, 40, 47, 48, 49, 100, 1000, 2047, 4095,
        ] {
            let mut img = cow.clone();
            img[(page * PAGE) as usize + off] ^= 0x20;
            let res = catch_unwind(AssertUnwindSafe(|| exercise(&origin, &img)));
            match res {
                Ok(Err(Error::Corrupt { block, .. })) => {
                    assert_eq!(block, page, "flip at {page}+{off}")
                }
                Ok(other) => panic!("flip at page {page} offset {off}: {other:?}"),
                Err(_) => panic!("flip at page {page} offset {off} panicked"),
            }
            tried += 1;
        }
    }
    assert!(tried > 100);
}

#[test]
fn a_damaged_superblock_falls_back_to_the_other_slot_or_says_so() {
    let (origin, cow, _) = build();
    // One slot damaged: the other (previous commit) still opens and checks.
    for slot in 0..2u64 {
        let mut img = cow.clone();
        img[(slot * PAGE) as usize + 60] ^= 1;
        let cowdev: Dev = Arc::new(MemDev::from_bytes("cow", &img));
        let store = Store::open(cowdev).unwrap();
        let dev: Dev = Arc::new(MemDev::from_bytes("origin", &origin));
        store.attach(ORIGIN, dev).unwrap();
        assert!(store.check().unwrap().is_clean());
    }
    // Both damaged: a clear error, no panic.
    let mut img = cow.clone();
    img[60] ^= 1;
    img[PAGE as usize + 60] ^= 1;
    let cowdev: Dev = Arc::new(MemDev::from_bytes("cow", &img));
    match Store::open(cowdev) {
        Err(e @ Error::NotAStore { .. }) => assert!(e.to_string().contains("checksum"), "{e}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened a store with both superblocks damaged"),
    }
}

#[test]
fn a_block_written_to_the_wrong_place_is_caught() {
    let (origin, cow, pages) = build();
    // Copy one valid metadata block over another: checksum fine, address wrong.
    let (a, b) = (pages[0] as usize, pages[pages.len() / 2] as usize);
    let mut img = cow.clone();
    let src = cow[a * 4096..(a + 1) * 4096].to_vec();
    img[b * 4096..(b + 1) * 4096].copy_from_slice(&src);
    match exercise(&origin, &img) {
        Err(Error::Corrupt { block, .. }) => assert_eq!(block as usize, b),
        other => panic!("{other:?}"),
    }
    let _ = MemDev::new("x", 4096).size();
}

mod resealed {
    //! Random damage behind the checksums: bytes of metadata blocks changed
    //! and the blocks sealed again, as a buggy writer or a crafted image
    //! would leave them. Whatever the damage, a user's every action on the
    //! store ends in a result or an error, never a panic or a hang; and
    //! damage the decoders reject is named by its block.
    use dms_engine::testing::{reseal, sample_store, workout, Sample};
    use dms_engine::Error;
    use proptest::prelude::*;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::OnceLock;

    fn sample() -> &'static Sample {
        static S: OnceLock<Sample> = OnceLock::new();
        S.get_or_init(|| sample_store().unwrap())
    }

    fn cases() -> u32 {
        std::env::var("DMS_CORRUPT_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300)
    }

    #[derive(Clone, Debug)]
    struct Edit {
        page: usize,
        offset: usize,
        value: u8,
        set: bool,
    }

    fn edit() -> impl Strategy<Value = Edit> {
        // Offsets favour the header and the first entries, where most of
        // the structure is.
        let offset = prop_oneof![0..64usize, 48..400usize, 0..4096usize];
        (any::<usize>(), offset, any::<u8>(), any::<bool>()).prop_map(
            |(page, offset, value, set)| Edit {
                page,
                offset,
                value: if set { value } else { value | 1 },
                set,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn resealed_damage_is_an_error_never_a_panic(edits in prop::collection::vec(edit(), 1..6)) {
            let s = sample();
            let mut cow = s.cow.clone();
            let mut pages = Vec::new();
            for e in &edits {
                let page = s.metadata[e.page % s.metadata.len()] as usize;
                let at = page * 4096 + e.offset;
                if e.set { cow[at] = e.value } else { cow[at] ^= e.value }
                pages.push(page as u64);
            }
            for &p in &pages {
                let p = p as usize;
                reseal(&mut cow[p * 4096..(p + 1) * 4096]);
            }
            let res = catch_unwind(AssertUnwindSafe(|| workout(&cow, &s.origins)));
            match res {
                Ok(Ok(())) | Ok(Err(Error::Failed(_))) | Ok(Err(Error::NotAStore { .. })) => {}
                Ok(Err(Error::Corrupt { block, .. })) => {
                    // The block named is a metadata block or one a damaged
                    // pointer led to; either way one the store could name.
                    prop_assert!(block < (cow.len() / 4096) as u64 || pages.contains(&block), "block {block}");
                }
                Ok(Err(_)) => {}
                Err(p) => {
                    let msg = p.downcast_ref::<String>().cloned().unwrap_or_default();
                    prop_assert!(false, "panic after edits {edits:?}: {msg}");
                }
            }
        }
    }

    /// Found by the proptest above: a page count whose byte size overflows
    /// 64 bits panicked (in a build with overflow checks) while the error
    /// about a too small device was being worded.
    #[test]
    fn a_superblock_claiming_an_impossible_size_is_refused() {
        let s = sample();
        for value in [u64::MAX, 1 << 60, (u64::MAX >> 12) + 1, 2, 0] {
            let mut cow = s.cow.clone();
            for slot in 0..2usize {
                let at = slot * 4096 + 48 + 16;
                cow[at..at + 8].copy_from_slice(&value.to_le_bytes());
                reseal(&mut cow[slot * 4096..(slot + 1) * 4096]);
            }
            match catch_unwind(AssertUnwindSafe(|| workout(&cow, &s.origins))) {
                Ok(Err(Error::NotAStore { reason, .. })) => {
                    assert!(reason.contains("page count"), "{value}: {reason}")
                }
                other => panic!("page count {value}: {:?}", other.map_err(|_| "panic")),
            }
        }
    }

    #[test]
    fn the_sample_store_survives_the_workout_undamaged() {
        let s = sample();
        workout(&s.cow, &s.origins).unwrap();
    }
}
