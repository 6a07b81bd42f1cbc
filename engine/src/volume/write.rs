//! Writes. Under the stripe locks of a batch of chunks: plan each chunk
//! under the metadata lock, move the data that keeps every other version's
//! view (copy-outs, copies for an heir), record the exceptions, then put the
//! new data in place: on the device when nothing needs to be durable first,
//! else held in memory until the committer has made that durable.

use super::{pieces, Ctx, Piece, Volume, BATCH_CHUNKS};
use crate::error::{Error, Result};
use crate::exceptions::Src;
use crate::io::read_chunk;
use crate::io::BlockDev;
use crate::store::{plan_ahead, plan_write, release, Inner, Loc, Plan, WriteLocked, STRIPE_GROUP};
use std::sync::PoisonError;

/// One batch of a write: the request's data, the batch's pieces and their
/// plans, and the version's context.
struct Job<'a> {
    buf: &'a [u8],
    batch: &'a [Piece],
    plans: &'a [Plan],
    ctx: &'a Ctx,
    cb: u64,
}

impl Job<'_> {
    fn data(&self, p: &Piece) -> &[u8] {
        &self.buf[p.at..p.at + p.len]
    }
}

impl Volume {
    /// Write `buf` at `offset`. Every later read sees it at once; it is
    /// durable after the next flush.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len())?;
        let inner = self.inner();
        inner.note_foreground();
        // Before any lock: the committer needs stripe locks to make room.
        inner.wait_for_room()?;
        let cb = inner.chunk_bytes;
        let shape = inner.shape(self.origin);
        let mut guard = shape.read().unwrap_or_else(PoisonError::into_inner);
        let all = pieces(offset, buf.len(), cb);
        for batch in all.chunks(BATCH_CHUNKS as usize) {
            loop {
                let epoch = inner.room_epoch.load(std::sync::atomic::Ordering::Acquire);
                let mut locked = inner.lock_write(self.origin, batch.iter().map(|p| p.chunk))?;
                match self.write_batch(buf, batch, cb, offset / cb, &mut locked) {
                    // The device is full and nothing of this batch was
                    // written: under the on-full rule, let go of every
                    // lock, make room, and plan the batch again.
                    Err(Error::NoSpace) => {
                        drop(locked);
                        drop(guard);
                        if !self.store.make_room(self.origin, epoch)? {
                            return Err(Error::NoSpace);
                        }
                        guard = shape.read().unwrap_or_else(PoisonError::into_inner);
                    }
                    res => {
                        res?;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn write_batch(
        &self,
        buf: &[u8],
        batch: &[Piece],
        cb: u64,
        first: u64,
        locked: &mut WriteLocked<'_>,
    ) -> Result<()> {
        let inner = self.inner();
        let ctx = self.ctx()?;
        let mut rolling = false;
        let mut full_chunks: Vec<u64> = Vec::new();
        if ctx.version == 0 {
            if let Some((_, cursor)) = self.rollback_source()? {
                rolling = true;
                // A write to a chunk a rollback has not merged yet merges it
                // first; one that covers the whole chunk only marks it merged
                // (the data would be overwritten anyway).
                let (full, partial): (Vec<&Piece>, Vec<&Piece>) = batch
                    .iter()
                    .filter(|p| p.chunk >= cursor)
                    .partition(|p| p.len as u64 == cb);
                if !partial.is_empty() {
                    let chunks: Vec<u64> = partial.iter().map(|p| p.chunk).collect();
                    inner.merge_for_rollback(self.origin, &chunks, true, false, locked)?;
                }
                // Whole chunks are marked after the write below has reached
                // the origin: a marker is only made durable together with
                // the origin's data.
                full_chunks = full.iter().map(|p| p.chunk).collect();
            }
        }
        let mut retried = false;
        let (plans, ahead) = 'plan: loop {
            let mut m = inner.meta()?;
            m.content_changes(self.origin, ctx.version)?;
            let durable = inner.durable();
            let mut plans = Vec::with_capacity(batch.len());
            for p in batch {
                match plan_write(&mut m, self.origin, ctx.version, p.chunk, durable) {
                    Ok(plan) => plans.push(plan),
                    Err(e) => {
                        release(&mut m, &plans);
                        // Pages freed in the open transaction come back once
                        // it is durable: ENOSPC only if that is not enough.
                        if matches!(e, Error::NoSpace) && !retried && m.alloc().has_pending() {
                            retried = true;
                            let txn = m.txn();
                            drop(m);
                            inner.commit_until(txn, false)?;
                            continue 'plan;
                        }
                        return Err(e);
                    }
                }
            }
            // Copy-outs ahead of a writer going through the origin in
            // order, as it enters a stripe group (held locked): the rest of
            // that group.
            let last_copy = batch
                .iter()
                .zip(&plans)
                .rev()
                .find(|(_, plan)| matches!(plan, Plan::CopyOut { .. }))
                .map(|(p, _)| p.chunk);
            let ahead = match last_copy {
                Some(c)
                    if ctx.version == 0
                        && !rolling
                        && first >= 2
                        && (first - 1) / STRIPE_GROUP != c / STRIPE_GROUP =>
                {
                    let from = batch[batch.len() - 1].chunk + 1;
                    let to = ((c / STRIPE_GROUP + 1) * STRIPE_GROUP).min(ctx.size.div_ceil(cb));
                    if from < to {
                        match plan_ahead(&mut m, self.origin, first, from..to) {
                            Ok(a) => a,
                            Err(e) => {
                                release(&mut m, &plans);
                                return Err(e);
                            }
                        }
                    } else {
                        Vec::new()
                    }
                }
                _ => Vec::new(),
            };
            break (plans, ahead);
        };
        let job = Job {
            buf,
            batch,
            plans: &plans,
            ctx: &ctx,
            cb,
        };
        let copied = self
            .copy_data(&job, locked)
            .and_then(|()| self.copy_ahead(&ahead, &ctx, cb, locked));
        if let Err(e) = copied {
            let mut m = inner.meta()?;
            release(
                &mut m,
                plans.iter().chain(ahead.iter().map(|(_, plan)| plan)),
            );
            return Err(e);
        }
        // Record the new exceptions; `need` is the transaction of the
        // copy-outs among them.
        let need = {
            let mut m = inner.meta()?;
            let res = (|| -> Result<Option<u64>> {
                let mut need: Option<u64> = None;
                for (p, plan) in batch.iter().zip(&plans) {
                    match *plan {
                        Plan::CopyOut { heir, n } => {
                            m.add_new_exception(self.origin, p.chunk, heir, n)?;
                            need = Some(m.txn());
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
                        Plan::Direct { .. } | Plan::InPlace { .. } => {}
                    }
                }
                for (chunk, plan) in &ahead {
                    if let Plan::CopyOut { heir, n } = *plan {
                        m.add_new_exception(self.origin, *chunk, heir, n)?;
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
        if rolling {
            return self.write_origin_rolling(&job, need, &full_chunks, locked);
        }
        self.write_origin(&job, need, locked)
    }

    /// Put an origin write in place: straight to the device where nothing
    /// must become durable first, else held until the committer has made
    /// the copy-outs (or other exception changes) of those chunks durable.
    fn write_origin(
        &self,
        job: &Job<'_>,
        need: Option<u64>,
        locked: &mut WriteLocked<'_>,
    ) -> Result<()> {
        let inner = self.inner();
        let (batch, ctx, cb) = (job.batch, job.ctx, job.cb);
        // Runs of neighbouring pieces that go straight to the device.
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (i, (p, plan)) in batch.iter().zip(job.plans).enumerate() {
            let loc = Loc::Origin {
                origin: self.origin,
                chunk: p.chunk,
            };
            let s = locked.stripe_mut(Inner::stripe_index(self.origin, p.chunk));
            let wait = match *plan {
                Plan::CopyOut { .. } => need,
                Plan::Direct { wait } => wait,
                _ => None,
            };
            if wait.is_none() && !s.holds(&loc) {
                match runs.last_mut() {
                    Some(r) if r.1 + 1 == i => r.1 = i,
                    _ => runs.push((i, i)),
                }
                continue;
            }
            inner.hold_write(
                s,
                self.origin,
                loc,
                (&*ctx.dev, ctx.size),
                p.off,
                job.data(p),
                wait,
            )?;
        }
        for &(i, j) in &runs {
            let (first, last) = (batch[i], batch[j]);
            let len = last.at + last.len - first.at;
            ctx.dev.write_at(
                &job.buf[first.at..first.at + len],
                first.chunk * cb + first.off as u64,
            )?;
        }
        if !runs.is_empty() {
            inner.mark_origin_dirty(self.origin, &ctx.dirty);
        }
        Ok(())
    }

    /// An origin write while a rollback runs: merges and markers are only
    /// recorded once the origin's data is on the device, so these writes
    /// are not held; they wait for their commit.
    fn write_origin_rolling(
        &self,
        job: &Job<'_>,
        need: Option<u64>,
        full_chunks: &[u64],
        locked: &mut WriteLocked<'_>,
    ) -> Result<()> {
        let inner = self.inner();
        let (batch, ctx, cb) = (job.batch, job.ctx, job.cb);
        let wait = job
            .plans
            .iter()
            .filter_map(|p| match p {
                Plan::Direct { wait } => *wait,
                _ => None,
            })
            .max()
            .max(need);
        // Copy-outs and the metadata naming them are durable before the
        // origin is overwritten.
        if let Some(txn) = wait {
            inner.commit_until(txn, false)?;
        }
        for p in batch {
            let s = locked.stripe_mut(Inner::stripe_index(self.origin, p.chunk));
            let loc = Loc::Origin {
                origin: self.origin,
                chunk: p.chunk,
            };
            inner.settle(s, self.origin, &loc)?;
        }
        let first = batch[0];
        let last = batch[batch.len() - 1];
        let len = last.at + last.len - first.at;
        ctx.dev.write_at(
            &job.buf[first.at..first.at + len],
            first.chunk * cb + first.off as u64,
        )?;
        inner.mark_origin_dirty(self.origin, &ctx.dirty);
        if !full_chunks.is_empty() {
            inner.mark_merged(self.origin, full_chunks)?;
        }
        Ok(())
    }

    /// Move data for every plan except the origin overwrite itself; a
    /// snapshot's in-place write that must wait for a commit is held.
    fn copy_data(&self, job: &Job<'_>, locked: &mut WriteLocked<'_>) -> Result<()> {
        let inner = self.inner();
        let (batch, ctx, cb) = (job.batch, job.ctx, job.cb);
        let cow = &inner.cow;
        let o = self.origin;
        let mut scratch = vec![0u8; cb as usize];
        let mut i = 0;
        while i < batch.len() {
            if let Plan::CopyOut { n, .. } = job.plans[i] {
                // A run of copy-outs of neighbouring chunks into neighbouring
                // COW chunks: one read and one write for all of it.
                let j = copy_run_end(i, batch.len(), |k| {
                    (batch[k].chunk, copy_target(&job.plans[k]))
                });
                self.copy_out_run(&batch[i..j], n, ctx, cb, locked)?;
                i = j;
                continue;
            }
            let (p, plan) = (&batch[i], &job.plans[i]);
            i += 1;
            let data = job.data(p);
            let full = p.len as u64 == cb;
            let s = locked.stripe_mut(Inner::stripe_index(o, p.chunk));
            let at_origin = Loc::Origin {
                origin: o,
                chunk: p.chunk,
            };
            match *plan {
                Plan::Direct { .. } | Plan::CopyOut { .. } => {}
                Plan::InPlace { e, wait } => {
                    let loc = Loc::Cow { chunk: e };
                    if wait.is_none() && !s.holds(&loc) {
                        cow.write_at(data, e * cb + p.off as u64)?;
                    } else {
                        let size = (e + 1) * cb;
                        inner.hold_write(s, o, loc, (&**cow, size), p.off, data, wait)?;
                    }
                }
                Plan::Move { e, n, .. } => {
                    // `e` passes to the heir: it must hold its current data.
                    inner.settle(s, o, &Loc::Cow { chunk: e })?;
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
                    } else {
                        match src {
                            Src::Origin => {
                                inner.settle(s, o, &at_origin)?;
                                read_chunk(&*ctx.dev, ctx.size, p.chunk, cb, &mut scratch)?
                            }
                            Src::Cow(e) => {
                                inner.settle(s, o, &Loc::Cow { chunk: e })?;
                                cow.read_at(&mut scratch, e * cb)?
                            }
                        }
                        if let Some((_, hc)) = heir {
                            cow.write_at(&scratch, hc * cb)?;
                        }
                        scratch[p.off..p.off + p.len].copy_from_slice(data);
                        cow.write_at(&scratch, n * cb)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Make the copy-outs planned ahead of the write (see
    /// [`crate::store::plan_ahead`]): runs of neighbouring chunks going to
    /// neighbouring COW chunks are copied with one read and one write.
    fn copy_ahead(
        &self,
        ahead: &[(u64, Plan)],
        ctx: &super::Ctx,
        cb: u64,
        locked: &mut WriteLocked<'_>,
    ) -> Result<()> {
        let piece = |chunk: u64| Piece {
            chunk,
            off: 0,
            len: cb as usize,
            at: 0,
        };
        let mut i = 0;
        while i < ahead.len() {
            let Plan::CopyOut { n, .. } = ahead[i].1 else {
                i += 1;
                continue;
            };
            let j = copy_run_end(i, ahead.len(), |k| (ahead[k].0, copy_target(&ahead[k].1)));
            let run: Vec<Piece> = ahead[i..j].iter().map(|&(c, _)| piece(c)).collect();
            self.copy_out_run(&run, n, ctx, cb, locked)?;
            i = j;
        }
        Ok(())
    }

    /// Copy origin chunks `run` (neighbours) out to COW chunks `n..`: the
    /// copy is of what the device holds, so anything held for them is
    /// written to it first; the device keeps that old content until the
    /// held write on top of it is settled.
    fn copy_out_run(
        &self,
        run: &[Piece],
        n: u64,
        ctx: &super::Ctx,
        cb: u64,
        locked: &mut WriteLocked<'_>,
    ) -> Result<()> {
        let inner = self.inner();
        let o = self.origin;
        for p in run {
            let s = locked.stripe_mut(Inner::stripe_index(o, p.chunk));
            inner.settle(
                s,
                o,
                &Loc::Origin {
                    origin: o,
                    chunk: p.chunk,
                },
            )?;
        }
        let start = run[0].chunk * cb;
        let len = run.len() as u64 * cb;
        let have = ctx.size.saturating_sub(start).min(len);
        let mut buf = vec![0u8; len as usize];
        ctx.dev.read_at(&mut buf[..have as usize], start)?;
        inner.cow.write_at(&buf, n * cb)?;
        Ok(())
    }
}

/// The COW chunk a copy-out plan copies to.
fn copy_target(plan: &Plan) -> Option<u64> {
    match *plan {
        Plan::CopyOut { n, .. } => Some(n),
        _ => None,
    }
}

/// Where the run of copy-outs that starts at `i` ends: the following
/// entries (chunk and copy-out target, by `at`) that copy the next chunk
/// to the next COW chunk, so one read and one write move them all.
fn copy_run_end(i: usize, len: usize, at: impl Fn(usize) -> (u64, Option<u64>)) -> usize {
    let (chunk, n) = at(i);
    let mut j = i + 1;
    while j < len {
        let step = (j - i) as u64;
        let (c, m) = at(j);
        if c != chunk + step || m.is_none() || m != n.map(|n| n + step) {
            break;
        }
        j += 1;
    }
    j
}
