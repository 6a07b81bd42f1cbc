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
                    self.note_full(None);
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
                let tree = o.tree();
                let base: Option<Uuid> = o.rec().receive.as_ref().map(|r| r.base);
                let rolling = o.rec().rollback.as_ref().map(|r| r.tag);
                let mut snaps: Vec<(u64, u32, u32)> = tree
                    .ids()
                    .filter_map(|v| tree.get(v).map(|x| (v, x)))
                    .filter(|(_, x)| x.tag != 0)
                    .map(|(v, x)| (x.birthday, x.tag, v))
                    .collect();
                snaps.sort_unstable();
                // The newest keep_min stay whatever happens; of the rest,
                // those no one has open may go, oldest first.
                let candidates: Vec<(u32, u32)> = snaps[..snaps.len().saturating_sub(keep_min)]
                    .iter()
                    .filter(|&&(_, tag, v)| {
                        !o.open_tags.contains_key(&tag)
                            && Some(tag) != rolling
                            && tree.get(v).map(|x| x.uuid) != base
                    })
                    .map(|&(_, tag, v)| (tag, v))
                    .collect();
                // Only if deleting them can free something: a snapshot
                // that owns no copies, under a parent that is not a ghost
                // holding some, gives nothing back.
                let frees = |v: u32| {
                    tree.get(v).is_some_and(|x| {
                        x.exceptions > 0
                            || tree
                                .get(x.parent)
                                .is_some_and(|p| x.parent != 0 && p.tag == 0 && p.exceptions > 0)
                    })
                };
                if !candidates.iter().any(|&(_, v)| frees(v)) {
                    self.note_full(Some((&o.rec().id, candidates.len())));
                    return Ok(false);
                }
                (o.rec().id.clone(), candidates[0].0, snaps.len())
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

    /// A write fails with ENOSPC: say so in the log, at most every ten
    /// seconds. `rule`: under `delete-oldest`, the origin and how many of
    /// its snapshots could have gone (none of which frees anything).
    fn note_full(&self, rule: Option<(&str, usize)>) {
        let mut last = lock(&self.inner.full_logged);
        if last.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(10)) {
            return;
        }
        *last = Some(std::time::Instant::now());
        match rule {
            None => tracing::warn!(
                "the COW device is full: writes that need a copy fail with ENOSPC (on-full fail)"
            ),
            Some((origin, n)) => tracing::warn!(
                origin = %origin,
                deletable = n,
                "the COW device is full and no snapshot of the origin may go to make room (the newest keep-min stay; open ones, and ones that free nothing, are kept): ENOSPC"
            ),
        }
    }

    /// Snapshots the on-full rule deleted since the last call: (origin, tag).
    pub fn take_sacrificed(&self) -> Vec<(String, u32)> {
        std::mem::take(&mut *lock(&self.inner.sacrificed))
    }
}
