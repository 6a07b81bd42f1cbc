//! Reading: point lookups and range scans.

use super::{Codec, Loader, Node, Tree};
use crate::error::{Error, Result};

/// Index of the child whose key range holds `key`.
pub(super) fn route<K: Ord>(entries: &[(K, u64)], key: &K) -> usize {
    entries.partition_point(|e| e.0 <= *key).saturating_sub(1)
}

pub(super) fn check_level<C: Codec>(
    page: u64,
    node: &Node<C>,
    expected: Option<u16>,
) -> Result<()> {
    match expected {
        Some(l) if node.level() != l => Err(Error::corrupt(
            page,
            C::KIND.name(),
            format!("level {} where {l} was expected", node.level()),
        )),
        _ => Ok(()),
    }
}

impl<C: Codec> Tree<C> {
    /// The value stored under `key`.
    pub fn get(&mut self, io: &Loader, key: &C::Key) -> Result<Option<C::Value>> {
        if self.root == 0 {
            return Ok(None);
        }
        let mut page = self.root;
        let mut expected = None;
        loop {
            let node = self.load(io, page)?;
            check_level(page, &node, expected)?;
            match &*node {
                Node::Leaf(e) => {
                    return Ok(e
                        .binary_search_by(|x| x.0.cmp(key))
                        .ok()
                        .map(|i| e[i].1.clone()))
                }
                Node::Internal(l, e) => {
                    page = e[route(e, key)].1;
                    expected = Some(l - 1);
                }
            }
        }
    }

    /// Append to `out` the entries with `lo <= key < hi`, at most `limit` of
    /// them. Returns true if it stopped because of the limit.
    pub fn range(
        &mut self,
        io: &Loader,
        lo: &C::Key,
        hi: &C::Key,
        limit: usize,
        out: &mut Vec<(C::Key, C::Value)>,
    ) -> Result<bool> {
        if self.root == 0 || lo >= hi {
            return Ok(false);
        }
        let cap = out.len() + limit;
        let mut r = RangeQuery { lo, hi, cap, out };
        self.range_rec(io, self.root, None, &mut r)
    }

    fn range_rec(
        &mut self,
        io: &Loader,
        page: u64,
        expected: Option<u16>,
        r: &mut RangeQuery<'_, C>,
    ) -> Result<bool> {
        let (lo, hi, cap) = (r.lo, r.hi, r.cap);
        let out = &mut *r.out;
        let node = self.load(io, page)?;
        check_level(page, &node, expected)?;
        match &*node {
            Node::Leaf(e) => {
                let from = e.partition_point(|x| x.0 < *lo);
                for x in &e[from..] {
                    if x.0 >= *hi {
                        break;
                    }
                    if out.len() >= cap {
                        return Ok(true);
                    }
                    out.push(x.clone());
                }
                Ok(false)
            }
            Node::Internal(l, e) => {
                let first = route(e, lo);
                for (i, (k, child)) in e.iter().enumerate().skip(first) {
                    if i > first && *k >= *hi {
                        break;
                    }
                    if self.range_rec(io, *child, Some(l - 1), r)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
        }
    }
}

/// A range lookup in progress: keys in `lo..hi`, collected into `out`
/// until it holds `cap` entries.
struct RangeQuery<'a, C: Codec> {
    lo: &'a C::Key,
    hi: &'a C::Key,
    cap: usize,
    out: &'a mut Vec<(C::Key, C::Value)>,
}
