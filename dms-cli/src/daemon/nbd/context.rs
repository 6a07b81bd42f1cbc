//! Metadata contexts and block status: `base:allocation` (holes of a
//! sparse origin that a version reads), `qemu:allocation-depth` (which
//! layer of the version tree holds what a version reads) and
//! `qemu:dirty-bitmap:since-<tag>` (what differs from an older snapshot,
//! as `dms delta` finds it).

use super::wire::{EINVAL, EIO, STATE_DIRTY, STATE_HOLE, STATE_ZERO};
use super::Export;

/// Most descriptors in one block status reply (the protocol document asks
/// for at most 2^20); a client asks again for the rest.
const MAX_DESCRIPTORS: usize = 1 << 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Context {
    Allocation,
    Depth,
    /// Dirty since this tag.
    Dirty(u32),
}

const ALLOCATION: &str = "base:allocation";
const DEPTH: &str = "qemu:allocation-depth";
const DIRTY: &str = "qemu:dirty-bitmap:";
const SINCE: &str = "since-";

impl Context {
    pub fn name(&self) -> String {
        match self {
            Context::Allocation => ALLOCATION.into(),
            Context::Depth => DEPTH.into(),
            Context::Dirty(t) => format!("{DIRTY}{SINCE}{t}"),
        }
    }
}

/// Every context an export offers: the two maps, and a dirty bitmap since
/// every other snapshot of its origin.
pub fn available(e: &Export) -> Vec<Context> {
    let mut v = vec![Context::Allocation, Context::Depth];
    let own = e.volume.tag();
    if let Ok(tags) = e.volume.origin_tags() {
        v.extend(tags.into_iter().filter(|&t| t != own).map(Context::Dirty));
    }
    v
}

/// The contexts a query names. With `list`, a namespace alone (`base:`,
/// `qemu:`, `qemu:dirty-bitmap:`) names all of it; for a set it names
/// nothing.
pub fn matching(e: &Export, query: &str, list: bool) -> Vec<Context> {
    let all = available(e);
    let prefix = |p: &str| {
        if list {
            all.iter()
                .filter(|c| c.name().starts_with(p))
                .cloned()
                .collect()
        } else {
            Vec::new()
        }
    };
    match query {
        "base:" => prefix("base:"),
        "qemu:" => prefix("qemu:"),
        DIRTY => prefix(DIRTY),
        q => all.into_iter().filter(|c| c.name() == q).collect(),
    }
}

/// Block status descriptors (length, flags) for `[offset, offset + len)`;
/// an NBD errno on failure.
pub fn status(
    e: &Export,
    ctx: &Context,
    offset: u64,
    len: u64,
    req_one: bool,
) -> Result<Vec<(u32, u32)>, u32> {
    let end = offset.checked_add(len).ok_or(EINVAL)?;
    if len == 0 || end > e.volume.size() {
        return Err(EINVAL);
    }
    let mut out: Vec<(u64, u32)> = Vec::new();
    let mut push = |from: u64, to: u64, flags: u32| {
        let (from, to) = (from.max(offset), to.min(end));
        if from >= to {
            return;
        }
        match out.last_mut() {
            Some((l, f)) if *f == flags => *l += to - from,
            _ => out.push((to - from, flags)),
        }
    };
    match ctx {
        Context::Allocation | Context::Depth => {
            let exts = e.volume.extents(offset, len).map_err(|_| EIO)?;
            for x in exts {
                let flags = match ctx {
                    Context::Allocation if x.hole => STATE_HOLE | STATE_ZERO,
                    Context::Allocation => 0,
                    _ => x.depth,
                };
                push(x.offset, x.offset + x.len, flags);
            }
        }
        Context::Dirty(tag) => {
            let cb = e.volume.chunk_bytes();
            let changed = e.volume.changed_since(*tag).map_err(|_| EINVAL)?;
            let (first, last) = (offset / cb, (end - 1) / cb);
            let start = changed.partition_point(|&c| c < first);
            let mut at = offset;
            for &c in changed[start..].iter().take_while(|&&c| c <= last) {
                push(at, c * cb, 0);
                push(c * cb, (c + 1) * cb, STATE_DIRTY);
                at = (c + 1) * cb;
            }
            push(at, end, 0);
        }
    }
    let mut d: Vec<(u32, u32)> = Vec::with_capacity(out.len().min(MAX_DESCRIPTORS));
    for (l, f) in out {
        // Requests are at most 4 GiB − 1, so each length fits; split anyway.
        let mut l = l;
        while l > 0 && d.len() < MAX_DESCRIPTORS {
            let n = l.min(u64::from(u32::MAX) & !4095);
            d.push((n as u32, f));
            l -= n;
        }
    }
    if req_one {
        d.truncate(1);
    }
    Ok(d)
}
