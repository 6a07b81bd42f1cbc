//! Changing a tree: insert (or replace) and remove, shadowing every node on
//! the path, splitting nodes that overflow and merging ones that run low.

use super::lookup::{check_level, route};
use super::{Codec, Loader, MetaAlloc, Node, Tree};
use crate::error::{Error, Result};
use crate::format::PAYLOAD_SIZE;
use std::sync::Arc;

type Splits<K> = Vec<(K, u64)>;
type Inserted<C> = (Option<<C as Codec>::Value>, Splits<<C as Codec>::Key>);

impl<C: Codec> Tree<C> {
    /// The node at `page`, for changing. Each call may change it by at most
    /// two entries' worth, which the size bound accounts for.
    fn node_mut(&mut self, page: u64) -> Result<&mut Node<C>> {
        if let Some(s) = self.sizes.get_mut(&page) {
            s.1 += 4 * C::MAX_ENTRY;
        }
        match self.cache.get_mut(&page) {
            Some(n) => Ok(Arc::make_mut(n)),
            None => Err(Error::corrupt(
                page,
                C::KIND.name(),
                "dirty node missing from cache",
            )),
        }
    }

    /// Make `page` writable in this transaction; returns its (new) page.
    fn shadow(&mut self, io: &Loader, alloc: &mut dyn MetaAlloc, page: u64) -> Result<u64> {
        if self.dirty.contains(&page) {
            return Ok(page);
        }
        let node = self.load(io, page)?;
        let new = alloc.alloc_meta()?;
        alloc.free_meta(page);
        self.cache.remove(&page);
        self.cache.insert(new, node);
        self.dirty.insert(new);
        Ok(new)
    }

    fn free_page(&mut self, alloc: &mut dyn MetaAlloc, page: u64) {
        self.sizes.remove(&page);
        self.cache.remove(&page);
        self.dirty.remove(&page);
        alloc.free_meta(page);
    }

    fn add_node(&mut self, page: u64, node: Node<C>) {
        self.cache.insert(page, Arc::new(node));
        self.dirty.insert(page);
    }

    /// Insert `key`, replacing and returning any previous value.
    pub fn insert(
        &mut self,
        io: &Loader,
        alloc: &mut dyn MetaAlloc,
        key: C::Key,
        value: C::Value,
    ) -> Result<Option<C::Value>> {
        if self.root == 0 {
            let page = alloc.alloc_meta()?;
            self.add_node(page, Node::Leaf(vec![(key, value)]));
            self.root = page;
            return Ok(None);
        }
        let root = self.shadow(io, alloc, self.root)?;
        self.root = root;
        let (old, splits) = self.insert_rec(io, alloc, root, None, key, value)?;
        if !splits.is_empty() {
            let node = self.node_mut(root)?;
            let level = node.level() + 1;
            let first = node.first_key().unwrap_or(key);
            let mut entries = vec![(first, root)];
            entries.extend(splits);
            let new_root = alloc.alloc_meta()?;
            self.add_node(new_root, Node::Internal(level, entries));
            self.root = new_root;
            // A root of many children may itself overflow.
            let more = self.split_if_needed(alloc, new_root)?;
            if !more.is_empty() {
                let mut entries = vec![(first, new_root)];
                entries.extend(more);
                let top = alloc.alloc_meta()?;
                self.add_node(top, Node::Internal(level + 1, entries));
                self.root = top;
            }
        }
        Ok(old)
    }

    fn insert_rec(
        &mut self,
        io: &Loader,
        alloc: &mut dyn MetaAlloc,
        page: u64,
        expected: Option<u16>,
        key: C::Key,
        value: C::Value,
    ) -> Result<Inserted<C>> {
        // The node's size is kept exact across this change (the entries
        // around the change encoded before and after it), rather than
        // bounded per change: a full node is then encoded again only when
        // it may truly overflow.
        let growth = self.sizes.get(&page).map(|s| s.1);
        let mut buf = Vec::new();
        let node = self.node_mut(page)?;
        check_level(page, node, expected)?;
        let (old, delta) = match node {
            Node::Leaf(e) => match e.binary_search_by(|x| x.0.cmp(&key)) {
                Ok(i) => {
                    let before = leaf_len::<C>(e, i, 2, &mut buf);
                    let old = std::mem::replace(&mut e[i].1, value);
                    (
                        Some(old),
                        leaf_len::<C>(e, i, 2, &mut buf) as isize - before as isize,
                    )
                }
                Err(i) => {
                    let before = leaf_len::<C>(e, i, 1, &mut buf);
                    e.insert(i, (key, value));
                    (
                        None,
                        leaf_len::<C>(e, i, 2, &mut buf) as isize - before as isize,
                    )
                }
            },
            Node::Internal(level, e) => {
                let level = *level;
                let i = route(e, &key);
                let before = internal_len::<C>(e, i, 2, &mut buf);
                let child = e[i].1;
                let new_child = self.shadow(io, alloc, child)?;
                if let Node::Internal(_, e) = self.node_mut(page)? {
                    e[i].1 = new_child;
                    if key < e[i].0 {
                        e[i].0 = key;
                    }
                }
                let (old, splits) =
                    self.insert_rec(io, alloc, new_child, Some(level - 1), key, value)?;
                let n = splits.len();
                let node = self.node_mut(page)?;
                if let Node::Internal(_, e) = node {
                    for (k, s) in splits.into_iter().enumerate() {
                        e.insert(i + 1 + k, s);
                    }
                }
                let after = match node {
                    Node::Internal(_, e) => internal_len::<C>(e, i, n + 2, &mut buf),
                    Node::Leaf(_) => before,
                };
                (old, after as isize - before as isize)
            }
        };
        if let (Some(s), Some(g)) = (self.sizes.get_mut(&page), growth) {
            s.0 = s.0.saturating_add_signed(delta);
            s.1 = g;
        }
        let splits = self.split_if_needed(alloc, page)?;
        Ok((old, splits))
    }

    /// If `page` no longer fits its block, cut it into pieces; returns the
    /// new right-hand pieces as (first key, page).
    fn split_if_needed(&mut self, alloc: &mut dyn MetaAlloc, page: u64) -> Result<Splits<C::Key>> {
        if let Some(&(exact, growth)) = self.sizes.get(&page) {
            if exact + growth <= PAYLOAD_SIZE {
                return Ok(Vec::new());
            }
        }
        let node = self.node_mut(page)?;
        if node.len() * C::MAX_ENTRY <= PAYLOAD_SIZE {
            return Ok(Vec::new());
        }
        let len = node.encode().len();
        if len <= PAYLOAD_SIZE {
            self.sizes.insert(page, (len, 0));
            return Ok(Vec::new());
        }
        self.sizes.remove(&page);
        let node = self.node_mut(page)?;
        let cuts = cut_points(node);
        let mut out = Vec::new();
        // Cut from the right so earlier indices stay valid.
        let mut pieces: Vec<Node<C>> = Vec::new();
        for &cut in cuts.iter().rev() {
            let piece = match self.node_mut(page)? {
                Node::Leaf(e) => Node::Leaf(e.split_off(cut)),
                Node::Internal(l, e) => Node::Internal(*l, e.split_off(cut)),
            };
            pieces.push(piece);
        }
        for piece in pieces.into_iter().rev() {
            let p = alloc.alloc_meta()?;
            let first = match piece.first_key() {
                Some(k) => k,
                None => {
                    return Err(Error::corrupt(
                        page,
                        C::KIND.name(),
                        "empty piece after split",
                    ))
                }
            };
            self.add_node(p, piece);
            out.push((first, p));
        }
        Ok(out)
    }

    /// Remove `key`; returns its value if it was there.
    pub fn remove(
        &mut self,
        io: &Loader,
        alloc: &mut dyn MetaAlloc,
        key: &C::Key,
    ) -> Result<Option<C::Value>> {
        if self.get(io, key)?.is_none() {
            return Ok(None);
        }
        let mut root = self.shadow(io, alloc, self.root)?;
        self.root = root;
        let old = self.remove_rec(io, alloc, root, None, key)?;
        loop {
            let collapse = match self.node_mut(root)? {
                Node::Internal(_, e) if e.len() == 1 => Some(e[0].1),
                Node::Internal(_, e) if e.is_empty() => Some(0),
                Node::Leaf(e) if e.is_empty() => Some(0),
                _ => None,
            };
            match collapse {
                Some(next) => {
                    self.free_page(alloc, root);
                    root = next;
                    self.root = next;
                    if next == 0 {
                        break;
                    }
                }
                None => break,
            }
        }
        Ok(old)
    }

    fn remove_rec(
        &mut self,
        io: &Loader,
        alloc: &mut dyn MetaAlloc,
        page: u64,
        expected: Option<u16>,
        key: &C::Key,
    ) -> Result<Option<C::Value>> {
        let node = self.node_mut(page)?;
        check_level(page, node, expected)?;
        let (level, i, child) = match node {
            Node::Leaf(e) => {
                return Ok(match e.binary_search_by(|x| x.0.cmp(key)) {
                    Ok(i) => Some(e.remove(i).1),
                    Err(_) => None,
                })
            }
            Node::Internal(level, e) => {
                let i = route(e, key);
                (*level, i, e[i].1)
            }
        };
        let new_child = self.shadow(io, alloc, child)?;
        self.set_child(page, i, new_child)?;
        let old = self.remove_rec(io, alloc, new_child, Some(level - 1), key)?;
        self.rebalance(io, alloc, page, i)?;
        Ok(old)
    }

    fn set_child(&mut self, page: u64, i: usize, child: u64) -> Result<()> {
        if let Node::Internal(_, e) = self.node_mut(page)? {
            e[i].1 = child;
        }
        Ok(())
    }

    /// After child `i` of `page` shrank: drop it if empty, or merge it with
    /// a neighbour when both fit in one node.
    fn rebalance(
        &mut self,
        io: &Loader,
        alloc: &mut dyn MetaAlloc,
        page: u64,
        i: usize,
    ) -> Result<()> {
        let (child, len) = match self.node_mut(page)? {
            Node::Internal(_, e) => (e[i].1, e.len()),
            Node::Leaf(_) => return Ok(()),
        };
        let child_node = self.load(io, child)?;
        if child_node.is_empty() {
            self.free_page(alloc, child);
            if let Node::Internal(_, e) = self.node_mut(page)? {
                e.remove(i);
            }
            return Ok(());
        }
        // A node with many entries is surely big enough: no need to encode
        // it (this runs on every removal).
        if len < 2
            || child_node.len() * C::MIN_ENTRY >= PAYLOAD_SIZE / 4
            || child_node.encoded_len() >= PAYLOAD_SIZE / 4
        {
            return Ok(());
        }
        let (a, b) = if i + 1 < len { (i, i + 1) } else { (i - 1, i) };
        let (a_page, b_page) = match self.node_mut(page)? {
            Node::Internal(_, e) => (e[a].1, e[b].1),
            Node::Leaf(_) => return Ok(()),
        };
        let an = self.load(io, a_page)?;
        let bn = self.load(io, b_page)?;
        let merged = match (&*an, &*bn) {
            (Node::Leaf(x), Node::Leaf(y)) => Node::Leaf(x.iter().chain(y).cloned().collect()),
            (Node::Internal(l, x), Node::Internal(_, y)) => {
                Node::Internal(*l, x.iter().chain(y).cloned().collect())
            }
            _ => {
                return Err(Error::corrupt(
                    b_page,
                    C::KIND.name(),
                    "siblings of different levels",
                ))
            }
        };
        if merged.encoded_len() > PAYLOAD_SIZE * 3 / 4 || !merged.fits() {
            return Ok(());
        }
        let a_new = self.shadow(io, alloc, a_page)?;
        *self.node_mut(a_new)? = merged;
        self.sizes.remove(&a_new);
        self.free_page(alloc, b_page);
        if let Node::Internal(_, e) = self.node_mut(page)? {
            e[a].1 = a_new;
            e.remove(b);
        }
        Ok(())
    }
}

/// Encoded bytes of leaf entries `from..from + n` (those that exist), each
/// after its predecessor.
fn leaf_len<C: Codec>(e: &[(C::Key, C::Value)], from: usize, n: usize, buf: &mut Vec<u8>) -> usize {
    buf.clear();
    for j in from..(from + n).min(e.len()) {
        let prev = j.checked_sub(1).map(|p| &e[p]);
        C::put_key(prev.map(|p| &p.0), &e[j].0, buf);
        C::put_value(prev.map(|p| &p.1), &e[j].1, buf);
    }
    buf.len()
}

/// The same for entries of an internal node.
fn internal_len<C: Codec>(e: &[(C::Key, u64)], from: usize, n: usize, buf: &mut Vec<u8>) -> usize {
    buf.clear();
    let mut child = 0;
    for j in from..(from + n).min(e.len()) {
        C::put_key(j.checked_sub(1).map(|p| &e[p].0), &e[j].0, buf);
        child += crate::format::varint::len(e[j].1);
    }
    buf.len() + child
}

/// Where to cut an overflowing node so that every piece fits and pieces are
/// about equal.
fn cut_points<C: Codec>(node: &Node<C>) -> Vec<usize> {
    let (delta, absolute) = entry_sizes(node);
    let total: usize = delta.iter().sum();
    let pieces = total.div_ceil(PAYLOAD_SIZE * 3 / 4).max(2);
    let target = total / pieces;
    let mut cuts = Vec::new();
    let mut cum = absolute.first().copied().unwrap_or(0);
    for i in 1..delta.len() {
        let next = cum + delta[i];
        if next > PAYLOAD_SIZE || (next > target && cuts.len() + 1 < pieces) {
            cuts.push(i);
            cum = absolute[i];
        } else {
            cum = next;
        }
    }
    if cuts.is_empty() && delta.len() > 1 {
        cuts.push(delta.len() / 2);
    }
    cuts
}

/// Encoded size of each entry after its predecessor, and on its own.
fn entry_sizes<C: Codec>(node: &Node<C>) -> (Vec<usize>, Vec<usize>) {
    let mut delta = Vec::with_capacity(node.len());
    let mut absolute = Vec::with_capacity(node.len());
    let mut buf = Vec::new();
    match node {
        Node::Leaf(e) => {
            for (i, x) in e.iter().enumerate() {
                buf.clear();
                let prev = i.checked_sub(1).map(|j| &e[j]);
                C::put_key(prev.map(|p| &p.0), &x.0, &mut buf);
                C::put_value(prev.map(|p| &p.1), &x.1, &mut buf);
                delta.push(buf.len());
                buf.clear();
                C::put_key(None, &x.0, &mut buf);
                C::put_value(None, &x.1, &mut buf);
                absolute.push(buf.len());
            }
        }
        Node::Internal(_, e) => {
            for (i, x) in e.iter().enumerate() {
                let child = crate::format::varint::len(x.1);
                buf.clear();
                C::put_key(i.checked_sub(1).map(|j| &e[j].0), &x.0, &mut buf);
                delta.push(buf.len() + child);
                buf.clear();
                C::put_key(None, &x.0, &mut buf);
                absolute.push(buf.len() + child);
            }
        }
    }
    (delta, absolute)
}
