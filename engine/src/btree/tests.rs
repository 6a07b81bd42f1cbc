use super::walk::Visitor;
use super::*;
use crate::exceptions::{ExcKey, ExceptionCodec};
use crate::io::MemDev;
use std::collections::BTreeMap;

/// Pages handed out in order; frees held back until `commit`.
struct TestAlloc {
    next: u64,
    free: Vec<u64>,
    pending: Vec<u64>,
    live: HashSet<u64>,
}

impl TestAlloc {
    fn new() -> TestAlloc {
        TestAlloc {
            next: 1,
            free: vec![],
            pending: vec![],
            live: HashSet::new(),
        }
    }
}

/// A loader of one-page chunks from `dev`.
fn loader(dev: &MemDev, max_generation: u64, page_count: u64) -> Loader<'_> {
    Loader {
        dev,
        max_generation,
        page_count,
        chunk_pages: 1,
    }
}

impl MetaAlloc for TestAlloc {
    fn alloc_meta(&mut self) -> Result<u64> {
        let p = self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next
        });
        assert!(self.live.insert(p), "page {p} handed out twice");
        Ok(p)
    }
    fn free_meta(&mut self, page: u64) {
        assert!(self.live.remove(&page), "page {page} freed but not live");
        self.pending.push(page);
    }
}

struct Collect(Vec<u64>, Vec<(ExcKey, u64)>);
impl Visitor<ExceptionCodec> for Collect {
    fn page(&mut self, page: u64) -> Result<()> {
        self.0.push(page);
        Ok(())
    }
    fn entry(&mut self, k: &ExcKey, v: &u64) -> Result<()> {
        self.1.push((*k, *v));
        Ok(())
    }
}

fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Every node whose size the tree keeps: the size it knows plus its bound
/// of growth covers the real encoding, exactly so where no bound is left,
/// and every dirty node fits its block.
fn check_sizes(tree: &Tree<ExceptionCodec>) {
    for (page, &(exact, growth)) in &tree.sizes {
        let real = tree.cache[page].encode().len();
        assert!(
            exact + growth >= real,
            "page {page}: {exact} + {growth} < {real}"
        );
        if growth == 0 {
            assert_eq!(exact, real, "page {page}: the size kept is exact");
        }
    }
    for page in &tree.dirty {
        assert!(tree.cache[page].encode().len() <= PAYLOAD_SIZE);
    }
}

#[test]
fn sizes_kept_across_inserts_are_exact() {
    let dev = MemDev::new("t", 64 << 20);
    let mut alloc = TestAlloc::new();
    let mut tree: Tree<ExceptionCodec> = Tree::new(0);
    let io = loader(&dev, 0, 1 << 20);
    let mut seed = 0x0bad_cafe_f00d_1234u64;
    // Runs of neighbouring chunks (as a large write makes them), values of
    // varying width, some replaced, in random order of runs.
    for run in 0..300u64 {
        let start = (rng(&mut seed) % 100_000) * 64;
        for c in start..start + 64 {
            let r = rng(&mut seed);
            let v = if r % 3 == 0 { r >> 20 } else { c + run };
            tree.insert(&io, &mut alloc, ExcKey::new((r % 2) as u32, c, 0), v)
                .unwrap();
        }
        check_sizes(&tree);
    }
    assert!(tree.sizes.len() > 10, "sizes are kept for most nodes");
}

#[test]
fn matches_a_btreemap_through_commits_and_reloads() {
    let dev = MemDev::new("t", 64 << 20);
    let mut alloc = TestAlloc::new();
    let mut tree: Tree<ExceptionCodec> = Tree::new(0);
    let mut model = BTreeMap::new();
    let mut seed = 0x1234_5678_9abc_def1u64;
    for round in 0..40u64 {
        for _ in 0..2000 {
            let r = rng(&mut seed);
            let k = ExcKey::new((r % 3) as u32, (r >> 8) % 5000, ((r >> 24) % 7) as u32);
            let io = loader(&dev, round, 1 << 20);
            if r % 5 < 3 {
                let v = (r >> 45) + 2;
                assert_eq!(
                    tree.insert(&io, &mut alloc, k, v).unwrap(),
                    model.insert(k, v)
                );
            } else {
                assert_eq!(tree.remove(&io, &mut alloc, &k).unwrap(), model.remove(&k));
            }
            if r % 64 == 0 {
                check_sizes(&tree);
            }
        }
        for (page, encode) in tree.take_dirty(round + 1) {
            let block = encode();
            dev.write_at(&block, page * 4096).unwrap();
        }
        alloc.free.append(&mut alloc.pending);
        // Drop the cache: everything must come back from disk.
        let root = tree.root();
        tree.reset(root);
        let io = loader(&dev, round + 1, 1 << 20);
        let mut c = Collect(vec![], vec![]);
        tree.walk(&io, &mut c).unwrap();
        let want: Vec<_> = model.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(c.1, want);
        let pages: HashSet<u64> = c.0.iter().copied().collect();
        assert_eq!(pages, alloc.live, "walked pages are exactly the live ones");
        // Range scans agree with the model.
        let lo = ExcKey::new(1, 100, 0);
        let hi = ExcKey::new(1, 300, 0);
        let mut out = Vec::new();
        tree.range(&io, &lo, &hi, usize::MAX, &mut out).unwrap();
        let want: Vec<_> = model.range(lo..hi).map(|(k, v)| (*k, *v)).collect();
        assert_eq!(out, want);
    }
    // Remove everything: the tree and its pages go away.
    let keys: Vec<_> = model.keys().copied().collect();
    let io = loader(&dev, 100, 1 << 20);
    for k in keys {
        assert!(tree.remove(&io, &mut alloc, &k).unwrap().is_some());
    }
    assert_eq!(tree.root(), 0);
    assert!(alloc.live.is_empty());
}

#[test]
fn a_flipped_byte_is_a_typed_error() {
    let dev = MemDev::new("t", 16 << 20);
    let mut alloc = TestAlloc::new();
    let mut tree: Tree<ExceptionCodec> = Tree::new(0);
    let io = loader(&dev, 1, 4096);
    for i in 0..3000u64 {
        tree.insert(&io, &mut alloc, ExcKey::new(0, i, 1), (i * 7) % 4000 + 2)
            .unwrap();
    }
    for (page, encode) in tree.take_dirty(1) {
        let block = encode();
        dev.write_at(&block, page * 4096).unwrap();
    }
    let root = tree.root();
    let pages: Vec<u64> = alloc.live.iter().copied().collect();
    for page in pages {
        for off in [0usize, 17, 30, 60, 200, 4095] {
            let mut b = vec![0u8; 4096];
            dev.read_at(&mut b, page * 4096).unwrap();
            b[off] ^= 0x5a;
            dev.write_at(&b, page * 4096).unwrap();
            tree.reset(root);
            let mut c = Collect(vec![], vec![]);
            match tree.walk(&io, &mut c) {
                Err(Error::Corrupt { block, .. }) => assert_eq!(block, page),
                other => panic!("page {page} offset {off}: {other:?}"),
            }
            b[off] ^= 0x5a;
            dev.write_at(&b, page * 4096).unwrap();
        }
    }
}

mod codec_tests {
    use crate::btree::Codec;
    use crate::exceptions::*;
    use crate::format::varint::Reader;

    #[test]
    fn exception_keys_round_trip() {
        let keys = [
            ExcKey::new(0, 0, 0),
            ExcKey::new(0, 0, 5),
            ExcKey::new(0, 3, 1),
            ExcKey::new(2, 0, 0),
            ExcKey::new(2, u64::MAX, u32::MAX),
        ];
        let mut out = Vec::new();
        let mut prev = None;
        for k in &keys {
            ExceptionCodec::put_key(prev, k, &mut out);
            prev = Some(k);
        }
        let mut r = Reader::new(&out, 0, "t");
        let mut prev = None;
        for k in &keys {
            let got = ExceptionCodec::get_key(prev.as_ref(), &mut r).unwrap();
            assert_eq!(&got, k);
            prev = Some(got);
        }
        assert!(r.at_end());
    }
}
