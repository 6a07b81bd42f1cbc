//! Reads: resolve each chunk to the origin or a COW chunk, read neighbouring
//! pieces that resolve to one contiguous range at once, and copy the held
//! bytes of held locations over what their devices have.

use super::{contiguous, pieces, Ctx, Piece, Volume, BATCH_CHUNKS};
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
            let srcs = self.sources(&ctx, batch)?;
            for r in runs(batch, &srcs, cb) {
                let dst = &mut buf[r.at..r.at + r.len];
                match r.src {
                    Src::Origin => ctx.dev.read_at(dst, r.dev_off)?,
                    Src::Cow(_) => inner.cow.read_at(dst, r.dev_off)?,
                }
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

    /// Where each piece of `batch` reads from: the origin device or a COW
    /// chunk, as the version's exceptions (or a running rollback) say.
    fn sources(&self, ctx: &Ctx, batch: &[Piece]) -> Result<Vec<Src>> {
        let inner = self.inner();
        let rolling = if ctx.version == 0 {
            self.rollback_source()?
        } else {
            None
        };
        if let Some((source, cursor)) = rolling {
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
            Ok(out)
        } else if ctx.version == 0 {
            Ok(vec![Src::Origin; batch.len()])
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
            Ok(out)
        }
    }

    /// A hint that `len` bytes at `offset` are about to be read: the
    /// devices holding them (the origin, COW chunks) may begin reading
    /// now. Nothing changes but timing; a range outside the volume or an
    /// error resolving it only means no hint.
    pub(crate) fn will_read(&self, offset: u64, len: u64) {
        let _ = self.try_will_read(offset, len);
    }

    fn try_will_read(&self, offset: u64, len: u64) -> Result<()> {
        let ctx = self.ctx()?;
        if offset >= ctx.size {
            return Ok(());
        }
        let len = len.min(ctx.size - offset);
        let inner = self.inner();
        let cb = inner.chunk_bytes;
        let all = pieces(offset, len as usize, cb);
        for batch in all.chunks(BATCH_CHUNKS as usize) {
            let srcs = self.sources(&ctx, batch)?;
            for r in runs(batch, &srcs, cb) {
                match r.src {
                    Src::Origin => ctx.dev.will_need(r.dev_off, r.len as u64),
                    Src::Cow(_) => inner.cow.will_need(r.dev_off, r.len as u64),
                }
            }
        }
        Ok(())
    }
}

/// Neighbouring pieces that read one contiguous range of one device.
struct Run {
    src: Src,
    /// Where the range starts on its device.
    dev_off: u64,
    /// Where it goes in the caller's buffer.
    at: usize,
    len: usize,
}

/// Coalesce `batch`, whose pieces resolve to `srcs`, into runs (no
/// allocation: this is on every read).
fn runs<'a>(batch: &'a [Piece], srcs: &'a [Src], cb: u64) -> impl Iterator<Item = Run> + 'a {
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= batch.len() {
            return None;
        }
        let mut j = i + 1;
        while j < batch.len() && contiguous(&srcs[j - 1], &srcs[j]) {
            j += 1;
        }
        let first = batch[i];
        let last = batch[j - 1];
        let base = match srcs[i] {
            Src::Origin => first.chunk,
            Src::Cow(e) => e,
        };
        let run = Run {
            src: srcs[i],
            dev_off: base * cb + first.off as u64,
            at: first.at,
            len: last.at + last.len - first.at,
        };
        i = j;
        Some(run)
    })
}

#[cfg(test)]
mod tests {
    use crate::io::{BlockDev, Dev, MemDev};
    use crate::{FormatOptions, Result, Store};
    use std::sync::{Arc, Mutex};

    /// A memory device that records the read-ahead hints it is given.
    struct Hinted {
        dev: MemDev,
        hints: Mutex<Vec<(u64, u64)>>,
    }

    impl BlockDev for Hinted {
        fn name(&self) -> &str {
            self.dev.name()
        }
        fn size(&self) -> u64 {
            self.dev.size()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            self.dev.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
            self.dev.write_at(buf, offset)
        }
        fn sync(&self) -> Result<()> {
            self.dev.sync()
        }
        fn will_need(&self, offset: u64, len: u64) {
            self.hints.lock().unwrap().push((offset, len));
        }
    }

    fn hinted(name: &str, bytes: &[u8]) -> Arc<Hinted> {
        Arc::new(Hinted {
            dev: MemDev::from_bytes(name, bytes),
            hints: Mutex::new(Vec::new()),
        })
    }

    fn take(d: &Hinted) -> Vec<(u64, u64)> {
        std::mem::take(&mut *d.hints.lock().unwrap())
    }

    /// A read-ahead hint for a version goes to where its chunks are: the
    /// origin for what it shares with the origin, the COW chunk of its own
    /// copy; clipped to the volume's end.
    #[test]
    fn will_read_hints_the_devices_the_version_reads_from() {
        const CB: u64 = 4096;
        let origin = hinted("origin", &vec![7u8; 16 * CB as usize]);
        let cow = hinted("cow", &vec![0u8; 4 << 20]);
        let store = Store::format(
            cow.clone() as Dev,
            &FormatOptions {
                chunk_pages: 1,
                force: false,
            },
        )
        .unwrap();
        store.bind("o", origin.clone() as Dev).unwrap();
        let tag = store.snapshot_origin("o", "").unwrap();
        let o = store.volume("o", 0).unwrap();
        o.write_at(&[1; 100], 3 * CB + 10).unwrap();
        store.flush().unwrap();
        let s = store.volume("o", tag).unwrap();
        take(&origin);
        take(&cow);
        s.will_read(0, 20 * CB);
        assert_eq!(take(&origin), vec![(0, 3 * CB), (4 * CB, 12 * CB)]);
        let c = take(&cow);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].0 % CB, 0);
        assert_eq!(c[0].1, CB);
        let mut old = vec![0u8; CB as usize];
        cow.dev.read_at(&mut old, c[0].0).unwrap();
        assert!(old.iter().all(|&b| b == 7), "the hint names the copy-out");
        // The origin reads only itself; past the end nothing is hinted.
        o.will_read(CB + 1, 2 * CB);
        assert_eq!(take(&origin), vec![(CB + 1, 2 * CB)]);
        assert!(take(&cow).is_empty());
        o.will_read(16 * CB, CB);
        assert!(take(&origin).is_empty());
    }
}
