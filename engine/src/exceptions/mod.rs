//! The vocabulary of versioned pointers, shared by the store and by byte
//! I/O: the exception tree's key and codec, the MERGED marker, and how a
//! version resolves a chunk through its ancestors' exceptions.

mod codec;

pub(crate) use codec::ExceptionCodec;

use crate::versions::VersionTree;
use std::collections::HashMap;

/// Key of the exception tree: "for `chunk` of `origin`, `version` has its own
/// copy". Ordered origin, chunk, version, so all exceptions of one chunk are
/// neighbours and one origin's exceptions are one range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExcKey {
    pub origin: u32,
    pub chunk: u64,
    pub version: u32,
}

impl ExcKey {
    pub fn new(origin: u32, chunk: u64, version: u32) -> Self {
        ExcKey {
            origin,
            chunk,
            version,
        }
    }
}

/// Where a version's data for a chunk lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Src {
    Origin,
    Cow(u64),
}

/// Where `version` reads `chunk` from, given the chunk's exceptions.
pub(crate) fn resolve(tree: &VersionTree, version: u32, excs: &[(u32, u64)]) -> Src {
    if version == 0 {
        return Src::Origin;
    }
    match tree.nearest(version, excs.iter().map(|e| e.0)) {
        Some(v) => excs
            .iter()
            .find(|e| e.0 == v && e.1 != MERGED)
            .map_or(Src::Origin, |e| Src::Cow(e.1)),
        None => Src::Origin,
    }
}

/// The value of a rollback source's exception that says "this chunk is
/// already merged into the origin" (not a COW chunk): the source then
/// reads the origin there, so nothing merges it again.
pub(crate) const MERGED: u64 = u64::MAX;

/// Which version must receive a copy of the current data before the writer
/// changes it: the writer's child, unless it (or, past ghosts the cleaner is
/// merging away, its surviving descendant) already has its own exception.
pub(crate) fn heir_target(
    cleaning: &HashMap<u32, Option<u32>>,
    first: Option<u32>,
    excs: &[(u32, u64)],
) -> Option<u32> {
    let mut cur = first?;
    loop {
        if excs.iter().any(|e| e.0 == cur) {
            return None;
        }
        match cleaning.get(&cur) {
            Some(None) => return None,
            Some(Some(next)) => cur = *next,
            None => return Some(cur),
        }
    }
}
