//! The metadata state guarded by the store's mutex.

use crate::btree::{Loader, Tree};
use crate::error::{Error, Result};
use crate::exceptions::{ExcKey, ExceptionCodec, MERGED};
use crate::format::Superblock;
use crate::io::Dev;
use crate::space::SpaceMap;
use crate::versions::record::{CatKey, CatValue, CatalogCodec, OriginRecord};
use crate::versions::VersionTree;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Chunks that one version (the origin's child when last looked at) is
/// known to own: an origin overwrite of such a chunk needs no copy-out and
/// no look-up in the exception tree. Only ever a subset of the truth.
#[derive(Default)]
pub(crate) struct OwnedSet {
    version: u32,
    bits: Vec<u64>,
}

impl OwnedSet {
    pub fn contains(&self, version: u32, chunk: u64) -> bool {
        self.version == version
            && self
                .bits
                .get((chunk / 64) as usize)
                .is_some_and(|w| w & (1 << (chunk % 64)) != 0)
    }

    pub fn learn(&mut self, version: u32, chunk: u64) {
        if self.version != version {
            self.version = version;
            self.bits.clear();
        }
        let w = (chunk / 64) as usize;
        if self.bits.len() <= w {
            self.bits.resize(w + 1, 0);
        }
        self.bits[w] |= 1 << (chunk % 64);
    }

    fn forget(&mut self, version: u32, chunk: u64) {
        if self.version == version {
            if let Some(w) = self.bits.get_mut((chunk / 64) as usize) {
                *w &= !(1 << (chunk % 64));
            }
        }
    }
}

/// Metadata pages of a commit: (page, how to make its bytes).
pub(crate) type EncodedPages = Vec<(u64, crate::btree::Encode)>;

/// One bound origin in memory.
pub(crate) struct Origin {
    pub index: u32,
    pub rec: OriginRecord,
    pub tree: VersionTree,
    pub dev: Option<Dev>,
    /// Set after an origin write; the next commit syncs the device.
    pub dirty: Arc<AtomicBool>,
    pub open_volumes: usize,
    /// The cleaning pass in progress: version -> its one surviving child
    /// (None = dropped with its subtree).
    pub cleaning: HashMap<u32, Option<u32>>,
    pub owned: OwnedSet,
}

impl Origin {
    pub fn chunks(&self, chunk_bytes: u64) -> u64 {
        self.rec.size.div_ceil(chunk_bytes)
    }
}

pub(crate) struct Meta {
    pub cow: Dev,
    /// The superblock of the last encoded commit.
    pub sb: Superblock,
    pub exc: Tree<ExceptionCodec>,
    pub cat: Tree<CatalogCodec>,
    pub space: SpaceMap,
    pub origins: HashMap<u32, Origin>,
    pub by_id: HashMap<String, u32>,
    /// The open transaction's number (in memory only).
    pub txn: u64,
    /// Chunks whose exceptions changed, with the transaction that changed
    /// them. An overwrite in place (of the origin, or of a snapshot's own
    /// COW chunk) relies on who has their own copy; it waits until that is
    /// durable, because after a crash the durable exceptions are what count.
    pub chunk_txn: HashMap<(u32, u64), u64>,
    /// Chunks given a rollback's MERGED marker, with the transaction.
    pub marker_txn: HashMap<(u32, u64), u64>,
    /// Records of merged rollback data (markers, a rollback cursor) were
    /// made since the last commit: that commit syncs the origins first.
    pub needs_origin_sync: bool,
    /// COW chunks first used in a transaction not yet durable: the durable
    /// state does not reference them, so writing them in place is safe.
    pub new_chunks: HashMap<u64, u64>,
    pub dirty_versions: HashSet<(u32, u32)>,
    pub dirty_origins: HashSet<u32>,
    pub removed_records: Vec<CatKey>,
    pub force_dirty: bool,
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
            dirty_versions: HashSet::new(),
            dirty_origins: HashSet::new(),
            removed_records: Vec::new(),
            force_dirty: false,
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
        for (k, v) in entries {
            let slot = grouped.entry(k.origin).or_default();
            match v {
                CatValue::Origin(o) if k.version == 0 => slot.0 = Some(o),
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
            let cleaning = if rec.clean_cursor.is_some() {
                tree.cleaning()
            } else {
                HashMap::new()
            };
            origins.insert(
                index,
                Origin {
                    index,
                    rec,
                    tree,
                    dev: None,
                    dirty: Arc::new(AtomicBool::new(false)),
                    open_volumes: 0,
                    cleaning,
                    owned: OwnedSet::default(),
                },
            );
        }
        let mut m = Meta::new(cow, sb, space, origins, 1);
        m.cat = cat;
        Ok(m)
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

    /// Exceptions of one chunk: (version, COW chunk).
    pub fn exceptions(&mut self, origin: u32, chunk: u64) -> Result<Vec<(u32, u64)>> {
        let io = loader(&self.cow, &self.sb);
        let mut out = Vec::new();
        let hi = if chunk == u64::MAX {
            ExcKey::new(origin + 1, 0, 0)
        } else {
            ExcKey::new(origin, chunk + 1, 0)
        };
        self.exc.range(
            &io,
            &ExcKey::new(origin, chunk, 0),
            &hi,
            usize::MAX,
            &mut out,
        )?;
        Ok(out.into_iter().map(|(k, v)| (k.version, v)).collect())
    }

    /// Exceptions of an origin from chunk `from` on, at most `limit`.
    pub fn exception_range(
        &mut self,
        origin: u32,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(ExcKey, u64)>> {
        let io = loader(&self.cow, &self.sb);
        let mut out = Vec::new();
        self.exc.range(
            &io,
            &ExcKey::new(origin, from, 0),
            &ExcKey::new(origin + 1, 0, 0),
            limit,
            &mut out,
        )?;
        Ok(out)
    }

    fn count(&mut self, origin: u32, version: u32, delta: i64) {
        if let Some(v) = self
            .origins
            .get_mut(&origin)
            .and_then(|o| o.tree.get_mut(version))
        {
            v.exceptions = v.exceptions.saturating_add_signed(delta);
            self.dirty_versions.insert((origin, version));
        }
    }

    /// Mark `chunk` as merged for a rollback whose source is `source`.
    pub fn insert_merged(&mut self, origin: u32, chunk: u64, source: u32) -> Result<()> {
        let io = loader(&self.cow, &self.sb);
        let key = ExcKey::new(origin, chunk, source);
        // A marker changes who reads what: in-place overwrites of a
        // snapshot's chunk wait until it is durable. It protects no one's
        // old origin data, so origin overwrites need not wait. The commit
        // that makes it durable syncs the origins first: a durable marker
        // always means merged data on the device.
        self.marker_txn.insert((origin, chunk), self.txn);
        self.needs_origin_sync = true;
        match self.exc.insert(&io, &mut self.space.alloc, key, MERGED)? {
            None => self.count(origin, source, 1),
            // The source's own copy is not needed once the chunk is merged.
            Some(old) => self.free_exception_chunk(old),
        }
        Ok(())
    }

    /// Free the COW chunk of a removed exception (markers own no chunk).
    pub fn free_exception_chunk(&mut self, cow: u64) {
        if cow != MERGED {
            self.space.alloc.free_data(cow);
        }
    }

    /// Record a freshly allocated COW chunk as `version`'s exception.
    pub fn add_new_exception(
        &mut self,
        origin: u32,
        chunk: u64,
        version: u32,
        cow: u64,
    ) -> Result<()> {
        self.new_chunks.insert(cow, self.txn);
        self.space.alloc.confirm_data(cow);
        self.insert_exception(origin, chunk, version, cow)
    }

    /// The transaction an in-place overwrite of `chunk` must wait for, if any.
    pub fn overwrite_wait(
        &self,
        origin: u32,
        chunk: u64,
        cow: Option<u64>,
        durable: u64,
    ) -> Option<u64> {
        if cow.is_some_and(|c| self.new_chunks.get(&c).is_some_and(|&t| t > durable)) {
            return None;
        }
        let change = self.chunk_txn.get(&(origin, chunk)).copied();
        // Markers matter to in-place writes of snapshot chunks only.
        let marker = cow.and_then(|_| self.marker_txn.get(&(origin, chunk)).copied());
        change.max(marker).filter(|&t| t > durable)
    }

    pub fn insert_exception(
        &mut self,
        origin: u32,
        chunk: u64,
        version: u32,
        cow: u64,
    ) -> Result<()> {
        let io = loader(&self.cow, &self.sb);
        let old = self.exc.insert(
            &io,
            &mut self.space.alloc,
            ExcKey::new(origin, chunk, version),
            cow,
        )?;
        self.chunk_txn.insert((origin, chunk), self.txn);
        if let Some(o) = self.origins.get_mut(&origin) {
            if o.owned.version == version || o.tree.only_child(0) == Some(version) {
                o.owned.learn(version, chunk);
            }
        }
        if old.is_none() {
            self.count(origin, version, 1);
        }
        Ok(())
    }

    pub fn remove_exception(
        &mut self,
        origin: u32,
        chunk: u64,
        version: u32,
    ) -> Result<Option<u64>> {
        let io = loader(&self.cow, &self.sb);
        let old = self.exc.remove(
            &io,
            &mut self.space.alloc,
            &ExcKey::new(origin, chunk, version),
        )?;
        // No entry in `chunk_txn`: a removal only makes versions read more
        // from their ancestors, so the durable state, which still has the
        // exception, relies on the origin's or a snapshot's data no more
        // than the new one does, and an overwrite need not wait for it.
        // (A relabel's insert does record the chunk.)
        if let Some(o) = self.origins.get_mut(&origin) {
            o.owned.forget(version, chunk);
        }
        if old.is_some() {
            self.count(origin, version, -1);
        }
        Ok(old)
    }

    /// Move exception (chunk, from) to (chunk, to), keeping its data.
    pub fn relabel(&mut self, origin: u32, chunk: u64, from: u32, to: u32) -> Result<()> {
        if let Some(cow) = self.remove_exception(origin, chunk, from)? {
            self.insert_exception(origin, chunk, to, cow)?;
        }
        Ok(())
    }

    pub fn mark_versions(&mut self, origin: u32, ids: &[u32]) {
        for &v in ids {
            self.dirty_versions.insert((origin, v));
        }
    }

    pub fn has_changes(&self) -> bool {
        self.force_dirty
            || self.exc.is_dirty()
            || self.cat.is_dirty()
            || !self.dirty_versions.is_empty()
            || !self.dirty_origins.is_empty()
            || !self.removed_records.is_empty()
            || self.space.alloc.fresh_pages() > 0
            || self.space.alloc.has_pending()
    }

    /// Write dirty catalog records into the catalog tree.
    fn write_records(&mut self) -> Result<()> {
        let io = loader(&self.cow, &self.sb);
        for key in std::mem::take(&mut self.removed_records) {
            self.cat.remove(&io, &mut self.space.alloc, &key)?;
        }
        let mut origins: Vec<u32> = self.dirty_origins.drain().collect();
        origins.sort_unstable();
        for o in origins {
            if let Some(org) = self.origins.get(&o) {
                let val = CatValue::Origin(org.rec.clone());
                self.cat.insert(
                    &io,
                    &mut self.space.alloc,
                    CatKey {
                        origin: o,
                        version: 0,
                    },
                    val,
                )?;
            }
        }
        let mut versions: Vec<(u32, u32)> = self.dirty_versions.drain().collect();
        versions.sort_unstable();
        for (o, v) in versions {
            let key = CatKey {
                origin: o,
                version: v,
            };
            let rec = self
                .origins
                .get(&o)
                .and_then(|org| org.tree.get(v))
                .map(|x| x.record());
            match rec {
                Some(rec) if v != 0 => {
                    self.cat
                        .insert(&io, &mut self.space.alloc, key, CatValue::Version(rec))?;
                }
                Some(_) => {}
                None => {
                    self.cat.remove(&io, &mut self.space.alloc, &key)?;
                }
            }
        }
        Ok(())
    }

    /// Encode the open transaction as generation `sb.generation + 1`.
    pub fn prepare_commit(&mut self) -> Result<(EncodedPages, Superblock)> {
        self.write_records()?;
        let gen = self.sb.generation + 1;
        let mut blocks = self.exc.take_dirty(gen);
        blocks.extend(self.cat.take_dirty(gen));
        let io = loader(&self.cow, &self.sb);
        blocks.extend(self.space.prepare_commit(&io, gen)?);
        let alloc = &self.space.alloc;
        let mut sb = self.sb.clone();
        sb.generation = gen;
        sb.exception_root = self.exc.root();
        sb.catalog_root = self.cat.root();
        sb.space_root = self.space.root();
        sb.data_chunks = alloc.data_chunks - alloc.reserved_chunks();
        sb.meta_pages = alloc
            .used_pages()
            .saturating_sub(alloc.data_chunks * u64::from(alloc.chunk_pages()));
        self.sb = sb.clone();
        self.force_dirty = false;
        Ok((blocks, sb))
    }
}
