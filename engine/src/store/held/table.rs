//! The counters of held data and the wake-ups between writers and the
//! committer thread.

use super::{lock, DEFAULT_HELD_LIMIT};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

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
    pub(super) count: AtomicUsize,
    pub(super) bytes: AtomicU64,
    pub(super) peak: AtomicU64,
    pub(super) limit: AtomicU64,
    /// Highest `after` of any entry held: a commit up to it covers all.
    pub(super) max_after: AtomicU64,
    /// The last failed write of held data, until a full drain succeeds:
    /// (device, operation, errno).
    pub(super) error: Mutex<Option<(String, &'static str, i32)>>,
    /// The committer sleeps on `work`; writers at the limit on `room`.
    pub(super) sleep: Mutex<()>,
    pub(super) work: Condvar,
    pub(super) room: Condvar,
    pub(super) shutdown: AtomicBool,
    /// Whether a committer thread drains entries as they come.
    pub(super) background: AtomicBool,
    /// Whether the committer thread exists.
    pub(super) thread: AtomicBool,
    /// Whether the committer is asleep (and so wants a wake-up).
    pub(super) idle: AtomicBool,
    /// Writers waiting for room.
    pub(super) room_waiters: AtomicUsize,
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

    pub(super) fn full(&self) -> bool {
        self.bytes.load(Ordering::SeqCst) >= self.limit.load(Ordering::SeqCst)
    }

    pub(super) fn wake_committer(&self) {
        drop(lock(&self.sleep));
        self.work.notify_all();
    }

    pub(super) fn wake_room(&self) {
        if self.room_waiters.load(Ordering::SeqCst) > 0 {
            drop(lock(&self.sleep));
            self.room.notify_all();
        }
    }

    pub(super) fn added(&self, size: u64, after: u64) {
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

    /// An entry's window grew by `size` bytes.
    pub(super) fn grew(&self, size: u64) {
        let now = self.bytes.fetch_add(size, Ordering::SeqCst) + size;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    pub(super) fn removed(&self, size: u64) {
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
