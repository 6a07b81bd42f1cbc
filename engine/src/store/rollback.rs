//! Rollback of a snapshot into its origin.
//!
//! Start: a hidden, pinned snapshot of the tag freezes what the origin must
//! become, and the rollback state is committed. Then, chunk by chunk in
//! ascending order: where the frozen copy reads COW data, the origin's
//! current data is first copied out for the origin's child (if it has no
//! copy of its own), that copy is committed, and only then is the origin
//! overwritten. The cursor is committed after the origin writes are synced,
//! so a restart redoes at most one batch, which is idempotent.

use super::ops::new_version;
use super::Store;
use crate::error::{Error, Result};
use crate::versions::record::{flags, RollbackState};
use crate::volume::{heir_target, read_origin_chunk, resolve, Src};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::PoisonError;

const BATCH: usize = 1024;

impl Store {
    /// Make the origin read as snapshot `tag` reads now; every other version
    /// keeps its content. Runs to the end before returning.
    pub fn rollback(&self, origin_id: &str, tag: u32) -> Result<()> {
        self.rollback_start(origin_id, tag)?;
        self.finish_rollback(origin_id)
    }

    /// Start a rollback: freeze what `tag` reads now and record the rollback,
    /// durably. [`Store::finish_rollback`] (or [`Store::attach`] after a
    /// restart) carries it out.
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
            let mut m = self.inner.meta()?;
            let v = m.version_of(index, tag)?;
            let o = m.origin_ref(index)?;
            if o.rec.rollback.is_some() {
                return Err(Error::Busy {
                    what: format!("origin {origin_id} is already being rolled back"),
                });
            }
            if o.dev.is_none() {
                return Err(Error::OriginNotAttached(origin_id.to_string()));
            }
            let (_, source) = new_version(&mut m, index, Some(v), "", false)?;
            let o = m.origin_mut(index)?;
            if let Some(s) = o.tree.get_mut(source) {
                s.flags |= flags::PINNED;
            }
            o.rec.rollback = Some(RollbackState {
                tag,
                source,
                cursor: 0,
            });
            m.dirty_versions.insert((index, source));
            m.dirty_origins.insert(index);
        }
        self.flush()
    }

    /// Carry a started rollback to its end (also after a restart).
    pub fn finish_rollback(&self, origin_id: &str) -> Result<()> {
        let inner = &self.inner;
        let index = inner.meta()?.origin(origin_id)?;
        let cb = inner.chunk_bytes;
        loop {
            let shape = inner.shape(index);
            let _excl = shape.write().unwrap_or_else(PoisonError::into_inner);
            let mut m = inner.meta()?;
            let o = m.origin_ref(index)?;
            let Some(rb) = o.rec.rollback.clone() else {
                return Ok(());
            };
            let dev = o
                .dev
                .clone()
                .ok_or_else(|| Error::OriginNotAttached(origin_id.to_string()))?;
            let size = o.rec.size;
            let dirty = o.dirty.clone();
            let entries = m.exception_range(index, rb.cursor, BATCH)?;
            if entries.is_empty() {
                let o = m.origin_mut(index)?;
                if let Some(s) = o.tree.get_mut(rb.source) {
                    s.flags &= !flags::PINNED;
                }
                o.rec.rollback = None;
                m.dirty_versions.insert((index, rb.source));
                m.dirty_origins.insert(index);
                drop(m);
                return self.flush();
            }
            let mut chunks: BTreeSet<u64> = entries.iter().map(|(k, _)| k.chunk).collect();
            if entries.len() == BATCH && chunks.len() > 1 {
                // The last chunk's group may be cut short; take it next time.
                chunks.pop_last();
            }
            let last = chunks.last().copied().unwrap_or(rb.cursor);
            // Plan: which chunks to rewrite, which need a copy-out first.
            let mut work = Vec::new();
            for &c in &chunks {
                let excs = m.exceptions(index, c)?;
                let o = m.origin_ref(index)?;
                let Src::Cow(e) = resolve(&o.tree, rb.source, &excs) else {
                    continue;
                };
                let heir = heir_target(&o.cleaning, o.tree.only_child(0), &excs);
                let copy = match heir {
                    Some(h) => Some((h, m.space.alloc.alloc_data()?)),
                    None => None,
                };
                work.push((c, e, copy));
            }
            drop(m);
            let mut buf = vec![0u8; cb as usize];
            for &(c, _, copy) in &work {
                if let Some((_, n)) = copy {
                    read_origin_chunk(&dev, size, c, cb, &mut buf)?;
                    inner.cow.write_at(&buf, n * cb)?;
                }
            }
            let txn = {
                let mut m = inner.meta()?;
                for &(c, _, copy) in &work {
                    if let Some((h, n)) = copy {
                        m.add_new_exception(index, c, h, n)?;
                    }
                }
                m.txn
            };
            inner.commit_until(txn, true)?;
            for &(c, e, _) in &work {
                inner.cow.read_at(&mut buf, e * cb)?;
                let n = size.saturating_sub(c * cb).min(cb) as usize;
                dev.write_at(&buf[..n], c * cb)?;
            }
            dirty.store(true, Ordering::Release);
            let mut m = inner.meta()?;
            let o = m.origin_mut(index)?;
            if let Some(r) = o.rec.rollback.as_mut() {
                r.cursor = last + 1;
            }
            m.dirty_origins.insert(index);
        }
    }
}
