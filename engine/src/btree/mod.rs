//! A copy-on-write B-tree over metadata pages.
//!
//! Nodes are decoded into memory on first use and kept in a cache. A node
//! written by a committed generation is never modified: the first change in a
//! transaction *shadows* it (copies it to a freshly allocated page and frees
//! the old one, which the space map keeps unusable until the commit that
//! frees it is durable). Nodes created in the open transaction are "dirty" and
//! change in place; the commit encodes and writes them.
//!
//! Entries are packed with per-node delta encoding (see [`Codec`]), so a node
//! holds as many entries as fit in its payload, not a fixed count.

pub mod codec;
mod lookup;
mod mutate;
mod walk;

pub use codec::Codec;
pub use walk::{Visitor, WalkStats};

use crate::error::{Error, Result};
use crate::format::{self, varint::Reader, PAYLOAD_SIZE};
use crate::io::BlockDev;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A metadata block's bytes, made when called.
pub type Encode = Box<dyn FnOnce() -> Vec<u8> + Send>;

/// Where a tree gets new pages and returns old ones.
pub trait MetaAlloc {
    fn alloc_meta(&mut self) -> Result<u64>;
    fn free_meta(&mut self, page: u64);
}

/// How a tree reads pages it does not have cached.
#[derive(Clone, Copy)]
pub struct Loader<'a> {
    pub dev: &'a dyn BlockDev,
    /// Highest generation a valid node may carry.
    pub max_generation: u64,
    /// Pages on the device; child pointers must fall below.
    pub page_count: u64,
    /// Pages per data chunk; exceptions must point at whole chunks inside.
    pub chunk_pages: u32,
}

impl Loader<'_> {
    pub fn read_page(&self, page: u64, kind: format::Kind) -> Result<Vec<u8>> {
        if page < format::SUPERBLOCK_SLOTS || page >= self.page_count {
            return Err(Error::corrupt(
                page,
                kind.name(),
                "page address out of range",
            ));
        }
        let mut buf = vec![0u8; format::PAGE_SIZE];
        self.dev
            .read_at(&mut buf, page * format::PAGE_SIZE as u64)?;
        Ok(buf)
    }
}

/// A decoded node.
#[derive(Debug)]
pub enum Node<C: Codec> {
    Leaf(Vec<(C::Key, C::Value)>),
    /// `level` >= 1; entry i is (lower bound of child i's keys, child page).
    Internal(u16, Vec<(C::Key, u64)>),
}

impl<C: Codec> Clone for Node<C> {
    fn clone(&self) -> Self {
        match self {
            Node::Leaf(e) => Node::Leaf(e.clone()),
            Node::Internal(l, e) => Node::Internal(*l, e.clone()),
        }
    }
}

impl<C: Codec> Node<C> {
    pub fn level(&self) -> u16 {
        match self {
            Node::Leaf(_) => 0,
            Node::Internal(l, _) => *l,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Node::Leaf(e) => e.len(),
            Node::Internal(_, e) => e.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn first_key(&self) -> Option<C::Key> {
        match self {
            Node::Leaf(e) => e.first().map(|x| x.0),
            Node::Internal(_, e) => e.first().map(|x| x.0),
        }
    }

    /// Bytes of payload this node encodes to.
    pub fn encoded_len(&self) -> usize {
        if self.len() * C::MAX_ENTRY <= PAYLOAD_SIZE {
            // Small enough that it surely fits; the exact length is not needed.
            return self.len() * C::MAX_ENTRY;
        }
        self.encode().len()
    }

    pub fn fits(&self) -> bool {
        self.len() * C::MAX_ENTRY <= PAYLOAD_SIZE || self.encode().len() <= PAYLOAD_SIZE
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PAYLOAD_SIZE);
        match self {
            Node::Leaf(entries) => {
                let mut prev: Option<&(C::Key, C::Value)> = None;
                for e in entries {
                    C::put_key(prev.map(|p| &p.0), &e.0, &mut out);
                    C::put_value(prev.map(|p| &p.1), &e.1, &mut out);
                    prev = Some(e);
                }
            }
            Node::Internal(_, entries) => {
                let mut prev: Option<&C::Key> = None;
                for (k, child) in entries {
                    C::put_key(prev, k, &mut out);
                    format::varint::put(&mut out, *child);
                    prev = Some(k);
                }
            }
        }
        out
    }

    pub fn decode(block: &[u8], page: u64, loader: &Loader) -> Result<Self> {
        let opened = format::open(block, C::KIND, page)?;
        let hdr = &opened.header;
        let gen = hdr.generation.get();
        let kind = C::KIND.name();
        if gen > loader.max_generation {
            return Err(Error::corrupt(
                page,
                kind,
                format!("generation {gen} is from the future"),
            ));
        }
        let level = hdr.level.get();
        let count = hdr.count.get() as usize;
        let mut r = Reader::new(opened.payload, page, kind);
        let node = if level == 0 {
            let mut entries: Vec<(C::Key, C::Value)> = Vec::with_capacity(count);
            for _ in 0..count {
                let prev = entries.last();
                let k = C::get_key(prev.map(|p| &p.0), &mut r)?;
                let v = C::get_value(prev.map(|p| &p.1), &mut r)?;
                if let Some(p) = prev {
                    if k <= p.0 {
                        return Err(r.err("keys out of order"));
                    }
                }
                C::check_value(&v, loader).map_err(|why| r.err(why))?;
                entries.push((k, v));
            }
            Node::Leaf(entries)
        } else {
            if count == 0 {
                return Err(Error::corrupt(page, kind, "empty internal node"));
            }
            let mut entries: Vec<(C::Key, u64)> = Vec::with_capacity(count);
            for _ in 0..count {
                let prev = entries.last().map(|p| &p.0);
                let k = C::get_key(prev, &mut r)?;
                let child = r.get()?;
                if prev.is_some_and(|p| k <= *p) {
                    return Err(r.err("keys out of order"));
                }
                if child < format::SUPERBLOCK_SLOTS || child >= loader.page_count {
                    return Err(r.err("child page out of range"));
                }
                entries.push((k, child));
            }
            Node::Internal(level, entries)
        };
        if !r.at_end() {
            return Err(r.err("trailing bytes after the last entry"));
        }
        Ok(node)
    }
}

/// One B-tree: its root, its cached nodes, and the pages it dirtied.
pub struct Tree<C: Codec> {
    root: u64,
    cache: HashMap<u64, Arc<Node<C>>>,
    dirty: HashSet<u64>,
    /// For dirty nodes: encoded size at the last exact measure, and bytes it
    /// may have grown since (a bound per change), so that a node is only
    /// re-encoded when it might no longer fit.
    sizes: HashMap<u64, (usize, usize)>,
}

impl<C: Codec> Tree<C> {
    /// A tree rooted at `root` (0 = empty).
    pub fn new(root: u64) -> Self {
        Tree {
            root,
            cache: HashMap::new(),
            dirty: HashSet::new(),
            sizes: HashMap::new(),
        }
    }

    pub fn root(&self) -> u64 {
        self.root
    }

    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    fn load(&mut self, io: &Loader, page: u64) -> Result<Arc<Node<C>>> {
        if let Some(n) = self.cache.get(&page) {
            return Ok(n.clone());
        }
        let block = io.read_page(page, C::KIND)?;
        let node = Arc::new(Node::<C>::decode(&block, page, io)?);
        self.cache.insert(page, node.clone());
        Ok(node)
    }

    /// Every dirty node for generation `generation`, to be encoded later
    /// (outside the metadata lock: each holds its own reference to the
    /// node, which later changes copy); afterwards the nodes are clean
    /// (committed) and the next change shadows them again.
    pub fn take_dirty(&mut self, generation: u64) -> Vec<(u64, Encode)> {
        let mut out: Vec<(u64, Encode)> = Vec::with_capacity(self.dirty.len());
        self.sizes.clear();
        for page in self.dirty.drain() {
            let Some(node) = self.cache.get(&page).cloned() else {
                continue;
            };
            out.push((
                page,
                Box::new(move || {
                    let payload = node.encode();
                    format::seal(
                        C::KIND,
                        node.level(),
                        node.len() as u16,
                        page,
                        generation,
                        &payload,
                    )
                }),
            ));
        }
        out
    }

    /// Forget cached nodes (after a failed transaction the cache may hold
    /// uncommitted nodes).
    #[cfg(test)]
    pub fn reset(&mut self, root: u64) {
        self.root = root;
        self.cache.clear();
        self.dirty.clear();
        self.sizes.clear();
    }
}

#[cfg(test)]
mod tests;
