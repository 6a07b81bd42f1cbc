//! How the space tree packs its entries: bitmap block index -> the page
//! holding that bitmap block and its number of free pages.

use crate::btree::{Codec, Loader};
use crate::error::Result;
use crate::format::{self, varint, varint::Reader, Kind};

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
        if u64::from(v.free) > super::PAGES_PER_BITMAP {
            return Err("free count larger than a bitmap block covers");
        }
        Ok(())
    }
}
