//! An origin's zero map: whole chunks that the origin device reads as
//! zeros because they were discarded through dms, for block status on
//! devices that cannot say where their holes are.
//!
//! The rule that keeps it true in every crash state: a chunk is added only
//! once the device reads zeros there (with nothing held for it), and the
//! commit that records it syncs the origin first; a chunk leaves it before
//! anything is written to it on the device, and that write waits for the
//! commit that records the removal, as it would for a copy-out. Dropping a
//! run (to keep the record within its bound) is always safe: a chunk that
//! is not in the map is simply reported as data.

use super::{Meta, Origin};
use crate::error::{Error, Result};
use crate::versions::record::{zero_runs_len, ZERO_MAP_BYTES};
use std::collections::BTreeMap;

/// Runs of chunks: first -> end (exclusive), apart from each other.
#[derive(Clone, Debug, Default)]
pub(crate) struct ZeroMap(BTreeMap<u64, u64>);

impl ZeroMap {
    /// From a record's runs, checked against the origin's whole chunks.
    pub fn from_runs(runs: &[(u64, u64)], whole_chunks: u64, block: u64) -> Result<ZeroMap> {
        let mut m = BTreeMap::new();
        for &(s, k) in runs {
            if s + k > whole_chunks {
                return Err(Error::corrupt(
                    block,
                    "catalog tree node",
                    format!("zero map run {s}+{k} past the origin's end"),
                ));
            }
            m.insert(s, s + k);
        }
        Ok(ZeroMap(m))
    }

    pub fn runs(&self) -> Vec<(u64, u64)> {
        self.0.iter().map(|(&s, &e)| (s, e - s)).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The runs meeting `[from, to)`, clipped to it.
    pub fn within(&self, from: u64, to: u64) -> Vec<(u64, u64)> {
        let start = self
            .0
            .range(..=from)
            .next_back()
            .filter(|(_, &e)| e > from)
            .map_or(from, |(&s, _)| s);
        self.0
            .range(start..to)
            .map(|(&s, &e)| (s.max(from), e.min(to)))
            .filter(|(s, e)| s < e)
            .collect()
    }

    /// Add `[s, e)`, merging with neighbours.
    fn insert(&mut self, mut s: u64, mut e: u64) {
        if let Some((&ps, &pe)) = self.0.range(..=s).next_back() {
            if pe >= s {
                s = ps;
                e = e.max(pe);
            }
        }
        let covered: Vec<(u64, u64)> = self.0.range(s..=e).map(|(&a, &b)| (a, b)).collect();
        for (a, b) in covered {
            self.0.remove(&a);
            e = e.max(b);
        }
        self.0.insert(s, e);
        self.fit();
    }

    /// Drop the shortest runs until the record fits its bound.
    fn fit(&mut self) {
        while zero_runs_len(&self.runs()) > ZERO_MAP_BYTES {
            let Some((&short, _)) = self.0.iter().min_by_key(|(&a, &b)| (b - a, a)) else {
                break;
            };
            self.0.remove(&short);
        }
    }

    /// Take `chunk` out; whether it was in.
    fn remove(&mut self, chunk: u64) -> bool {
        let Some((&s, &e)) = self.0.range(..=chunk).next_back() else {
            return false;
        };
        if chunk >= e {
            return false;
        }
        self.0.remove(&s);
        if s < chunk {
            self.0.insert(s, chunk);
        }
        if chunk + 1 < e {
            self.0.insert(chunk + 1, e);
        }
        self.fit();
        true
    }
}

impl Origin {
    /// The origin's zero map.
    pub fn zeros(&self) -> &ZeroMap {
        &self.zeros
    }
}

impl Meta {
    /// Chunks `[first, first + count)` of origin `o` read as zeros on its
    /// device now, and nothing is held for them: record them in its zero
    /// map. The commit that records them syncs the origin first.
    pub fn mark_zero(&mut self, o: u32, first: u64, count: u64) -> Result<()> {
        let org = self
            .origins
            .get_mut(&o)
            .ok_or_else(|| Error::UnknownOrigin(format!("#{o}")))?;
        if count == 0 {
            return Ok(());
        }
        org.zeros.insert(first, first + count);
        self.zeros_dirty.insert(o);
        self.needs_origin_sync = true;
        Ok(())
    }

    /// An origin write to `chunk` is about to be planned: if the zero map
    /// names the chunk, take it out, and the write waits (as for a
    /// copy-out) for the commit that records that.
    pub fn unzero(&mut self, o: u32, chunk: u64) {
        let Some(org) = self.origins.get_mut(&o) else {
            return;
        };
        if org.zeros.is_empty() || !org.zeros.remove(chunk) {
            return;
        }
        self.zeros_dirty.insert(o);
        self.chunk_txn.insert((o, chunk), self.txn);
    }
}
