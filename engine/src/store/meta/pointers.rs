//! Edits of the exception tree: the versioned pointers. Each records what
//! an in-place overwrite must wait for and counts a version's exceptions.

use super::{loader, Meta};
use crate::error::Result;
use crate::exceptions::{ExcKey, MERGED};

impl Meta {
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
            self.changed_versions.insert((origin, version));
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
            if o.owned.tracks(version) || o.tree.only_child(0) == Some(version) {
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
}
