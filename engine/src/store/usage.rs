//! Space accounting (`dms du`): per snapshot, the copies it owns, how many
//! of them other snapshots read too, and exactly how many chunks deleting
//! it would give back once the cleaner is done, found by running the
//! cleaner's own plan on a copy of the version tree and the exceptions.

use super::Store;
use crate::error::Result;
use crate::exceptions::MERGED;
use crate::versions::VersionTree;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One snapshot's space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TagUsage {
    pub tag: u32,
    /// COW chunks holding copies this snapshot owns.
    pub owned: u64,
    /// Of those, the ones another snapshot reads too.
    pub shared: u64,
    /// Chunks that deleting it gives back once cleaning is done (beyond
    /// what the cleaner would give back anyway).
    pub freed_if_deleted: u64,
}

/// One origin's space.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OriginUsage {
    pub origin: String,
    pub tags: Vec<TagUsage>,
    /// COW chunks holding this origin's copies (all versions, hidden ones
    /// included).
    pub chunks: u64,
    /// Chunks the cleaner will give back without any further delete
    /// (deleted snapshots not cleaned yet).
    pub pending_free: u64,
}

type Excs = BTreeMap<u64, Vec<(u32, u64)>>;

impl Store {
    /// The space of an origin's snapshots (see [`TagUsage`]). Hidden
    /// versions that a rollback or a send holds are not cleaned until they
    /// are let go, so while one runs the figures count them as kept.
    pub fn usage(&self, origin_id: &str) -> Result<OriginUsage> {
        let (tree, excs) = {
            let mut m = self.inner.meta()?;
            let index = m.origin(origin_id)?;
            let mut excs: Excs = BTreeMap::new();
            let mut from = 0u64;
            let mut limit = 4096;
            loop {
                let batch = m.exception_range(index, from, limit)?;
                let full = batch.len() == limit;
                // A batch that ends inside a chunk is read again from that
                // chunk (a longer one if it is all one chunk's).
                let last = batch.last().map(|(k, _)| k.chunk);
                if full && batch.first().map(|(k, _)| k.chunk) == last {
                    limit *= 2;
                    continue;
                }
                for (k, v) in &batch {
                    if full && Some(k.chunk) == last {
                        break;
                    }
                    excs.entry(k.chunk).or_default().push((k.version, *v));
                }
                match last {
                    Some(c) if full => from = c,
                    _ => break,
                }
            }
            (m.origin_ref(index)?.tree().clone(), excs)
        };
        let chunks = excs
            .values()
            .flatten()
            .filter(|(_, e)| *e != MERGED)
            .count() as u64;
        let pending_free = simulate_cleaning(tree.clone(), excs.clone());
        let mut tags: Vec<u32> = tree
            .ids()
            .filter_map(|v| tree.get(v))
            .map(|v| v.tag)
            .filter(|&t| t != 0)
            .collect();
        tags.sort_unstable();
        let (owned, shared) = owned_and_shared(&tree, &excs);
        let mut out = Vec::with_capacity(tags.len());
        for tag in tags {
            let Some(v) = tree.by_tag(tag) else { continue };
            let mut t = tree.clone();
            t.untag(tag);
            let freed = simulate_cleaning(t, excs.clone());
            out.push(TagUsage {
                tag,
                owned: owned.get(&v).copied().unwrap_or(0),
                shared: shared.get(&v).copied().unwrap_or(0),
                freed_if_deleted: freed.saturating_sub(pending_free),
            });
        }
        Ok(OriginUsage {
            origin: origin_id.to_string(),
            tags: out,
            chunks,
            pending_free,
        })
    }
}

/// Per version: copies owned, and those of them another tagged version
/// reads (a tagged version reads the copy of the nearest owner on its path
/// to the root).
fn owned_and_shared(tree: &VersionTree, excs: &Excs) -> (HashMap<u32, u64>, HashMap<u32, u64>) {
    // Preorder numbers of tagged versions, sorted: readers in a subtree
    // are a range of them.
    let mut tagged: Vec<u32> = tree
        .ids()
        .filter(|&v| tree.get(v).is_some_and(|x| x.tag != 0))
        .filter_map(|v| tree.label(v).map(|l| l.0))
        .collect();
    tagged.sort_unstable();
    let in_range = |lo: u32, hi: u32| {
        (tagged.partition_point(|&p| p <= hi) - tagged.partition_point(|&p| p < lo)) as u64
    };
    let mut owned: HashMap<u32, u64> = HashMap::new();
    let mut shared: HashMap<u32, u64> = HashMap::new();
    for list in excs.values() {
        // Owners by preorder; each one's readers are the tagged versions
        // in its subtree minus those under a nearer owner.
        let mut owners: Vec<(u32, u32, u32, u64)> = list
            .iter()
            .filter_map(|&(v, e)| tree.label(v).map(|(pre, post)| (pre, post, v, e)))
            .collect();
        owners.sort_unstable();
        let mut readers: Vec<u64> = owners.iter().map(|o| in_range(o.0, o.1)).collect();
        let mut stack: Vec<usize> = Vec::new();
        for i in 0..owners.len() {
            while let Some(&top) = stack.last() {
                if owners[i].0 <= owners[top].1 {
                    break;
                }
                stack.pop();
            }
            if let Some(&parent) = stack.last() {
                readers[parent] =
                    readers[parent].saturating_sub(in_range(owners[i].0, owners[i].1));
            }
            stack.push(i);
        }
        for (i, &(_, _, v, e)) in owners.iter().enumerate() {
            if e == MERGED {
                continue;
            }
            *owned.entry(v).or_default() += 1;
            let own_reader = u64::from(tree.get(v).is_some_and(|x| x.tag != 0));
            if readers[i] > own_reader {
                *shared.entry(v).or_default() += 1;
            }
        }
    }
    (owned, shared)
}

/// Run the cleaner's passes (`clean.rs`) on copies of the tree and the
/// exceptions; returns the COW chunks they free.
fn simulate_cleaning(mut tree: VersionTree, mut excs: Excs) -> u64 {
    let mut freed = 0u64;
    loop {
        let plan = tree.plan_cleaning(false);
        if plan.is_empty() {
            return freed;
        }
        for list in excs.values_mut() {
            let mut items: Vec<(u32, u32, u64)> = list
                .iter()
                .filter(|(v, _)| plan.contains_key(v))
                .map(|&(v, e)| (tree.pre(v), v, e))
                .collect();
            items.sort_unstable_by_key(|x| std::cmp::Reverse(x.0));
            let mut owners: BTreeSet<u32> = list.iter().map(|e| e.0).collect();
            for (_, v, e) in items {
                owners.remove(&v);
                let heir = final_heir(&plan, v);
                match heir {
                    Some(h) if !owners.contains(&h) && e != MERGED => {
                        for x in list.iter_mut().filter(|x| x.0 == v) {
                            x.0 = h;
                        }
                        owners.insert(h);
                    }
                    _ => {
                        list.retain(|x| x.0 != v);
                        if e != MERGED {
                            freed += 1;
                        }
                    }
                }
            }
        }
        excs.retain(|_, l| !l.is_empty());
        let (dropped, merged): (Vec<_>, Vec<_>) = plan.iter().partition(|(_, h)| h.is_none());
        for (&v, heir) in dropped.iter().chain(merged.iter()) {
            let Some(x) = tree.get(v) else { continue };
            let heir_child = if heir.is_some() {
                x.children.first().copied()
            } else {
                None
            };
            tree.remove(v, heir_child);
        }
        tree.relabel();
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
