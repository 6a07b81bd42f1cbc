//! The version tree of one origin.
//!
//! Version 0 is the origin and the root. Rules that keep every write cheap
//! and every other version's view intact:
//! - a writable version (the origin or a tagged snapshot) has at most one
//!   child, so a write needs to preserve the view of at most one heir;
//! - snapshot of the origin inserts the new version between 0 and its child;
//! - snapshot of a snapshot V: if V has no child the new version becomes its
//!   child; otherwise V turns into an untagged *ghost* (keeping its id and
//!   exceptions) and gets two new leaf children: one carrying V's tag, one the
//!   new tag. Ghosts are never written.
//!
//! Reads resolve through interval labels: `pre` is the DFS preorder number
//! and `post` the largest preorder in the subtree, so "A is an ancestor of V"
//! is two comparisons and the nearest ancestor among a chunk's exceptions is
//! the one with the largest `pre`, whatever the depth of the tree.

pub mod record;

use crate::error::{Error, Result};
use record::{flags, VersionRecord};
use std::collections::{HashMap, HashSet};

/// No parent (version 0).
pub const NONE: u32 = u32::MAX;
/// Version ids an origin can hand out over its life (ids are not reused):
/// 2^24 (16,777,216; a snapshot a minute for 31 years), so that the
/// in-memory version table, 16 bytes per id up to the highest, stays within
/// 256 MiB even for a crafted catalog.
pub const MAX_VERSION_ID: u32 = 1 << 24;

/// A 128-bit version identity: the same for two versions (in any stores)
/// only if they hold the same content. A stream names the versions it goes
/// from and to by it, so that an incremental applies only on top of its base.
pub type Uuid = [u8; 16];

/// What a new version is born with.
#[derive(Clone, Debug)]
pub struct Birth {
    /// 0 = untagged (hidden).
    pub tag: u32,
    pub birthday: u64,
    pub memo: String,
    pub uuid: Uuid,
}

/// One version in memory.
#[derive(Clone, Debug)]
pub struct Version {
    pub parent: u32,
    pub children: Vec<u32>,
    pub tag: u32,
    pub flags: u32,
    pub birthday: u64,
    pub exceptions: u64,
    pub memo: String,
    pub uuid: Uuid,
    /// Size in bytes if the origin grew after this version was taken
    /// (None: the origin's size).
    pub size: Option<u64>,
}

impl Version {
    fn new(parent: u32, birth: Birth) -> Version {
        Version {
            parent,
            children: Vec::new(),
            tag: birth.tag,
            flags: 0,
            birthday: birth.birthday,
            exceptions: 0,
            memo: birth.memo,
            uuid: birth.uuid,
            size: None,
        }
    }

    pub fn record(&self) -> VersionRecord {
        VersionRecord {
            parent: self.parent,
            tag: self.tag,
            flags: self.flags,
            birthday: self.birthday,
            exceptions: self.exceptions,
            memo: self.memo.clone(),
            uuid: Some(self.uuid),
            size: self.size,
        }
    }

    pub fn is_ghost(&self) -> bool {
        self.tag == 0 && self.parent != NONE
    }
}

/// The versions of one origin.
#[derive(Clone, Debug)]
pub struct VersionTree {
    /// By version id; boxed, so an id costs 8 bytes here (and 8 in
    /// `labels`) until it is used.
    slots: Vec<Option<Box<Version>>>,
    /// (pre, post) per version id, kept apart so that resolving a read
    /// touches one small array, not the version records.
    labels: Vec<(u32, u32)>,
    tags: HashMap<u32, u32>,
    count: usize,
}

impl VersionTree {
    /// A tree holding only version 0.
    pub fn new(birthday: u64) -> VersionTree {
        let mut t = VersionTree {
            slots: vec![Some(Box::new(Version::new(
                NONE,
                Birth {
                    tag: 0,
                    birthday,
                    memo: String::new(),
                    uuid: [0; 16],
                },
            )))],
            labels: vec![(0, 0)],
            tags: HashMap::new(),
            count: 1,
        };
        t.tags.insert(0, 0);
        t.relabel_unchecked();
        t
    }

    /// Rebuild from catalog records; `block` names the catalog for errors.
    pub fn from_records(
        birthday: u64,
        records: Vec<(u32, VersionRecord)>,
        next_version: u32,
        block: u64,
    ) -> Result<VersionTree> {
        let bad = |why: String| Error::corrupt(block, "catalog tree node", why);
        if next_version > MAX_VERSION_ID {
            return Err(bad(format!("version counter {next_version} out of range")));
        }
        let mut t = VersionTree::new(birthday);
        for (id, r) in records {
            if id == 0 {
                return Err(bad("a version record under id 0".into()));
            }
            // Bounded before it sizes anything.
            if id >= next_version {
                return Err(bad(format!(
                    "version {id} beyond the origin's counter {next_version}"
                )));
            }
            let idx = id as usize;
            if t.slots.len() <= idx {
                t.slots.resize(idx + 1, None);
            }
            let mut v = Version::new(
                r.parent,
                Birth {
                    tag: r.tag,
                    birthday: r.birthday,
                    memo: r.memo,
                    // Records written before identities existed get one
                    // when the origin is loaded (`Meta::load`).
                    uuid: r.uuid.unwrap_or([0; 16]),
                },
            );
            v.flags = r.flags;
            v.exceptions = r.exceptions;
            v.size = r.size;
            t.slots[idx] = Some(Box::new(v));
            t.count += 1;
            if r.tag != 0 && t.tags.insert(r.tag, id).is_some() {
                return Err(bad(format!("tag {} used twice", r.tag)));
            }
        }
        let ids: Vec<u32> = t.ids().filter(|&i| i != 0).collect();
        for id in ids {
            let parent = t.slots[id as usize].as_ref().map_or(NONE, |v| v.parent);
            match t.slots.get_mut(parent as usize).and_then(|s| s.as_mut()) {
                Some(p) => p.children.push(id),
                None => return Err(bad(format!("version {id} has a missing parent {parent}"))),
            }
        }
        if t.relabel_unchecked() != t.count {
            return Err(bad("the version tree has a cycle".into()));
        }
        for id in t.ids() {
            let v = t.get(id).ok_or_else(|| bad("vanished version".into()))?;
            if (v.tag != 0 || id == 0) && v.children.len() > 1 {
                return Err(bad(format!(
                    "writable version {id} has {} children",
                    v.children.len()
                )));
            }
        }
        Ok(t)
    }

    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| i as u32)
    }

    pub fn get(&self, id: u32) -> Option<&Version> {
        self.slots.get(id as usize).and_then(|s| s.as_deref())
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut Version> {
        self.slots
            .get_mut(id as usize)
            .and_then(|s| s.as_deref_mut())
    }

    fn must(&self, id: u32) -> &Version {
        match self.get(id) {
            Some(v) => v,
            None => unreachable_version(id),
        }
    }

    fn must_mut(&mut self, id: u32) -> &mut Version {
        match self.get_mut(id) {
            Some(v) => v,
            None => unreachable_version(id),
        }
    }

    /// Number of versions, ghosts and version 0 included.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.count
    }

    /// The version carrying `tag` (0 = the origin).
    pub fn by_tag(&self, tag: u32) -> Option<u32> {
        self.tags.get(&tag).copied()
    }

    /// Tags in use, the origin's 0 included.
    pub fn tag_count(&self) -> usize {
        self.tags.len()
    }

    /// The single child of a writable version, if any.
    pub fn only_child(&self, id: u32) -> Option<u32> {
        self.get(id).and_then(|v| v.children.first().copied())
    }

    /// The interval label (preorder number, last preorder number of its
    /// subtree) of a version.
    pub fn label(&self, id: u32) -> Option<(u32, u32)> {
        self.get(id)?;
        self.labels.get(id as usize).copied()
    }

    /// Preorder number (deeper on a path = larger).
    pub fn pre(&self, id: u32) -> u32 {
        self.label(id).map_or(0, |l| l.0)
    }

    /// Of `candidates`, the one nearest to `v` on its path to the root.
    pub fn nearest(&self, v: u32, candidates: impl Iterator<Item = u32>) -> Option<u32> {
        let (vpre, _) = self.label(v)?;
        let mut best: Option<(u32, u32)> = None;
        for c in candidates {
            if let Some((pre, post)) = self.label(c) {
                if pre <= vpre && vpre <= post && best.is_none_or(|(p, _)| pre > p) {
                    best = Some((pre, c));
                }
            }
        }
        best.map(|(_, c)| c)
    }

    fn alloc_id(&mut self, next_version: &mut u32) -> Result<u32> {
        let id = *next_version;
        if id >= MAX_VERSION_ID {
            return Err(Error::LimitReached("versions of this origin"));
        }
        *next_version += 1;
        let idx = id as usize;
        if self.slots.len() <= idx {
            self.slots.resize(idx + 1, None);
        }
        Ok(id)
    }

    fn place(&mut self, id: u32, v: Version) {
        self.slots[id as usize] = Some(Box::new(v));
        self.count += 1;
    }

    /// Snapshot of the origin: a new version between 0 and its child.
    /// Returns the new version's id; `changed` gets every id to persist.
    pub fn snapshot_origin(
        &mut self,
        birth: Birth,
        next_version: &mut u32,
        changed: &mut Vec<u32>,
    ) -> Result<u32> {
        let id = self.alloc_id(next_version)?;
        let tag = birth.tag;
        let mut v = Version::new(0, birth);
        if let Some(child) = self.only_child(0) {
            v.children.push(child);
            self.must_mut(child).parent = id;
            changed.push(child);
        }
        self.place(id, v);
        self.must_mut(0).children = vec![id];
        self.set_tag(tag, id);
        changed.push(id);
        self.relabel();
        Ok(id)
    }

    /// Snapshot of version `of`, giving the new version `tag` (0 = hidden).
    pub fn snapshot_of(
        &mut self,
        of: u32,
        birth: Birth,
        next_version: &mut u32,
        changed: &mut Vec<u32>,
    ) -> Result<u32> {
        let tag = birth.tag;
        // A snapshot of a snapshot has its size.
        let size = self.must(of).size;
        if self.must(of).children.is_empty() {
            let id = self.alloc_id(next_version)?;
            let mut v = Version::new(of, birth);
            v.size = size;
            self.place(id, v);
            self.must_mut(of).children.push(id);
            self.set_tag(tag, id);
            changed.push(id);
        } else {
            // `of` becomes a ghost; its tag moves to a new leaf beside the new one.
            let keep = self.alloc_id(next_version)?;
            let id = self.alloc_id(next_version)?;
            let old = self.must(of).clone();
            // The tag's content is unchanged: its identity moves with it.
            let mut heir = Version::new(
                of,
                Birth {
                    tag: old.tag,
                    birthday: old.birthday,
                    memo: old.memo.clone(),
                    uuid: old.uuid,
                },
            );
            heir.flags = old.flags;
            heir.size = size;
            self.place(keep, heir);
            let mut v = Version::new(of, birth);
            v.size = size;
            self.place(id, v);
            let g = self.must_mut(of);
            g.tag = 0;
            g.memo.clear();
            // The identity went with the tag; the ghost has none of its own.
            g.uuid = [0; 16];
            g.flags &= !flags::EXPORTED;
            g.children.push(keep);
            g.children.push(id);
            self.set_tag(old.tag, keep);
            self.set_tag(tag, id);
            changed.extend([of, keep, id]);
        }
        self.relabel();
        Ok(*next_version - 1)
    }

    /// The origin grows from `old` bytes: every version that had the
    /// origin's size keeps `old` as its own. Returns the ids changed.
    pub fn keep_sizes(&mut self, old: u64) -> Vec<u32> {
        let mut changed = Vec::new();
        for (id, slot) in self.slots.iter_mut().enumerate().skip(1) {
            if let Some(v) = slot {
                if v.size.is_none() {
                    v.size = Some(old);
                    changed.push(id as u32);
                }
            }
        }
        changed
    }

    fn set_tag(&mut self, tag: u32, id: u32) {
        if tag != 0 {
            self.tags.insert(tag, id);
        }
    }

    /// Undo the reshaping [`snapshot_of`](Self::snapshot_of) did to make
    /// `copy` (a hidden version) when its source had children: the source
    /// became a ghost, its tag moved to a new leaf `copy - 1` beside `copy`.
    /// If that leaf and `copy` own nothing and have no children (nothing was
    /// written to them), both go and the ghost is the tagged source again,
    /// owning its copies as before. Returns the ids to persist (none when
    /// the shape is not that one, or something was written).
    pub fn unfreeze(&mut self, copy: u32) -> Vec<u32> {
        let Some(c) = self.get(copy) else {
            return Vec::new();
        };
        let (parent, keep) = (c.parent, copy.wrapping_sub(1));
        let fits = |v: Option<&Version>, p: u32| {
            v.is_some_and(|x| x.parent == p && x.children.is_empty() && x.exceptions == 0)
        };
        let ghost_ok = self.get(parent).is_some_and(|g| {
            g.tag == 0
                && g.uuid == [0; 16]
                && g.children.contains(&keep)
                && g.children.contains(&copy)
        });
        if parent == 0
            || !ghost_ok
            || !fits(Some(c), parent)
            || !fits(self.get(keep), parent)
            || self.get(keep).is_none_or(|k| k.tag == 0)
        {
            return Vec::new();
        }
        let k = self.must(keep).clone();
        self.remove(copy, None);
        self.remove(keep, None);
        let g = self.must_mut(parent);
        g.tag = k.tag;
        g.memo = k.memo;
        g.uuid = k.uuid;
        g.flags = k.flags;
        g.birthday = k.birthday;
        self.set_tag(k.tag, parent);
        self.relabel();
        vec![copy, keep, parent]
    }

    /// Drop a tag: its version becomes a ghost for the cleaner.
    pub fn untag(&mut self, tag: u32) -> Option<u32> {
        let id = self.tags.remove(&tag)?;
        let v = self.must_mut(id);
        v.tag = 0;
        Some(id)
    }

    /// The cleaning plan: ghosts to remove, each with its one surviving
    /// child, which (or whose own heir, if it is removed too) inherits the
    /// ghost's exceptions; None = the ghost's whole subtree goes away.
    pub fn plan_cleaning(&self, only_flagged: bool) -> HashMap<u32, Option<u32>> {
        let eligible = |id: u32, v: &Version| {
            id != 0
                && v.tag == 0
                && v.flags & flags::PINNED == 0
                && (!only_flagged || v.flags & flags::CLEANING != 0)
        };
        // Ghost subtrees with nothing alive below go first, leaves up.
        let mut dropped: HashSet<u32> = HashSet::new();
        loop {
            let mut changed = false;
            for id in self.ids() {
                let v = self.must(id);
                if !dropped.contains(&id)
                    && eligible(id, v)
                    && v.children.iter().all(|c| dropped.contains(c))
                {
                    dropped.insert(id);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        let mut plan: HashMap<u32, Option<u32>> = dropped.iter().map(|&d| (d, None)).collect();
        let mut merged: HashMap<u32, u32> = HashMap::new();
        for id in self.ids() {
            let v = self.must(id);
            if dropped.contains(&id) || !eligible(id, v) {
                continue;
            }
            let alive: Vec<u32> = v
                .children
                .iter()
                .copied()
                .filter(|c| !dropped.contains(c))
                .collect();
            if alive.len() == 1 {
                merged.insert(id, alive[0]);
            }
        }
        for (g, child) in merged {
            plan.insert(g, Some(child));
        }
        plan
    }

    /// Versions the cleaning pass is removing (flagged).
    pub fn cleaning(&self) -> HashMap<u32, Option<u32>> {
        self.plan_cleaning(true)
    }

    /// Take a version out of the tree (cleaning). A merged ghost's one
    /// surviving child moves up to its parent; a dropped one just goes.
    pub fn remove(&mut self, id: u32, heir_child: Option<u32>) {
        let Some(v) = self.slots.get_mut(id as usize).and_then(|s| s.take()) else {
            return;
        };
        self.count -= 1;
        if let Some(p) = self.get_mut(v.parent) {
            p.children.retain(|&c| c != id);
        }
        if let Some(c) = heir_child {
            if let Some(cv) = self.get_mut(c) {
                cv.parent = v.parent;
            }
            if let Some(p) = self.get_mut(v.parent) {
                p.children.push(c);
            }
        }
        for c in v.children {
            if Some(c) != heir_child {
                if let Some(cv) = self.get_mut(c) {
                    // A dropped ghost's children are dropped too; detach them.
                    cv.parent = NONE;
                }
            }
        }
        if v.tag != 0 {
            self.tags.remove(&v.tag);
        }
    }

    /// Recompute interval labels after the shape changed.
    pub fn relabel(&mut self) {
        self.relabel_unchecked();
    }

    /// Returns how many versions the DFS reached.
    fn relabel_unchecked(&mut self) -> usize {
        let mut counter = 0u32;
        // (id, next child index)
        let mut stack: Vec<(u32, usize)> = vec![(0, 0)];
        let mut visited = 0usize;
        self.labels.clear();
        self.labels.resize(self.slots.len(), (0, 0));
        visited += 1;
        while let Some(&mut (id, ref mut next)) = stack.last_mut() {
            let child = self.get(id).and_then(|v| v.children.get(*next).copied());
            match child {
                Some(c) => {
                    *next += 1;
                    counter += 1;
                    visited += 1;
                    if visited > self.count + 1 {
                        return visited; // a cycle; the caller reports it
                    }
                    if let Some(l) = self.labels.get_mut(c as usize) {
                        l.0 = counter;
                    }
                    stack.push((c, 0));
                }
                None => {
                    if let Some(l) = self.labels.get_mut(id as usize) {
                        l.1 = counter;
                    }
                    stack.pop();
                }
            }
        }
        visited
    }
}

#[cold]
fn unreachable_version(id: u32) -> ! {
    // Internal ids come only from the tree itself; a miss is a logic error.
    panic!("version {id} is not in the tree")
}

#[cfg(test)]
mod tests;
