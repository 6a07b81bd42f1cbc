//! Byte-level access to one version of an origin: the origin itself (tag 0)
//! or a snapshot. Any offset and length; safe from many threads.

mod plan;

pub(crate) use plan::{heir_target, resolve, Src, MERGED};

use crate::error::{Error, Result};
use crate::io::Dev;
use crate::store::{lock, Inner, Store};
use plan::{plan_write, Plan};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, PoisonError, RwLockReadGuard, RwLockWriteGuard};

/// Chunks handled under one set of stripe locks.
const BATCH_CHUNKS: u64 = 64;

/// An open version.
pub struct Volume {
    store: Store,
    origin: u32,
    origin_id: String,
    tag: u32,
    size: u64,
}

/// One chunk's part of a request.
#[derive(Clone, Copy, Debug)]
struct Piece {
    chunk: u64,
    off: usize,
    len: usize,
    at: usize,
}

fn pieces(offset: u64, len: usize, cb: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut done = 0usize;
    while done < len {
        let pos = offset + done as u64;
        let chunk = pos / cb;
        let off = (pos % cb) as usize;
        let n = (cb as usize - off).min(len - done);
        out.push(Piece {
            chunk,
            off,
            len: n,
            at: done,
        });
        done += n;
    }
    out
}

struct Ctx {
    version: u32,
    dev: Dev,
    dirty: Arc<AtomicBool>,
    size: u64,
}

impl Store {
    /// Open version `tag` of an origin (0 = the origin itself).
    pub fn volume(&self, origin_id: &str, tag: u32) -> Result<Volume> {
        let mut m = self.inner.meta()?;
        let index = m.origin(origin_id)?;
        m.version_of(index, tag)?;
        let o = m.origin_mut(index)?;
        if o.dev.is_none() {
            return Err(Error::OriginNotAttached(origin_id.to_string()));
        }
        o.open_volumes += 1;
        Ok(Volume {
            store: self.clone(),
            origin: index,
            origin_id: origin_id.to_string(),
            tag,
            size: o.rec.size,
        })
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let mut m = lock(&self.store.inner.meta);
        if let Some(o) = m.origins.get_mut(&self.origin) {
            o.open_volumes = o.open_volumes.saturating_sub(1);
        }
    }
}

impl Volume {
    /// Size in bytes (the origin's recorded size).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The tag this volume shows (0 = origin).
    pub fn tag(&self) -> u32 {
        self.tag
    }

    pub fn origin_id(&self) -> &str {
        &self.origin_id
    }

    fn inner(&self) -> &Inner {
        &self.store.inner
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(Error::OutOfRange {
                offset,
                len: len as u64,
                size: self.size,
            }),
        }
    }

    fn ctx(&self) -> Result<Ctx> {
        let m = self.inner().meta()?;
        let version = m.version_of(self.origin, self.tag)?;
        let o = m.origin_ref(self.origin)?;
        let dev = o
            .dev
            .clone()
            .ok_or_else(|| Error::OriginNotAttached(self.origin_id.clone()))?;
        Ok(Ctx {
            version,
            dev,
            dirty: o.dirty.clone(),
            size: o.rec.size,
        })
    }

    fn stripes_read(&self, batch: &[Piece]) -> Vec<RwLockReadGuard<'_, ()>> {
        let inner = self.inner();
        inner
            .stripe_set(self.origin, batch.iter().map(|p| p.chunk))
            .into_iter()
            .map(|i| {
                inner
                    .stripe_at(i)
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
            })
            .collect()
    }

    fn stripes_write(&self, batch: &[Piece]) -> Vec<RwLockWriteGuard<'_, ()>> {
        let inner = self.inner();
        inner
            .stripe_set(self.origin, batch.iter().map(|p| p.chunk))
            .into_iter()
            .map(|i| {
                inner
                    .stripe_at(i)
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
            })
            .collect()
    }

    /// Read `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len())?;
        self.inner().note_foreground();
        let cb = self.inner().chunk_bytes;
        let shape = self.inner().shape(self.origin);
        let _shape = shape.read().unwrap_or_else(PoisonError::into_inner);
        let all = pieces(offset, buf.len(), cb);
        for batch in all.chunks(BATCH_CHUNKS as usize) {
            let _stripes = self.stripes_read(batch);
            let ctx = self.ctx()?;
            let rolling = if ctx.version == 0 {
                self.rollback_source()?
            } else {
                None
            };
            let srcs: Vec<Src> = if let Some((source, cursor)) = rolling {
                // During a rollback the origin reads as the frozen source
                // wherever that chunk is not merged yet.
                let mut m = self.inner().meta()?;
                let mut out = Vec::with_capacity(batch.len());
                for p in batch {
                    if p.chunk < cursor {
                        out.push(Src::Origin);
                        continue;
                    }
                    let excs = m.exceptions(self.origin, p.chunk)?;
                    out.push(resolve(&m.origin_ref(self.origin)?.tree, source, &excs));
                }
                out
            } else if ctx.version == 0 {
                vec![Src::Origin; batch.len()]
            } else {
                let mut m = self.inner().meta()?;
                let mut out = Vec::with_capacity(batch.len());
                for p in batch {
                    let excs = m.exceptions(self.origin, p.chunk)?;
                    out.push(resolve(
                        &m.origin_ref(self.origin)?.tree,
                        ctx.version,
                        &excs,
                    ));
                }
                out
            };
            // Coalesce neighbouring pieces that read one contiguous range.
            let mut i = 0;
            while i < batch.len() {
                let mut j = i + 1;
                while j < batch.len() && contiguous(&srcs[j - 1], &srcs[j]) {
                    j += 1;
                }
                let first = batch[i];
                let last = batch[j - 1];
                let len = last.at + last.len - first.at;
                let dst = &mut buf[first.at..first.at + len];
                match srcs[i] {
                    Src::Origin => ctx.dev.read_at(dst, first.chunk * cb + first.off as u64)?,
                    Src::Cow(e) => self.inner().cow.read_at(dst, e * cb + first.off as u64)?,
                }
                i = j;
            }
        }
        Ok(())
    }

    /// Write `buf` at `offset`. Durable after the next flush.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len())?;
        self.inner().note_foreground();
        let cb = self.inner().chunk_bytes;
        let shape = self.inner().shape(self.origin);
        let _shape = shape.read().unwrap_or_else(PoisonError::into_inner);
        let all = pieces(offset, buf.len(), cb);
        for batch in all.chunks(BATCH_CHUNKS as usize) {
            let _stripes = self.stripes_write(batch);
            self.write_batch(buf, batch, cb)?;
        }
        Ok(())
    }

    /// (source version, cursor) of a rollback into this origin, if one runs.
    fn rollback_source(&self) -> Result<Option<(u32, u64)>> {
        let m = self.inner().meta()?;
        Ok(m.origin_ref(self.origin)?
            .rec
            .rollback
            .as_ref()
            .map(|r| (r.source, r.cursor)))
    }

    fn write_batch(&self, buf: &[u8], batch: &[Piece], cb: u64) -> Result<()> {
        let inner = self.inner();
        let ctx = self.ctx()?;
        let mut full_chunks: Vec<u64> = Vec::new();
        if ctx.version == 0 {
            if let Some((_, cursor)) = self.rollback_source()? {
                // A write to a chunk a rollback has not merged yet merges it
                // first; one that covers the whole chunk only marks it merged
                // (the data would be overwritten anyway).
                let (full, partial): (Vec<&Piece>, Vec<&Piece>) = batch
                    .iter()
                    .filter(|p| p.chunk >= cursor)
                    .partition(|p| p.len as u64 == cb);
                if !partial.is_empty() {
                    let chunks: Vec<u64> = partial.iter().map(|p| p.chunk).collect();
                    inner.merge_for_rollback(self.origin, &chunks, true, false)?;
                }
                // Whole chunks are marked after the write below has reached
                // the origin: a marker is only made durable together with
                // the origin's data.
                full_chunks = full.iter().map(|p| p.chunk).collect();
            }
        }
        let plans = {
            let mut m = inner.meta()?;
            let durable = inner.durable();
            let mut plans = Vec::with_capacity(batch.len());
            for p in batch {
                match plan_write(&mut m, self.origin, ctx.version, p.chunk, durable) {
                    Ok(plan) => plans.push(plan),
                    Err(e) => {
                        release(&mut m, &plans);
                        return Err(e);
                    }
                }
            }
            plans
        };
        if let Err(e) = self.copy_data(buf, batch, &plans, &ctx, cb) {
            release(&mut *inner.meta()?, &plans);
            return Err(e);
        }
        // Record the new exceptions.
        let need = {
            let mut m = inner.meta()?;
            let res = (|| -> Result<Option<u64>> {
                let mut need: Option<u64> = None;
                for (p, plan) in batch.iter().zip(&plans) {
                    match *plan {
                        Plan::CopyOut { heir, n } => {
                            m.add_new_exception(self.origin, p.chunk, heir, n)?;
                            need = Some(m.txn);
                        }
                        Plan::Move { heir, n, .. } => {
                            m.relabel(self.origin, p.chunk, ctx.version, heir)?;
                            m.add_new_exception(self.origin, p.chunk, ctx.version, n)?;
                        }
                        Plan::Fresh { n, heir, .. } => {
                            if let Some((h, hc)) = heir {
                                m.add_new_exception(self.origin, p.chunk, h, hc)?;
                            }
                            m.add_new_exception(self.origin, p.chunk, ctx.version, n)?;
                        }
                        Plan::Direct { wait } => need = need.max(wait),
                        Plan::InPlace { .. } => {}
                    }
                }
                Ok(need)
            })();
            match res {
                Ok(need) => need,
                Err(e) => {
                    drop(m);
                    inner.fail(&e);
                    return Err(e);
                }
            }
        };
        if ctx.version != 0 {
            return Ok(());
        }
        // Copy-outs and the metadata naming them are durable before the
        // origin is overwritten.
        if let Some(txn) = need {
            inner.commit_until(txn, false)?;
        }
        let first = batch[0];
        let last = batch[batch.len() - 1];
        let len = last.at + last.len - first.at;
        ctx.dev.write_at(
            &buf[first.at..first.at + len],
            first.chunk * cb + first.off as u64,
        )?;
        inner.mark_origin_dirty(self.origin, &ctx.dirty);
        if !full_chunks.is_empty() {
            inner.mark_merged(self.origin, &full_chunks)?;
        }
        Ok(())
    }

    /// Move data for every plan except the origin overwrite itself.
    fn copy_data(
        &self,
        buf: &[u8],
        batch: &[Piece],
        plans: &[Plan],
        ctx: &Ctx,
        cb: u64,
    ) -> Result<()> {
        let cow = &self.inner().cow;
        let wait = plans
            .iter()
            .filter_map(|p| match p {
                Plan::InPlace { wait, .. } => *wait,
                _ => None,
            })
            .max();
        if let Some(txn) = wait {
            self.inner().commit_until(txn, false)?;
        }
        let mut scratch = vec![0u8; cb as usize];
        for (p, plan) in batch.iter().zip(plans) {
            let data = &buf[p.at..p.at + p.len];
            let full = p.len as u64 == cb;
            match *plan {
                Plan::Direct { .. } => {}
                Plan::CopyOut { n, .. } => {
                    read_origin_chunk(&ctx.dev, ctx.size, p.chunk, cb, &mut scratch)?;
                    cow.write_at(&scratch, n * cb)?;
                }
                Plan::InPlace { e, .. } => cow.write_at(data, e * cb + p.off as u64)?,
                Plan::Move { e, n, .. } => {
                    if full {
                        cow.write_at(data, n * cb)?;
                    } else {
                        cow.read_at(&mut scratch, e * cb)?;
                        scratch[p.off..p.off + p.len].copy_from_slice(data);
                        cow.write_at(&scratch, n * cb)?;
                    }
                }
                Plan::Fresh { src, n, heir } => {
                    if full && heir.is_none() {
                        cow.write_at(data, n * cb)?;
                        continue;
                    }
                    match src {
                        Src::Origin => {
                            read_origin_chunk(&ctx.dev, ctx.size, p.chunk, cb, &mut scratch)?
                        }
                        Src::Cow(e) => cow.read_at(&mut scratch, e * cb)?,
                    }
                    if let Some((_, hc)) = heir {
                        cow.write_at(&scratch, hc * cb)?;
                    }
                    scratch[p.off..p.off + p.len].copy_from_slice(data);
                    cow.write_at(&scratch, n * cb)?;
                }
            }
        }
        Ok(())
    }

    /// Make every completed write durable.
    pub fn flush(&self) -> Result<()> {
        self.store.flush()
    }

    /// Zero a range. The space stays allocated; reads return zeros.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        let len_usize = usize::try_from(len).map_err(|_| Error::OutOfRange {
            offset,
            len,
            size: self.size,
        })?;
        self.check_range(offset, len_usize)?;
        let zeros = vec![0u8; (1 << 20).min(len_usize)];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.write_at(&zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    /// Discard a range: it reads as zeros afterwards.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len)
    }
}

fn contiguous(a: &Src, b: &Src) -> bool {
    match (a, b) {
        (Src::Origin, Src::Origin) => true,
        (Src::Cow(x), Src::Cow(y)) => *y == x + 1,
        _ => false,
    }
}

fn release(m: &mut crate::store::Meta, plans: &[Plan]) {
    for plan in plans {
        for c in plan.allocated() {
            m.space.alloc.free_data(c);
        }
    }
}

/// Read one origin chunk; bytes past the origin's end read as zeros.
pub(crate) fn read_origin_chunk(
    dev: &Dev,
    size: u64,
    chunk: u64,
    cb: u64,
    buf: &mut [u8],
) -> Result<()> {
    let start = chunk * cb;
    let n = size.saturating_sub(start).min(cb) as usize;
    dev.read_at(&mut buf[..n], start)?;
    buf[n..].fill(0);
    Ok(())
}
