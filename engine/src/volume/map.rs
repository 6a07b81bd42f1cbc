//! Where each part of a version reads from: the map that NBD block status
//! (`base:allocation`, `qemu:allocation-depth`) and `qemu-img map` show.

use super::Volume;
use crate::error::Result;
use crate::exceptions::MERGED;
use crate::io::BlockDev;
use crate::store::{Inner, Loc};
use std::sync::PoisonError;

/// Chunks looked up under one set of stripe locks.
const MAP_BATCH: u64 = 4096;

/// A run of chunks of a version that read from one kind of place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    /// 0: the origin device; 1: a copy of this version's own; k: a copy
    /// held by the version k − 1 steps above it in the version tree.
    pub depth: u32,
    /// Reads as zeros that were never stored: a hole of a sparse origin
    /// device, or a run of its zero map (and not a write held in memory).
    pub hole: bool,
}

impl Volume {
    /// The extents covering `[offset, offset + len)`, chunk-aligned (the
    /// first starts at the chunk holding `offset`, the last ends at the end
    /// of the chunk holding the last byte, or at the device's end), merged
    /// where neighbours read alike. Empty for an empty range.
    pub fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let end = self.range_end(offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let inner = self.inner();
        let cb = inner.chunk_bytes;
        let shape = inner.shape(self.origin);
        let _shape = shape.read().unwrap_or_else(PoisonError::into_inner);
        let (first, last) = (offset / cb, (end - 1) / cb);
        let mut out: Vec<Extent> = Vec::new();
        let mut c = first;
        while c <= last {
            let n = MAP_BATCH.min(last + 1 - c);
            self.map_batch(inner, c, n, &mut out)?;
            c += n;
        }
        if let Some(e) = out.last_mut() {
            e.len = e.len.min(self.size() - e.offset);
        }
        Ok(out)
    }

    fn map_batch(&self, inner: &Inner, from: u64, n: u64, out: &mut Vec<Extent>) -> Result<()> {
        let cb = inner.chunk_bytes;
        let locked = inner.lock_read(self.origin, from..from + n)?;
        let ctx = self.ctx()?;
        let rolling = if ctx.version == 0 {
            self.rollback_source()?
        } else {
            None
        };
        // Depth of each chunk (0: the origin device).
        let mut depth = vec![0u32; n as usize];
        if ctx.version != 0 || rolling.is_some() {
            let mut m = inner.meta()?;
            let mut at = from;
            let mut limit = 4096;
            let mut excs: Vec<(u64, u32, u64)> = Vec::new();
            loop {
                let batch = m.exception_range(self.origin, at, limit)?;
                let full = batch.len() == limit;
                // A batch that ends inside a chunk is read again from that
                // chunk (a longer one if it is all one chunk's).
                let last = batch.last().map(|(k, _)| k.chunk);
                if full && batch.first().map(|(k, _)| k.chunk) == last {
                    limit *= 2;
                    continue;
                }
                let mut past = false;
                for (k, v) in &batch {
                    if k.chunk >= from + n {
                        past = true;
                        break;
                    }
                    if full && Some(k.chunk) == last {
                        break;
                    }
                    excs.push((k.chunk, k.version, *v));
                }
                match last {
                    Some(c) if full && !past => at = c,
                    _ => break,
                }
            }
            let tree = m.origin_ref(self.origin)?.tree();
            let mut i = 0;
            while i < excs.len() {
                let chunk = excs[i].0;
                let mut j = i;
                while j < excs.len() && excs[j].0 == chunk {
                    j += 1;
                }
                let reader = match rolling {
                    // The origin reads the rollback's source where the
                    // merge has not been yet.
                    Some((source, cursor)) if chunk >= cursor => source,
                    Some(_) => 0,
                    None => ctx.version,
                };
                if reader != 0 {
                    let here = &excs[i..j];
                    if let Some(owner) = tree.nearest(reader, here.iter().map(|e| e.1)) {
                        if here.iter().any(|e| e.1 == owner && e.2 != MERGED) {
                            let mut d = 1u32;
                            let mut v = reader;
                            while v != owner {
                                match tree.get(v) {
                                    Some(x) if v != 0 => v = x.parent,
                                    _ => break,
                                }
                                d += 1;
                            }
                            depth[(chunk - from) as usize] = d;
                        }
                    }
                }
                i = j;
            }
        }
        // Holes of the origin device in this batch's bytes, and the runs of
        // its zero map.
        let (lo, hi) = (from * cb, ((from + n) * cb).min(ctx.size));
        let mut holes = holes(&*ctx.dev, lo, hi);
        let zeros = inner
            .meta()?
            .origin_ref(self.origin)?
            .zeros()
            .within(from, from + n);
        if !zeros.is_empty() {
            holes.extend(zeros.iter().map(|&(s, e)| (s * cb, e * cb)));
            holes.sort_unstable();
            let mut merged: Vec<(u64, u64)> = Vec::with_capacity(holes.len());
            for (s, e) in holes {
                match merged.last_mut() {
                    Some(last) if s <= last.1 => last.1 = last.1.max(e),
                    _ => merged.push((s, e)),
                }
            }
            holes = merged;
        }
        let mut h = 0;
        for k in 0..n {
            let chunk = from + k;
            let d = depth[k as usize];
            let (s, e) = (chunk * cb, ((chunk + 1) * cb).min(ctx.size));
            let hole = d == 0
                && {
                    while h < holes.len() && holes[h].1 <= s {
                        h += 1;
                    }
                    h < holes.len() && holes[h].0 <= s && e <= holes[h].1
                }
                && !locked
                    .stripe(Inner::stripe_index(self.origin, chunk))
                    .holds(&Loc::Origin {
                        origin: self.origin,
                        chunk,
                    });
            match out.last_mut() {
                Some(x) if x.depth == d && x.hole == hole && x.offset + x.len == s => x.len += cb,
                _ => out.push(Extent {
                    offset: s,
                    len: cb,
                    depth: d,
                    hole,
                }),
            }
        }
        Ok(())
    }
}

/// The holes of a device between `lo` and `hi`, as (start, end) ranges;
/// none when the device cannot tell.
fn holes(dev: &dyn BlockDev, lo: u64, hi: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = lo;
    while at < hi {
        let Some(data) = dev.next_data(at) else {
            break;
        };
        if data > at {
            out.push((at, data.min(hi)));
        }
        if data >= hi {
            break;
        }
        match dev.next_hole(data) {
            Some(h) if h > data => at = h,
            _ => break,
        }
    }
    out
}

impl Volume {
    /// Discard a range: it reads as zeros afterwards. On the origin, its
    /// whole chunks become "never stored" for block status: once the zeros
    /// and the copy-outs they needed are durable, each chunk that the
    /// device still reads as zeros, with no write to it held, is punched
    /// out of a sparse origin file under its stripe lock, or, on a device
    /// without holes, recorded in the origin's zero map.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let origin = self.tag == 0 && self.version.is_none();
        let end_byte = self.range_end(offset, len)?;
        let inner = self.inner();
        let cb = inner.chunk_bytes;
        let (first, end) = (offset.div_ceil(cb), end_byte / cb);
        // Whole chunks the zero map names read as zeros already (unless a
        // rollback makes the origin read its source there): writing them
        // again would take them out of the map, and copy zeros out for the
        // snapshots that read them through the origin.
        let zeroed = if origin && first < end && self.rollback_source()?.is_none() {
            self.zeroed(first, end)?
        } else {
            Vec::new()
        };
        let mut at = offset;
        for &(s, e) in &zeroed {
            self.write_zeroes(at, s * cb - at)?;
            at = e * cb;
        }
        self.write_zeroes(at, end_byte - at)?;
        if !origin || first >= end {
            return Ok(());
        }
        let punch = self.ctx()?.dev.can_punch();
        self.flush()?;
        let shape = inner.shape(self.origin);
        let _shape = shape.read().unwrap_or_else(PoisonError::into_inner);
        let mut buf = vec![0u8; cb as usize];
        let mut c = first;
        while c < end {
            let n = 64.min(end - c);
            let locked = inner.lock_write(self.origin, c..c + n)?;
            let ctx = self.ctx()?;
            if self.rollback_source()?.is_some() {
                return Ok(());
            }
            let zeroed = self.zeroed(c, c + n)?;
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for chunk in c..c + n {
                if zeroed.iter().any(|&(s, e)| s <= chunk && chunk < e) {
                    continue;
                }
                let held = locked
                    .stripe(Inner::stripe_index(self.origin, chunk))
                    .holds(&Loc::Origin {
                        origin: self.origin,
                        chunk,
                    });
                if held || (chunk + 1) * cb > ctx.size {
                    continue;
                }
                ctx.dev.read_at(&mut buf, chunk * cb)?;
                if buf.iter().any(|&b| b != 0) {
                    continue;
                }
                match runs.last_mut() {
                    Some((s, k)) if *s + *k == chunk => *k += 1,
                    _ => runs.push((chunk, 1)),
                }
            }
            let mut unpunched = Vec::new();
            for (s, k) in runs {
                if !punch || !ctx.dev.punch_hole(s * cb, k * cb)? {
                    unpunched.push((s, k));
                }
            }
            // A device without holes (a block device) keeps the zeros, and
            // the zero map says where they are.
            if !unpunched.is_empty() {
                let mut m = inner.meta()?;
                for (s, k) in unpunched {
                    m.mark_zero(self.origin, s, k)?;
                }
            }
            drop(locked);
            c += n;
        }
        Ok(())
    }

    /// The runs of the origin's zero map within chunks `[from, to)`.
    fn zeroed(&self, from: u64, to: u64) -> Result<Vec<(u64, u64)>> {
        Ok(self
            .inner()
            .meta()?
            .origin_ref(self.origin)?
            .zeros()
            .within(from, to))
    }

    /// The chunks whose content may differ between snapshot `tag` of this
    /// version's origin and this version (`Store::delta`), ascending.
    pub fn changed_since(&self, tag: u32) -> Result<Vec<u64>> {
        self.store.delta(&self.origin_id, tag, self.tag)
    }

    /// The tags of this version's origin, ascending.
    pub fn origin_tags(&self) -> Result<Vec<u32>> {
        self.store.tags(&self.origin_id)
    }

    /// The chunk size in bytes.
    pub fn chunk_bytes(&self) -> u64 {
        self.inner().chunk_bytes
    }
}
