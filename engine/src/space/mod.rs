//! Allocation of COW device pages.
//!
//! One bit per 4 KiB page (1 = in use), in bitmap blocks of 32,384 pages,
//! indexed by the space tree (block index -> page of the bitmap block and its
//! free count). Data chunks take aligned runs of `chunk_pages` pages;
//! metadata takes single pages, preferably from chunk groups already partly
//! used, so metadata does not splinter the room left for data.
//!
//! Two rules keep commits safe:
//! - a page freed by transaction N stays marked in memory until N is
//!   durable, so nothing the previous durable state references is reused;
//!   the bitmap written by N already shows it free.
//! - data allocation stops short of a reserve that only metadata may use, so
//!   a commit does not run out of room for its own nodes.

mod alloc;
mod codec;

pub use alloc::Allocator;

use crate::btree::{Encode, Loader, Tree};
use crate::error::{Error, Result};
use crate::format::{self, Kind, PAYLOAD_SIZE};
use codec::{SpaceCodec, SpaceEntry};
use std::collections::HashMap;

/// Words of bits in one bitmap block.
pub const BITMAP_WORDS: usize = PAYLOAD_SIZE / 8;
/// Pages covered by one bitmap block.
pub const PAGES_PER_BITMAP: u64 = (BITMAP_WORDS * 64) as u64;
const _: () = assert!(BITMAP_WORDS * 8 == PAYLOAD_SIZE);

/// The allocator plus the tree that persists its bitmap index.
pub struct SpaceMap {
    pub alloc: Allocator,
    tree: Tree<SpaceCodec>,
}

impl SpaceMap {
    /// A fresh map for a newly formatted device: only the superblock slots used.
    pub fn format(page_count: u64, chunk_pages: u32) -> SpaceMap {
        SpaceMap {
            alloc: Allocator::new_empty(page_count, chunk_pages),
            tree: Tree::new(0),
        }
    }

    /// Load the map of a store.
    pub fn open(io: &Loader, root: u64, chunk_pages: u32, data_chunks: u64) -> Result<SpaceMap> {
        let mut tree: Tree<SpaceCodec> = Tree::new(root);
        let nblocks = io.page_count.div_ceil(PAGES_PER_BITMAP);
        let mut entries = Vec::new();
        tree.range(io, &0, &u64::MAX, usize::MAX, &mut entries)?;
        if entries.len() as u64 != nblocks {
            return Err(Error::corrupt(
                root,
                Kind::SpaceNode.name(),
                format!(
                    "{} bitmap blocks indexed, {nblocks} expected",
                    entries.len()
                ),
            ));
        }
        let mut blocks = Vec::with_capacity(entries.len());
        for (i, (idx, e)) in entries.iter().enumerate() {
            if *idx != i as u64 {
                return Err(Error::corrupt(
                    root,
                    Kind::SpaceNode.name(),
                    "bitmap index has a gap",
                ));
            }
            let raw = io.read_page(e.page, Kind::Bitmap)?;
            let opened = format::open(&raw, Kind::Bitmap, e.page)?;
            if opened.payload.len() != PAYLOAD_SIZE {
                return Err(Error::corrupt(e.page, Kind::Bitmap.name(), "short bitmap"));
            }
            let bits: Vec<u64> = opened
                .payload
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect();
            let free: u32 = bits.iter().map(|w| w.count_zeros()).sum();
            if free != e.free {
                return Err(Error::corrupt(
                    e.page,
                    Kind::Bitmap.name(),
                    format!("{free} free pages, the index says {}", e.free),
                ));
            }
            blocks.push((e.page, bits));
        }
        let alloc = Allocator::from_blocks(io.page_count, chunk_pages, blocks, data_chunks)?;
        Ok(SpaceMap { alloc, tree })
    }

    pub fn root(&self) -> u64 {
        self.tree.root()
    }

    /// Settle allocation for a commit at `generation` and encode what changed:
    /// every dirty bitmap block gets a fresh page, the index records it, and
    /// that may dirty more blocks, until nothing moves.
    pub fn prepare_commit(&mut self, io: &Loader, generation: u64) -> Result<Vec<(u64, Encode)>> {
        loop {
            let mut changed = false;
            for i in self.alloc.dirty_blocks() {
                if !self.alloc.block_is_fresh(i) {
                    let page = self.alloc.alloc_meta_page()?;
                    let old = self.alloc.set_block_page(i, page);
                    if old != 0 {
                        self.alloc.free_page(old);
                    }
                    changed = true;
                }
            }
            let pending = self.alloc.pending_per_block();
            for i in self.alloc.dirty_blocks() {
                let want = SpaceEntry {
                    page: self.alloc.block_page(i),
                    free: self.alloc.block_free(i) + pending.get(&i).copied().unwrap_or(0),
                };
                if self.tree.get(io, &(i as u64))? != Some(want) {
                    self.tree.insert(io, &mut self.alloc, i as u64, want)?;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        let mut out: Vec<(u64, Encode)> = self
            .alloc
            .encode_dirty(generation)
            .into_iter()
            .map(|(page, block)| (page, Box::new(move || block) as Encode))
            .collect();
        out.extend(self.tree.take_dirty(generation));
        self.alloc.start_commit();
        Ok(out)
    }

    /// Pages of the space tree and the bitmap blocks, for the checker.
    pub fn walk_pages(&mut self, io: &Loader, pages: &mut Vec<u64>) -> Result<()> {
        struct V<'a>(&'a mut Vec<u64>, Vec<u64>);
        impl crate::btree::Visitor<SpaceCodec> for V<'_> {
            fn page(&mut self, p: u64) -> Result<()> {
                self.0.push(p);
                Ok(())
            }
            fn entry(&mut self, _: &u64, v: &SpaceEntry) -> Result<()> {
                self.1.push(v.page);
                Ok(())
            }
        }
        let mut v = V(pages, Vec::new());
        self.tree.walk(io, &mut v)?;
        let bitmaps = v.1;
        pages.extend(bitmaps);
        Ok(())
    }
}

/// Count of pending-free pages per bitmap block.
pub(crate) type PendingCounts = HashMap<usize, u32>;
