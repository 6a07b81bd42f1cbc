//! Catalog records: one per origin (under version 0) and one per version.

use crate::btree::Codec;
use crate::error::Result;
use crate::format::{varint, varint::Reader, Kind};

/// Longest memo accepted, in bytes.
pub const MAX_MEMO: usize = 1024;
/// Longest origin id accepted, in bytes.
pub const MAX_ORIGIN_ID: usize = 255;

/// A rollback in progress: copying `source` (a hidden frozen copy of `tag`)
/// into the origin; chunks below `cursor` are done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RollbackState {
    pub tag: u32,
    pub source: u32,
    pub cursor: u64,
}

/// What the store keeps of an origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginRecord {
    pub id: String,
    pub size: u64,
    pub birthday: u64,
    pub next_tag: u32,
    pub next_version: u32,
    pub rollback: Option<RollbackState>,
    /// A cleaning pass in progress: chunks below this are done.
    pub clean_cursor: Option<u64>,
}

/// Version flags.
pub mod flags {
    /// Being removed by the current cleaning pass.
    pub const CLEANING: u32 = 1;
    /// Hidden copy read by a rollback; the cleaner leaves it alone.
    pub const PINNED: u32 = 2;
}

/// What the store keeps of a version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRecord {
    pub parent: u32,
    /// 0 = untagged (a ghost).
    pub tag: u32,
    pub flags: u32,
    pub birthday: u64,
    pub exceptions: u64,
    pub memo: String,
}

/// Catalog key: (origin, version); version 0 holds the origin record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CatKey {
    pub origin: u32,
    pub version: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CatValue {
    Origin(OriginRecord),
    Version(VersionRecord),
}

pub struct CatalogCodec;

fn put_str(out: &mut Vec<u8>, s: &str) {
    varint::put(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn get_str(r: &mut Reader, max: usize) -> Result<String> {
    let n = r.get()? as usize;
    if n > max {
        return Err(r.err("string too long"));
    }
    let b = r.bytes(n)?;
    String::from_utf8(b.to_vec()).map_err(|_| r.err("string is not UTF-8"))
}

impl Codec for CatalogCodec {
    type Key = CatKey;
    type Value = CatValue;
    const KIND: Kind = Kind::CatalogNode;
    const MAX_ENTRY: usize = 10 + 1 + 5 * 6 + 10 * 6 + 2 * 10 + MAX_MEMO + MAX_ORIGIN_ID;

    fn put_key(prev: Option<&CatKey>, k: &CatKey, out: &mut Vec<u8>) {
        match prev {
            Some(p) if p.origin == k.origin => {
                varint::put(out, 0);
                varint::put(out, u64::from(k.version - p.version));
            }
            _ => {
                let base = prev.map_or(0, |p| p.origin);
                varint::put(out, u64::from(k.origin - base) + u64::from(prev.is_none()));
                varint::put(out, u64::from(k.version));
            }
        }
    }

    fn get_key(prev: Option<&CatKey>, r: &mut Reader) -> Result<CatKey> {
        let d = r.get()?;
        match prev {
            Some(p) if d == 0 => {
                let dv = r.get_u32()?;
                let version = p
                    .version
                    .checked_add(dv)
                    .ok_or_else(|| r.err("version overflow"))?;
                Ok(CatKey {
                    origin: p.origin,
                    version,
                })
            }
            _ => {
                let origin = match prev {
                    None => d.checked_sub(1).ok_or_else(|| r.err("bad origin delta"))?,
                    Some(p) => u64::from(p.origin) + d,
                };
                let origin = u32::try_from(origin).map_err(|_| r.err("origin overflow"))?;
                Ok(CatKey {
                    origin,
                    version: r.get_u32()?,
                })
            }
        }
    }

    fn put_value(_prev: Option<&CatValue>, v: &CatValue, out: &mut Vec<u8>) {
        match v {
            CatValue::Origin(o) => {
                out.push(1);
                put_str(out, &o.id);
                varint::put(out, o.size);
                varint::put(out, o.birthday);
                varint::put(out, u64::from(o.next_tag));
                varint::put(out, u64::from(o.next_version));
                match &o.rollback {
                    Some(rb) => {
                        out.push(1);
                        varint::put(out, u64::from(rb.tag));
                        varint::put(out, u64::from(rb.source));
                        varint::put(out, rb.cursor);
                    }
                    None => out.push(0),
                }
                match o.clean_cursor {
                    Some(c) => {
                        out.push(1);
                        varint::put(out, c);
                    }
                    None => out.push(0),
                }
            }
            CatValue::Version(v) => {
                out.push(2);
                varint::put(out, u64::from(v.parent));
                varint::put(out, u64::from(v.tag));
                varint::put(out, u64::from(v.flags));
                varint::put(out, v.birthday);
                varint::put(out, v.exceptions);
                put_str(out, &v.memo);
            }
        }
    }

    fn get_value(_prev: Option<&CatValue>, r: &mut Reader) -> Result<CatValue> {
        let kind = r.bytes(1)?[0];
        match kind {
            1 => {
                let id = get_str(r, MAX_ORIGIN_ID)?;
                let size = r.get()?;
                let birthday = r.get()?;
                let next_tag = r.get_u32()?;
                let next_version = r.get_u32()?;
                let rollback = match r.bytes(1)?[0] {
                    0 => None,
                    1 => Some(RollbackState {
                        tag: r.get_u32()?,
                        source: r.get_u32()?,
                        cursor: r.get()?,
                    }),
                    _ => return Err(r.err("bad rollback flag")),
                };
                let clean_cursor = match r.bytes(1)?[0] {
                    0 => None,
                    1 => Some(r.get()?),
                    _ => return Err(r.err("bad cleaning flag")),
                };
                Ok(CatValue::Origin(OriginRecord {
                    id,
                    size,
                    birthday,
                    next_tag,
                    next_version,
                    rollback,
                    clean_cursor,
                }))
            }
            2 => Ok(CatValue::Version(VersionRecord {
                parent: r.get_u32()?,
                tag: r.get_u32()?,
                flags: r.get_u32()?,
                birthday: r.get()?,
                exceptions: r.get()?,
                memo: get_str(r, MAX_MEMO)?,
            })),
            _ => Err(r.err("unknown record kind")),
        }
    }
}
