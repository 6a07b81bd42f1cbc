//! Group commit.

use super::{lock, Inner};
use crate::error::Result;
use crate::format::{Superblock, PAGE_SIZE};
use crate::io::BlockDev;
use std::sync::atomic::Ordering;

impl Inner {
    /// Return once transaction `target` is durable, committing if no one
    /// else is. Waiters arriving during a commit share the next one. With
    /// `sync_origins`, origin writes are made durable too (a flush); other
    /// commits leave origin devices to the next flush.
    pub(crate) fn commit_until(&self, target: u64, sync_origins: bool) -> Result<()> {
        let mut cs = self.guard(&self.commit, "commit")?;
        loop {
            if cs.durable >= target && (!sync_origins || cs.synced >= target) {
                return Ok(());
            }
            self.check_failed()?;
            if sync_origins {
                cs.want_sync = cs.want_sync.max(target);
            }
            if cs.running {
                cs = self
                    .commit_cv
                    .wait(cs)
                    .map_err(|_| self.poisoned("commit"))?;
                continue;
            }
            cs.running = true;
            let do_sync = cs.want_sync > cs.synced;
            // The metadata is durable already and only the devices' data is
            // missing (a flush after a drain's commit): sync them, commit
            // nothing.
            let sync_only = cs.durable >= target;
            let durable = cs.durable;
            drop(cs);
            let res = if sync_only {
                self.sync_devices().map(|()| durable)
            } else {
                self.commit_once(do_sync)
            };
            cs = self.guard(&self.commit, "commit")?;
            cs.running = false;
            match res {
                Ok(txn) if sync_only => {
                    cs.synced = cs.synced.max(txn);
                    self.commit_cv.notify_all();
                }
                Ok(txn) => {
                    cs.durable = txn;
                    if do_sync {
                        cs.synced = txn;
                    }
                    self.durable_txn.store(txn, Ordering::Release);
                    self.commit_cv.notify_all();
                }
                Err(e) => {
                    self.fail(&e);
                    self.commit_cv.notify_all();
                    return Err(e);
                }
            }
        }
    }

    /// The devices of origins written since their last sync (clearing the
    /// marks: a write that lands later marks its origin again).
    fn take_dirty_origins(&self, m: &super::Meta) -> Vec<crate::io::Dev> {
        let mut origins = Vec::new();
        for index in std::mem::take(&mut *lock(&self.unsynced_origins)) {
            if let Ok(o) = m.origin_ref(index) {
                if o.dirty.swap(false, Ordering::AcqRel) {
                    origins.extend(o.dev.clone());
                }
            }
        }
        origins
    }

    /// Make every completed data write durable without a commit: the COW
    /// device if it was written, and the origins written since their sync.
    fn sync_devices(&self) -> Result<()> {
        self.check_failed()?;
        let origins = self.take_dirty_origins(&*self.meta_now()?);
        self.cow.sync_if_written()?;
        for dev in &origins {
            dev.sync()?;
        }
        Ok(())
    }

    /// One commit; returns the transaction number made durable.
    fn commit_once(&self, sync_origins: bool) -> Result<u64> {
        let (txn, blocks, sb, origins) = {
            // The plain lock, not `meta()`: a background thread running the
            // commit runs it for everyone waiting.
            self.check_failed()?;
            let mut m = self.meta_now()?;
            // Markers recorded in this commit stand for merged origin data:
            // the origins are synced before the superblock makes them durable.
            let (txn, merged_data) = m.begin_commit();
            let sync_origins = sync_origins || merged_data;
            let origins = if sync_origins {
                self.take_dirty_origins(&m)
            } else {
                Vec::new()
            };
            if m.has_changes() {
                let (blocks, sb) = m.prepare_commit()?;
                (txn, blocks, Some(sb), origins)
            } else {
                (txn, Vec::new(), None, origins)
            }
        };
        // Encoded here, without the metadata lock.
        for (page, encode) in blocks {
            self.cow.write_at(&encode(), page * PAGE_SIZE as u64)?;
        }
        // Data chunks, nodes and origin writes are durable before the
        // superblock that makes them reachable.
        self.cow.sync_if_written()?;
        for dev in &origins {
            dev.sync()?;
        }
        if let Some(sb) = &sb {
            self.cow.write_at(
                &sb.encode(),
                Superblock::slot(sb.generation) * PAGE_SIZE as u64,
            )?;
            self.cow.sync()?;
        }
        self.meta_now()?.commit_done(txn, sb.is_some());
        Ok(txn)
    }
}
