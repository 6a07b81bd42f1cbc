//! dms-engine: a multi-version snapshot store for block devices, after the
//! dm-snap-mv "versioned pointers" design.
//!
//! One COW device (the [`Store`]) keeps any number of snapshots of several
//! origin devices. Each [`Volume`] is one version, origin (tag 0) or
//! snapshot, readable and writable at any byte offset. The layers, bottom
//! up, each using only those below it: `io` (block backends) -> `format`
//! (on-disk blocks) -> `btree` (copy-on-write B-tree) -> `space`
//! (allocation) -> `versions` (version tree) -> `exceptions` (versioned
//! pointers: key, codec, resolution) -> `store` (transactions, commands,
//! write planning, held overwrites, status, cleaning, rollback, checking)
//! -> `volume` (byte-level I/O).

mod btree;
mod error;
mod exceptions;
mod format;
pub mod io;
mod space;
mod store;
pub mod stream;
pub mod table;
#[cfg(feature = "testing")]
pub mod testing;
mod versions;
mod volume;

pub use error::{Error, ErrorKind, Result};
pub use format::{PAGE_SIZE, SECTOR_SIZE};
pub use store::{
    CheckReport, CleanReport, ExceptionEntry, FormatOptions, HeldStats, OriginStatus, OriginUsage,
    ReceiveStatus, Store, StoreStatus, TagUsage, VersionStatus, DEFAULT_HELD_LIMIT, HELD_OVERHEAD,
    MAX_CHUNK_PAGES, MAX_ORIGIN_BYTES, MIN_CHUNK_PAGES,
};
pub use versions::record::{OnFull, StorePolicy, MAX_MEMO, MAX_ORIGIN_ID};
pub use volume::{Extent, Volume};
