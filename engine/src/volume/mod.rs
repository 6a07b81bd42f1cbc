//! Byte-level access to one version of an origin: the origin itself (tag 0)
//! or a snapshot. Any offset and length; safe from many threads.

mod map;
mod read;
mod write;

pub use map::Extent;

use crate::error::{Error, Result};
use crate::exceptions::Src;
use crate::io::Dev;
use crate::store::{Inner, Store};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Chunks handled under one set of stripe locks.
const BATCH_CHUNKS: u64 = 64;

/// An open version.
pub struct Volume {
    store: Store,
    origin: u32,
    origin_id: String,
    tag: u32,
    /// A version named by id rather than by tag (a hidden frozen copy).
    version: Option<u32>,
    size: Size,
}

/// A volume's size: a snapshot's is fixed; the origin's grows with it.
enum Size {
    Fixed(u64),
    Origin(Arc<std::sync::atomic::AtomicU64>),
}

impl Size {
    fn of(o: &crate::store::MetaOrigin, version: u32) -> Size {
        if version == 0 {
            Size::Origin(o.live_size.clone())
        } else {
            Size::Fixed(o.version_size(version))
        }
    }

    fn get(&self) -> u64 {
        match self {
            Size::Fixed(s) => *s,
            Size::Origin(a) => a.load(std::sync::atomic::Ordering::Acquire),
        }
    }
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
        let version = m.version_of(index, tag)?;
        let o = m.origin_mut(index)?;
        if o.dev.is_none() {
            return Err(Error::OriginNotAttached(origin_id.to_string()));
        }
        o.open_volumes += 1;
        *o.open_tags.entry(tag).or_default() += 1;
        Ok(Volume {
            store: self.clone(),
            origin: index,
            origin_id: origin_id.to_string(),
            tag,
            version: None,
            size: Size::of(o, version),
        })
    }
}

impl Volume {
    /// A volume on version `version` of origin `index` by id: for reading
    /// a hidden frozen copy (a send's).
    pub(crate) fn open_version(store: &Store, index: u32, version: u32) -> Result<Volume> {
        let mut m = store.inner.meta()?;
        let o = m.origin_ref(index)?;
        let tag = o
            .tree()
            .get(version)
            .map(|v| v.tag)
            .ok_or_else(|| Error::UnknownOrigin(format!("#{index}/{version}")))?;
        let id = o.rec().id.clone();
        let o = m.origin_mut(index)?;
        if o.dev.is_none() {
            return Err(Error::OriginNotAttached(id));
        }
        o.open_volumes += 1;
        Ok(Volume {
            store: store.clone(),
            origin: index,
            origin_id: id,
            tag,
            version: Some(version),
            size: Size::of(o, version),
        })
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        if let Ok(mut m) = self.store.inner.meta_now() {
            if let Ok(o) = m.origin_mut(self.origin) {
                o.open_volumes = o.open_volumes.saturating_sub(1);
                if self.version.is_none() {
                    if let Some(n) = o.open_tags.get_mut(&self.tag) {
                        *n -= 1;
                        if *n == 0 {
                            o.open_tags.remove(&self.tag);
                        }
                    }
                }
            }
        }
    }
}

impl Volume {
    /// Size in bytes: a snapshot's is what the origin had when it was
    /// taken; the origin's follows [`Store::grow`](crate::Store::grow).
    pub fn size(&self) -> u64 {
        self.size.get()
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
        self.range_end(offset, len as u64).map(|_| ())
    }

    /// The end of `[offset, offset + len)`, which must lie within the
    /// volume.
    fn range_end(&self, offset: u64, len: u64) -> Result<u64> {
        offset
            .checked_add(len)
            .filter(|&e| e <= self.size())
            .ok_or(Error::OutOfRange {
                offset,
                len,
                size: self.size(),
            })
    }

    fn ctx(&self) -> Result<Ctx> {
        let m = self.inner().meta()?;
        let version = match self.version {
            Some(v) => v,
            None => m.version_of(self.origin, self.tag)?,
        };
        let o = m.origin_ref(self.origin)?;
        let dev = o
            .dev
            .clone()
            .ok_or_else(|| Error::OriginNotAttached(self.origin_id.clone()))?;
        Ok(Ctx {
            version,
            dev,
            dirty: o.dirty.clone(),
            size: o.rec().size,
        })
    }

    /// (source version, cursor) of a rollback into this origin, if one runs.
    fn rollback_source(&self) -> Result<Option<(u32, u64)>> {
        let m = self.inner().meta()?;
        Ok(m.origin_ref(self.origin)?
            .rec()
            .rollback
            .as_ref()
            .map(|r| (r.source, r.cursor)))
    }

    /// The origin's index in the store.
    pub(crate) fn origin_index(&self) -> u32 {
        self.origin
    }

    /// A hint that `len` bytes at `offset` of the origin are about to be
    /// written: their old content is read for copy-outs, so the device may
    /// begin reading it now. Nothing changes but timing.
    pub(crate) fn will_write(&self, offset: u64, len: u64) {
        if let Ok(ctx) = self.ctx() {
            if ctx.version == 0 && offset < ctx.size {
                ctx.dev.will_need(offset, len.min(ctx.size - offset));
            }
        }
    }

    /// Make every completed write durable: on its device (held data is
    /// written out first) and synced.
    pub fn flush(&self) -> Result<()> {
        self.store.flush()
    }

    /// Zero a range. The space stays allocated; reads return zeros.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        let len_usize = usize::try_from(len).map_err(|_| Error::OutOfRange {
            offset,
            len,
            size: self.size(),
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
}

fn contiguous(a: &Src, b: &Src) -> bool {
    match (a, b) {
        (Src::Origin, Src::Origin) => true,
        (Src::Cow(x), Src::Cow(y)) => *y == x + 1,
        _ => false,
    }
}
