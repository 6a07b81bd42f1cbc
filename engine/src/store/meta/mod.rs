//! The metadata state guarded by the store's mutex.
//!
//! Its fields are private: a change to anything a commit writes goes
//! through a method that records it (an origin record, a version record, a
//! catalog removal, the exception tree), so no caller can forget to.
//! In-memory state (an origin's device, open volumes, the cleaner's plan,
//! the owned set) is reached through `origin_mut`, which cannot touch the
//! records.

mod owned;
mod pointers;
mod prepare;
mod zeros;

pub(crate) use owned::OwnedSet;

use crate::btree::{Loader, Tree, Visitor, WalkStats};
use crate::error::{Error, Result};
use crate::exceptions::ExceptionCodec;
use crate::format::Superblock;
use crate::io::Dev;
use crate::space::{Allocator, SpaceMap};
use crate::versions::record::{CatKey, CatValue, CatalogCodec, OriginRecord, ZEROS_VERSION};
use crate::versions::{Version, VersionTree};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Metadata pages of a commit: (page, how to make its bytes).
pub(crate) type EncodedPages = Vec<(u64, crate::btree::Encode)>;

/// One bound origin in memory. Its record and version tree are read here
/// and changed through [`Meta::edit`].
pub(crate) struct Origin {
    pub index: u32,
    rec: OriginRecord,
    tree: VersionTree,
    pub dev: Option<Dev>,
    /// Set after an origin write; the next commit syncs the device.
    pub dirty: Arc<AtomicBool>,
    pub open_volumes: usize,
    /// The origin's size, shared with its open origin volumes (they see a
    /// grow at once).
    pub live_size: Arc<std::sync::atomic::AtomicU64>,
    /// Open volumes per tag (a snapshot open is exposed: no policy deletes it).
    pub open_tags: HashMap<u32, usize>,
    /// The cleaning pass in progress: version -> its one surviving child
    /// (None = dropped with its subtree).
    pub cleaning: HashMap<u32, Option<u32>>,
    pub owned: OwnedSet,
    /// Chunks the device reads as zeros, discarded through dms.
    zeros: zeros::ZeroMap,
}

impl Origin {
    pub fn new(index: u32, rec: OriginRecord, tree: VersionTree, dev: Option<Dev>) -> Origin {
        let cleaning = if rec.clean_cursor.is_some() {
            tree.cleaning()
        } else {
            HashMap::new()
        };
        let size = rec.size;
        Origin {
            index,
            rec,
            tree,
            dev,
            dirty: Arc::new(AtomicBool::new(false)),
            open_volumes: 0,
            live_size: Arc::new(std::sync::atomic::AtomicU64::new(size)),
            open_tags: HashMap::new(),
            cleaning,
            owned: OwnedSet::default(),
            zeros: zeros::ZeroMap::default(),
        }
    }

    pub fn rec(&self) -> &OriginRecord {
        &self.rec
    }

    pub fn tree(&self) -> &VersionTree {
        &self.tree
    }

    pub fn chunks(&self, chunk_bytes: u64) -> u64 {
        self.rec.size.div_ceil(chunk_bytes)
    }

    /// Size in bytes of version `v`: its own if the origin grew after it
    /// was taken, else the origin's.
    pub fn version_size(&self, v: u32) -> u64 {
        match self.tree.get(v).and_then(|x| x.size) {
            Some(s) if v != 0 => s,
            _ => self.rec.size,
        }
    }
}

/// A change to one origin's records: what it touches is recorded for the
/// next commit.
pub(crate) struct OriginEdit<'a> {
    index: u32,
    origin: &'a mut Origin,
    records: &'a mut HashSet<u32>,
    versions: &'a mut HashSet<(u32, u32)>,
}

impl OriginEdit<'_> {
    /// The origin record, to change.
    pub fn rec(&mut self) -> &mut OriginRecord {
        self.records.insert(self.index);
        &mut self.origin.rec
    }

    /// Version `v`'s record, to change (None if there is no such version).
    pub fn version(&mut self, v: u32) -> Option<&mut Version> {
        let x = self.origin.tree.get_mut(v)?;
        self.versions.insert((self.index, v));
        Some(x)
    }

    /// Change the tree's shape: `f` lists the versions whose records it
    /// changed (as the tree's own operations do).
    pub fn tree<R>(&mut self, f: impl FnOnce(&mut VersionTree, &mut Vec<u32>) -> R) -> R {
        let mut changed = Vec::new();
        let r = f(&mut self.origin.tree, &mut changed);
        for v in changed {
            self.versions.insert((self.index, v));
        }
        r
    }

    /// The in-memory state of the origin (not its records).
    pub fn state(&mut self) -> &mut Origin {
        self.origin
    }

    /// Read the origin.
    pub fn get(&self) -> &Origin {
        self.origin
    }
}

pub(crate) struct Meta {
    cow: Dev,
    /// The superblock of the last encoded commit.
    sb: Superblock,
    exc: Tree<ExceptionCodec>,
    cat: Tree<CatalogCodec>,
    space: SpaceMap,
    origins: HashMap<u32, Origin>,
    by_id: HashMap<String, u32>,
    /// The open transaction's number (in memory only).
    txn: u64,
    /// Chunks whose exceptions changed, with the transaction that changed
    /// them. An overwrite in place (of the origin, or of a snapshot's own
    /// COW chunk) relies on who has their own copy; it waits until that is
    /// durable, because after a crash the durable exceptions are what count.
    chunk_txn: HashMap<(u32, u64), u64>,
    /// Chunks given a rollback's MERGED marker, with the transaction.
    marker_txn: HashMap<(u32, u64), u64>,
    /// Records of merged rollback data (markers, a rollback cursor) were
    /// made since the last commit: that commit syncs the origins first.
    needs_origin_sync: bool,
    /// COW chunks first used in a transaction not yet durable: the durable
    /// state does not reference them, so writing them in place is safe.
    new_chunks: HashMap<u64, u64>,
    /// Version records and origin records to rewrite at the next commit.
    changed_versions: HashSet<(u32, u32)>,
    changed_records: HashSet<u32>,
    removed_records: Vec<CatKey>,
    force_dirty: bool,
    /// The store's policy, and whether it is to be written.
    policy: crate::versions::record::StorePolicy,
    policy_dirty: bool,
    /// Origins whose zero map is to be written.
    zeros_dirty: HashSet<u32>,
}

pub(crate) fn loader<'a>(cow: &'a Dev, sb: &Superblock) -> Loader<'a> {
    Loader {
        dev: &**cow,
        max_generation: sb.generation,
        page_count: sb.page_count,
        chunk_pages: sb.chunk_pages,
    }
}

impl Meta {
    pub fn new(
        cow: Dev,
        sb: Superblock,
        space: SpaceMap,
        origins: HashMap<u32, Origin>,
        txn: u64,
    ) -> Meta {
        let by_id = origins
            .iter()
            .map(|(i, o)| (o.rec.id.clone(), *i))
            .collect();
        Meta {
            cow,
            exc: Tree::new(sb.exception_root),
            cat: Tree::new(sb.catalog_root),
            sb,
            space,
            origins,
            by_id,
            txn,
            chunk_txn: HashMap::new(),
            marker_txn: HashMap::new(),
            needs_origin_sync: false,
            new_chunks: HashMap::new(),
            changed_versions: HashSet::new(),
            changed_records: HashSet::new(),
            removed_records: Vec::new(),
            force_dirty: false,
            policy: Default::default(),
            policy_dirty: false,
            zeros_dirty: HashSet::new(),
        }
    }

    /// Load the catalog and space map named by `sb`.
    pub fn load(cow: Dev, sb: Superblock) -> Result<Meta> {
        let io = loader(&cow, &sb);
        let space = SpaceMap::open(&io, sb.space_root, sb.chunk_pages, sb.data_chunks)?;
        let mut cat: Tree<CatalogCodec> = Tree::new(sb.catalog_root);
        let lo = CatKey {
            origin: 0,
            version: 0,
        };
        let hi = CatKey {
            origin: u32::MAX,
            version: u32::MAX,
        };
        let mut entries = Vec::new();
        cat.range(&io, &lo, &hi, usize::MAX, &mut entries)?;
        let block = sb.catalog_root;
        let mut grouped: HashMap<u32, (Option<OriginRecord>, Vec<_>)> = HashMap::new();
        let mut zero_maps: Vec<(u32, Vec<(u64, u64)>)> = Vec::new();
        let mut policy = crate::versions::record::StorePolicy::default();
        for (k, v) in entries {
            if k == crate::versions::record::POLICY_KEY {
                match v {
                    CatValue::Policy(p) => policy = p,
                    _ => {
                        return Err(Error::corrupt(
                            block,
                            "catalog tree node",
                            "the policy record is of the wrong kind",
                        ))
                    }
                }
                continue;
            }
            let slot = grouped.entry(k.origin).or_default();
            match v {
                CatValue::Origin(o) if k.version == 0 => slot.0 = Some(o),
                CatValue::Zeros(z) if k.version == ZEROS_VERSION => zero_maps.push((k.origin, z)),
                CatValue::Version(r) if k.version != 0 => slot.1.push((k.version, r)),
                _ => {
                    return Err(Error::corrupt(
                        block,
                        "catalog tree node",
                        format!("record of the wrong kind at {k:?}"),
                    ))
                }
            }
        }
        let mut origins = HashMap::new();
        for (index, (rec, versions)) in grouped {
            let Some(rec) = rec else {
                return Err(Error::corrupt(
                    block,
                    "catalog tree node",
                    format!("versions without origin {index}"),
                ));
            };
            if index >= sb.next_origin {
                return Err(Error::corrupt(
                    block,
                    "catalog tree node",
                    format!("origin {index} beyond the counter"),
                ));
            }
            let tree = VersionTree::from_records(rec.birthday, versions, rec.next_version, block)?;
            origins.insert(index, Origin::new(index, rec, tree, None));
        }
        let cb = u64::from(sb.chunk_pages) * crate::format::PAGE_SIZE as u64;
        for (index, runs) in zero_maps {
            let Some(o) = origins.get_mut(&index) else {
                return Err(Error::corrupt(
                    block,
                    "catalog tree node",
                    format!("zero map without origin {index}"),
                ));
            };
            o.zeros = zeros::ZeroMap::from_runs(&runs, o.rec.size / cb, block)?;
        }
        let store_uuid = sb.uuid;
        let mut m = Meta::new(cow, sb, space, origins, 1);
        m.cat = cat;
        m.policy = policy;
        let indices: Vec<u32> = m.origins.keys().copied().collect();
        for index in indices {
            m.settle_versions(index, &store_uuid)?;
        }
        Ok(m)
    }

    /// After loading an origin: versions from records without an identity
    /// get one derived from the store, origin and version (the same at
    /// every open until the record is rewritten with it); a send's frozen
    /// copy left by a stop becomes a ghost for the cleaner, and so does a
    /// receive's undo point when no receive is in progress.
    fn settle_versions(&mut self, index: u32, store_uuid: &[u8; 16]) -> Result<()> {
        use crate::versions::record::flags;
        let mut o = self.edit(index)?;
        let receiving = o.get().rec().receive.is_some();
        // A send's frozen copies first: the tree goes back to its shape
        // before them where nothing was written (before the loop below can
        // give their ghost an identity).
        let sending: Vec<u32> = o
            .get()
            .tree()
            .ids()
            .filter(|&v| {
                o.get()
                    .tree()
                    .get(v)
                    .is_some_and(|x| x.flags & flags::SENDING != 0)
            })
            .collect();
        for v in sending {
            if let Some(x) = o.version(v) {
                x.flags &= !(flags::SENDING | flags::PINNED);
            }
            o.tree(|t, changed| changed.extend(t.unfreeze(v)));
        }
        let ids: Vec<u32> = o.get().tree().ids().filter(|&v| v != 0).collect();
        for v in ids {
            let Some(x) = o.get().tree().get(v) else {
                continue;
            };
            let stale = x.flags & flags::SENDING != 0 || (x.flags & flags::UNDO != 0 && !receiving);
            let anonymous = x.uuid == [0u8; 16];
            if !stale && !anonymous {
                continue;
            }
            if let Some(x) = o.version(v) {
                if stale {
                    x.flags &= !(flags::SENDING | flags::UNDO | flags::PINNED);
                }
                if anonymous {
                    let mut seed = b"dms version identity".to_vec();
                    seed.extend_from_slice(store_uuid);
                    seed.extend_from_slice(&index.to_le_bytes());
                    seed.extend_from_slice(&v.to_le_bytes());
                    seed.extend_from_slice(&x.birthday.to_le_bytes());
                    x.uuid
                        .copy_from_slice(&blake3::hash(&seed).as_bytes()[..16]);
                }
            }
        }
        Ok(())
    }

    pub fn origin(&self, id: &str) -> Result<u32> {
        self.by_id
            .get(id)
            .copied()
            .ok_or_else(|| Error::UnknownOrigin(id.to_string()))
    }

    pub fn origin_ref(&self, index: u32) -> Result<&Origin> {
        self.origins
            .get(&index)
            .ok_or_else(|| Error::UnknownOrigin(format!("#{index}")))
    }

    pub fn origin_mut(&mut self, index: u32) -> Result<&mut Origin> {
        self.origins
            .get_mut(&index)
            .ok_or_else(|| Error::UnknownOrigin(format!("#{index}")))
    }

    /// Version carrying `tag` of origin `index`.
    pub fn version_of(&self, index: u32, tag: u32) -> Result<u32> {
        let o = self.origin_ref(index)?;
        o.tree.by_tag(tag).ok_or_else(|| Error::UnknownTag {
            origin: o.rec.id.clone(),
            tag,
        })
    }

    /// A write to `version` changes its content: an identity it gave out
    /// (sent, received) no longer names it, so it gets a new one.
    pub fn content_changes(&mut self, index: u32, version: u32) -> Result<()> {
        use crate::versions::record::flags;
        if version == 0 {
            return Ok(());
        }
        let exported = self
            .origin_ref(index)?
            .tree()
            .get(version)
            .is_some_and(|v| v.flags & flags::EXPORTED != 0);
        if exported {
            if let Some(v) = self.edit(index)?.version(version) {
                v.flags &= !flags::EXPORTED;
                v.uuid = super::new_uuid();
            }
        }
        Ok(())
    }

    /// Change origin `index`'s records (see [`OriginEdit`]).
    pub fn edit(&mut self, index: u32) -> Result<OriginEdit<'_>> {
        let origin = self
            .origins
            .get_mut(&index)
            .ok_or_else(|| Error::UnknownOrigin(format!("#{index}")))?;
        Ok(OriginEdit {
            index,
            origin,
            records: &mut self.changed_records,
            versions: &mut self.changed_versions,
        })
    }

    /// Bind a new origin (its record and root version written at the next
    /// commit); returns its index.
    pub fn add_origin(&mut self, rec: OriginRecord, dev: Dev) -> Result<u32> {
        if self.by_id.contains_key(&rec.id) {
            return Err(Error::OriginExists(rec.id.clone()));
        }
        let index = self.sb.next_origin;
        if index == u32::MAX {
            return Err(Error::LimitReached("origins in this store"));
        }
        self.sb.next_origin = index + 1;
        self.force_dirty = true;
        self.by_id.insert(rec.id.clone(), index);
        let tree = VersionTree::new(rec.birthday);
        self.origins
            .insert(index, Origin::new(index, rec, tree, Some(dev)));
        self.changed_records.insert(index);
        Ok(index)
    }

    /// Forget an origin whose exceptions are all gone: its records are
    /// removed at the next commit.
    pub fn remove_origin(&mut self, index: u32) -> Result<Origin> {
        let o = self
            .origins
            .remove(&index)
            .ok_or_else(|| Error::UnknownOrigin(format!("#{index}")))?;
        self.by_id.remove(&o.rec.id);
        self.zeros_dirty.remove(&index);
        self.removed_records.push(CatKey {
            origin: index,
            version: ZEROS_VERSION,
        });
        for v in o.tree.ids() {
            self.removed_records.push(CatKey {
                origin: index,
                version: v,
            });
            self.changed_versions.remove(&(index, v));
        }
        self.changed_records.remove(&index);
        Ok(o)
    }

    /// The superblock of the last encoded commit.
    pub fn sb(&self) -> &Superblock {
        &self.sb
    }

    pub fn policy(&self) -> &crate::versions::record::StorePolicy {
        &self.policy
    }

    pub fn set_policy(&mut self, p: crate::versions::record::StorePolicy) {
        self.policy = p;
        self.policy_dirty = true;
        self.force_dirty = true;
    }

    /// The COW device has `page_count` pages now: the store uses them from
    /// the next commit on.
    pub fn grow(&mut self, page_count: u64) {
        if page_count > self.sb.page_count {
            self.space.alloc.grow(page_count);
            self.sb.page_count = page_count;
            self.force_dirty = true;
        }
    }

    /// The open transaction.
    pub fn txn(&self) -> u64 {
        self.txn
    }

    /// The page allocator, to read.
    pub fn alloc(&self) -> &Allocator {
        &self.space.alloc
    }

    /// Reserve a data chunk (see [`Allocator::alloc_data`]).
    pub fn alloc_data(&mut self) -> Result<u64> {
        self.space.alloc.alloc_data()
    }

    /// Give back a data chunk.
    pub fn free_data(&mut self, chunk: u64) {
        self.space.alloc.free_data(chunk)
    }

    pub fn origins(&self) -> impl Iterator<Item = &Origin> {
        self.origins.values()
    }

    /// Ids of the bound origins, sorted.
    pub fn origin_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.by_id.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The next commit writes a superblock even if nothing else changed.
    pub fn force_commit(&mut self) {
        self.force_dirty = true;
    }

    /// Records of merged rollback data were made: the commit that makes them
    /// durable syncs the origins first.
    pub fn note_merged_data(&mut self) {
        self.needs_origin_sync = true;
    }

    /// Start a commit of the open transaction: its number, and whether it
    /// must sync the origins before its superblock.
    pub fn begin_commit(&mut self) -> (u64, bool) {
        let txn = self.txn;
        self.txn += 1;
        (txn, std::mem::take(&mut self.needs_origin_sync))
    }

    /// Commit `txn` is durable (`wrote`: it wrote a superblock).
    pub fn commit_done(&mut self, txn: u64, wrote: bool) {
        if wrote {
            self.space.alloc.commit_done();
        }
        self.chunk_txn.retain(|_, t| *t > txn);
        self.marker_txn.retain(|_, t| *t > txn);
        self.new_chunks.retain(|_, t| *t > txn);
    }

    /// Walk the catalog tree (for the checker).
    pub fn walk_catalog(&mut self, v: &mut dyn Visitor<CatalogCodec>) -> Result<WalkStats> {
        let io = loader(&self.cow, &self.sb);
        self.cat.walk(&io, v)
    }

    /// Walk the exception tree (for the checker and dumps).
    pub fn walk_exceptions(&mut self, v: &mut dyn Visitor<ExceptionCodec>) -> Result<WalkStats> {
        let io = loader(&self.cow, &self.sb);
        self.exc.walk(&io, v)
    }

    /// The pages of the space map's tree and bitmaps (for the checker).
    pub fn space_pages(&mut self, pages: &mut Vec<u64>) -> Result<()> {
        let io = loader(&self.cow, &self.sb);
        self.space.walk_pages(&io, pages)
    }
}
