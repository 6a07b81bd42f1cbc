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
//! - A held entry is the whole current content of its location (an origin
//!   chunk, or a COW chunk that one writable version alone reads); the device
//!   still has older bytes there. Every read of the location is served from
//!   the entry.
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

pub(crate) use committer::spawn_committer;

use super::{lock, Inner, STRIPES};
use crate::error::{Error, Result};
use crate::io::{BlockDev, Dev};
use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
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

/// The data of one held location.
pub(crate) struct Held {
    data: Box<[u8]>,
    /// Bytes `lo..hi` differ from the device.
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

    /// The held content of `loc`, if any.
    pub(crate) fn data(&self, loc: &Loc) -> Option<&[u8]> {
        if self.held.is_empty() {
            return None;
        }
        self.held.get(loc).map(|h| &h.data[..])
    }
}

/// Counters of held data (see [`crate::Store::held`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeldStats {
    /// Locations held now.
    pub chunks: u64,
    /// Bytes held now, bookkeeping included.
    pub bytes: u64,
    /// The most bytes held at once since the store was opened.
    pub peak_bytes: u64,
    /// The bound: writers wait while `bytes` is at or above it.
    pub limit: u64,
}

/// Counters and wake-ups of held data, shared with the committer thread.
pub(crate) struct HeldTable {
    count: AtomicUsize,
    bytes: AtomicU64,
    peak: AtomicU64,
    limit: AtomicU64,
    /// Highest `after` of any entry held: a commit up to it covers all.
    max_after: AtomicU64,
    /// The last failed write of held data, until a full drain succeeds:
    /// (device, operation, errno).
    error: Mutex<Option<(String, &'static str, i32)>>,
    /// The committer sleeps on `work`; writers at the limit on `room`.
    sleep: Mutex<()>,
    work: Condvar,
    room: Condvar,
    shutdown: AtomicBool,
    /// Whether a committer thread drains entries as they come.
    background: AtomicBool,
    /// Whether the committer thread exists.
    thread: AtomicBool,
    /// Whether the committer is asleep (and so wants a wake-up).
    idle: AtomicBool,
    /// Writers waiting for room.
    room_waiters: AtomicUsize,
}

impl HeldTable {
    pub(crate) fn new() -> HeldTable {
        HeldTable {
            count: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            limit: AtomicU64::new(DEFAULT_HELD_LIMIT),
            max_after: AtomicU64::new(0),
            error: Mutex::new(None),
            sleep: Mutex::new(()),
            work: Condvar::new(),
            room: Condvar::new(),
            shutdown: AtomicBool::new(false),
            background: AtomicBool::new(false),
            thread: AtomicBool::new(false),
            idle: AtomicBool::new(false),
            room_waiters: AtomicUsize::new(0),
        }
    }

    /// Whether anything is held at all (the read path's fast check).
    pub(crate) fn any(&self) -> bool {
        self.count.load(Ordering::SeqCst) != 0
    }

    pub(crate) fn stats(&self) -> HeldStats {
        HeldStats {
            chunks: self.count.load(Ordering::SeqCst) as u64,
            bytes: self.bytes.load(Ordering::SeqCst),
            peak_bytes: self.peak.load(Ordering::SeqCst),
            limit: self.limit.load(Ordering::SeqCst),
        }
    }

    pub(crate) fn set_limit(&self, bytes: u64) {
        self.limit.store(bytes, Ordering::SeqCst);
        self.wake_room();
        self.wake_committer();
    }

    pub(crate) fn set_background(&self, on: bool) {
        let on = on && self.thread.load(Ordering::SeqCst);
        self.background.store(on, Ordering::SeqCst);
        self.wake_committer();
    }

    fn full(&self) -> bool {
        self.bytes.load(Ordering::SeqCst) >= self.limit.load(Ordering::SeqCst)
    }

    fn wake_committer(&self) {
        drop(lock(&self.sleep));
        self.work.notify_all();
    }

    fn wake_room(&self) {
        if self.room_waiters.load(Ordering::SeqCst) > 0 {
            drop(lock(&self.sleep));
            self.room.notify_all();
        }
    }

    fn added(&self, size: u64, after: u64) {
        self.max_after.fetch_max(after, Ordering::SeqCst);
        self.count.fetch_add(1, Ordering::SeqCst);
        let now = self.bytes.fetch_add(size, Ordering::SeqCst) + size;
        self.peak.fetch_max(now, Ordering::SeqCst);
        // The committer is woken only when it sleeps: while it works, what
        // is held meanwhile waits for its next round (one commit for all).
        if self.idle.load(Ordering::SeqCst) {
            self.wake_committer();
        }
    }

    fn removed(&self, size: u64) {
        self.count.fetch_sub(1, Ordering::SeqCst);
        let before = self.bytes.fetch_sub(size, Ordering::SeqCst);
        let limit = self.limit.load(Ordering::SeqCst);
        if before >= limit && before - size < limit {
            self.wake_room();
        }
    }

    pub(crate) fn shut_down(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.wake_committer();
        self.wake_room();
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

    /// Start holding `loc` (absent from `stripe`) with its current content
    /// `data`; the caller then overlays its write.
    pub(crate) fn hold(
        &self,
        stripe: &mut Stripe,
        origin: u32,
        loc: Loc,
        data: Box<[u8]>,
        after: Option<u64>,
    ) {
        let after = after.unwrap_or(0);
        let h = Held {
            data,
            lo: 0,
            hi: 0,
            after,
            origin,
        };
        let size = entry_size(&h);
        stripe.held.insert(loc, h);
        self.held.added(size, after);
    }

    /// Write `data` at `off` into the held entry of `loc`, noting a later
    /// commit it must wait for.
    pub(crate) fn overlay(
        &self,
        stripe: &mut Stripe,
        loc: &Loc,
        off: usize,
        data: &[u8],
        after: Option<u64>,
    ) {
        if let Some(h) = stripe.held.get_mut(loc) {
            h.data[off..off + data.len()].copy_from_slice(data);
            if h.lo == h.hi {
                (h.lo, h.hi) = (off, off + data.len());
            } else {
                h.lo = h.lo.min(off);
                h.hi = h.hi.max(off + data.len());
            }
            if let Some(t) = after {
                h.after = h.after.max(t);
                self.held.max_after.fetch_max(t, Ordering::SeqCst);
            }
        }
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
                    dev.write_at(&h.data[h.lo..(end - start) as usize], from)
                } else {
                    Ok(())
                };
                if res.is_ok() {
                    self.mark_origin_dirty(*origin, dirty);
                }
                res
            }
            (Loc::Cow { chunk }, _) => self
                .cow
                .write_at(&h.data[h.lo..h.hi], chunk * cb + h.lo as u64),
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
                if let Error::Io { device, op, source } = &e {
                    *lock(&self.held.error) = Some((
                        device.clone(),
                        op,
                        source.raw_os_error().unwrap_or(libc::EIO),
                    ));
                }
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
            for &(loc, o) in &locs {
                if let Err(e) = self.settle_in_drain(&mut s, loc, o, &mut targets) {
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

    fn settle_in_drain(
        &self,
        s: &mut Stripe,
        loc: Loc,
        origin: u32,
        targets: &mut HashMap<u32, Target>,
    ) -> Result<()> {
        let target = match loc {
            Loc::Origin { .. } => match targets.get(&origin) {
                Some(t) => Some(t.clone()),
                None => {
                    let t = self.target(origin)?;
                    targets.insert(origin, t.clone());
                    Some(t)
                }
            },
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
