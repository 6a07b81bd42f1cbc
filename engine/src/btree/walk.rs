//! Visiting every node and entry, checking order, bounds and levels. The
//! checker, the dump and the space accounting all use this one walker.

use super::{Codec, Loader, Node, Tree};
use crate::error::{Error, Result};

/// What a walk saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct WalkStats {
    pub nodes: u64,
    pub entries: u64,
    pub depth: u16,
}

/// Callbacks of a walk.
pub trait Visitor<C: Codec> {
    fn page(&mut self, page: u64) -> Result<()>;
    fn entry(&mut self, key: &C::Key, value: &C::Value) -> Result<()>;
}

impl<C: Codec> Tree<C> {
    /// Visit every page and entry of the tree.
    pub fn walk(&mut self, io: &Loader, v: &mut dyn Visitor<C>) -> Result<WalkStats> {
        let mut stats = WalkStats::default();
        if self.root != 0 {
            let root = self.load(io, self.root)?;
            stats.depth = root.level() + 1;
            let mut w = Walk {
                v,
                stats: &mut stats,
            };
            self.walk_rec(io, self.root, root.level(), (None, None), &mut w)?;
        }
        Ok(stats)
    }

    /// Visit the subtree at `page`, whose keys its parent bounds to `lo..hi`.
    fn walk_rec(
        &mut self,
        io: &Loader,
        page: u64,
        level: u16,
        (lo, hi): (Option<C::Key>, Option<C::Key>),
        w: &mut Walk<'_, C>,
    ) -> Result<()> {
        let (v, stats) = (&mut *w.v, &mut *w.stats);
        let node = self.load(io, page)?;
        let bad = |why: &str| Error::corrupt(page, C::KIND.name(), why.to_string());
        if node.level() != level {
            return Err(bad("wrong level"));
        }
        v.page(page)?;
        stats.nodes += 1;
        let in_bounds = |k: &C::Key| lo.is_none_or(|l| *k >= l) && hi.is_none_or(|h| *k < h);
        match &*node {
            Node::Leaf(e) => {
                if e.is_empty() && page != self.root {
                    return Err(bad("empty leaf"));
                }
                for (k, val) in e {
                    if !in_bounds(k) {
                        return Err(bad("key outside the range its parent gives"));
                    }
                    v.entry(k, val)?;
                    stats.entries += 1;
                }
            }
            Node::Internal(l, e) => {
                for (i, (k, child)) in e.iter().enumerate() {
                    if i > 0 && !in_bounds(k) {
                        return Err(bad("separator outside the range its parent gives"));
                    }
                    let child_lo = if i == 0 { lo } else { Some(*k) };
                    let child_hi = e.get(i + 1).map(|x| x.0).or(hi);
                    self.walk_rec(io, *child, l - 1, (child_lo, child_hi), w)?;
                }
            }
        }
        Ok(())
    }
}

/// A walk in progress: the visitor and the counts so far.
struct Walk<'a, C: Codec> {
    v: &'a mut dyn Visitor<C>,
    stats: &'a mut WalkStats,
}
