//! The checker: walks all metadata and the space map and reports every
//! inconsistency (no leaked or doubly used page, counts that agree).

use super::Store;
use crate::btree::{Visitor, WalkStats};
use crate::error::Result;
use crate::exceptions::{ExcKey, ExceptionCodec, MERGED};
use crate::format::SUPERBLOCK_SLOTS;
use crate::versions::record::{CatKey, CatValue, CatalogCodec};
use std::collections::HashMap;

/// What the checker found.
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    pub problems: Vec<String>,
    pub exceptions: u64,
    pub data_chunks: u64,
    pub metadata_pages: u64,
    pub exception_nodes: u64,
    pub exception_tree_depth: u16,
    /// Every metadata page (nodes and bitmaps, not superblocks), ascending.
    pub metadata: Vec<u64>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

struct Pages(Vec<u64>);
impl Visitor<CatalogCodec> for Pages {
    fn page(&mut self, p: u64) -> Result<()> {
        self.0.push(p);
        Ok(())
    }
    fn entry(&mut self, _: &CatKey, _: &CatValue) -> Result<()> {
        Ok(())
    }
}

struct Excs(Vec<u64>, Vec<(ExcKey, u64)>);
impl Visitor<ExceptionCodec> for Excs {
    fn page(&mut self, p: u64) -> Result<()> {
        self.0.push(p);
        Ok(())
    }
    fn entry(&mut self, k: &ExcKey, v: &u64) -> Result<()> {
        self.1.push((*k, *v));
        Ok(())
    }
}

impl Store {
    /// Commit, then check everything. A corrupt block is an `Err`; logical
    /// inconsistencies are listed in the report.
    pub fn check(&self) -> Result<CheckReport> {
        self.flush()?;
        let inner = &self.inner;
        let mut m = inner.meta()?;
        let m = &mut *m;
        let mut report = CheckReport::default();
        let cp = u64::from(m.sb().chunk_pages);
        let page_count = m.sb().page_count;
        // Who uses each page.
        let mut owner: HashMap<u64, &'static str> = HashMap::new();
        let claim = |owner: &mut HashMap<u64, &'static str>,
                     report: &mut CheckReport,
                     page: u64,
                     what: &'static str| {
            if page >= page_count {
                report
                    .problems
                    .push(format!("{what} at page {page} is past the device end"));
            } else if let Some(prev) = owner.insert(page, what) {
                report
                    .problems
                    .push(format!("page {page} used twice: {prev} and {what}"));
            }
        };
        for p in 0..SUPERBLOCK_SLOTS {
            claim(&mut owner, &mut report, p, "superblock");
        }
        let mut cat = Pages(Vec::new());
        m.walk_catalog(&mut cat)?;
        for p in cat.0 {
            claim(&mut owner, &mut report, p, "catalog node");
        }
        let mut space_pages = Vec::new();
        m.space_pages(&mut space_pages)?;
        for p in space_pages {
            claim(&mut owner, &mut report, p, "space map");
        }
        let mut ex = Excs(Vec::new(), Vec::new());
        let stats: WalkStats = m.walk_exceptions(&mut ex)?;
        report.exception_nodes = stats.nodes;
        report.exception_tree_depth = stats.depth;
        for p in &ex.0 {
            claim(&mut owner, &mut report, *p, "exception node");
        }
        report.metadata_pages = owner.len() as u64;
        report.metadata = owner
            .keys()
            .copied()
            .filter(|&p| p >= SUPERBLOCK_SLOTS)
            .collect();
        report.metadata.sort_unstable();
        let mut counts: HashMap<(u32, u32), u64> = HashMap::new();
        let mut merged = 0u64;
        for (k, cow) in &ex.1 {
            report.exceptions += 1;
            *counts.entry((k.origin, k.version)).or_default() += 1;
            match m.origin_ref(k.origin).ok() {
                None => report
                    .problems
                    .push(format!("exception {k:?} of an unknown origin")),
                Some(o) => {
                    if o.tree().get(k.version).is_none() {
                        report
                            .problems
                            .push(format!("exception {k:?} of an unknown version"));
                    }
                    if k.version == 0 {
                        report
                            .problems
                            .push(format!("exception {k:?} belongs to the origin itself"));
                    }
                    if k.chunk >= o.chunks(inner.chunk_bytes) {
                        report
                            .problems
                            .push(format!("exception {k:?} past the origin's end"));
                    }
                }
            }
            if *cow == MERGED {
                // A rollback's "merged" marker owns no chunk.
                merged += 1;
                continue;
            }
            for p in cow * cp..(cow + 1) * cp {
                claim(&mut owner, &mut report, p, "data chunk");
            }
        }
        report.data_chunks = report.exceptions - merged;
        // Copy-outs in flight (a live store) are counted, not yet named.
        let counted = m.alloc().data_chunks - m.alloc().reserved_chunks();
        if counted != report.data_chunks {
            report.problems.push(format!(
                "space map counts {counted} data chunks, the exception tree {}",
                report.data_chunks
            ));
        }
        for o in m.origins() {
            for v in o.tree().ids() {
                let recorded = o.tree().get(v).map_or(0, |x| x.exceptions);
                let found = counts.get(&(o.index, v)).copied().unwrap_or(0);
                if recorded != found {
                    report.problems.push(format!(
                        "origin {} version {v}: {recorded} exceptions recorded, {found} found",
                        o.rec().id
                    ));
                }
            }
        }
        // On a live store, copy-outs in flight hold chunks that no exception
        // names yet, and freed pages stay marked until their commit is
        // durable: transient, not leaked.
        for p in m.alloc().transient_pages() {
            owner.entry(p).or_insert("transient");
        }
        let used = m.alloc().used_page_list();
        let mut leaked = 0u64;
        for &p in &used {
            if !owner.contains_key(&p) {
                leaked += 1;
                if leaked <= 10 {
                    report
                        .problems
                        .push(format!("page {p} is marked in use but nothing uses it"));
                }
            }
        }
        if leaked > 10 {
            report
                .problems
                .push(format!("{leaked} leaked pages in all"));
        }
        for &p in owner.keys() {
            if !m.alloc().is_set(p) {
                report
                    .problems
                    .push(format!("page {p} ({}) is used but marked free", owner[&p]));
            }
        }
        Ok(report)
    }
}
