//! What `dms list` and `dmsetup status` print, as data.

use super::Store;
use crate::error::Result;
use crate::versions::MAX_VERSION_ID;
use crate::versions::NONE;

/// One version of an origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionStatus {
    /// Internal id (stable while the version lives).
    pub version: u32,
    /// 0 = the origin; untagged ghosts have `ghost` set.
    pub tag: u32,
    pub ghost: bool,
    /// Parent's internal id (None for the origin).
    pub parent: Option<u32>,
    /// Nearest tagged ancestor's tag (None for the origin).
    pub parent_tag: Option<u32>,
    pub birthday: u64,
    /// Exceptions this version owns.
    pub exceptions: u64,
    pub memo: String,
    /// Stable identity (kept across send and receive; a write to a version
    /// that was sent gives it a new one).
    pub uuid: [u8; 16],
    /// Size in bytes (a snapshot taken before its origin grew keeps the
    /// size it had).
    pub size: u64,
}

/// A receive in progress into an origin (interrupted, or running).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiveStatus {
    pub stream: [u8; 16],
    pub base: [u8; 16],
    pub target: [u8; 16],
    /// Below this offset everything has arrived (durably).
    pub next_offset: u64,
    /// The stream's device size.
    pub size: u64,
    /// A native stream, resumable with a token (RBD diffs are not).
    pub resumable: bool,
}

/// One origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginStatus {
    pub id: String,
    pub size: u64,
    pub attached: bool,
    /// Versions, ghosts included.
    pub versions: u64,
    /// The most versions this origin can still have: the ids of deleted
    /// versions are not reused.
    pub max_versions: u64,
    /// (tag, next chunk, chunks of the origin) of a rollback in progress.
    pub rollback: Option<(u32, u64, u64)>,
    /// Next chunk of a cleaning pass in progress.
    pub cleaning: Option<u64>,
    /// Ghosts waiting for the cleaner.
    pub ghosts: u64,
    /// A receive in progress.
    pub receive: Option<ReceiveStatus>,
    /// All versions, in id order (the origin first).
    pub list: Vec<VersionStatus>,
}

/// The whole store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreStatus {
    pub chunk_pages: u32,
    pub chunk_bytes: u64,
    pub total_chunks: u64,
    /// Chunks in use, metadata and superblocks included.
    pub used_chunks: u64,
    pub data_chunks: u64,
    pub metadata_pages: u64,
    pub used_versions: u64,
    /// Version ids one origin can hand out over its life.
    pub max_versions: u64,
    /// False once the store failed (an I/O error during commit).
    pub valid: bool,
    /// No room for another data chunk: writes that need one fail with ENOSPC.
    pub full: bool,
    pub generation: u64,
    pub origins: Vec<OriginStatus>,
}

impl StoreStatus {
    pub fn cleaning(&self) -> bool {
        self.origins
            .iter()
            .any(|o| o.cleaning.is_some() || o.ghosts > 0)
    }

    pub fn rollbacking(&self) -> bool {
        self.origins.iter().any(|o| o.rollback.is_some())
    }
}

impl Store {
    /// A snapshot of the store's state.
    pub fn status(&self) -> Result<StoreStatus> {
        let valid = self.inner.check_failed().is_ok();
        // Status is what a failed store is asked for: read it even so.
        let m = self
            .inner
            .meta
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let alloc = m.alloc();
        let cp = u64::from(alloc.chunk_pages());
        let used_pages = alloc.used_pages();
        let mut origins = Vec::new();
        let mut used_versions = 0u64;
        let mut sorted: Vec<&super::meta::Origin> = m.origins().collect();
        sorted.sort_by_key(|o| &o.rec().id);
        for o in sorted {
            let plan = o.tree().plan_cleaning(false);
            let mut list = Vec::new();
            for v in o.tree().ids() {
                let Some(x) = o.tree().get(v) else { continue };
                let mut parent_tag = None;
                let mut p = x.parent;
                while p != NONE {
                    match o.tree().get(p) {
                        Some(pv) if pv.tag != 0 || p == 0 => {
                            parent_tag = Some(pv.tag);
                            break;
                        }
                        Some(pv) => p = pv.parent,
                        None => break,
                    }
                }
                list.push(VersionStatus {
                    version: v,
                    tag: x.tag,
                    ghost: x.is_ghost(),
                    parent: (x.parent != NONE).then_some(x.parent),
                    parent_tag,
                    birthday: x.birthday,
                    exceptions: x.exceptions,
                    memo: x.memo.clone(),
                    uuid: x.uuid,
                    size: o.version_size(v),
                });
            }
            used_versions += o.tree().len() as u64;
            // Version ids are not reused: those of deleted versions are gone.
            let dead = u64::from(o.rec().next_version).saturating_sub(o.tree().len() as u64);
            let max_versions = u64::from(MAX_VERSION_ID).saturating_sub(dead);
            let chunks = o.chunks(self.inner.chunk_bytes);
            origins.push(OriginStatus {
                id: o.rec().id.clone(),
                size: o.rec().size,
                attached: o.dev.is_some(),
                versions: o.tree().len() as u64,
                max_versions,
                rollback: o.rec().rollback.as_ref().map(|r| (r.tag, r.cursor, chunks)),
                cleaning: o.rec().clean_cursor,
                ghosts: plan.len() as u64,
                receive: o.rec().receive.as_ref().map(|r| ReceiveStatus {
                    stream: r.stream,
                    base: r.base,
                    target: r.target,
                    next_offset: r.next_offset,
                    size: r.size,
                    resumable: r.format == 0,
                }),
                list,
            });
        }
        Ok(StoreStatus {
            chunk_pages: alloc.chunk_pages(),
            chunk_bytes: self.inner.chunk_bytes,
            total_chunks: alloc.page_count() / cp,
            used_chunks: used_pages.div_ceil(cp),
            data_chunks: alloc.data_chunks,
            metadata_pages: used_pages.saturating_sub(alloc.data_chunks * cp),
            used_versions,
            max_versions: u64::from(MAX_VERSION_ID),
            valid,
            full: alloc.is_full(),
            generation: m.sb().generation,
            origins,
        })
    }
}
