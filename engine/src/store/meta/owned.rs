//! What the origin's child is known to own, so that origin rewrites skip
//! the exception tree.

/// Chunks that one version (the origin's child when last looked at) is
/// known to own: an origin overwrite of such a chunk needs no copy-out and
/// no look-up in the exception tree. Only ever a subset of the truth.
#[derive(Default)]
pub(crate) struct OwnedSet {
    version: u32,
    bits: Vec<u64>,
}

impl OwnedSet {
    pub fn contains(&self, version: u32, chunk: u64) -> bool {
        self.version == version
            && self
                .bits
                .get((chunk / 64) as usize)
                .is_some_and(|w| w & (1 << (chunk % 64)) != 0)
    }

    /// Whether this set is about `version`.
    pub fn tracks(&self, version: u32) -> bool {
        self.version == version
    }

    pub fn learn(&mut self, version: u32, chunk: u64) {
        if self.version != version {
            self.version = version;
            self.bits.clear();
        }
        let w = (chunk / 64) as usize;
        if self.bits.len() <= w {
            self.bits.resize(w + 1, 0);
        }
        self.bits[w] |= 1 << (chunk % 64);
    }

    pub fn forget(&mut self, version: u32, chunk: u64) {
        if self.version == version {
            if let Some(w) = self.bits.get_mut((chunk / 64) as usize) {
                *w &= !(1 << (chunk % 64));
            }
        }
    }
}
