//! Reading the metadata out: every exception of an origin (or of one tag),
//! and the chunks that differ between two versions, from metadata alone.

use super::Store;
use crate::error::{Error, Result};
use crate::exceptions::{resolve, Src, MERGED};

/// One exception as `dms dump` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExceptionEntry {
    pub chunk: u64,
    /// Internal version id.
    pub version: u32,
    /// The version's tag, if it has one (0 = none: a ghost or a rollback source).
    pub tag: u32,
    /// The COW chunk holding the data; None for a rollback's merged marker.
    pub cow_chunk: Option<u64>,
}

impl Store {
    /// Exceptions of an origin in chunk order: all of them, or with `tag`
    /// only those the tag's version owns.
    pub fn exceptions_of(&self, origin_id: &str, tag: Option<u32>) -> Result<Vec<ExceptionEntry>> {
        let mut m = self.inner.meta()?;
        let index = m.origin(origin_id)?;
        let only = match tag {
            Some(t) => Some(m.version_of(index, t)?),
            None => None,
        };
        let mut out = Vec::new();
        for c in chunks_with_exceptions(&mut m, index)? {
            let excs = m.exceptions(index, c)?;
            let tree = m.origin_ref(index)?.tree();
            for (version, v) in excs {
                if only.is_some_and(|x| x != version) {
                    continue;
                }
                out.push(ExceptionEntry {
                    chunk: c,
                    version,
                    tag: tree.get(version).map_or(0, |x| x.tag),
                    cow_chunk: (v != MERGED).then_some(v),
                });
            }
        }
        Ok(out)
    }

    /// An origin's zero map: runs `(first chunk, count)` that its device
    /// reads as zeros because they were discarded through dms (kept for
    /// devices without holes, such as block devices), ascending.
    pub fn zero_map(&self, origin_id: &str) -> Result<Vec<(u64, u64)>> {
        let m = self.inner.meta()?;
        let index = m.origin(origin_id)?;
        Ok(m.origin_ref(index)?.zeros().runs())
    }

    /// The chunks whose content may differ between tags `a` and `b` of an
    /// origin, ascending, from metadata alone (no data is read): a chunk
    /// differs unless both versions resolve it to the same place. This is
    /// what an incremental backup from `a` to `b` must copy.
    pub fn delta(&self, origin_id: &str, a: u32, b: u32) -> Result<Vec<u64>> {
        let mut m = self.inner.meta()?;
        let index = m.origin(origin_id)?;
        let (va, vb) = (m.version_of(index, a)?, m.version_of(index, b)?);
        if m.origin_ref(index)?.rec().rollback.is_some() && (a == 0 || b == 0) {
            return Err(Error::Busy {
                what: format!("origin {origin_id} is being rolled back"),
            });
        }
        let mut out = Vec::new();
        for c in chunks_with_exceptions(&mut m, index)? {
            let excs = m.exceptions(index, c)?;
            let tree = m.origin_ref(index)?.tree();
            let same = match (resolve(tree, va, &excs), resolve(tree, vb, &excs)) {
                (Src::Origin, Src::Origin) => true,
                (Src::Cow(p), Src::Cow(q)) => p == q,
                _ => false,
            };
            if !same {
                out.push(c);
            }
        }
        // Past the smaller one's end (the origin grew between them) every
        // chunk differs.
        let o = m.origin_ref(index)?;
        let (sa, sb) = (o.version_size(va), o.version_size(vb));
        if sa != sb {
            let cb = u64::from(m.sb().chunk_pages) * crate::format::PAGE_SIZE as u64;
            let first = sa.min(sb) / cb;
            out.retain(|&c| c < first);
            out.extend(first..sa.max(sb).div_ceil(cb));
        }
        Ok(out)
    }
}

/// The chunks of an origin that have any exception, ascending.
fn chunks_with_exceptions(m: &mut super::Meta, index: u32) -> Result<Vec<u64>> {
    let mut chunks = Vec::new();
    let mut from = 0u64;
    loop {
        let batch = m.exception_range(index, from, 4096)?;
        let Some(last) = batch.last().map(|(k, _)| k.chunk) else {
            break;
        };
        chunks.extend(batch.iter().map(|(k, _)| k.chunk));
        chunks.dedup();
        if batch.len() < 4096 {
            break;
        }
        from = last + 1;
    }
    Ok(chunks)
}
