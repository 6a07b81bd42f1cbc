//! Deciding, under the metadata lock, what one chunk's write must do so that
//! no other version's view changes (it reserves the chunks it needs).

use super::meta::{Meta, Origin};
use crate::error::Result;
use crate::exceptions::{heir_target, resolve, Src};

/// What a write to one chunk does.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Origin write; nobody needs the old data once transaction `wait`
    /// (which gave the readers their own copies) is durable.
    Direct { wait: Option<u64> },
    /// Origin write; first copy the old data to COW chunk `n` for version `heir`.
    CopyOut { heir: u32, n: u64 },
    /// The version's own exception, read by no one else: write it in place,
    /// once the transaction that gave it to this version (if any) is durable.
    InPlace { e: u64, wait: Option<u64> },
    /// Own exception `e` that the heir still reads: `e` passes to the heir and
    /// the version continues in a new chunk `n`.
    Move { e: u64, heir: u32, n: u64 },
    /// No own exception: a new chunk `n` filled from `src`; if an heir read
    /// the same data through this version, it gets a copy in `heir_chunk`.
    Fresh {
        src: Src,
        n: u64,
        heir: Option<(u32, u64)>,
    },
}

impl Plan {
    /// COW chunks this plan allocated.
    pub fn allocated(&self) -> Vec<u64> {
        match self {
            Plan::CopyOut { n, .. } | Plan::Move { n, .. } => vec![*n],
            Plan::Fresh { n, heir, .. } => std::iter::once(*n).chain(heir.map(|h| h.1)).collect(),
            _ => Vec::new(),
        }
    }
}

fn origin_of(m: &Meta, o: u32) -> Result<&Origin> {
    m.origin_ref(o)
}

/// Plan a write of `version` to `chunk`; `full` if the write covers it all.
pub(crate) fn plan_write(
    m: &mut Meta,
    o: u32,
    version: u32,
    chunk: u64,
    durable: u64,
) -> Result<Plan> {
    let first = origin_of(m, o)?.tree().only_child(version);
    if version == 0 {
        // A chunk the zero map names leaves it, durably, before the
        // device is written there.
        m.unzero(o, chunk);
        match first {
            None => {
                return Ok(Plan::Direct {
                    wait: m.overwrite_wait(o, chunk, None, durable),
                })
            }
            Some(x) if origin_of(m, o)?.owned.contains(x, chunk) => {
                return Ok(Plan::Direct {
                    wait: m.overwrite_wait(o, chunk, None, durable),
                })
            }
            Some(_) => {}
        }
    }
    let excs = m.exceptions(o, chunk)?;
    if let Some(x) = first.filter(|_| version == 0) {
        if excs.iter().any(|e| e.0 == x) {
            m.origin_mut(o)?.owned.learn(x, chunk);
        }
    }
    let org = origin_of(m, o)?;
    // An heir that ends before this chunk (the origin grew after it was
    // taken) never reads it, nor does anyone reading through it: sizes
    // only shrink down the tree.
    let cb = u64::from(m.sb().chunk_pages) * crate::format::PAGE_SIZE as u64;
    let heir = heir_target(&org.cleaning, first, &excs)
        .filter(|&h| chunk.saturating_mul(cb) < org.version_size(h));
    if version == 0 {
        return match heir {
            None => Ok(Plan::Direct {
                wait: m.overwrite_wait(o, chunk, None, durable),
            }),
            Some(h) => Ok(Plan::CopyOut {
                heir: h,
                n: m.alloc_data()?,
            }),
        };
    }
    let own = excs.iter().find(|e| e.0 == version).map(|e| e.1);
    match (own, heir) {
        (Some(e), None) => Ok(Plan::InPlace {
            e,
            wait: m.overwrite_wait(o, chunk, Some(e), durable),
        }),
        (Some(e), Some(h)) => Ok(Plan::Move {
            e,
            heir: h,
            n: m.alloc_data()?,
        }),
        (None, heir) => {
            let src = resolve(org.tree(), version, &excs);
            let n = m.alloc_data()?;
            let heir = match heir {
                Some(h) => match m.alloc_data() {
                    Ok(c) => Some((h, c)),
                    Err(e) => {
                        m.free_data(n);
                        return Err(e);
                    }
                },
                None => None,
            };
            Ok(Plan::Fresh { src, n, heir })
        }
    }
}

/// Copy-outs ahead of an origin writer that goes through the device in
/// order (a journal, a database's log): when the two chunks before the
/// write's first were written since the newest snapshot and the write has
/// entered a new stripe group (the caller checks that), the chunks `ahead`
/// (the rest of that group, which the writer holds locked) that still need
/// a copy-out get one now, in the same transaction. The writer's next
/// writes there are then plain overwrites, and a flush after them needs no
/// commit of its own. The copies hold what
/// the origin holds, so no version's view changes, whatever happens next.
///
/// A guess, so it never costs a write anything but the copying: no chunk of
/// the zero map, none when less than an eighth of the COW device is free,
/// and a chunk that cannot be had ends the guess rather than the write.
/// Returns `CopyOut` plans, in chunk order, beside the chunks they copy.
pub(crate) fn plan_ahead(
    m: &mut Meta,
    o: u32,
    first: u64,
    ahead: std::ops::Range<u64>,
) -> Result<Vec<(u64, Plan)>> {
    let mut out = Vec::new();
    let org = origin_of(m, o)?;
    let Some(x) = org.tree().only_child(0) else {
        return Ok(out);
    };
    if first < 2 || !org.owned.contains(x, first - 1) || !org.owned.contains(x, first - 2) {
        return Ok(out);
    }
    let a = m.alloc();
    if a.used_pages().saturating_mul(8) > a.page_count().saturating_mul(7) {
        return Ok(out);
    }
    let cb = u64::from(m.sb().chunk_pages) * crate::format::PAGE_SIZE as u64;
    for chunk in ahead {
        let org = origin_of(m, o)?;
        if org.owned.contains(x, chunk) || !org.zeros().within(chunk, chunk + 1).is_empty() {
            continue;
        }
        let excs = m.exceptions(o, chunk)?;
        if excs.iter().any(|e| e.0 == x) {
            m.origin_mut(o)?.owned.learn(x, chunk);
            continue;
        }
        let org = origin_of(m, o)?;
        let Some(heir) = heir_target(&org.cleaning, Some(x), &excs)
            .filter(|&h| chunk.saturating_mul(cb) < org.version_size(h))
        else {
            continue;
        };
        if !m.alloc().can_alloc_data() {
            break;
        }
        match m.alloc_data() {
            Ok(n) => out.push((chunk, Plan::CopyOut { heir, n })),
            Err(_) => break,
        }
    }
    Ok(out)
}

/// Give back the chunks that `plans` reserved and that no exception names.
pub(crate) fn release<'a>(m: &mut Meta, plans: impl IntoIterator<Item = &'a Plan>) {
    for plan in plans {
        for c in plan.allocated() {
            m.free_data(c);
        }
    }
}
