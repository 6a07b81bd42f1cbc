//! Rollback of a snapshot into its origin, online.
//!
//! Start: a hidden, pinned snapshot `S` of the tag freezes what the origin
//! must become, and the rollback state is committed. From then on the origin
//! *reads* as `S` wherever `S` reads COW data and the chunk is not merged
//! yet; a *write* to such a chunk merges it first. A background scanner
//! merges the rest in ascending order.
//!
//! Merging chunk `c`: copy the origin's current data out for the origin's
//! child if it has no copy of its own, commit that, overwrite the origin with
//! `S`'s data, sync the origin device, and only then record the progress:
//! the scanner's cursor, or for a chunk merged ahead of the cursor a MERGED
//! marker on `S`. So a recorded merge is always on the device, and a merge
//! is never redone over newer writes. Redoing an unrecorded one after a
//! crash is harmless: it writes the same data again.

use super::meta::Meta;
use super::ops::new_version;
use super::{lock, Background, Inner, Loc, Pacer, Store, WriteLocked};
use crate::error::{Error, Result};
use crate::exceptions::{heir_target, resolve, Src};
use crate::io::read_chunk;
use crate::io::BlockDev;
use crate::versions::record::{flags, RollbackState};
use std::collections::BTreeSet;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// Exceptions the scanner reads per batch; its cursor moves per batch.
const BATCH: usize = 1024;

impl Store {
    /// Make the origin read as snapshot `tag` reads now; every other version
    /// keeps its content. Runs to the end before returning.
    pub fn rollback(&self, origin_id: &str, tag: u32) -> Result<()> {
        self.rollback_start(origin_id, tag)?;
        self.finish_rollback(origin_id)
    }

    /// Start a rollback: freeze what `tag` reads now and record the rollback,
    /// durably. From this moment the origin reads as the tag did;
    /// [`Store::finish_rollback`] merges the rest (in the background, if
    /// the caller runs it on another thread).
    pub fn rollback_start(&self, origin_id: &str, tag: u32) -> Result<()> {
        if tag == 0 {
            return Err(Error::TagZero {
                origin: origin_id.to_string(),
                op: "rollback",
            });
        }
        let index = self.inner.meta()?.origin(origin_id)?;
        {
            let shape = self.inner.shape(index);
            let _excl = shape.write().unwrap_or_else(PoisonError::into_inner);
            // The frozen source and the merges read the devices: nothing of
            // this origin stays held (and its origin writes are not held
            // until the rollback ends).
            self.inner.drain(Some(index), true)?;
            let mut m = self.inner.meta()?;
            let v = m.version_of(index, tag)?;
            let o = m.origin_ref(index)?;
            if o.version_size(v) != o.rec().size {
                return Err(Error::SizeDiffers(format!(
                    "snapshot {tag} is {} bytes, origin {origin_id} {}: it was taken before the origin grew, and a rollback needs the same size",
                    o.version_size(v),
                    o.rec().size
                )));
            }
            if o.rec().rollback.is_some() {
                return Err(Error::Busy {
                    what: format!("origin {origin_id} is already being rolled back"),
                });
            }
            if o.dev.is_none() {
                return Err(Error::OriginNotAttached(origin_id.to_string()));
            }
            let (_, source) = new_version(&mut m, index, Some(v), "", false)?;
            let mut o = m.edit(index)?;
            if let Some(s) = o.version(source) {
                s.flags |= flags::PINNED;
            }
            o.rec().rollback = Some(RollbackState {
                tag,
                source,
                cursor: 0,
            });
        }
        self.flush()
    }

    /// The tag being rolled back into an origin, if any.
    pub fn rollback_pending(&self, origin_id: &str) -> Result<Option<u32>> {
        let m = self.inner.meta()?;
        Ok(m.origin_ref(m.origin(origin_id)?)?
            .rec()
            .rollback
            .as_ref()
            .map(|r| r.tag))
    }

    /// Merge every chunk not merged yet, then end the rollback (also after a
    /// restart). Foreground I/O goes on meanwhile.
    pub fn finish_rollback(&self, origin_id: &str) -> Result<()> {
        let _bg = Background::enter();
        let inner = &self.inner;
        let index = inner.meta()?.origin(origin_id)?;
        let mut batches = 0u64;
        let mut pacer = Pacer::new(inner);
        loop {
            // Between batches, holding no lock: pause if foreground I/O
            // went on.
            pacer.tick();
            let shape = inner.shape(index);
            let _shared = shape.read().unwrap_or_else(PoisonError::into_inner);
            let (chunks, last) = {
                let mut m = inner.meta()?;
                let o = m.origin_ref(index)?;
                let Some(rb) = o.rec().rollback.clone() else {
                    return Ok(());
                };
                let entries = m.exception_range(index, rb.cursor, BATCH)?;
                if entries.is_empty() {
                    let mut o = m.edit(index)?;
                    if let Some(s) = o.version(rb.source) {
                        s.flags &= !flags::PINNED;
                    }
                    o.rec().rollback = None;
                    drop(m);
                    return self.flush();
                }
                let mut chunks: BTreeSet<u64> = entries.iter().map(|(k, _)| k.chunk).collect();
                if entries.len() == BATCH && chunks.len() > 1 {
                    // The last chunk's group may be cut short; take it next time.
                    chunks.pop_last();
                }
                let last = chunks.last().copied().unwrap_or(rb.cursor);
                (chunks.into_iter().collect::<Vec<u64>>(), last)
            };
            let epoch = inner.room_epoch.load(Ordering::Acquire);
            match inner.merge_in_parallel(index, &chunks) {
                // The merge's copy-outs found the device full: under the
                // on-full rule make room (holding no lock) and scan the
                // batch again; what was merged stays merged.
                Err(Error::NoSpace) => {
                    drop(_shared);
                    if !self.make_room(index, epoch)? {
                        return Err(Error::NoSpace);
                    }
                    continue;
                }
                res => res?,
            }
            let mut m = inner.meta()?;
            if let Some(r) = m.edit(index)?.rec().rollback.as_mut() {
                r.cursor = r.cursor.max(last + 1);
            }
            // The cursor stands for merged data: its commit syncs the origins.
            m.note_merged_data();
            let txn = m.txn();
            drop(m);
            batches += 1;
            // Commit now and then so a restart redoes little.
            if batches % 32 == 0 {
                inner.commit_until(txn, true)?;
            }
        }
    }
}

impl Inner {
    /// Merge a scanner batch: small groups of chunks, each under its own
    /// stripe locks (so foreground I/O to other chunks goes on), by up to
    /// `rollback_workers` threads at once. The caller holds the origin's
    /// shape lock shared.
    fn merge_in_parallel(&self, index: u32, chunks: &[u64]) -> Result<()> {
        let groups: Vec<&[u64]> = chunks.chunks(self.rollback_group).collect();
        let failed: Mutex<Option<Error>> = Mutex::new(None);
        // Pass 1 merges what needs no commit and makes the copy-outs of the
        // rest; one commit covers them all; pass 2 merges the rest.
        let deferred: Mutex<Vec<usize>> = Mutex::new(Vec::new());
        let wait: Mutex<Option<u64>> = Mutex::new(None);
        let pass = |list: &[usize], defer: bool| {
            let next = AtomicUsize::new(0);
            let work = || loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&g) = list.get(k) else {
                    return;
                };
                if lock(&failed).is_some() {
                    return;
                }
                let group = groups[g];
                let res = self
                    .lock_write(index, group.iter().copied())
                    .and_then(|mut locked| {
                        self.merge_for_rollback(index, group, false, defer, &mut locked)
                    });
                match res {
                    Ok(Some(txn)) => {
                        lock(&deferred).push(g);
                        let mut w = lock(&wait);
                        *w = (*w).max(Some(txn));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        lock(&failed).get_or_insert(e);
                        return;
                    }
                }
            };
            let workers = self
                .rollback_workers
                .load(Ordering::Relaxed)
                .clamp(1, list.len().max(1));
            if workers == 1 {
                work();
            } else {
                std::thread::scope(|s| {
                    for _ in 1..workers {
                        s.spawn(move || {
                            let _bg = Background::enter();
                            work()
                        });
                    }
                    work();
                });
            }
        };
        let all: Vec<usize> = (0..groups.len()).collect();
        pass(&all, true);
        let txn = *lock(&wait);
        let ok = lock(&failed).is_none();
        if let (true, Some(txn)) = (ok, txn) {
            self.commit_until(txn, false)?;
            let mut again = std::mem::take(&mut *lock(&deferred));
            again.sort_unstable();
            pass(&again, false);
        }
        match failed.into_inner().unwrap_or_else(PoisonError::into_inner) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Mark chunks of a running rollback merged without merging their data:
    /// for writes that replace the whole chunk. The caller holds the stripes.
    pub(crate) fn mark_merged(&self, index: u32, chunks: &[u64]) -> Result<()> {
        let mut m = self.meta()?;
        let Some(rb) = m.origin_ref(index)?.rec().rollback.clone() else {
            return Ok(());
        };
        for &c in chunks.iter().filter(|&&c| c >= rb.cursor) {
            m.insert_merged(index, c, rb.source)?;
        }
        Ok(())
    }

    /// Merge those of `chunks` that a rollback of origin `index` has not
    /// merged yet. The caller holds the chunks' stripes exclusively and the
    /// origin's shape lock shared. With `mark`, record each merge with a
    /// MERGED marker (chunks merged ahead of the scanner's cursor).
    ///
    /// With `defer`, chunks whose merge must wait for a commit (a copy-out
    /// for the origin's child just made, or an exception change not yet
    /// durable) are left unmerged and the transaction to wait for is
    /// returned: the scanner commits once for all its groups and calls again.
    pub(crate) fn merge_for_rollback(
        &self,
        index: u32,
        chunks: &[u64],
        mark: bool,
        defer: bool,
        locked: &mut WriteLocked<'_>,
    ) -> Result<Option<u64>> {
        let cb = self.chunk_bytes;
        let (rb, dev, size, dirty) = {
            let m = self.meta()?;
            let o = m.origin_ref(index)?;
            let Some(rb) = o.rec().rollback.clone() else {
                return Ok(None);
            };
            let dev = o
                .dev
                .clone()
                .ok_or_else(|| Error::OriginNotAttached(o.rec().id.clone()))?;
            (rb, dev, o.rec().size, o.dirty.clone())
        };
        let source = rb.source;
        // Every chunk handled here is settled from now on: merged, or
        // already right (the source read the origin there).
        let marks: Vec<u64> = chunks.iter().copied().filter(|&c| c >= rb.cursor).collect();
        let mut work: Vec<Merge> = Vec::new();
        // The transaction whose changes to these chunks must be durable
        // before the origin is overwritten (like any origin overwrite).
        let mut wait: Option<u64> = None;
        {
            let mut m = self.meta()?;
            let planned = (|| -> Result<()> {
                for &c in &marks {
                    let excs = m.exceptions(index, c)?;
                    let o = m.origin_ref(index)?;
                    let Src::Cow(e) = resolve(o.tree(), source, &excs) else {
                        continue;
                    };
                    m.unzero(index, c);
                    let o = m.origin_ref(index)?;
                    let copy = match heir_target(&o.cleaning, o.tree().only_child(0), &excs) {
                        Some(h) => Some((h, m.alloc_data()?)),
                        None => None,
                    };
                    if copy.is_none() {
                        wait = wait.max(m.overwrite_wait(index, c, None, self.durable()));
                    }
                    work.push((c, e, copy));
                }
                Ok(())
            })();
            if let Err(err) = planned {
                release(&mut m, &work);
                return Err(err);
            }
        }
        if work.is_empty() {
            if mark && !marks.is_empty() {
                let mut m = self.meta()?;
                for &c in &marks {
                    m.insert_merged(index, c, source)?;
                }
            }
            return Ok(None);
        }
        // The merge reads and writes the devices directly: nothing of these
        // chunks may be held (origin writes are not held during a rollback,
        // and the source is read by more than one version).
        for &(c, e, _) in &work {
            let s = locked.stripe_mut(Self::stripe_index(index, c));
            let settled = self
                .settle(
                    s,
                    index,
                    &Loc::Origin {
                        origin: index,
                        chunk: c,
                    },
                )
                .and_then(|()| self.settle(s, index, &Loc::Cow { chunk: e }));
            if let Err(err) = settled {
                release(&mut *self.meta()?, &work);
                return Err(err);
            }
        }
        let mut buf = vec![0u8; cb as usize];
        // The origin's current data, for the origin's child, made durable first.
        for &(c, _, copy) in &work {
            if let Some((_, n)) = copy {
                let copied = read_chunk(&*dev, size, c, cb, &mut buf)
                    .and_then(|()| self.cow.write_at(&buf, n * cb));
                if let Err(err) = copied {
                    release(&mut *self.meta()?, &work);
                    return Err(err);
                }
            }
        }
        if work.iter().any(|w| w.2.is_some()) {
            let txn = {
                let mut m = self.meta()?;
                for &(c, _, copy) in &work {
                    if let Some((h, n)) = copy {
                        m.add_new_exception(index, c, h, n)?;
                    }
                }
                m.txn()
            };
            wait = Some(txn);
        }
        if let Some(txn) = wait {
            if defer {
                return Ok(Some(txn));
            }
            self.commit_until(txn, false)?;
        }
        for &(c, e, _) in &work {
            self.cow.read_at(&mut buf, e * cb)?;
            let n = size.saturating_sub(c * cb).min(cb) as usize;
            dev.write_at(&buf[..n], c * cb)?;
        }
        self.mark_origin_dirty(index, &dirty);
        // Merged data is on the device before any record of it is durable:
        // the commit that carries a marker or the cursor syncs the origins
        // before its superblock.
        if mark {
            let mut m = self.meta()?;
            for &c in &marks {
                m.insert_merged(index, c, source)?;
            }
        }
        Ok(None)
    }
}

/// One chunk to merge: (chunk, the source's COW chunk, a copy-out for the
/// origin's child as (heir version, reserved COW chunk)).
type Merge = (u64, u64, Option<(u32, u64)>);

/// Give back the data chunks reserved for copy-outs that were not recorded.
fn release(m: &mut Meta, work: &[Merge]) {
    for &(_, _, copy) in work {
        if let Some((_, n)) = copy {
            m.free_data(n);
        }
    }
}
