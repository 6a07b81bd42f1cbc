//! Turning the open transaction into the pages of a commit.

use super::{loader, EncodedPages, Meta};
use crate::error::Result;
use crate::format::Superblock;
use crate::versions::record::{CatKey, CatValue, ZEROS_VERSION};

impl Meta {
    pub fn has_changes(&self) -> bool {
        self.force_dirty
            || self.exc.is_dirty()
            || self.cat.is_dirty()
            || !self.changed_versions.is_empty()
            || !self.changed_records.is_empty()
            || !self.removed_records.is_empty()
            || !self.zeros_dirty.is_empty()
            || self.space.alloc.fresh_pages() > 0
            || self.space.alloc.has_pending()
    }

    /// Write dirty catalog records into the catalog tree.
    fn write_records(&mut self) -> Result<()> {
        let io = loader(&self.cow, &self.sb);
        if std::mem::take(&mut self.policy_dirty) {
            self.cat.insert(
                &io,
                &mut self.space.alloc,
                crate::versions::record::POLICY_KEY,
                CatValue::Policy(self.policy.clone()),
            )?;
        }
        for key in std::mem::take(&mut self.removed_records) {
            self.cat.remove(&io, &mut self.space.alloc, &key)?;
        }
        let mut zeroed: Vec<u32> = self.zeros_dirty.drain().collect();
        zeroed.sort_unstable();
        for o in zeroed {
            let Some(org) = self.origins.get(&o) else {
                continue;
            };
            let key = CatKey {
                origin: o,
                version: ZEROS_VERSION,
            };
            if org.zeros().is_empty() {
                self.cat.remove(&io, &mut self.space.alloc, &key)?;
            } else {
                let val = CatValue::Zeros(org.zeros().runs());
                self.cat.insert(&io, &mut self.space.alloc, key, val)?;
            }
        }
        let mut origins: Vec<u32> = self.changed_records.drain().collect();
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
        let mut versions: Vec<(u32, u32)> = self.changed_versions.drain().collect();
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
