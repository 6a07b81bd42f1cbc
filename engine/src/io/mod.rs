//! Block backends: where the store and the origins keep their bytes.
//!
//! A backend is a flat array of bytes with positional I/O and a durability
//! barrier (`sync`). The store never assumes anything else of it.

mod fault;
mod file;
mod memory;
mod tracked;

pub use fault::{FaultController, FaultDev};
pub use file::{device_path, device_size, FileDev};
pub use memory::MemDev;
pub use tracked::Tracked;

use crate::error::Result;
use std::sync::Arc;

/// A device the engine reads and writes.
pub trait BlockDev: Send + Sync {
    /// A short name for messages (usually the path).
    fn name(&self) -> &str;
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Read exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Write all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;
    /// Make every completed write durable.
    fn sync(&self) -> Result<()>;
    /// Give a range that reads as zeros back as a hole (a sparse file's
    /// `fallocate(PUNCH_HOLE)`); it keeps reading as zeros. Ok(false):
    /// the device cannot.
    fn punch_hole(&self, _offset: u64, _len: u64) -> Result<bool> {
        Ok(false)
    }
    /// Whether `punch_hole` can work here.
    fn can_punch(&self) -> bool {
        false
    }
    /// Look at the device's size again (it may have been made larger
    /// underneath) and return it.
    fn refresh_size(&self) -> Result<u64> {
        Ok(self.size())
    }
    /// Where data may begin at or after `offset`: a sparse file's holes
    /// read as zeros and are skipped (`SEEK_DATA`). `Some(size)` or more:
    /// only holes from `offset` on. None: the device cannot tell.
    fn next_data(&self, _offset: u64) -> Option<u64> {
        None
    }
    /// Where the next hole begins at or after `offset` (`SEEK_HOLE`; the
    /// device's end counts as one). None: the device cannot tell.
    fn next_hole(&self, _offset: u64) -> Option<u64> {
        None
    }
    /// A hint that `len` bytes at `offset` will be read soon: the device
    /// may start reading them now (`posix_fadvise(WILLNEED)`). Nothing
    /// changes but timing.
    fn will_need(&self, _offset: u64, _len: u64) {}
}

/// A shared handle to a backend.
pub type Dev = Arc<dyn BlockDev>;

/// Read chunk `chunk` (of `cb` bytes) of a device whose data ends at
/// `size`: bytes past the end read as zeros.
pub(crate) fn read_chunk(
    dev: &dyn BlockDev,
    size: u64,
    chunk: u64,
    cb: u64,
    buf: &mut [u8],
) -> Result<()> {
    let start = chunk * cb;
    let n = size.saturating_sub(start).min(cb) as usize;
    dev.read_at(&mut buf[..n], start)?;
    buf[n..].fill(0);
    Ok(())
}
