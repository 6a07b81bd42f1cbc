//! The cleaner: removes ghosts no one needs and returns their space.
//!
//! A pass fixes its plan up front (flagging the versions it removes, so a
//! restart resumes the same plan), then walks the origin's exceptions in
//! chunk order. For each chunk, deepest version first: a dropped ghost's
//! exception is freed; a merged ghost's passes to its heir unless the heir
//! has its own, in which case it is freed. Between chunks the tree is
//! consistent either way, so the pass can stop anywhere. At the end the
//! ghosts, now empty, leave the tree.

use super::Store;
use crate::error::Result;
use crate::versions::record::flags;
use std::collections::{BTreeSet, HashMap};
use std::sync::PoisonError;

/// Exceptions per batch: about a millisecond of work, after which the
/// shape lock is let go and the cleaner may pause.
const BATCH: usize = 256;

/// What a cleaning run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleanReport {
    pub versions_removed: u64,
    pub chunks_freed: u64,
}

impl Store {
    /// Clean every origin until nothing is left to clean.
    pub fn clean(&self) -> Result<CleanReport> {
        let _bg = super::Background::enter();
        let mut report = CleanReport::default();
        let origins: Vec<u32> = self.inner.meta()?.origins().map(|o| o.index).collect();
        for index in origins {
            while self.clean_pass(index, true, &mut report)? {}
        }
        Ok(report)
    }

    /// Clean one origin until nothing is left; `paced` as a background
    /// job, else at full speed (a writer waits for the space).
    pub(crate) fn clean_origin(&self, index: u32, paced: bool) -> Result<CleanReport> {
        let mut report = CleanReport::default();
        while self.clean_pass(index, paced, &mut report)? {}
        Ok(report)
    }

    /// Whether any origin has versions waiting for the cleaner.
    pub fn cleaning_pending(&self) -> Result<bool> {
        let m = self.inner.meta()?;
        let pending = m
            .origins()
            .any(|o| o.rec().clean_cursor.is_some() || !o.tree().plan_cleaning(false).is_empty());
        Ok(pending)
    }

    /// One pass over one origin; false when there was nothing to do.
    fn clean_pass(&self, index: u32, paced: bool, report: &mut CleanReport) -> Result<bool> {
        let inner = &self.inner;
        let _one = super::lock(&inner.clean_lock);
        let shape = inner.shape(index);
        {
            let _excl = shape.write().unwrap_or_else(PoisonError::into_inner);
            let mut m = inner.meta()?;
            let Ok(mut o) = m.edit(index) else {
                return Ok(false);
            };
            if o.get().rec().clean_cursor.is_none() {
                let plan = o.get().tree().plan_cleaning(false);
                if plan.is_empty() {
                    return Ok(false);
                }
                for &v in plan.keys() {
                    if let Some(x) = o.version(v) {
                        x.flags |= flags::CLEANING;
                    }
                }
                o.state().cleaning = plan;
                o.rec().clean_cursor = Some(0);
            }
        }
        let mut pacer = super::Pacer::new(inner);
        loop {
            // Between batches, holding no lock: pause if foreground I/O
            // went on.
            if paced {
                pacer.tick();
            }
            let _shared = shape.read().unwrap_or_else(PoisonError::into_inner);
            let (chunks, cursor) = {
                let mut m = inner.meta()?;
                let cursor = m.origin_ref(index)?.rec().clean_cursor.unwrap_or(0);
                let entries = m.exception_range(index, cursor, BATCH)?;
                let mut chunks: BTreeSet<u64> = entries.iter().map(|(k, _)| k.chunk).collect();
                if entries.len() == BATCH && chunks.len() > 1 {
                    chunks.pop_last();
                }
                (chunks, cursor)
            };
            if chunks.is_empty() {
                break;
            }
            for &c in &chunks {
                let mut stripe = inner.stripe_write(super::Inner::stripe_index(index, c))?;
                let mut m = inner.meta()?;
                let excs = m.exceptions(index, c)?;
                let o = m.origin_ref(index)?;
                let plan = &o.cleaning;
                let mut items: Vec<(u32, u32, u64)> = excs
                    .iter()
                    .filter(|(v, _)| plan.contains_key(v))
                    .map(|&(v, e)| (o.tree().pre(v), v, e))
                    .collect();
                items.sort_unstable_by_key(|x| std::cmp::Reverse(x.0));
                let mut owners: BTreeSet<u32> = excs.iter().map(|e| e.0).collect();
                let targets: Vec<(u32, u64, Option<u32>)> = items
                    .iter()
                    .map(|&(_, v, e)| (v, e, final_heir(plan, v)))
                    .collect();
                for (v, e, heir) in targets {
                    owners.remove(&v);
                    // Ghosts are never written, so nothing of theirs is held;
                    // should it be, a relabel hands over current data and a
                    // freed chunk takes no stale write with it.
                    let loc = super::Loc::Cow { chunk: e };
                    match heir {
                        Some(h) if !owners.contains(&h) && e != crate::exceptions::MERGED => {
                            if stripe.holds(&loc) {
                                drop(m);
                                inner.settle(&mut stripe, index, &loc)?;
                                m = inner.meta()?;
                            }
                            m.relabel(index, c, v, h)?;
                            owners.insert(h);
                        }
                        _ => {
                            inner.discard_held(&mut stripe, &loc);
                            m.remove_exception(index, c, v)?;
                            if e != crate::exceptions::MERGED {
                                report.chunks_freed += 1;
                            }
                            m.free_exception_chunk(e);
                        }
                    }
                }
            }
            let mut m = inner.meta()?;
            let next = chunks.last().map_or(cursor, |c| c + 1);
            m.edit(index)?.rec().clean_cursor = Some(next);
            // Keep transactions small so the metadata reserve is never at risk.
            if m.alloc().fresh_pages() > 256 {
                let txn = m.txn();
                drop(m);
                inner.commit_until(txn, false)?;
            }
        }
        {
            let _excl = shape.write().unwrap_or_else(PoisonError::into_inner);
            let mut m = inner.meta()?;
            let mut o = m.edit(index)?;
            let plan = std::mem::take(&mut o.state().cleaning);
            let (dropped, merged): (Vec<_>, Vec<_>) = plan.iter().partition(|(_, h)| h.is_none());
            let removed = o.tree(|tree, changed| {
                let mut removed = 0;
                for (&v, _) in dropped.iter().chain(merged.iter()) {
                    let Some(x) = tree.get(v) else { continue };
                    let keep = if x.exceptions != 0 {
                        tracing::error!(
                            version = v,
                            exceptions = x.exceptions,
                            "cleaned version still owns exceptions; kept"
                        );
                        true
                    } else if plan.get(&v).copied().flatten().is_some() && x.children.len() != 1 {
                        // The shape is not what the plan expected: keep the ghost.
                        tracing::error!(version = v, "merged ghost without a single child; kept");
                        true
                    } else {
                        false
                    };
                    changed.push(v);
                    if keep {
                        if let Some(x) = tree.get_mut(v) {
                            x.flags &= !flags::CLEANING;
                        }
                        continue;
                    }
                    let heir_child = if plan.get(&v).copied().flatten().is_some() {
                        x.children.first().copied()
                    } else {
                        None
                    };
                    tree.remove(v, heir_child);
                    changed.extend(heir_child);
                    removed += 1;
                }
                tree.relabel();
                removed
            });
            report.versions_removed += removed;
            o.rec().clean_cursor = None;
        }
        self.flush()?;
        Ok(true)
    }
}

/// The version that ends up with `v`'s exceptions: follow merged ghosts down.
fn final_heir(plan: &HashMap<u32, Option<u32>>, v: u32) -> Option<u32> {
    let mut h = plan.get(&v).copied().flatten()?;
    while let Some(next) = plan.get(&h) {
        h = (*next)?;
    }
    Some(h)
}
