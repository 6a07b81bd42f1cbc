//! A device that remembers whether it was written since its last sync, so
//! that a commit with nothing new on the COW device does not pay for an
//! `fdatasync` of it.

use super::{BlockDev, Dev};
use crate::error::Result;
use std::sync::atomic::{AtomicBool, Ordering};

pub struct Tracked {
    dev: Dev,
    /// Set after every completed write (never before: a sync that clears
    /// it must not miss a write that completed after the clear).
    dirty: AtomicBool,
}

impl Tracked {
    /// Wrap `dev`; it counts as written (whatever came before is unknown).
    pub fn new(dev: Dev) -> Tracked {
        Tracked {
            dev,
            dirty: AtomicBool::new(true),
        }
    }

    /// Sync if anything was written since the last sync. Every write that
    /// completed before this call is durable when it returns.
    pub fn sync_if_written(&self) -> Result<()> {
        if self.dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.dev.sync() {
                self.dirty.store(true, Ordering::Release);
                return Err(e);
            }
        }
        Ok(())
    }
}

impl BlockDev for Tracked {
    fn name(&self) -> &str {
        self.dev.name()
    }

    fn size(&self) -> u64 {
        self.dev.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.dev.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let res = self.dev.write_at(buf, offset);
        // Also after a failed write: part of it may have landed.
        self.dirty.store(true, Ordering::Release);
        res
    }

    fn refresh_size(&self) -> Result<u64> {
        self.dev.refresh_size()
    }

    fn next_data(&self, offset: u64) -> Option<u64> {
        self.dev.next_data(offset)
    }

    fn next_hole(&self, offset: u64) -> Option<u64> {
        self.dev.next_hole(offset)
    }

    fn will_need(&self, offset: u64, len: u64) {
        self.dev.will_need(offset, len)
    }

    fn sync(&self) -> Result<()> {
        self.dirty.store(false, Ordering::Release);
        let res = self.dev.sync();
        if res.is_err() {
            self.dirty.store(true, Ordering::Release);
        }
        res
    }
}
