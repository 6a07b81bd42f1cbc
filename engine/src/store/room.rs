//! The on-full rule: when a write finds the COW device full and the store's
//! policy says `delete-oldest`, the writer deletes the origin's oldest
//! snapshots and cleans them until a data chunk is free.
//!
//! Nothing here is a new kind of change on disk: each sacrifice is a
//! delete, then a cleaning pass, then a commit, exactly as if a user had
//! run `dms delete` and the cleaner had caught up. The writer holds no
//! lock while it makes room (the caller let go of the origin's shape lock
//! and its stripe locks), and it plans its write again from scratch after.

use super::{lock, Store};
use crate::error::Result;
use crate::versions::record::OnFull;
use crate::versions::Uuid;
use std::sync::atomic::Ordering;

/// Sacrifices remembered for [`Store::take_sacrificed`]; older ones are
/// forgotten (the log has them all).
const SACRIFICE_LOG: usize = 1024;

impl Store {
    /// Make room for a write to origin `index` that found no space after
    /// it read `epoch` from [`Inner::room_epoch`]. Ok(true): plan again
    /// (a snapshot went since then, and a data chunk is free). Ok(false):
    /// the rule is `fail`, or no snapshot may go (all open, or `keep_min`
    /// left).
    pub(crate) fn make_room(&self, index: u32, epoch: u64) -> Result<bool> {
        let inner = &self.inner;
        let _one = lock(&inner.room);
        let mut deleted = inner.room_epoch.load(Ordering::Acquire) != epoch;
        loop {
            let victim = {
                let m = inner.meta()?;
                let p = m.policy();
                if p.on_full != OnFull::DeleteOldest {
                    return Ok(false);
                }
                // At least one snapshot goes after the write found no
                // space (by this writer or another one meanwhile): a free
                // chunk now may still be too few for the write's batch.
                if deleted && m.alloc().can_alloc_data() {
                    return Ok(true);
                }
                let keep_min = p.keep_min as usize;
                let o = m.origin_ref(index)?;
                let base: Option<Uuid> = o.rec().receive.as_ref().map(|r| r.base);
                let rolling = o.rec().rollback.as_ref().map(|r| r.tag);
                let mut snaps: Vec<(u64, u32, Uuid)> = o
                    .tree()
                    .ids()
                    .filter_map(|v| o.tree().get(v))
                    .filter(|v| v.tag != 0)
                    .map(|v| (v.birthday, v.tag, v.uuid))
                    .collect();
                if snaps.len() <= keep_min {
                    return Ok(false);
                }
                snaps.sort_unstable();
                // The newest keep_min stay whatever happens; of the rest,
                // the oldest that no one has open goes.
                let pick = snaps[..snaps.len() - keep_min]
                    .iter()
                    .find(|(_, tag, uuid)| {
                        !o.open_tags.contains_key(tag)
                            && Some(*tag) != rolling
                            && Some(*uuid) != base
                    });
                match pick {
                    Some(&(_, tag, _)) => (o.rec().id.clone(), tag, snaps.len()),
                    None => return Ok(false),
                }
            };
            let (origin_id, tag, before) = victim;
            self.delete(&origin_id, tag)?;
            deleted = true;
            let report = self.clean_origin(index, false)?;
            // Moved only once the space is there: a writer that read the
            // new value planned with it, so its ENOSPC calls for more.
            inner.room_epoch.fetch_add(1, Ordering::AcqRel);
            tracing::warn!(
                origin = %origin_id,
                tag,
                snapshots_left = before - 1,
                chunks_freed = report.chunks_freed,
                "the COW device is full: deleted the oldest snapshot (on-full delete-oldest)"
            );
            let mut log = lock(&inner.sacrificed);
            if log.len() >= SACRIFICE_LOG {
                log.remove(0);
            }
            log.push((origin_id, tag));
        }
    }

    /// Snapshots the on-full rule deleted since the last call: (origin, tag).
    pub fn take_sacrificed(&self) -> Vec<(String, u32)> {
        std::mem::take(&mut *lock(&self.inner.sacrificed))
    }
}
