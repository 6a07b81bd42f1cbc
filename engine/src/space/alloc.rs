//! The in-memory allocator: bitmaps, cursors and the per-transaction sets.

use super::{PendingCounts, BITMAP_WORDS, PAGES_PER_BITMAP};
use crate::btree::MetaAlloc;
use crate::error::{Error, Result};
use crate::format::{self, Kind, SUPERBLOCK_SLOTS};
use std::collections::{BTreeSet, HashSet};

struct Block {
    /// Page holding this bitmap block on disk (0 = not yet written).
    page: u64,
    free: u32,
    bits: Vec<u64>,
    dirty: bool,
}

/// Page allocation state.
pub struct Allocator {
    page_count: u64,
    chunk_pages: u32,
    blocks: Vec<Block>,
    free_pages: u64,
    reserve: u64,
    /// Pages allocated in the open transaction: freeing them is immediate.
    fresh: HashSet<u64>,
    /// Pages freed in the open transaction, still marked in use.
    pending: Vec<u64>,
    /// Pages freed by the commit being written, still marked in use.
    inflight: Vec<u64>,
    /// Data chunks handed out but not yet referenced by an exception: the
    /// bitmap written by a commit shows them free, so a crash cannot leak them.
    reserved: HashSet<u64>,
    /// Chunk groups partly used, where metadata pages go first.
    meta_groups: BTreeSet<u64>,
    data_cursor: u64,
    meta_cursor: u64,
    /// Data chunks in use.
    pub data_chunks: u64,
}

impl Allocator {
    pub(super) fn new_empty(page_count: u64, chunk_pages: u32) -> Allocator {
        let nblocks = page_count.div_ceil(PAGES_PER_BITMAP) as usize;
        let blocks = (0..nblocks)
            .map(|_| Block {
                page: 0,
                free: 0,
                bits: vec![0u64; BITMAP_WORDS],
                dirty: true,
            })
            .collect();
        let mut a = Allocator::with_blocks(page_count, chunk_pages, blocks, 0);
        for p in 0..SUPERBLOCK_SLOTS {
            a.set_bit(p);
        }
        a.recount();
        a
    }

    pub(super) fn from_blocks(
        page_count: u64,
        chunk_pages: u32,
        raw: Vec<(u64, Vec<u64>)>,
        data_chunks: u64,
    ) -> Result<Allocator> {
        let blocks = raw
            .into_iter()
            .map(|(page, bits)| Block {
                page,
                free: 0,
                bits,
                dirty: false,
            })
            .collect();
        let mut a = Allocator::with_blocks(page_count, chunk_pages, blocks, data_chunks);
        for p in 0..SUPERBLOCK_SLOTS {
            if !a.is_set(p) {
                return Err(Error::corrupt(
                    a.blocks[0].page,
                    Kind::Bitmap.name(),
                    "superblock pages marked free",
                ));
            }
        }
        let last = (page_count - 1) / PAGES_PER_BITMAP;
        let tail_start = page_count;
        let tail_end = (last + 1) * PAGES_PER_BITMAP;
        for p in tail_start..tail_end {
            if !a.is_set(p) {
                return Err(Error::corrupt(
                    a.blocks[last as usize].page,
                    Kind::Bitmap.name(),
                    "pages past the end of the device marked free",
                ));
            }
        }
        a.recount();
        // Partly used groups are where metadata goes first.
        if chunk_pages > 1 {
            for g in 0..page_count / u64::from(chunk_pages) {
                let used = a.group_used(g);
                if used > 0 && used < chunk_pages {
                    a.meta_groups.insert(g);
                }
            }
        }
        Ok(a)
    }

    fn with_blocks(
        page_count: u64,
        chunk_pages: u32,
        blocks: Vec<Block>,
        data_chunks: u64,
    ) -> Allocator {
        let mut a = Allocator {
            page_count,
            chunk_pages,
            blocks,
            free_pages: 0,
            reserve: (page_count / 32).clamp(64, 16384),
            fresh: HashSet::new(),
            pending: Vec::new(),
            inflight: Vec::new(),
            reserved: HashSet::new(),
            meta_groups: BTreeSet::new(),
            data_cursor: 0,
            meta_cursor: 0,
            data_chunks,
        };
        // Pages past the device end never get handed out.
        let end = a.blocks.len() as u64 * PAGES_PER_BITMAP;
        for p in page_count..end {
            if !a.is_set(p) {
                a.set_bit(p);
            }
        }
        a
    }

    fn recount(&mut self) {
        self.free_pages = 0;
        for b in &mut self.blocks {
            b.free = b.bits.iter().map(|w| w.count_zeros()).sum();
            self.free_pages += u64::from(b.free);
        }
    }

    fn locate(page: u64) -> (usize, usize, u64) {
        let b = (page / PAGES_PER_BITMAP) as usize;
        let off = page % PAGES_PER_BITMAP;
        (b, (off / 64) as usize, 1u64 << (off % 64))
    }

    pub fn is_set(&self, page: u64) -> bool {
        let (b, w, m) = Self::locate(page);
        self.blocks.get(b).is_some_and(|blk| blk.bits[w] & m != 0)
    }

    fn set_bit(&mut self, page: u64) {
        let (b, w, m) = Self::locate(page);
        let blk = &mut self.blocks[b];
        debug_assert!(blk.bits[w] & m == 0, "page {page} allocated twice");
        blk.bits[w] |= m;
        blk.dirty = true;
        blk.free = blk.free.saturating_sub(1);
        self.free_pages = self.free_pages.saturating_sub(1);
    }

    fn clear_bit(&mut self, page: u64) {
        let (b, w, m) = Self::locate(page);
        let blk = &mut self.blocks[b];
        if blk.bits[w] & m != 0 {
            blk.bits[w] &= !m;
            blk.dirty = true;
            blk.free += 1;
            self.free_pages += 1;
        }
    }

    fn group_used(&self, g: u64) -> u32 {
        let cp = u64::from(self.chunk_pages);
        (g * cp..(g + 1) * cp).filter(|&p| self.is_set(p)).count() as u32
    }

    /// First wholly free, aligned group at or after `cursor` (wrapping).
    fn find_free_group(&self, cursor: u64) -> Option<u64> {
        let cp = u64::from(self.chunk_pages);
        let groups_per_word = 64 / cp;
        let mask = if cp == 64 { u64::MAX } else { (1u64 << cp) - 1 };
        let nblocks = self.blocks.len();
        let cursor = cursor.min(self.page_count.saturating_sub(1));
        let start = (cursor / PAGES_PER_BITMAP) as usize;
        let first_word = ((cursor % PAGES_PER_BITMAP) / 64) as usize;
        for step in 0..=nblocks {
            let bi = (start + step) % nblocks;
            let blk = &self.blocks[bi];
            if u64::from(blk.free) < cp {
                continue;
            }
            let words = match step {
                0 => first_word..BITMAP_WORDS,
                s if s == nblocks => 0..first_word,
                _ => 0..BITMAP_WORDS,
            };
            for wi in words {
                let w = blk.bits[wi];
                if w == u64::MAX {
                    continue;
                }
                for g in 0..groups_per_word {
                    if (w >> (g * cp)) & mask == 0 {
                        return Some(bi as u64 * PAGES_PER_BITMAP + wi as u64 * 64 + g * cp);
                    }
                }
            }
        }
        None
    }

    /// Take one page for metadata. May use the reserve.
    pub fn alloc_meta_page(&mut self) -> Result<u64> {
        let cp = u64::from(self.chunk_pages);
        while let Some(&g) = self.meta_groups.iter().next() {
            let free = (g * cp..(g + 1) * cp).find(|&p| !self.is_set(p));
            match free {
                Some(p) => {
                    self.take(p);
                    if self.group_used(g) == self.chunk_pages {
                        self.meta_groups.remove(&g);
                    }
                    return Ok(p);
                }
                None => {
                    self.meta_groups.remove(&g);
                }
            }
        }
        let page = self
            .find_free_group(self.meta_cursor)
            .ok_or(Error::NoSpace)?;
        self.meta_cursor = page;
        self.take(page);
        if cp > 1 {
            self.meta_groups.insert(page / cp);
        }
        Ok(page)
    }

    fn take(&mut self, page: u64) {
        self.set_bit(page);
        self.fresh.insert(page);
    }

    /// Take one data chunk; returns its chunk number. It stays reserved
    /// until [`Allocator::confirm_data`]. Refuses to eat into the metadata reserve.
    pub fn alloc_data(&mut self) -> Result<u64> {
        let cp = u64::from(self.chunk_pages);
        if self.free_pages < self.reserve + cp {
            return Err(Error::NoSpace);
        }
        let page = self
            .find_free_group(self.data_cursor)
            .ok_or(Error::NoSpace)?;
        for p in page..page + cp {
            self.take(p);
        }
        self.data_cursor = page + cp;
        self.data_chunks += 1;
        self.reserved.insert(page / cp);
        Ok(page / cp)
    }

    /// A reserved chunk is now referenced by an exception.
    pub fn confirm_data(&mut self, chunk: u64) {
        if self.reserved.remove(&chunk) {
            let (b, _, _) = Self::locate(chunk * u64::from(self.chunk_pages));
            self.blocks[b].dirty = true;
        }
    }

    /// Return a data chunk.
    pub fn free_data(&mut self, chunk: u64) {
        let cp = u64::from(self.chunk_pages);
        if self.reserved.remove(&chunk) {
            // No durable bitmap ever showed it in use.
            for p in chunk * cp..(chunk + 1) * cp {
                self.fresh.remove(&p);
                self.clear_bit(p);
            }
        } else {
            for p in chunk * cp..(chunk + 1) * cp {
                self.free_page(p);
            }
        }
        self.data_chunks = self.data_chunks.saturating_sub(1);
    }

    /// Pages the bitmap on disk must show free although they are marked in
    /// memory: frees not yet durable, and reserved chunks.
    fn hidden_pages(&self) -> Vec<u64> {
        let cp = u64::from(self.chunk_pages);
        let mut v = self.pending.clone();
        for &c in &self.reserved {
            v.extend(c * cp..(c + 1) * cp);
        }
        v
    }

    /// Pages marked in use that nothing names on a live store, and are not
    /// leaked: reserved chunks (copy-outs whose exceptions are not recorded
    /// yet) and pages freed by a transaction that is not durable yet.
    pub fn transient_pages(&self) -> Vec<u64> {
        let mut v = self.hidden_pages();
        v.extend_from_slice(&self.inflight);
        v
    }

    /// The device grew to `page_count` pages: the new ones are free (the
    /// bitmap had them set, as every page past the end). New bitmap blocks
    /// get their pages at the next commit, whose superblock makes it all
    /// durable at once.
    pub fn grow(&mut self, page_count: u64) {
        if page_count <= self.page_count {
            return;
        }
        let old = self.page_count;
        let nblocks = page_count.div_ceil(PAGES_PER_BITMAP) as usize;
        while self.blocks.len() < nblocks {
            self.blocks.push(Block {
                page: 0,
                free: 0,
                bits: vec![u64::MAX; BITMAP_WORDS],
                dirty: true,
            });
        }
        for p in old..page_count {
            self.clear_bit(p);
        }
        self.page_count = page_count;
        self.reserve = (page_count / 32).clamp(64, 16384);
        let cp = u64::from(self.chunk_pages);
        if cp > 1 {
            // A group cut by the old end is partly used now.
            let g = old / cp;
            let used = self.group_used(g);
            if (g + 1) * cp <= page_count && used > 0 && used < self.chunk_pages {
                self.meta_groups.insert(g);
            }
        }
    }

    /// Reserved chunks (handed out, not yet referenced).
    pub fn reserved_chunks(&self) -> u64 {
        self.reserved.len() as u64
    }

    /// Return a page: at once if this transaction took it, else once the
    /// transaction that frees it is durable.
    pub fn free_page(&mut self, page: u64) {
        if self.fresh.remove(&page) {
            self.clear_bit(page);
            let cp = u64::from(self.chunk_pages);
            if cp > 1 && self.group_used(page / cp) > 0 {
                self.meta_groups.insert(page / cp);
            }
        } else {
            let (b, _, _) = Self::locate(page);
            self.blocks[b].dirty = true;
            self.pending.push(page);
        }
    }

    pub(super) fn dirty_blocks(&self) -> Vec<usize> {
        (0..self.blocks.len())
            .filter(|&i| self.blocks[i].dirty)
            .collect()
    }

    pub(super) fn block_is_fresh(&self, i: usize) -> bool {
        self.blocks[i].page != 0 && self.fresh.contains(&self.blocks[i].page)
    }

    pub(super) fn set_block_page(&mut self, i: usize, page: u64) -> u64 {
        std::mem::replace(&mut self.blocks[i].page, page)
    }

    pub(super) fn block_page(&self, i: usize) -> u64 {
        self.blocks[i].page
    }

    pub(super) fn block_free(&self, i: usize) -> u32 {
        self.blocks[i].free
    }

    pub(super) fn pending_per_block(&self) -> PendingCounts {
        let mut m = PendingCounts::new();
        for p in self.hidden_pages() {
            *m.entry(Self::locate(p).0).or_insert(0) += 1;
        }
        m
    }

    /// Encode dirty bitmap blocks as they must be on disk: pending frees
    /// already clear.
    pub(super) fn encode_dirty(&mut self, generation: u64) -> Vec<(u64, Vec<u8>)> {
        let mut cleared: std::collections::HashMap<usize, Vec<u64>> = Default::default();
        for p in self.hidden_pages() {
            let (b, w, m) = Self::locate(p);
            cleared
                .entry(b)
                .or_insert_with(|| self.blocks[b].bits.clone())[w] &= !m;
        }
        let mut out = Vec::new();
        for (i, blk) in self.blocks.iter_mut().enumerate() {
            if !blk.dirty {
                continue;
            }
            let bits = cleared.get(&i).unwrap_or(&blk.bits);
            let payload: Vec<u8> = bits.iter().flat_map(|w| w.to_le_bytes()).collect();
            out.push((
                blk.page,
                format::seal(Kind::Bitmap, 0, 0, blk.page, generation, &payload),
            ));
            blk.dirty = false;
        }
        out
    }

    /// The commit's pages are encoded: a new transaction begins.
    pub(super) fn start_commit(&mut self) {
        self.fresh.clear();
        self.inflight.append(&mut self.pending);
    }

    /// The commit is durable: what it freed may be reused.
    pub fn commit_done(&mut self) {
        let cp = u64::from(self.chunk_pages);
        for p in std::mem::take(&mut self.inflight) {
            // The bitmap written by that commit already shows the page free,
            // so clearing it here does not make the block dirty.
            let (b, _, _) = Self::locate(p);
            let was_dirty = self.blocks[b].dirty;
            self.clear_bit(p);
            self.blocks[b].dirty = was_dirty;
            if cp > 1 {
                let used = self.group_used(p / cp);
                if used > 0 && used < self.chunk_pages {
                    self.meta_groups.insert(p / cp);
                }
            }
        }
    }

    /// Pages in use, counting those whose freeing is not yet durable.
    pub fn used_pages(&self) -> u64 {
        self.page_count - self.free_pages
    }

    /// No data chunk can be handed out any more.
    pub fn is_full(&self) -> bool {
        self.free_pages < self.reserve + u64::from(self.chunk_pages)
    }

    /// A data chunk can be handed out now.
    pub fn can_alloc_data(&self) -> bool {
        !self.is_full() && self.find_free_group(self.data_cursor).is_some()
    }

    pub fn page_count(&self) -> u64 {
        self.page_count
    }

    pub fn chunk_pages(&self) -> u32 {
        self.chunk_pages
    }

    /// Every page marked in use that lies on the device.
    pub fn used_page_list(&self) -> Vec<u64> {
        (0..self.page_count).filter(|&p| self.is_set(p)).collect()
    }

    /// Pages allocated in the open transaction.
    pub fn fresh_pages(&self) -> usize {
        self.fresh.len()
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

impl MetaAlloc for Allocator {
    fn alloc_meta(&mut self) -> Result<u64> {
        self.alloc_meta_page()
    }

    fn free_meta(&mut self, page: u64) {
        self.free_page(page)
    }
}
