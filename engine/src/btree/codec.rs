//! How keys and values are packed into nodes. Keys are delta-encoded against
//! the previous key of the same node, so runs of neighbouring keys cost a
//! byte or two each.

use super::Loader;
use crate::error::Result;
use crate::format::{self, varint, varint::Reader, Kind};
use std::fmt::Debug;

/// Packing rules for one kind of tree.
pub trait Codec: Sized + 'static {
    type Key: Ord + Copy + Debug + Send + Sync;
    type Value: Clone + Debug + Send + Sync;
    /// Block type of this tree's nodes.
    const KIND: Kind;
    /// Upper bound on the encoded bytes of one entry, leaf or internal.
    const MAX_ENTRY: usize;
    /// Lower bound on the encoded bytes of one entry, leaf or internal
    /// (every key and every value or child pointer is at least one varint).
    const MIN_ENTRY: usize = 2;
    fn put_key(prev: Option<&Self::Key>, key: &Self::Key, out: &mut Vec<u8>);
    fn get_key(prev: Option<&Self::Key>, r: &mut Reader) -> Result<Self::Key>;
    fn put_value(prev: Option<&Self::Value>, value: &Self::Value, out: &mut Vec<u8>);
    fn get_value(prev: Option<&Self::Value>, r: &mut Reader) -> Result<Self::Value>;
    /// Whether a decoded leaf value can be used on this device (a pointer
    /// read from disk is bounded before anything follows it).
    fn check_value(_value: &Self::Value, _io: &Loader) -> std::result::Result<(), &'static str> {
        Ok(())
    }
}

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

/// The exception tree: key -> COW chunk number holding the data.
pub struct ExceptionCodec;

impl Codec for ExceptionCodec {
    type Key = ExcKey;
    type Value = u64;
    const KIND: Kind = Kind::ExceptionNode;
    const MAX_ENTRY: usize = 5 + 10 + 5 + 10;
    // Three varints of key and one of value or child.
    const MIN_ENTRY: usize = 4;

    fn put_key(prev: Option<&ExcKey>, k: &ExcKey, out: &mut Vec<u8>) {
        match prev {
            Some(p) if p.origin == k.origin => {
                varint::put(out, 0);
                let dc = k.chunk - p.chunk;
                varint::put(out, dc);
                if dc == 0 {
                    varint::put(out, u64::from(k.version - p.version));
                } else {
                    varint::put(out, u64::from(k.version));
                }
            }
            _ => {
                let base = prev.map_or(0, |p| p.origin);
                // +1 so that 0 always means "same origin as before".
                varint::put(out, u64::from(k.origin - base) + u64::from(prev.is_none()));
                varint::put(out, k.chunk);
                varint::put(out, u64::from(k.version));
            }
        }
    }

    fn get_key(prev: Option<&ExcKey>, r: &mut Reader) -> Result<ExcKey> {
        let d_origin = r.get()?;
        match prev {
            Some(p) if d_origin == 0 => {
                let dc = r.get()?;
                let chunk = p
                    .chunk
                    .checked_add(dc)
                    .ok_or_else(|| r.err("chunk overflow"))?;
                let dv = r.get_u32()?;
                let version = if dc == 0 {
                    if dv == 0 {
                        return Err(r.err("duplicate key"));
                    }
                    p.version
                        .checked_add(dv)
                        .ok_or_else(|| r.err("version overflow"))?
                } else {
                    dv
                };
                Ok(ExcKey {
                    origin: p.origin,
                    chunk,
                    version,
                })
            }
            _ => {
                let base = u64::from(prev.map_or(0, |p| p.origin));
                let origin = if prev.is_none() {
                    d_origin
                        .checked_sub(1)
                        .ok_or_else(|| r.err("bad origin delta"))?
                } else {
                    base + d_origin
                };
                let origin = u32::try_from(origin).map_err(|_| r.err("origin overflow"))?;
                let chunk = r.get()?;
                let version = r.get_u32()?;
                Ok(ExcKey {
                    origin,
                    chunk,
                    version,
                })
            }
        }
    }

    fn put_value(prev: Option<&u64>, v: &u64, out: &mut Vec<u8>) {
        match prev {
            Some(p) => varint::put_signed(out, v.wrapping_sub(*p) as i64),
            None => varint::put(out, *v),
        }
    }

    fn get_value(prev: Option<&u64>, r: &mut Reader) -> Result<u64> {
        Ok(match prev {
            Some(p) => p.wrapping_add(r.get_signed()? as u64),
            None => r.get()?,
        })
    }

    fn check_value(chunk: &u64, io: &Loader) -> std::result::Result<(), &'static str> {
        // A COW chunk lies past the superblocks and inside the device; the
        // one other value is a rollback's MERGED marker.
        let pages = u64::from(io.chunk_pages);
        match chunk.checked_add(1).and_then(|end| end.checked_mul(pages)) {
            _ if *chunk == crate::volume::MERGED => Ok(()),
            Some(end) if end <= io.page_count && chunk * pages >= format::SUPERBLOCK_SLOTS => {
                Ok(())
            }
            _ => Err("exception points outside the device's data chunks"),
        }
    }
}

/// The space tree: bitmap block index -> (page holding it, free pages in it).
pub struct SpaceCodec;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpaceEntry {
    pub page: u64,
    pub free: u32,
}

impl Codec for SpaceCodec {
    type Key = u64;
    type Value = SpaceEntry;
    const KIND: Kind = Kind::SpaceNode;
    const MAX_ENTRY: usize = 10 + 10 + 5;

    fn put_key(prev: Option<&u64>, k: &u64, out: &mut Vec<u8>) {
        varint::put(out, k - prev.copied().unwrap_or(0));
    }

    fn get_key(prev: Option<&u64>, r: &mut Reader) -> Result<u64> {
        let d = r.get()?;
        prev.copied()
            .unwrap_or(0)
            .checked_add(d)
            .ok_or_else(|| r.err("key overflow"))
    }

    fn put_value(_prev: Option<&SpaceEntry>, v: &SpaceEntry, out: &mut Vec<u8>) {
        varint::put(out, v.page);
        varint::put(out, u64::from(v.free));
    }

    fn get_value(_prev: Option<&SpaceEntry>, r: &mut Reader) -> Result<SpaceEntry> {
        Ok(SpaceEntry {
            page: r.get()?,
            free: r.get_u32()?,
        })
    }

    fn check_value(v: &SpaceEntry, io: &Loader) -> std::result::Result<(), &'static str> {
        if v.page < format::SUPERBLOCK_SLOTS || v.page >= io.page_count {
            return Err("bitmap page out of range");
        }
        if u64::from(v.free) > crate::space::PAGES_PER_BITMAP {
            return Err("free count larger than a bitmap block covers");
        }
        Ok(())
    }
}
