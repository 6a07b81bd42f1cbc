//! Helpers for tests and fuzzers that damage a store on purpose.
//!
//! A flipped byte in a metadata block is caught by its checksum. To reach
//! the decoders behind the checksum (what a buggy writer or a hostile
//! image could hand them), a test edits a block and then seals it again.

use crate::format::{self, PAGE_SIZE};
use crate::io::{BlockDev, Dev, MemDev};
use crate::{Error, FormatOptions, Result, Store};
use std::sync::Arc;

/// Recompute the checksum of an edited metadata block in place, so that
/// only the decoders can tell what is wrong with it. Does nothing to a
/// slice that is not one page long.
pub fn reseal(block: &mut [u8]) {
    if block.len() != PAGE_SIZE {
        return;
    }
    let sum = format::checksum(block);
    block[..16].copy_from_slice(&sum);
}

/// The origin ids of [`sample_store`].
pub const SAMPLE_ORIGINS: [&str; 2] = ["first", "second"];

/// A small store with everything the decoders can meet: two origins,
/// snapshots of snapshots, a ghost, cleaning left pending, a rollback left
/// running and an exception tree of more than one level.
pub struct Sample {
    /// The COW device's bytes.
    pub cow: Vec<u8>,
    /// Each origin's bytes, in the order of [`SAMPLE_ORIGINS`].
    pub origins: Vec<Vec<u8>>,
    /// Every metadata page: the two superblock slots, then nodes and bitmaps.
    pub metadata: Vec<u64>,
}

/// Build the [`Sample`] store (deterministic; a few hundred milliseconds).
pub fn sample_store() -> Result<Sample> {
    let sizes = [1usize << 20, 384 << 10];
    let origins: Vec<Arc<MemDev>> = sizes
        .iter()
        .enumerate()
        .map(|(n, &len)| {
            let bytes: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 9) as u8 ^ n as u8)
                .collect();
            Arc::new(MemDev::from_bytes(SAMPLE_ORIGINS[n], &bytes))
        })
        .collect();
    let cow = Arc::new(MemDev::new("cow", 6 << 20));
    let store = Store::format(
        cow.clone(),
        &FormatOptions {
            chunk_pages: 1,
            force: false,
        },
    )?;
    // Commits at fixed points only: the same bytes every time.
    set_background_committer(&store, false);
    for (id, dev) in SAMPLE_ORIGINS.iter().zip(&origins) {
        let dev: Dev = dev.clone();
        store.bind(id, dev)?;
    }
    let first = store.volume(SAMPLE_ORIGINS[0], 0)?;
    for round in 0..5u8 {
        store.snapshot_origin(SAMPLE_ORIGINS[0], &format!("round {round}"))?;
        for i in 0..256u64 {
            let at = (i * 3 + u64::from(round)) * 4096 % (1 << 20);
            first.write_at(&[round ^ 0x5a; 100], at)?;
        }
    }
    // A zero map of two runs, one of them split by a write.
    first.discard(64 * 4096, 16 * 4096)?;
    first.discard(200 * 4096, 3 * 4096)?;
    first.write_at(&[1; 10], 70 * 4096)?;
    store.snapshot_of(SAMPLE_ORIGINS[0], 2, "child")?;
    // Tag 2 has a child: deleting it leaves a ghost.
    store.delete(SAMPLE_ORIGINS[0], 2)?;
    let second = store.volume(SAMPLE_ORIGINS[1], 0)?;
    store.snapshot_origin(SAMPLE_ORIGINS[1], "b")?;
    for i in 0..40u64 {
        second.write_at(&[7; 4096], i * 8192)?;
    }
    let t = store.snapshot_origin(SAMPLE_ORIGINS[1], "c")?;
    second.write_at(&[9; 8192], 4096)?;
    store.delete(SAMPLE_ORIGINS[1], t)?;
    store.rollback_start(SAMPLE_ORIGINS[1], 1)?;
    second.write_at(&[3; 512], 100)?;
    store.flush()?;
    let report = store.check()?;
    assert!(report.is_clean(), "{:?}", report.problems);
    assert!(
        report.exception_tree_depth >= 2,
        "want a tree of two levels"
    );
    drop((first, second));
    drop(store);
    let mut metadata = vec![0, 1];
    metadata.extend(&report.metadata);
    Ok(Sample {
        cow: cow.to_bytes(),
        origins: origins.iter().map(|d| d.to_bytes()).collect(),
        metadata,
    })
}

/// Everything a user can do to a store, on a COW image that may be
/// damaged: open, attach, read every version, dump, delta, check, then
/// write, snapshot, delete, clean, finish the rollback, reopen. Returns the
/// first error. With an undamaged image, every step succeeds.
///
/// Damage must show as an error, never as a panic, a hang, or an access
/// outside a device (which would come back here as [`Error::Io`] from the
/// memory devices, and is turned into a panic so that fuzzers see it).
pub fn workout(cow: &[u8], origins: &[Vec<u8>]) -> Result<()> {
    let no_io = |r: Result<()>| -> Result<()> {
        if let Err(e @ Error::Io { .. }) = &r {
            panic!("damaged metadata led to an access outside a device: {e}");
        }
        r
    };
    let cowdev = Arc::new(MemDev::from_bytes("cow", cow));
    let devs: Vec<Dev> = origins
        .iter()
        .zip(SAMPLE_ORIGINS)
        .map(|(b, id)| Arc::new(MemDev::from_bytes(id, b)) as Dev)
        .collect();
    no_io(workout_on(cowdev.clone(), &devs))?;
    // Whatever the first pass left behind must open or fail cleanly too.
    no_io((|| {
        let store = Store::open(cowdev.clone())?;
        for (id, dev) in SAMPLE_ORIGINS.iter().zip(&devs) {
            store.attach(id, dev.clone())?;
        }
        let report = store.check()?;
        if !report.is_clean() {
            return Err(Error::Failed(report.problems.join("; ")));
        }
        Ok(())
    })())
}

fn workout_on(cow: Arc<MemDev>, devs: &[Dev]) -> Result<()> {
    let size = cow.size();
    let store = Store::open(cow)?;
    for (id, dev) in SAMPLE_ORIGINS.iter().zip(devs) {
        store.attach(id, dev.clone())?;
    }
    store.status()?;
    for id in SAMPLE_ORIGINS {
        let tags = store.tags(id)?;
        for &tag in std::iter::once(&0).chain(&tags) {
            let v = store.volume(id, tag)?;
            let mut buf = vec![0u8; v.size().min(size) as usize];
            v.read_at(&mut buf, 0)?;
        }
        store.exceptions_of(id, None)?;
        if let [first, .., last] = tags[..] {
            store.delta(id, first, last)?;
        }
    }
    let report = store.check()?;
    if !report.is_clean() {
        // A damaged store that the checker flags is a correct outcome.
        return Err(Error::Failed(report.problems.join("; ")));
    }
    let id = SAMPLE_ORIGINS[0];
    let origin = store.volume(id, 0)?;
    origin.write_at(&[0xee; 6000], 8192)?;
    let tag = store.snapshot_origin(id, "new")?;
    origin.write_at(&[0xdd; 4096], 0)?;
    store.volume(id, tag)?.write_at(&[0xcc; 100], 12288)?;
    if let Some(&old) = store.tags(id)?.first() {
        store.delete(id, old)?;
    }
    store.finish_rollback(SAMPLE_ORIGINS[1])?;
    store.clean()?;
    store.flush()
}

pub use crate::versions::MAX_VERSION_ID;

/// Set an origin's version counter, as if that many versions had been
/// made: to test running out of versions without making 2^28 of them.
pub fn set_version_counter(store: &Store, origin_id: &str, next_version: u32) -> Result<()> {
    let mut m = store.inner.meta()?;
    let index = m.origin(origin_id)?;
    m.edit(index)?.rec().next_version = next_version;
    Ok(())
}

/// Stop (`false`) or restart (`true`) a store's committer thread. Stopped,
/// held overwrites reach their devices only when a flush, a structural
/// command, the held-data limit or [`settle`] drains them: workloads with
/// held data then do the same device operations in the same order every
/// time (the model and crash tests rely on it).
pub fn set_background_committer(store: &Store, on: bool) {
    store.inner.set_background_committer(on);
}

/// Do what the committer does once: commit, then write every held
/// overwrite to its device (origins are not synced; a flush does that).
pub fn settle(store: &Store) -> Result<()> {
    store.inner.drain(None, false)
}

/// Panic in a thread while it holds the store's metadata lock, as a bug in
/// the middle of a change would: the lock is left poisoned.
pub fn panic_holding_the_metadata_lock(store: &Store) {
    let inner = store.inner.clone();
    let _ = std::thread::spawn(move || {
        let _held = inner.meta.lock();
        panic!("a bug while the metadata is half changed (a test)");
    })
    .join();
}

/// Make a receive's progress durable after every `bytes` of data (the
/// default is 64 MiB), so that small tests see resume points inside a
/// stream. Process-wide.
pub fn set_receive_progress_every(bytes: u64) {
    crate::stream::receive::PROGRESS_EVERY
        .store(bytes.max(1), std::sync::atomic::Ordering::Relaxed);
}

/// An origin's zero map: runs of chunks `(first, count)` that its device
/// reads as zeros, discarded through dms.
pub fn zero_map(store: &Store, origin_id: &str) -> Result<Vec<(u64, u64)>> {
    store.zero_map(origin_id)
}

/// Check that every chunk in every attached origin's zero map reads as
/// zeros on its device: the map's promise. The first chunk that does not.
pub fn verify_zero_maps(store: &Store) -> std::result::Result<(), String> {
    let cb = store.inner.chunk_bytes;
    let m = store.inner.meta().map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; cb as usize];
    for o in m.origins() {
        let Some(dev) = &o.dev else { continue };
        for (s, k) in o.zeros().runs() {
            for c in s..s + k {
                dev.read_at(&mut buf, c * cb).map_err(|e| e.to_string())?;
                if buf.iter().any(|&b| b != 0) {
                    return Err(format!(
                        "origin {} chunk {c} is in the zero map but holds data",
                        o.rec().id
                    ));
                }
            }
        }
    }
    Ok(())
}
