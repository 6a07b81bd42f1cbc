//! The superblock: two slots (pages 0 and 1); generation `g` is written to
//! slot `g % 2`, so the previous commit survives a torn superblock write.
//! On open the valid slot with the highest generation wins.

use super::{open, seal, Kind, PAGE_SIZE};
use crate::error::{Error, Result};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Pages 0 and 1 hold the superblock slots.
pub const SUPERBLOCK_SLOTS: u64 = 2;
const MAGIC: [u8; 8] = *b"DMSSTOR1";
const FORMAT_VERSION: u32 = 1;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy)]
#[repr(C)]
struct Body {
    magic: [u8; 8],
    format_version: U32,
    chunk_pages: U32,
    page_count: U64,
    uuid: [u8; 16],
    exception_root: U64,
    catalog_root: U64,
    space_root: U64,
    next_origin: U32,
    flags: U32,
    data_chunks: U64,
    meta_pages: U64,
    created: U64,
}
const _: () = assert!(std::mem::size_of::<Body>() == 96);

/// The decoded superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub generation: u64,
    pub chunk_pages: u32,
    pub page_count: u64,
    pub uuid: [u8; 16],
    pub exception_root: u64,
    pub catalog_root: u64,
    pub space_root: u64,
    pub next_origin: u32,
    pub data_chunks: u64,
    pub meta_pages: u64,
    pub created: u64,
}

impl Superblock {
    pub fn slot(generation: u64) -> u64 {
        generation % SUPERBLOCK_SLOTS
    }

    pub fn encode(&self) -> Vec<u8> {
        let body = Body {
            magic: MAGIC,
            format_version: U32::new(FORMAT_VERSION),
            chunk_pages: U32::new(self.chunk_pages),
            page_count: U64::new(self.page_count),
            uuid: self.uuid,
            exception_root: U64::new(self.exception_root),
            catalog_root: U64::new(self.catalog_root),
            space_root: U64::new(self.space_root),
            next_origin: U32::new(self.next_origin),
            flags: U32::new(0),
            data_chunks: U64::new(self.data_chunks),
            meta_pages: U64::new(self.meta_pages),
            created: U64::new(self.created),
        };
        seal(
            Kind::Super,
            0,
            0,
            Self::slot(self.generation),
            self.generation,
            body.as_bytes(),
        )
    }

    /// Decode slot `slot`'s page.
    pub fn decode(block: &[u8], slot: u64) -> Result<Superblock> {
        let opened = open(block, Kind::Super, slot)?;
        let bad = |why: &str| Error::corrupt(slot, Kind::Super.name(), why.to_string());
        let (body, _) = Body::read_from_prefix(opened.payload).map_err(|_| bad("short body"))?;
        if body.magic != MAGIC {
            return Err(bad("bad magic"));
        }
        if body.format_version.get() != FORMAT_VERSION {
            return Err(bad("unsupported format version"));
        }
        let generation = opened.header.generation.get();
        if Self::slot(generation) != slot {
            return Err(bad("generation does not belong to this slot"));
        }
        let chunk_pages = body.chunk_pages.get();
        if !(1..=64).contains(&chunk_pages) || !chunk_pages.is_power_of_two() {
            return Err(bad("invalid chunk size"));
        }
        let page_count = body.page_count.get();
        // Bounded before use: byte offsets of pages must fit in 64 bits.
        if page_count <= SUPERBLOCK_SLOTS || page_count > u64::MAX / crate::format::PAGE_SIZE as u64
        {
            return Err(bad("page count out of range"));
        }
        if body.data_chunks.get() > page_count / u64::from(chunk_pages)
            || body.meta_pages.get() > page_count
        {
            return Err(bad("chunk or page counts larger than the device"));
        }
        for root in [
            body.exception_root.get(),
            body.catalog_root.get(),
            body.space_root.get(),
        ] {
            if root != 0 && (root < SUPERBLOCK_SLOTS || root >= page_count) {
                return Err(bad("tree root out of range"));
            }
        }
        Ok(Superblock {
            generation,
            chunk_pages,
            page_count,
            uuid: body.uuid,
            exception_root: body.exception_root.get(),
            catalog_root: body.catalog_root.get(),
            space_root: body.space_root.get(),
            next_origin: body.next_origin.get(),
            data_chunks: body.data_chunks.get(),
            meta_pages: body.meta_pages.get(),
            created: body.created.get(),
        })
    }

    /// Whether a page looks like any slot of a store (for format refusal).
    pub fn looks_like_store(block: &[u8]) -> bool {
        block.len() == PAGE_SIZE && block[super::HEADER_SIZE..super::HEADER_SIZE + 8] == MAGIC
    }
}
