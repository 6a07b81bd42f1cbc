//! Reads: resolve each chunk to the origin or a COW chunk, read neighbouring
//! pieces that resolve to one contiguous range at once, and copy the held
//! bytes of held locations over what their devices have.

use super::{contiguous, pieces, Volume, BATCH_CHUNKS};
use crate::error::Result;
use crate::exceptions::{resolve, Src};
use crate::io::BlockDev;
use crate::store::{Inner, Loc};
use std::sync::PoisonError;

impl Volume {
    /// Read `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len())?;
        let inner = self.inner();
        inner.note_foreground();
        let cb = inner.chunk_bytes;
        let shape = inner.shape(self.origin);
        let _shape = shape.read().unwrap_or_else(PoisonError::into_inner);
        let all = pieces(offset, buf.len(), cb);
        for batch in all.chunks(BATCH_CHUNKS as usize) {
            let locked = inner.lock_read(self.origin, batch.iter().map(|p| p.chunk))?;
            let ctx = self.ctx()?;
            let rolling = if ctx.version == 0 {
                self.rollback_source()?
            } else {
                None
            };
            let srcs: Vec<Src> = if let Some((source, cursor)) = rolling {
                // During a rollback the origin reads as the frozen source
                // wherever that chunk is not merged yet.
                let mut m = inner.meta()?;
                let mut out = Vec::with_capacity(batch.len());
                for p in batch {
                    if p.chunk < cursor {
                        out.push(Src::Origin);
                        continue;
                    }
                    let excs = m.exceptions(self.origin, p.chunk)?;
                    out.push(resolve(m.origin_ref(self.origin)?.tree(), source, &excs));
                }
                out
            } else if ctx.version == 0 {
                vec![Src::Origin; batch.len()]
            } else {
                let mut m = inner.meta()?;
                let mut out = Vec::with_capacity(batch.len());
                for p in batch {
                    let excs = m.exceptions(self.origin, p.chunk)?;
                    out.push(resolve(
                        m.origin_ref(self.origin)?.tree(),
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
                    Src::Cow(e) => inner.cow.read_at(dst, e * cb + first.off as u64)?,
                }
                i = j;
            }
            // Held locations are newer than their devices. The stripe locks,
            // held throughout, keep the committer from writing them out
            // between the device read and this.
            if inner.holds_any() {
                for (p, src) in batch.iter().zip(&srcs) {
                    let loc = match *src {
                        Src::Origin => Loc::Origin {
                            origin: self.origin,
                            chunk: p.chunk,
                        },
                        Src::Cow(e) => Loc::Cow { chunk: e },
                    };
                    let stripe = locked.stripe(Inner::stripe_index(self.origin, p.chunk));
                    if let Some((lo, d)) = stripe.data(&loc) {
                        let a = p.off.max(lo);
                        let b = (p.off + p.len).min(lo + d.len());
                        if a < b {
                            buf[p.at + a - p.off..p.at + b - p.off]
                                .copy_from_slice(&d[a - lo..b - lo]);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
