//! What send and receive need of the store: frozen copies of versions,
//! versions found by identity, the chunks two versions may differ in (in
//! batches, so that I/O goes on), the receive state, and the received
//! snapshot, made together with the end of the receive in one commit.

use super::ops::{new_version, new_version_born};
use super::Store;
use crate::error::{Error, Result};
use crate::exceptions::{resolve, Src};
use crate::io::{read_chunk, BlockDev};
use crate::versions::record::{flags, ReceiveState, RollbackState};
use crate::versions::Uuid;
use crate::versions::NONE;
use std::sync::PoisonError;

/// Exceptions looked at per batch of a chunk scan.
const SCAN: usize = 4096;

impl Store {
    /// The origin's index.
    pub(crate) fn origin_index(&self, origin_id: &str) -> Result<u32> {
        self.inner.meta()?.origin(origin_id)
    }

    /// Freeze version `of` (None: the origin) of origin `index` in a hidden
    /// copy with `extra` flags (and PINNED): what it reads now, whatever is
    /// written to the original later. Returns the copy's version id.
    pub(crate) fn freeze_copy(&self, index: u32, of: Option<u32>, extra: u32) -> Result<u32> {
        let shape = self.inner.shape(index);
        let _excl = shape.write().unwrap_or_else(PoisonError::into_inner);
        // The copy reads the devices: nothing of this origin stays held.
        self.inner.drain(Some(index), true)?;
        let mut m = self.inner.meta()?;
        let (_, copy) = new_version(&mut m, index, of, "", false)?;
        if let Some(v) = m.edit(index)?.version(copy) {
            v.flags |= flags::PINNED | extra;
        }
        Ok(copy)
    }

    /// Let go of a frozen copy: the tree goes back to its shape before the
    /// copy when nothing was written meanwhile (a snapshot with children
    /// keeps owning its copies, and no ghost is left); else it becomes a
    /// ghost for the cleaner.
    pub(crate) fn release_copy(&self, index: u32, copy: u32) -> Result<()> {
        let shape = self.inner.shape(index);
        let _excl = shape.write().unwrap_or_else(PoisonError::into_inner);
        let mut m = self.inner.meta()?;
        if let Ok(mut o) = m.edit(index) {
            if let Some(v) = o.version(copy) {
                v.flags &= !(flags::PINNED | flags::SENDING | flags::UNDO);
            }
            o.tree(|tree, changed| changed.extend(tree.unfreeze(copy)));
        }
        Ok(())
    }

    /// The snapshot (tagged version) carrying identity `uuid`, if any.
    pub(crate) fn version_by_uuid(&self, index: u32, uuid: &Uuid) -> Result<Option<u32>> {
        let m = self.inner.meta()?;
        let tree = m.origin_ref(index)?.tree();
        let found = tree
            .ids()
            .find(|&v| v != 0 && tree.get(v).is_some_and(|x| x.tag != 0 && &x.uuid == uuid));
        Ok(found)
    }

    /// (tag, identity, birthday, memo) of a version; tag 0 for a hidden one.
    pub(crate) fn version_info(&self, index: u32, v: u32) -> Result<(u32, Uuid, u64, String)> {
        let m = self.inner.meta()?;
        let o = m.origin_ref(index)?;
        let x = o
            .tree()
            .get(v)
            .ok_or_else(|| Error::UnknownOrigin(format!("#{index}/{v}")))?;
        Ok((x.tag, x.uuid, x.birthday, x.memo.clone()))
    }

    /// The version a tag names.
    pub(crate) fn version_of_tag(&self, index: u32, tag: u32) -> Result<u32> {
        self.inner.meta()?.version_of(index, tag)
    }

    /// Its identity is given out: the first write to it gets it a new one.
    pub(crate) fn mark_exported(&self, index: u32, v: u32) -> Result<()> {
        let mut m = self.inner.meta()?;
        if let Some(x) = m.edit(index)?.version(v) {
            x.flags |= flags::EXPORTED;
        }
        Ok(())
    }

    /// Chunks from `from` on where versions `a` and `b` may differ (they do
    /// not resolve to the same place), ascending, from one batch of the
    /// exception tree; and where the next batch starts (None: done).
    /// Chunks without exceptions read the origin in both.
    pub(crate) fn differing_chunks(
        &self,
        index: u32,
        a: u32,
        b: u32,
        from: u64,
    ) -> Result<(Vec<u64>, Option<u64>)> {
        let mut m = self.inner.meta()?;
        let (chunks, next) = scan_batch(&mut m, index, from)?;
        let mut out = Vec::new();
        for c in chunks {
            let excs = m.exceptions(index, c)?;
            let tree = m.origin_ref(index)?.tree();
            let same = match (resolve(tree, a, &excs), resolve(tree, b, &excs)) {
                (Src::Origin, Src::Origin) => true,
                (Src::Cow(p), Src::Cow(q)) => p == q,
                _ => false,
            };
            if !same {
                out.push(c);
            }
        }
        Ok((out, next))
    }

    /// Whether the origin reads exactly as snapshot `v` and `v` is its
    /// newest snapshot: no tagged version between the two, no rollback or
    /// receive running, and every chunk `v` keeps apart from the origin
    /// (copied out since, or left by an undo or a rollback) holding what
    /// the origin holds.
    pub(crate) fn origin_equals(&self, index: u32, v: u32) -> Result<bool> {
        let shape = self.inner.shape(index);
        let _excl = shape.write().unwrap_or_else(PoisonError::into_inner);
        self.inner.drain(Some(index), true)?;
        let (dev, size) = {
            let m = self.inner.meta()?;
            let o = m.origin_ref(index)?;
            if o.rec().rollback.is_some() || o.rec().receive.is_some() {
                return Ok(false);
            }
            // The origin grew since `v` was taken.
            if o.version_size(v) != o.rec().size {
                return Ok(false);
            }
            let tree = o.tree();
            let mut p = tree.get(v).map_or(NONE, |x| x.parent);
            while p != 0 {
                match tree.get(p) {
                    Some(x) if x.tag == 0 => p = x.parent,
                    _ => return Ok(false),
                }
            }
            match &o.dev {
                Some(d) => (d.clone(), o.rec().size),
                None => return Err(Error::OriginNotAttached(o.rec().id.clone())),
            }
        };
        let cb = self.chunk_bytes();
        let (mut ours, mut theirs) = (vec![0u8; cb as usize], vec![0u8; cb as usize]);
        let mut from = 0;
        loop {
            let (apart, next) = {
                let mut m = self.inner.meta()?;
                let (chunks, next) = scan_batch(&mut m, index, from)?;
                let mut apart = Vec::new();
                for c in chunks {
                    let excs = m.exceptions(index, c)?;
                    if let Src::Cow(q) = resolve(m.origin_ref(index)?.tree(), v, &excs) {
                        apart.push((c, q));
                    }
                }
                (apart, next)
            };
            for (c, q) in apart {
                read_chunk(&*dev, size, c, cb, &mut ours)?;
                let n = size.saturating_sub(c * cb).min(cb) as usize;
                self.inner.cow.read_at(&mut theirs, q * cb)?;
                if ours[..n] != theirs[..n] {
                    return Ok(false);
                }
            }
            match next {
                Some(n) => from = n,
                None => return Ok(true),
            }
        }
    }

    /// Roll the origin back to version `source` (hidden or tagged, which
    /// stays as it is) and wait until the rollback is done.
    pub(crate) fn rollback_to_version(
        &self,
        origin_id: &str,
        index: u32,
        source: u32,
    ) -> Result<()> {
        {
            let shape = self.inner.shape(index);
            let _excl = shape.write().unwrap_or_else(PoisonError::into_inner);
            self.inner.drain(Some(index), true)?;
            let mut m = self.inner.meta()?;
            if m.origin_ref(index)?.rec().rollback.is_some() {
                return Err(Error::Busy {
                    what: format!("origin {origin_id} is already being rolled back"),
                });
            }
            // A frozen copy of the source is what the rollback reads.
            let (_, copy) = new_version(&mut m, index, Some(source), "", false)?;
            let mut o = m.edit(index)?;
            if let Some(s) = o.version(copy) {
                s.flags |= flags::PINNED;
            }
            o.rec().rollback = Some(RollbackState {
                tag: 0,
                source: copy,
                cursor: 0,
            });
        }
        self.flush()?;
        self.finish_rollback(origin_id)
    }

    /// The device an origin is attached to.
    pub(crate) fn origin_device(&self, index: u32) -> Result<crate::io::Dev> {
        let m = self.inner.meta()?;
        let o = m.origin_ref(index)?;
        o.dev
            .clone()
            .ok_or_else(|| Error::OriginNotAttached(o.rec().id.clone()))
    }

    /// The receive in progress into an origin, if any.
    pub(crate) fn receive_state(&self, index: u32) -> Result<Option<ReceiveState>> {
        Ok(self.inner.meta()?.origin_ref(index)?.rec().receive.clone())
    }

    /// Record (or clear) the receive state, durably: every write before it
    /// is durable first.
    pub(crate) fn set_receive_state(&self, index: u32, state: Option<ReceiveState>) -> Result<()> {
        self.flush()?;
        self.inner.meta()?.edit(index)?.rec().receive = state;
        self.flush()
    }

    /// End a receive: the snapshot it makes (tagged, with the sender's
    /// identity, birthday and memo, marked as given out), the receive state
    /// cleared and the undo copy let go, in one commit. Returns the tag.
    pub(crate) fn finish_receive(&self, index: u32, state: &ReceiveState) -> Result<u32> {
        let shape = self.inner.shape(index);
        let _excl = shape.write().unwrap_or_else(PoisonError::into_inner);
        self.inner.drain(Some(index), true)?;
        let tag = {
            let mut m = self.inner.meta()?;
            let (tag, id) = new_version_born(
                &mut m,
                index,
                None,
                true,
                state.birthday,
                &state.memo,
                state.target,
            )?;
            let mut o = m.edit(index)?;
            if let Some(v) = o.version(id) {
                v.flags |= flags::EXPORTED;
            }
            if state.undo != 0 {
                if let Some(u) = o.version(state.undo) {
                    u.flags &= !(flags::PINNED | flags::UNDO);
                }
            }
            o.rec().receive = None;
            tag
        };
        self.flush()?;
        Ok(tag)
    }

    /// Undo a receive: the origin goes back to what it was, the state and
    /// the undo copy go.
    pub(crate) fn undo_receive(
        &self,
        origin_id: &str,
        index: u32,
        state: &ReceiveState,
    ) -> Result<()> {
        if state.undo == 0 {
            // The origin read as zeros before the receive began.
            self.zero_origin(index)?;
            self.flush()?;
        } else {
            self.rollback_to_version(origin_id, index, state.undo)?;
        }
        {
            let mut m = self.inner.meta()?;
            let mut o = m.edit(index)?;
            if state.undo != 0 {
                if let Some(u) = o.version(state.undo) {
                    u.flags &= !(flags::PINNED | flags::UNDO);
                }
            }
            o.rec().receive = None;
        }
        self.flush()
    }
}

/// The chunks with exceptions in one batch of the exception tree from
/// chunk `from` on, and where the next batch starts (None: done). The last
/// chunk of a full batch may be cut short: it is taken next time.
fn scan_batch(m: &mut super::meta::Meta, index: u32, from: u64) -> Result<(Vec<u64>, Option<u64>)> {
    let batch = m.exception_range(index, from, SCAN)?;
    let mut chunks: Vec<u64> = batch.iter().map(|(k, _)| k.chunk).collect();
    chunks.dedup();
    let next = if batch.len() == SCAN {
        chunks.pop()
    } else {
        None
    };
    Ok((chunks, next))
}
