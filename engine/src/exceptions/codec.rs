//! How the exception tree packs its entries: keys delta-encoded against the
//! previous key of the node, values as zigzag deltas of the previous value.

use super::ExcKey;
use crate::btree::{Codec, Loader};
use crate::error::Result;
use crate::format::{self, varint, varint::Reader, Kind};

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
            _ if *chunk == super::MERGED => Ok(()),
            Some(end) if end <= io.page_count && chunk * pages >= format::SUPERBLOCK_SLOTS => {
                Ok(())
            }
            _ => Err("exception points outside the device's data chunks"),
        }
    }
}
