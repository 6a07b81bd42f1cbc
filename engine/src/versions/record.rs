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

/// A receive in progress into an origin: what a resume must continue and
/// an abort must undo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiveState {
    /// The stream's identity, as its header gives it.
    pub stream: [u8; 16],
    /// The base version's identity (zeros for a full stream).
    pub base: [u8; 16],
    /// The identity the received snapshot will carry.
    pub target: [u8; 16],
    /// The hidden version holding what the origin was before: an abort
    /// rolls the origin back to it. 0: the origin read as zeros when the
    /// (full) receive began, and an abort zeroes it.
    pub undo: u32,
    /// Bytes of the device below this offset are received and durable.
    pub next_offset: u64,
    /// The stream's device size, birthday and memo.
    pub size: u64,
    pub birthday: u64,
    pub memo: String,
    /// 0 = the native stream (resumable); 1 and 2 = RBD diff v1 and v2.
    pub format: u8,
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
    /// A receive in progress (kind 4 records only).
    pub receive: Option<ReceiveState>,
}

/// Version flags.
pub mod flags {
    /// Being removed by the current cleaning pass.
    pub const CLEANING: u32 = 1;
    /// Hidden copy read by a rollback, a send or a receive's undo; the
    /// cleaner leaves it alone.
    pub const PINNED: u32 = 2;
    /// Its identity was given out (sent in a stream, or received): the
    /// first write to it gives it a new one.
    pub const EXPORTED: u32 = 4;
    /// A hidden frozen copy read by a send: dropped (left to the cleaner)
    /// when the store is opened again.
    pub const SENDING: u32 = 8;
    /// A receive's undo point: dropped when no receive is in progress.
    pub const UNDO: u32 = 16;
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
    /// The version's identity (None in records written before identities
    /// existed: kind 2).
    pub uuid: Option<[u8; 16]>,
    /// The version's size in bytes when it differs from its origin's (the
    /// origin grew after it was taken: kind 7). None: the origin's size.
    pub size: Option<u64>,
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
    /// The store's policy (kind 5, at key `(u32::MAX, 0)`).
    Policy(StorePolicy),
    /// An origin's zero map (kind 8, at key `(origin, ZEROS_VERSION)`):
    /// runs of whole chunks, `(first, count)` ascending and apart, that
    /// the origin device reads as zeros because they were discarded
    /// through dms.
    Zeros(Vec<(u64, u64)>),
}

/// The catalog "version" under which an origin's zero map is kept (real
/// version ids stay below 2^24).
pub const ZEROS_VERSION: u32 = u32::MAX;

/// The most bytes of runs a zero map record holds: with its key (two
/// varints), kind byte and count it stays within the catalog's entry bound.
pub const ZERO_MAP_BYTES: usize = 1400;
const _: () = assert!(10 + 1 + 10 + ZERO_MAP_BYTES <= <CatalogCodec as Codec>::MAX_ENTRY);

/// Bytes the runs take in a zero map record.
pub fn zero_runs_len(runs: &[(u64, u64)]) -> usize {
    let mut end = 0;
    let mut n = 0;
    for &(s, k) in runs {
        n += varint::len(s - end) + varint::len(k - 1);
        end = s + k;
    }
    n
}

/// What a store keeps of its space policy (`dms policy`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorePolicy {
    /// Percent of the COW device in use at which the store is "low" (0:
    /// no mark).
    pub low_water: u8,
    /// A command run once each time the mark is crossed (empty: none).
    pub hook: String,
    /// What an origin write does when a copy-out finds no space.
    pub on_full: OnFull,
    /// Under [`OnFull::DeleteOldest`], the fewest snapshots an origin keeps.
    pub keep_min: u32,
}

/// What happens when a write finds the COW device full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnFull {
    /// The write fails with ENOSPC.
    #[default]
    Fail,
    /// The origin's oldest snapshots are deleted (never one open, never
    /// fewer than `keep_min`) until the write finds room.
    DeleteOldest,
}

impl OnFull {
    pub fn name(self) -> &'static str {
        match self {
            OnFull::Fail => "fail",
            OnFull::DeleteOldest => "delete-oldest",
        }
    }
}

impl std::str::FromStr for OnFull {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<OnFull, String> {
        match s {
            "fail" => Ok(OnFull::Fail),
            "delete-oldest" => Ok(OnFull::DeleteOldest),
            _ => Err(format!("{s:?}: give fail or delete-oldest")),
        }
    }
}

/// The catalog key of the store's policy record.
pub const POLICY_KEY: CatKey = CatKey {
    origin: u32::MAX,
    version: 0,
};

/// The longest hook command: a policy record stays within the catalog's
/// entry bound.
pub const MAX_HOOK: usize = 1024;
const _: () = assert!(10 + 1 + 1 + 2 + MAX_HOOK + 1 + 5 <= <CatalogCodec as Codec>::MAX_ENTRY);

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
    // The larger of an origin record with a receive in progress (three
    // identities, a memo) and a version record (an identity, a memo); a
    // policy record (at most 1 + 1 + 2 + MAX_HOOK + 1 + 5) is smaller.
    const MAX_ENTRY: usize =
        10 + 1 + 5 * 6 + 10 * 8 + 2 * 10 + 3 * 16 + 1 + MAX_MEMO + MAX_ORIGIN_ID;

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
                out.push(if o.receive.is_some() { 4 } else { 1 });
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
                if let Some(rs) = &o.receive {
                    out.extend_from_slice(&rs.stream);
                    out.extend_from_slice(&rs.base);
                    out.extend_from_slice(&rs.target);
                    varint::put(out, u64::from(rs.undo));
                    varint::put(out, rs.next_offset);
                    varint::put(out, rs.size);
                    varint::put(out, rs.birthday);
                    put_str(out, &rs.memo);
                    out.push(rs.format);
                }
            }
            CatValue::Policy(p) => {
                // Kind 5 until an on-full rule is set; kind 6 adds it.
                let plain = p.on_full == OnFull::Fail && p.keep_min == 0;
                out.push(if plain { 5 } else { 6 });
                out.push(p.low_water);
                put_str(out, &p.hook);
                if !plain {
                    out.push(match p.on_full {
                        OnFull::Fail => 0,
                        OnFull::DeleteOldest => 1,
                    });
                    varint::put(out, u64::from(p.keep_min));
                }
            }
            CatValue::Zeros(runs) => {
                out.push(8);
                varint::put(out, runs.len() as u64);
                let mut end = 0;
                for &(s, k) in runs {
                    varint::put(out, s - end);
                    varint::put(out, k - 1);
                    end = s + k;
                }
            }
            CatValue::Version(v) => {
                // Kind 7 carries a size; it always has an identity.
                let uuid = match (v.uuid, v.size) {
                    (None, Some(_)) => Some([0; 16]),
                    (u, _) => u,
                };
                out.push(match (uuid.is_some(), v.size.is_some()) {
                    (_, true) => 7,
                    (true, false) => 3,
                    (false, false) => 2,
                });
                varint::put(out, u64::from(v.parent));
                varint::put(out, u64::from(v.tag));
                varint::put(out, u64::from(v.flags));
                varint::put(out, v.birthday);
                varint::put(out, v.exceptions);
                put_str(out, &v.memo);
                if let Some(u) = &uuid {
                    out.extend_from_slice(u);
                }
                if let Some(size) = v.size {
                    varint::put(out, size);
                }
            }
        }
    }

    fn get_value(_prev: Option<&CatValue>, r: &mut Reader) -> Result<CatValue> {
        let kind = r.bytes(1)?[0];
        match kind {
            1 | 4 => {
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
                let receive = if kind == 4 {
                    let id16 = |r: &mut Reader| -> Result<[u8; 16]> {
                        let mut u = [0u8; 16];
                        u.copy_from_slice(r.bytes(16)?);
                        Ok(u)
                    };
                    Some(ReceiveState {
                        stream: id16(r)?,
                        base: id16(r)?,
                        target: id16(r)?,
                        undo: r.get_u32()?,
                        next_offset: r.get()?,
                        size: r.get()?,
                        birthday: r.get()?,
                        memo: get_str(r, MAX_MEMO)?,
                        format: match r.bytes(1)?[0] {
                            f @ 0..=2 => f,
                            _ => return Err(r.err("bad stream format")),
                        },
                    })
                } else {
                    None
                };
                Ok(CatValue::Origin(OriginRecord {
                    id,
                    size,
                    birthday,
                    next_tag,
                    next_version,
                    rollback,
                    clean_cursor,
                    receive,
                }))
            }
            2 | 3 | 7 => {
                let mut v = VersionRecord {
                    parent: r.get_u32()?,
                    tag: r.get_u32()?,
                    flags: r.get_u32()?,
                    birthday: r.get()?,
                    exceptions: r.get()?,
                    memo: get_str(r, MAX_MEMO)?,
                    uuid: None,
                    size: None,
                };
                if kind != 2 {
                    let mut u = [0u8; 16];
                    u.copy_from_slice(r.bytes(16)?);
                    v.uuid = Some(u);
                }
                if kind == 7 {
                    let size = r.get()?;
                    if size == 0 || size > crate::format::MAX_ORIGIN_BYTES {
                        return Err(r.err("version size out of range"));
                    }
                    v.size = Some(size);
                }
                Ok(CatValue::Version(v))
            }
            5 | 6 => {
                let low_water = r.bytes(1)?[0];
                if low_water > 100 {
                    return Err(r.err("low-water mark over 100%"));
                }
                let mut p = StorePolicy {
                    low_water,
                    hook: get_str(r, MAX_HOOK)?,
                    ..StorePolicy::default()
                };
                if kind == 6 {
                    p.on_full = match r.bytes(1)?[0] {
                        0 => OnFull::Fail,
                        1 => OnFull::DeleteOldest,
                        _ => return Err(r.err("unknown on-full rule")),
                    };
                    p.keep_min = r.get_u32()?;
                }
                Ok(CatValue::Policy(p))
            }
            8 => {
                let n = r.get()?;
                let mut runs = Vec::new();
                let mut end = 0u64;
                for i in 0..n {
                    let gap = r.get()?;
                    if i > 0 && gap == 0 {
                        return Err(r.err("zero map runs touch"));
                    }
                    let s = end.checked_add(gap);
                    let k = r.get()?.checked_add(1);
                    let (Some(s), Some(k)) = (s, k) else {
                        return Err(r.err("zero map run overflows"));
                    };
                    end = s
                        .checked_add(k)
                        .filter(|&e| e <= crate::format::MAX_ORIGIN_BYTES)
                        .ok_or_else(|| r.err("zero map run overflows"))?;
                    runs.push((s, k));
                }
                Ok(CatValue::Zeros(runs))
            }
            _ => Err(r.err("unknown record kind")),
        }
    }
}
