//! Held overwrites: a write that may only reach its device once a commit is
//! durable is acknowledged at once and its data is *held* in memory.
//!
//! The case that matters is the first origin write to a chunk after a
//! snapshot: its copy-out goes to the COW device and its exception is
//! recorded in memory; the new data waits here until the commit that makes
//! the copy-out durable, and the committer then writes it to the origin. The
//! same holds for any in-place overwrite that must wait for a commit (an
//! origin chunk, or a snapshot's own COW chunk, whose exceptions changed in a
//! transaction not yet durable).
//!
//! Invariants:
//! - A held entry is the current content of bytes `lo..hi` of its location
//!   (an origin chunk, or a COW chunk that one writable version alone reads):
//!   what was written there since it began to be held. The device still has
//!   older bytes there, and has the current bytes everywhere else (nothing
//!   writes a held location's device but the entry's own settling). So the
//!   old content is never read into memory to begin holding: a read of the
//!   location reads the device, then copies the entry's bytes over it; a
//!   write beyond `lo..hi` fills the gap between them from the device.
//! - An entry reaches its device only once transaction `after` is durable:
//!   the copy-outs and exception changes that protect every other version's
//!   view of the old bytes. So the promise of the design is unchanged: a
//!   copy-out and the metadata naming it are durable before the origin is
//!   overwritten.
//! - An entry lives in the stripe of its logical chunk and changes only under
//!   that stripe's write lock. There is no other index: a drain visits the
//!   stripes, so an entry that exists when a drain starts is on its device
//!   when the drain ends (written by that drain or by another under the same
//!   lock).
//! - Whatever reads a location's device bytes directly, or hands the location
//!   to another version, *settles* its entry first (writes it out, waiting
//!   for its commit); a location freed while held drops its entry. Structural
//!   commands (snapshot, delete, rollback start, unbind) drain the origin's
//!   entries before they change the version tree, and a flush drains all.
//! - Held bytes are bounded: at the limit a writer waits (or, without a
//!   committer thread, drains) before it takes any lock.

mod committer;
mod table;

pub(crate) use committer::spawn_committer;
pub use table::HeldStats;
pub(crate) use table::HeldTable;

use super::{lock, Inner, STRIPES};
use crate::error::{Error, Result};
use crate::io::{BlockDev, Dev};
use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

/// Default bound on held data, bytes (see [`crate::Store::set_held_limit`]).
pub const DEFAULT_HELD_LIMIT: u64 = 64 << 20;

/// Bookkeeping per held chunk beyond its data, counted against the limit:
/// its entry in the stripe's map and the allocation's own header (the
/// engine benchmark measures the real figure).
pub const HELD_OVERHEAD: u64 = 96;

/// How long a waiting writer or a failing committer sleeps between looks.
const RETRY: Duration = Duration::from_millis(20);

/// Where held data goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Loc {
    /// Chunk `chunk` of origin `origin`'s device.
    Origin { origin: u32, chunk: u64 },
    /// COW chunk `chunk`.
    Cow { chunk: u64 },
}

impl Loc {
    /// The chunk's number on its device.
    fn chunk(&self) -> u64 {
        match *self {
            Loc::Origin { chunk, .. } | Loc::Cow { chunk } => chunk,
        }
    }
}

/// The data of one held location.
pub(crate) struct Held {
    /// Bytes `base..base + data.len()` of the location: the first write's
    /// own range, and the whole chunk once a later write goes beyond it.
    data: Box<[u8]>,
    base: usize,
    /// Bytes `lo..hi` (within the window) are current; the device has the
    /// current content of the rest of the location.
    lo: usize,
    hi: usize,
    /// Transaction that must be durable before the data goes to the device.
    after: u64,
    /// The origin whose chunk (or whose version's COW chunk) this is.
    origin: u32,
}

/// What one stripe lock guards: the held entries of its chunks.
#[derive(Default)]
pub(crate) struct Stripe {
    held: HashMap<Loc, Held>,
}

impl Stripe {
    pub(crate) fn holds(&self, loc: &Loc) -> bool {
        !self.held.is_empty() && self.held.contains_key(loc)
    }

    /// The held bytes of `loc`, if any: where they start in the location,
    /// and the bytes (the device has the current content of the rest).
    pub(crate) fn data(&self, loc: &Loc) -> Option<(usize, &[u8])> {
        if self.held.is_empty() {
            return None;
        }
        self.held
            .get(loc)
            .map(|h| (h.lo, &h.data[h.lo - h.base..h.hi - h.base]))
    }
}

fn entry_size(h: &Held) -> u64 {
    h.data.len() as u64 + HELD_OVERHEAD
}

/// The stripe locks of one request, in ascending order, found by stripe index.
pub(crate) struct Locked<G> {
    idx: Vec<usize>,
    guards: Vec<G>,
}

pub(crate) type ReadLocked<'a> = Locked<RwLockReadGuard<'a, Stripe>>;
pub(crate) type WriteLocked<'a> = Locked<RwLockWriteGuard<'a, Stripe>>;

impl<G: Deref<Target = Stripe>> Locked<G> {
    fn pos(&self, stripe: usize) -> usize {
        // Callers only ask for stripes of chunks they locked.
        self.idx.binary_search(&stripe).unwrap_or(0)
    }

    pub(crate) fn stripe(&self, stripe: usize) -> &Stripe {
        &self.guards[self.pos(stripe)]
    }
}

impl<G: DerefMut<Target = Stripe>> Locked<G> {
    pub(crate) fn stripe_mut(&mut self, stripe: usize) -> &mut Stripe {
        let i = self.pos(stripe);
        &mut self.guards[i]
    }
}

/// An origin device, its dirty flag and its size, looked up once per drain.
type Target = (Dev, Arc<AtomicBool>, u64);

impl Inner {
    /// Let the committer thread drain held data as it comes (the default),
    /// or not: then only flushes, structural commands and the limit do.
    #[cfg(feature = "testing")]
    pub(crate) fn set_background_committer(&self, on: bool) {
        self.held.set_background(on);
    }

    /// Whether anything is held at all (the read path's fast check).
    pub(crate) fn holds_any(&self) -> bool {
        self.held.any()
    }

    /// Lock the stripes of `chunks` of origin `origin` for reading.
    pub(crate) fn lock_read(
        &self,
        origin: u32,
        chunks: impl Iterator<Item = u64>,
    ) -> Result<ReadLocked<'_>> {
        let idx = self.stripe_set(origin, chunks);
        let guards = idx
            .iter()
            .map(|&i| self.stripe_read(i))
            .collect::<Result<_>>()?;
        Ok(Locked { idx, guards })
    }

    /// Lock the stripes of `chunks` of origin `origin` for writing.
    pub(crate) fn lock_write(
        &self,
        origin: u32,
        chunks: impl Iterator<Item = u64>,
    ) -> Result<WriteLocked<'_>> {
        let idx = self.stripe_set(origin, chunks);
        let guards = idx
            .iter()
            .map(|&i| self.stripe_write(i))
            .collect::<Result<_>>()?;
        Ok(Locked { idx, guards })
    }

    /// Write `data` at byte `off` of `loc` into its held entry, which is
    /// made if there is none, noting a commit it must wait for. `dev` is
    /// the location's device and `size` where that device's data ends
    /// (bytes past it read as zeros): bytes between what is held and the
    /// new range are read from it, as it still has their current content.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn hold_write(
        &self,
        stripe: &mut Stripe,
        origin: u32,
        loc: Loc,
        (dev, size): (&dyn BlockDev, u64),
        off: usize,
        data: &[u8],
        after: Option<u64>,
    ) -> Result<()> {
        let cb = self.chunk_bytes as usize;
        let (a, b) = (off, off + data.len());
        let Some(h) = stripe.held.get_mut(&loc) else {
            let after = after.unwrap_or(0);
            let h = Held {
                data: data.into(),
                base: a,
                lo: a,
                hi: b,
                after,
                origin,
            };
            let size = entry_size(&h);
            stripe.held.insert(loc, h);
            self.held.added(size, after);
            return Ok(());
        };
        let (lo, hi) = (h.lo.min(a), h.hi.max(b));
        if lo < h.base || hi > h.base + h.data.len() {
            // Beyond the window: the window becomes the whole chunk.
            let mut w = vec![0u8; cb].into_boxed_slice();
            w[h.lo..h.hi].copy_from_slice(&h.data[h.lo - h.base..h.hi - h.base]);
            let grown = (cb - h.data.len()) as u64;
            h.data = w;
            h.base = 0;
            self.held.grew(grown);
        }
        // The gap between the held bytes and the new ones, from the device.
        let start = loc.chunk() * cb as u64;
        let gap = if a > h.hi {
            Some(h.hi..a)
        } else if b < h.lo {
            Some(b..h.lo)
        } else {
            None
        };
        if let Some(g) = gap {
            let at = start + g.start as u64;
            let n = (size.saturating_sub(at) as usize).min(g.len());
            let dst = &mut h.data[g.start - h.base..g.end - h.base];
            dev.read_at(&mut dst[..n], at)?;
            dst[n..].fill(0);
        }
        h.data[a - h.base..b - h.base].copy_from_slice(data);
        (h.lo, h.hi) = (lo, hi);
        if let Some(t) = after {
            h.after = h.after.max(t);
            self.held.max_after.fetch_max(t, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Write `loc`'s held entry to its device now (after its commit), if it
    /// has one. The caller holds the stripe's write lock.
    pub(crate) fn settle(&self, stripe: &mut Stripe, origin: u32, loc: &Loc) -> Result<()> {
        if !stripe.holds(loc) {
            return Ok(());
        }
        let target = match loc {
            Loc::Origin { .. } => Some(self.target(origin)?),
            Loc::Cow { .. } => None,
        };
        self.settle_to(stripe, loc, target.as_ref())
    }

    /// Drop `loc`'s held entry without writing it: the location was freed.
    pub(crate) fn discard_held(&self, stripe: &mut Stripe, loc: &Loc) {
        if let Some(h) = stripe.held.remove(loc) {
            tracing::warn!(?loc, "held data of a freed chunk dropped");
            self.held.removed(entry_size(&h));
        }
    }

    /// Remember a device error that kept held data from its device:
    /// writers waiting at the bound get it instead of waiting.
    fn note_held_error(&self, e: &Error) {
        if let Error::Io { device, op, source } = e {
            *lock(&self.held.error) = Some((
                device.clone(),
                op,
                source.raw_os_error().unwrap_or(libc::EIO),
            ));
        }
    }

    /// The target of `origin`, looked up once per drain.
    fn target_in(&self, origin: u32, targets: &mut HashMap<u32, Target>) -> Result<Target> {
        if let Some(t) = targets.get(&origin) {
            return Ok(t.clone());
        }
        let t = self.target(origin)?;
        targets.insert(origin, t.clone());
        Ok(t)
    }

    fn target(&self, origin: u32) -> Result<Target> {
        let m = self.meta_now()?;
        let o = m.origin_ref(origin)?;
        let dev = o
            .dev
            .clone()
            .ok_or_else(|| Error::OriginNotAttached(o.rec().id.clone()))?;
        Ok((dev, o.dirty.clone(), o.rec().size))
    }

    fn settle_to(&self, stripe: &mut Stripe, loc: &Loc, target: Option<&Target>) -> Result<()> {
        let Some(h) = stripe.held.get(loc) else {
            return Ok(());
        };
        if h.after > self.durable() {
            self.commit_until(h.after, false)?;
        }
        let cb = self.chunk_bytes;
        let written = match (loc, target) {
            (Loc::Origin { origin, chunk }, Some((dev, dirty, size))) => {
                let start = chunk * cb;
                let end = (start + h.hi as u64).min(*size);
                let from = start + h.lo as u64;
                let res = if from < end {
                    let n = (end - from) as usize;
                    let at = h.lo - h.base;
                    dev.write_at(&h.data[at..at + n], from)
                } else {
                    Ok(())
                };
                if res.is_ok() {
                    self.mark_origin_dirty(*origin, dirty);
                }
                res
            }
            (Loc::Cow { chunk }, _) => self.cow.write_at(
                &h.data[h.lo - h.base..h.hi - h.base],
                chunk * cb + h.lo as u64,
            ),
            (Loc::Origin { origin, .. }, None) => Err(Error::UnknownOrigin(format!("#{origin}"))),
        };
        match written {
            Ok(()) => {
                if let Some(h) = stripe.held.remove(loc) {
                    self.held.removed(entry_size(&h));
                }
                Ok(())
            }
            Err(e) => {
                self.note_held_error(&e);
                Err(e)
            }
        }
    }

    /// Write every held entry (of one origin, or of all) to its device: one
    /// commit for all of them, then the writes, stripe by stripe. Entries
    /// held meanwhile that would need another commit are left for the next
    /// drain, unless `complete`: then one more commit covers them (an entry
    /// that existed when the drain began may have taken a later write).
    pub(crate) fn drain(&self, origin: Option<u32>, complete: bool) -> Result<()> {
        if !self.held.any() {
            return Ok(());
        }
        let target = self.held.max_after.load(Ordering::SeqCst);
        if target > self.durable() {
            self.commit_until(target, false)?;
        }
        let mut targets: HashMap<u32, Target> = HashMap::new();
        let mut first_err = None;
        let mut locs = Vec::new();
        let mut later: Vec<(usize, Loc, u32)> = Vec::new();
        let mut later_txn = 0;
        for i in 0..STRIPES {
            if !self.held.any() {
                break;
            }
            let mut s = self.stripe_write(i)?;
            if s.held.is_empty() {
                continue;
            }
            let durable = self.durable();
            locs.clear();
            for (l, h) in &s.held {
                if origin.is_some_and(|o| o != h.origin) {
                    continue;
                }
                if h.after > durable {
                    if complete {
                        later.push((i, *l, h.origin));
                        later_txn = later_txn.max(h.after);
                    }
                    continue;
                }
                locs.push((*l, h.origin));
            }
            // Neighbouring origin chunks go out in one write each run.
            locs.sort_unstable();
            let mut k = 0;
            while k < locs.len() {
                let n = self.run_len(&s, &locs[k..]);
                let res = if n > 1 {
                    self.settle_run(&mut s, &locs[k..k + n], &mut targets)
                } else {
                    self.settle_in_drain(&mut s, locs[k].0, locs[k].1, &mut targets)
                };
                k += n;
                if let Err(e) = res {
                    first_err.get_or_insert(e);
                    if self.check_failed().is_err() {
                        return Err(first_err.unwrap_or_else(|| Error::Failed(String::new())));
                    }
                }
            }
        }
        if !later.is_empty() && first_err.is_none() {
            self.commit_until(later_txn, false)?;
            for (i, loc, o) in later {
                let mut s = self.stripe_write(i)?;
                if let Err(e) = self.settle_in_drain(&mut s, loc, o, &mut targets) {
                    first_err.get_or_insert(e);
                }
            }
        }
        self.held.wake_room();
        match first_err {
            Some(e) => Err(e),
            None => {
                if origin.is_none() {
                    *lock(&self.held.error) = None;
                }
                Ok(())
            }
        }
    }

    /// How many of `locs` (sorted) from the first on form a run that one
    /// write can settle: origin chunks of one origin, each the next chunk,
    /// each held to its end but the last and from its start but the first.
    fn run_len(&self, s: &Stripe, locs: &[(Loc, u32)]) -> usize {
        let cb = self.chunk_bytes as usize;
        let mut n = 1;
        while n < locs.len() {
            let (
                Loc::Origin {
                    origin: o1,
                    chunk: c1,
                },
                Loc::Origin {
                    origin: o2,
                    chunk: c2,
                },
            ) = (locs[n - 1].0, locs[n].0)
            else {
                break;
            };
            let (Some(a), Some(b)) = (s.held.get(&locs[n - 1].0), s.held.get(&locs[n].0)) else {
                break;
            };
            if o1 != o2 || c2 != c1 + 1 || a.hi != cb || b.lo != 0 {
                break;
            }
            n += 1;
        }
        n
    }

    /// Settle a run of neighbouring origin chunks (see [`Self::run_len`])
    /// with one write. Their commits are durable already (a drain's).
    fn settle_run(
        &self,
        s: &mut Stripe,
        run: &[(Loc, u32)],
        targets: &mut HashMap<u32, Target>,
    ) -> Result<()> {
        let durable = self.durable();
        if run
            .iter()
            .any(|(l, _)| s.held.get(l).is_none_or(|h| h.after > durable))
        {
            for &(loc, o) in run {
                self.settle_in_drain(s, loc, o, targets)?;
            }
            return Ok(());
        }
        let origin = run[0].1;
        let (dev, dirty, size) = self.target_in(origin, targets)?;
        let cb = self.chunk_bytes;
        let first = s.held.get(&run[0].0).map_or(0, |h| h.lo);
        let start = run[0].0.chunk() * cb + first as u64;
        let mut buf = Vec::with_capacity(run.len() * cb as usize);
        for (l, _) in run {
            if let Some(h) = s.held.get(l) {
                buf.extend_from_slice(&h.data[h.lo - h.base..h.hi - h.base]);
            }
        }
        let n = (size.saturating_sub(start) as usize).min(buf.len());
        let res = if n > 0 {
            dev.write_at(&buf[..n], start)
        } else {
            Ok(())
        };
        match res {
            Ok(()) => {
                self.mark_origin_dirty(origin, &dirty);
                for (l, _) in run {
                    if let Some(h) = s.held.remove(l) {
                        self.held.removed(entry_size(&h));
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.note_held_error(&e);
                Err(e)
            }
        }
    }

    fn settle_in_drain(
        &self,
        s: &mut Stripe,
        loc: Loc,
        origin: u32,
        targets: &mut HashMap<u32, Target>,
    ) -> Result<()> {
        let target = match loc {
            Loc::Origin { .. } => Some(self.target_in(origin, targets)?),
            Loc::Cow { .. } => None,
        };
        self.settle_to(s, &loc, target.as_ref())
    }

    /// Before a write takes any lock: wait while held data is at its bound.
    pub(crate) fn wait_for_room(&self) -> Result<()> {
        let t = &self.held;
        while t.full() {
            self.check_failed()?;
            if !t.background.load(Ordering::SeqCst) {
                // No committer: do its work.
                self.drain(None, false)?;
                continue;
            }
            if let Some((dev, op, errno)) = &*lock(&t.error) {
                // Held data cannot reach its device: fail rather than wait.
                return Err(Error::io(
                    dev,
                    op,
                    std::io::Error::from_raw_os_error(*errno),
                ));
            }
            let g = lock(&t.sleep);
            t.room_waiters.fetch_add(1, Ordering::SeqCst);
            if t.full() && !t.shutdown.load(Ordering::SeqCst) {
                if t.idle.load(Ordering::SeqCst) {
                    t.work.notify_all();
                }
                let _ = t
                    .room
                    .wait_timeout(g, RETRY)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            t.room_waiters.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// A stripe's lock: it guards the held entries of the stripe's chunks.
pub(crate) type StripeLock = RwLock<Stripe>;
