//! On-disk layout: the metadata block header, checksums and the superblock.
//!
//! Every metadata block is one 4 KiB page: a 48-byte header followed by a
//! payload. The checksum covers every byte after it, and the header names the
//! block's type, its own page address and the generation that wrote it, so a
//! block read from the wrong place, of the wrong type or left over from an
//! old generation is detected. `docs/format.md` describes every field.

mod superblock;
pub mod varint;

pub use superblock::{Superblock, SUPERBLOCK_SLOTS};

use crate::error::{Error, Result};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of a page, the unit of metadata and of chunk sizes.
pub const PAGE_SIZE: usize = 4096;
/// Bytes of a 512-byte sector.
pub const SECTOR_SIZE: u64 = 512;
/// Largest origin (and version) the store addresses: byte offsets must
/// stay below 2^63.
pub const MAX_ORIGIN_BYTES: u64 = 1 << 60;

/// Block types, as four ASCII bytes read little-endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Super,
    ExceptionNode,
    CatalogNode,
    SpaceNode,
    Bitmap,
}

impl Kind {
    pub const fn tag(self) -> u32 {
        let b: &[u8; 4] = match self {
            Kind::Super => b"SUPR",
            Kind::ExceptionNode => b"XNOD",
            Kind::CatalogNode => b"CNOD",
            Kind::SpaceNode => b"SNOD",
            Kind::Bitmap => b"BMAP",
        };
        u32::from_le_bytes(*b)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Kind::Super => "superblock",
            Kind::ExceptionNode => "exception tree node",
            Kind::CatalogNode => "catalog tree node",
            Kind::SpaceNode => "space tree node",
            Kind::Bitmap => "space bitmap",
        }
    }
}

/// The header at the start of every metadata block.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockHeader {
    /// blake3 of bytes 16..4096, first 16 bytes.
    pub checksum: [u8; 16],
    /// One of [`Kind::tag`].
    pub kind: U32,
    /// B-tree level (0 = leaf); 0 for other blocks.
    pub level: U16,
    /// Entries in the payload.
    pub count: U16,
    /// This block's own page address.
    pub address: U64,
    /// Generation of the commit that wrote the block.
    pub generation: U64,
    /// Bytes of payload in use.
    pub payload_len: U32,
    pub reserved: U32,
}

pub const HEADER_SIZE: usize = std::mem::size_of::<BlockHeader>();
const _: () = assert!(HEADER_SIZE == 48);
/// Payload bytes available in a block.
pub const PAYLOAD_SIZE: usize = PAGE_SIZE - HEADER_SIZE;

const CHECKSUM_CONTEXT: &[u8] = b"dms metadata block v1";

pub(crate) fn checksum(block: &[u8]) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(CHECKSUM_CONTEXT);
    h.update(&block[16..]);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

/// Build a block: header fields plus payload, checksum filled in.
pub fn seal(
    kind: Kind,
    level: u16,
    count: u16,
    address: u64,
    generation: u64,
    payload: &[u8],
) -> Vec<u8> {
    assert!(payload.len() <= PAYLOAD_SIZE, "payload overflows a block");
    let mut block = vec![0u8; PAGE_SIZE];
    let hdr = BlockHeader {
        checksum: [0; 16],
        kind: U32::new(kind.tag()),
        level: U16::new(level),
        count: U16::new(count),
        address: U64::new(address),
        generation: U64::new(generation),
        payload_len: U32::new(payload.len() as u32),
        reserved: U32::new(0),
    };
    block[..HEADER_SIZE].copy_from_slice(hdr.as_bytes());
    block[HEADER_SIZE..HEADER_SIZE + payload.len()].copy_from_slice(payload);
    let sum = checksum(&block);
    block[..16].copy_from_slice(&sum);
    block
}

/// A validated block: its header and its payload.
pub struct Opened<'a> {
    pub header: BlockHeader,
    pub payload: &'a [u8],
}

/// Validate a block read from page `address`, expecting `kind`.
pub fn open(block: &[u8], kind: Kind, address: u64) -> Result<Opened<'_>> {
    let bad = |why: String| Error::corrupt(address, kind.name(), why);
    if block.len() != PAGE_SIZE {
        return Err(bad(format!("block is {} bytes", block.len())));
    }
    let (hdr, _) = BlockHeader::read_from_prefix(block).map_err(|_| bad("short header".into()))?;
    if hdr.checksum != checksum(block) {
        return Err(bad("checksum mismatch".into()));
    }
    if hdr.kind.get() != kind.tag() {
        let found = hdr.kind.get().to_le_bytes();
        return Err(bad(format!(
            "block type is {:?}",
            String::from_utf8_lossy(&found)
        )));
    }
    if hdr.address.get() != address {
        return Err(bad(format!("block claims address {}", hdr.address.get())));
    }
    let len = hdr.payload_len.get() as usize;
    if len > PAYLOAD_SIZE {
        return Err(bad(format!("payload length {len} too large")));
    }
    Ok(Opened {
        header: hdr,
        payload: &block[HEADER_SIZE..HEADER_SIZE + len],
    })
}

#[cfg(test)]
mod tests;
