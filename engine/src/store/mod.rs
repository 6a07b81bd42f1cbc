//! The store: one COW device holding the metadata and copied-out data of
//! many origins. Transactions, group commit and the locks live here.
//!
//! Locks, always taken in this order:
//! 1. an origin's *shape* lock: shared by I/O and background work, exclusive
//!    for snapshot create/delete, rollback and the cleaner's tree surgery;
//! 2. a chunk stripe lock: shared by reads, exclusive by writes;
//! 3. the metadata mutex: held only for in-memory work, never across data I/O.
//!
//! Commit: encode dirty nodes under the metadata mutex, then (mutex
//! released) write them, sync, write the superblock into slot
//! `generation % 2`, sync. Commits are serialised by the commit state; every
//! writer waiting for durability shares the next commit.

mod check;
mod clean;
mod commit;
mod dump;
mod held;
mod meta;
mod ops;
mod plan;
mod rollback;
mod room;
mod status;
mod transfer;
mod usage;

pub use check::CheckReport;
pub use clean::CleanReport;
pub use dump::ExceptionEntry;
pub use held::{HeldStats, DEFAULT_HELD_LIMIT, HELD_OVERHEAD};
pub(crate) use held::{Loc, Stripe, WriteLocked};
pub(crate) use plan::{plan_ahead, plan_write, release, Plan};
pub use status::{OriginStatus, ReceiveStatus, StoreStatus, VersionStatus};
pub use usage::{OriginUsage, TagUsage};

pub(crate) use meta::{Meta, Origin as MetaOrigin};

use crate::error::{Error, Result};
use crate::format::{Superblock, PAGE_SIZE, SUPERBLOCK_SLOTS};
use crate::io::{Dev, Tracked};
use crate::space::SpaceMap;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{
    Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError,
};
use std::time::{Duration, Instant};

/// Smallest and largest chunk size, in 4 KiB pages.
pub const MIN_CHUNK_PAGES: u32 = 1;
pub const MAX_CHUNK_PAGES: u32 = 64;
pub use crate::format::MAX_ORIGIN_BYTES;
/// Smallest COW device accepted, in pages.
const MIN_COW_PAGES: u64 = 256;
pub(crate) const STRIPES: usize = 1024;
/// Neighbouring chunks per stripe (see [`Inner::stripe_index`]).
pub(crate) const STRIPE_GROUP: u64 = 16;

/// Options for [`Store::format`].
#[derive(Clone, Debug)]
pub struct FormatOptions {
    /// Chunk size in 4 KiB pages: a power of two in 1..=64.
    pub chunk_pages: u32,
    /// Overwrite a device that already holds a store.
    pub force: bool,
}

impl Default for FormatOptions {
    fn default() -> Self {
        FormatOptions {
            chunk_pages: 1,
            force: false,
        }
    }
}

pub(crate) struct CommitState {
    running: bool,
    durable: u64,
    /// Highest transaction whose commit also synced the origins.
    synced: u64,
    /// Highest transaction a flush waits to see synced.
    want_sync: u64,
}

pub(crate) struct Inner {
    /// The COW device; commits skip syncing it when nothing was written.
    pub(crate) cow: Arc<Tracked>,
    pub(crate) meta: Mutex<Meta>,
    commit: Mutex<CommitState>,
    commit_cv: Condvar,
    /// Highest transaction known durable (mirror of CommitState::durable).
    durable_txn: AtomicU64,
    /// Stripe locks; each guards the held entries of its chunks.
    stripes: Vec<held::StripeLock>,
    /// Index of held overwrites, shared with the committer thread.
    held: Arc<held::HeldTable>,
    shapes: Mutex<HashMap<u32, Arc<RwLock<()>>>>,
    failed: Mutex<Option<String>>,
    pub(crate) chunk_bytes: u64,
    /// Origins written since their last sync: a commit that syncs origins
    /// visits only these, not every bound origin.
    pub(crate) unsynced_origins: Mutex<Vec<u32>>,
    /// Threads a rollback merges with (see [`Store::set_rollback_workers`]).
    pub(crate) rollback_workers: AtomicUsize,
    /// Chunks a rollback merges under one set of stripe locks (32;
    /// `DMS_ROLLBACK_GROUP` sets it smaller to test the parallel merge
    /// with small origins).
    pub(crate) rollback_group: usize,
    /// Foreground threads waiting for the metadata lock.
    fg_waiting: AtomicUsize,
    /// Foreground reads and writes started (see [`Pacer`]).
    fg_ops: AtomicU64,
    /// One cleaning pass at a time (the daemon's cleaner, `clean`, and a
    /// writer making room under the on-full rule).
    pub(crate) clean_lock: Mutex<()>,
    /// One writer at a time makes room under the on-full rule.
    pub(crate) room: Mutex<()>,
    /// Snapshots deleted under the on-full rule so far: a writer that saw
    /// no space retries without deleting more if this moved meanwhile.
    pub(crate) room_epoch: AtomicU64,
    /// Snapshots the on-full rule deleted, not yet taken.
    pub(crate) sacrificed: Mutex<Vec<(String, u32)>>,
    /// When a full device was last logged (at most every ten seconds).
    pub(crate) full_logged: Mutex<Option<Instant>>,
}

/// An open store. Cheap to clone; safe to share between threads.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh 128-bit identity: a hash of the time, the process, the thread
/// and a counter (unique, not secret).
pub(crate) fn new_uuid() -> [u8; 16] {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = format!(
        "{:?}{}{:?}{}",
        std::time::SystemTime::now(),
        std::process::id(),
        std::thread::current().id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let mut u = [0u8; 16];
    u.copy_from_slice(&blake3::hash(seed.as_bytes()).as_bytes()[..16]);
    u
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Store {
    /// Format `cow` as an empty store.
    pub fn format(cow: Dev, opts: &FormatOptions) -> Result<Store> {
        let cp = opts.chunk_pages;
        if !(MIN_CHUNK_PAGES..=MAX_CHUNK_PAGES).contains(&cp) || !cp.is_power_of_two() {
            return Err(Error::BadChunkSize(u64::from(cp)));
        }
        let pages = cow.size() / PAGE_SIZE as u64;
        let needed = MIN_COW_PAGES.max(u64::from(cp) * 16);
        if pages < needed {
            return Err(Error::DeviceTooSmall {
                device: cow.name().to_string(),
                bytes: cow.size(),
                needed: needed * PAGE_SIZE as u64,
            });
        }
        if !opts.force {
            for slot in 0..SUPERBLOCK_SLOTS {
                let mut b = vec![0u8; PAGE_SIZE];
                cow.read_at(&mut b, slot * PAGE_SIZE as u64)?;
                if Superblock::looks_like_store(&b) {
                    return Err(Error::AlreadyFormatted {
                        device: cow.name().to_string(),
                    });
                }
            }
        }
        let uuid = new_uuid();
        let sb = Superblock {
            generation: 0,
            chunk_pages: cp,
            page_count: pages,
            uuid,
            exception_root: 0,
            catalog_root: 0,
            space_root: 0,
            next_origin: 0,
            data_chunks: 0,
            meta_pages: 0,
            created: now(),
        };
        let space = SpaceMap::format(pages, cp);
        let meta = Meta::new(cow.clone(), sb, space, HashMap::new(), 1);
        let store = Store::from_meta(cow.clone(), meta);
        // Wipe both slots, then commit generation 1: the store exists only
        // once that superblock is durable.
        let zero = vec![0u8; PAGE_SIZE];
        for slot in 0..SUPERBLOCK_SLOTS {
            cow.write_at(&zero, slot * PAGE_SIZE as u64)?;
        }
        store.inner.meta_now()?.force_commit();
        store.flush()?;
        Ok(store)
    }

    /// Open the store on `cow`: pick the newest valid superblock and load the
    /// catalog and the space map (no data is scanned).
    pub fn open(cow: Dev) -> Result<Store> {
        let mut best: Option<Superblock> = None;
        let mut errors = Vec::new();
        for slot in 0..SUPERBLOCK_SLOTS {
            let mut b = vec![0u8; PAGE_SIZE];
            cow.read_at(&mut b, slot * PAGE_SIZE as u64)?;
            match Superblock::decode(&b, slot) {
                Ok(sb) => {
                    if best.as_ref().is_none_or(|x| sb.generation > x.generation) {
                        best = Some(sb);
                    }
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        let Some(sb) = best else {
            let mut blank = true;
            for slot in 0..SUPERBLOCK_SLOTS {
                let mut b = vec![0u8; PAGE_SIZE];
                cow.read_at(&mut b, slot * PAGE_SIZE as u64)?;
                blank &= b.iter().all(|&x| x == 0);
            }
            let reason = if blank {
                "it is not formatted (format it with -b -f)".to_string()
            } else {
                errors.join("; ")
            };
            return Err(Error::NotAStore {
                device: cow.name().to_string(),
                reason,
            });
        };
        let pages = cow.size() / PAGE_SIZE as u64;
        if pages < sb.page_count {
            return Err(Error::DeviceTooSmall {
                device: cow.name().to_string(),
                bytes: cow.size(),
                needed: sb.page_count.saturating_mul(PAGE_SIZE as u64),
            });
        }
        let meta = Meta::load(cow.clone(), sb)?;
        Ok(Store::from_meta(cow, meta))
    }

    fn from_meta(cow: Dev, meta: Meta) -> Store {
        let chunk_bytes = u64::from(meta.sb().chunk_pages) * PAGE_SIZE as u64;
        let txn = meta.txn();
        let store = Store {
            inner: Arc::new(Inner {
                cow: Arc::new(Tracked::new(cow)),
                meta: Mutex::new(meta),
                commit: Mutex::new(CommitState {
                    running: false,
                    durable: txn - 1,
                    synced: txn - 1,
                    want_sync: 0,
                }),
                commit_cv: Condvar::new(),
                durable_txn: AtomicU64::new(txn - 1),
                stripes: (0..STRIPES).map(|_| RwLock::default()).collect(),
                held: Arc::new(held::HeldTable::new()),
                shapes: Mutex::new(HashMap::new()),
                failed: Mutex::new(None),
                chunk_bytes,
                unsynced_origins: Mutex::new(Vec::new()),
                rollback_workers: AtomicUsize::new(default_rollback_workers()),
                fg_waiting: AtomicUsize::new(0),
                fg_ops: AtomicU64::new(0),
                clean_lock: Mutex::new(()),
                room: Mutex::new(()),
                room_epoch: AtomicU64::new(0),
                sacrificed: Mutex::new(Vec::new()),
                full_logged: Mutex::new(None),
                rollback_group: env_usize("DMS_ROLLBACK_GROUP").unwrap_or(32).clamp(1, 1024),
            }),
        };
        held::spawn_committer(&store.inner);
        store
    }

    /// Bound the memory of held overwrites (bytes, bookkeeping included; at
    /// least one chunk's worth is always allowed). Writers wait while the
    /// held data is at the bound. The default is [`DEFAULT_HELD_LIMIT`].
    pub fn set_held_limit(&self, bytes: u64) {
        self.inner
            .held
            .set_limit(bytes.max(self.inner.chunk_bytes + HELD_OVERHEAD));
    }

    /// Held overwrites now: chunks, bytes, the peak, the limit.
    pub fn held(&self) -> HeldStats {
        self.inner.held.stats()
    }

    /// How many threads a rollback merges with (at least 1). The default
    /// is the number of CPUs, at most 4; `DMS_ROLLBACK_WORKERS` overrides it.
    pub fn set_rollback_workers(&self, n: usize) {
        self.inner
            .rollback_workers
            .store(n.max(1), Ordering::Relaxed);
    }

    /// Chunk size in bytes.
    pub fn chunk_bytes(&self) -> u64 {
        self.inner.chunk_bytes
    }

    /// Make every completed write, on every origin and snapshot, durable.
    pub fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
}

thread_local! {
    /// Whether this thread runs a background job (see [`Inner::meta`]).
    static BACKGROUND: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as running a background job until dropped.
pub(crate) struct Background(bool);

impl Background {
    pub(crate) fn enter() -> Background {
        Background(BACKGROUND.with(|b| b.replace(true)))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        BACKGROUND.with(|b| b.set(self.0));
    }
}

/// Paces a background job: after each stretch of work in which foreground
/// I/O went on, the job pauses for twice as long as the stretch took, so
/// that foreground I/O has the device, the CPUs and the locks to itself two
/// thirds of the time. A job alone runs at full speed.
pub(crate) struct Pacer<'a> {
    inner: &'a Inner,
    since: Instant,
    seen: u64,
}

/// Work between two looks at the foreground.
const PACE_STRETCH: Duration = Duration::from_millis(2);
/// Pause per unit of work while foreground I/O goes on: the job runs a
/// third of the time.
const PACE_YIELD: u32 = 2;

impl<'a> Pacer<'a> {
    pub(crate) fn new(inner: &'a Inner) -> Pacer<'a> {
        Pacer {
            inner,
            since: Instant::now(),
            seen: inner.fg_ops.load(Ordering::Relaxed),
        }
    }

    /// Call between units of work, holding no lock at all: not even an
    /// origin's shape lock, which snapshot and delete wait for (and, once
    /// they wait, so does all I/O to that origin).
    pub(crate) fn tick(&mut self) {
        let worked = self.since.elapsed();
        if worked < PACE_STRETCH {
            return;
        }
        let ops = self.inner.fg_ops.load(Ordering::Relaxed);
        if ops != self.seen {
            std::thread::sleep((worked * PACE_YIELD).min(PACE_STRETCH * 8));
        }
        self.seen = self.inner.fg_ops.load(Ordering::Relaxed);
        self.since = Instant::now();
    }
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
}

fn default_rollback_workers() -> usize {
    env_usize("DMS_ROLLBACK_WORKERS")
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4)))
        .max(1)
}

impl Inner {
    /// A foreground read or write starts (background jobs pace themselves).
    pub(crate) fn note_foreground(&self) {
        self.fg_ops.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn check_failed(&self) -> Result<()> {
        match &*lock(&self.failed) {
            Some(why) => Err(Error::Failed(why.clone())),
            None => Ok(()),
        }
    }

    pub(crate) fn fail(&self, e: &Error) {
        let mut f = lock(&self.failed);
        if f.is_none() {
            tracing::error!("store failed: {e}");
            *f = Some(e.to_string());
        }
    }

    /// Lock a mutex that guards store state. If a thread panicked while
    /// holding it, what it guards may be half changed: the store fails
    /// (nothing more is written, every call is `Error::Failed`) rather than
    /// carry on with it. Locks that guard nothing recover quietly instead.
    pub(crate) fn guard<'a, T>(&self, m: &'a Mutex<T>, what: &str) -> Result<MutexGuard<'a, T>> {
        m.lock().map_err(|_| self.poisoned(what))
    }

    pub(crate) fn poisoned(&self, what: &str) -> Error {
        let e = Error::Failed(format!("a thread panicked while holding the {what} lock"));
        self.fail(&e);
        e
    }

    /// The metadata lock, taken at once (no giving way to foreground I/O):
    /// for commits, which run for everyone waiting.
    pub(crate) fn meta_now(&self) -> Result<MutexGuard<'_, Meta>> {
        self.guard(&self.meta, "metadata")
    }

    /// A stripe's lock for reading (its held entries guard data).
    pub(crate) fn stripe_read(&self, i: usize) -> Result<RwLockReadGuard<'_, Stripe>> {
        self.stripes[i].read().map_err(|_| self.poisoned("stripe"))
    }

    /// A stripe's lock for writing.
    pub(crate) fn stripe_write(&self, i: usize) -> Result<RwLockWriteGuard<'_, Stripe>> {
        self.stripes[i].write().map_err(|_| self.poisoned("stripe"))
    }

    /// The metadata lock. Background jobs (rollback merges, cleaning) let
    /// foreground I/O that is waiting for it go first: the lock is not
    /// fair, and a job that takes it once per chunk would otherwise win it
    /// back again and again while a writer waits.
    pub(crate) fn meta(&self) -> Result<MutexGuard<'_, Meta>> {
        self.check_failed()?;
        if BACKGROUND.with(Cell::get) {
            // Bounded, so that a busy foreground slows a job but never
            // stops it.
            for _ in 0..1000 {
                if self.fg_waiting.load(Ordering::Acquire) == 0 {
                    break;
                }
                std::thread::yield_now();
            }
            return self.meta_now();
        }
        match self.meta.try_lock() {
            Ok(g) => return Ok(g),
            Err(TryLockError::Poisoned(_)) => return Err(self.poisoned("metadata")),
            Err(TryLockError::WouldBlock) => {}
        }
        self.fg_waiting.fetch_add(1, Ordering::AcqRel);
        let g = self.meta_now();
        self.fg_waiting.fetch_sub(1, Ordering::AcqRel);
        g
    }

    /// The stripe of a chunk. Neighbouring chunks share one (groups of
    /// [`STRIPE_GROUP`]), so that a request spanning them takes fewer locks
    /// and a drain finds held neighbours together and writes them at once.
    pub(crate) fn stripe_index(origin: u32, chunk: u64) -> usize {
        let group = chunk / STRIPE_GROUP;
        let h = (group.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ u64::from(origin).wrapping_mul(0xC2B2_AE3D_27D4_EB4F))
            >> 40;
        (h as usize) % STRIPES
    }

    /// Stripe indices for a set of chunks, sorted and unique: taking several
    /// stripes always in ascending order rules out deadlock.
    pub(crate) fn stripe_set(&self, origin: u32, chunks: impl Iterator<Item = u64>) -> Vec<usize> {
        let mut v: Vec<usize> = chunks.map(|c| Self::stripe_index(origin, c)).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    pub(crate) fn shape(&self, origin: u32) -> Arc<RwLock<()>> {
        lock(&self.shapes).entry(origin).or_default().clone()
    }

    /// Note that origin `index` has writes its next sync must cover.
    pub(crate) fn mark_origin_dirty(&self, index: u32, flag: &std::sync::atomic::AtomicBool) {
        if !flag.swap(true, Ordering::AcqRel) {
            lock(&self.unsynced_origins).push(index);
        }
    }

    pub(crate) fn durable(&self) -> u64 {
        self.durable_txn.load(Ordering::Acquire)
    }

    /// Every write acknowledged so far is on its device and durable: held
    /// data is written out, then one commit syncs the COW device and every
    /// origin written since the last sync.
    pub(crate) fn flush(&self) -> Result<()> {
        // Everything acknowledged so far is in this transaction or before.
        let target = self.meta()?.txn();
        self.drain(None, true)?;
        self.commit_until(target, true)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: held data goes to its devices (as a
        // device's cache would write back), then the committer ends.
        self.held.shut_down();
        if self.held.any() && self.check_failed().is_ok() {
            if let Err(e) = self.drain(None, true) {
                tracing::error!("writing held data at close: {e}");
            }
        }
    }
}
