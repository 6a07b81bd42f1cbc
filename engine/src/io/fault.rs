//! A fault-injecting backend for crash tests.
//!
//! Each device keeps a volatile image (what reads see) and a durable image
//! (what survives a crash). Writes land in the volatile image and in a list of
//! pending writes; `sync` makes them durable. A shared [`FaultController`]
//! counts writes and syncs across every device attached to it and crashes at
//! a chosen one: from then on all I/O fails. [`FaultDev::crash_image`] gives the
//! bytes a restarted machine would find: the durable image plus an arbitrary
//! subset of the pending writes, some of them torn at a sector boundary.

use super::BlockDev;
use crate::error::{Error, Result};
use std::sync::{Arc, Mutex, MutexGuard};

/// Counts I/O across devices and decides when to crash.
#[derive(Default)]
pub struct FaultController {
    state: Mutex<CtlState>,
}

#[derive(Default)]
struct CtlState {
    ops: u64,
    crash_at: Option<u64>,
    crashed: bool,
    /// Fail writes (not crash) once this many are done: an I/O error test.
    fail_writes_after: Option<u64>,
    writes: u64,
}

impl FaultController {
    pub fn new() -> Arc<FaultController> {
        Arc::new(FaultController::default())
    }

    fn lock(&self) -> MutexGuard<'_, CtlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Crash at the `n`-th write or sync from now (1 = the next one).
    pub fn crash_after(&self, n: u64) {
        let mut s = self.lock();
        s.crash_at = Some(s.ops + n.max(1));
    }

    /// Crash right now.
    pub fn crash_now(&self) {
        self.lock().crashed = true;
    }

    /// Make every write after `n` more fail with EIO (without crashing).
    pub fn fail_writes_after(&self, n: u64) {
        let mut s = self.lock();
        s.fail_writes_after = Some(s.writes + n);
    }

    /// Whether the crash has happened.
    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Writes and syncs counted so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// Count one operation; Err(true) if this op is the crash point,
    /// Err(false) if the device has already crashed or writes are failing.
    fn tick(&self, is_write: bool) -> std::result::Result<(), bool> {
        let mut s = self.lock();
        if s.crashed {
            return Err(false);
        }
        s.ops += 1;
        if s.crash_at == Some(s.ops) {
            s.crashed = true;
            return Err(true);
        }
        if is_write {
            s.writes += 1;
            if let Some(limit) = s.fail_writes_after {
                if s.writes > limit {
                    return Err(false);
                }
            }
        }
        Ok(())
    }
}

struct Images {
    volatile: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<(u64, Vec<u8>)>,
}

/// A memory device with a volatile and a durable image.
pub struct FaultDev {
    name: String,
    ctl: Arc<FaultController>,
    images: Mutex<Images>,
}

impl FaultDev {
    /// A device starting with `bytes` (durable), driven by `ctl`.
    pub fn new(name: &str, bytes: Vec<u8>, ctl: Arc<FaultController>) -> FaultDev {
        FaultDev {
            name: name.to_string(),
            ctl,
            images: Mutex::new(Images {
                volatile: bytes.clone(),
                durable: bytes,
                pending: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Images> {
        self.images.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What a restart after the crash finds: the durable image plus a subset
    /// of the pending writes chosen by `seed`, some torn at 512-byte sectors.
    pub fn crash_image(&self, seed: u64) -> Vec<u8> {
        let im = self.lock();
        let mut out = im.durable.clone();
        let mut rng = seed ^ 0x9E37_79B9_7F4A_7C15;
        for (off, data) in &im.pending {
            rng = splitmix(rng);
            let off = *off as usize;
            match rng % 3 {
                0 => {}
                1 => out[off..off + data.len()].copy_from_slice(data),
                _ => {
                    let sectors = data.len().div_ceil(512);
                    let keep = ((rng >> 8) as usize % (sectors + 1)) * 512;
                    let keep = keep.min(data.len());
                    out[off..off + keep].copy_from_slice(&data[..keep]);
                }
            }
        }
        out
    }

    /// Make the device larger (the new bytes are zeros, durable).
    pub fn grow(&self, len: usize) {
        let mut im = self.lock();
        if len > im.volatile.len() {
            im.volatile.resize(len, 0);
            im.durable.resize(len, 0);
        }
    }

    /// The durable image only (every pending write lost).
    pub fn durable_image(&self) -> Vec<u8> {
        self.lock().durable.clone()
    }

    /// The volatile image (what the running system sees).
    pub fn volatile_image(&self) -> Vec<u8> {
        self.lock().volatile.clone()
    }

    fn failed(&self, op: &'static str) -> Error {
        Error::io(&self.name, op, std::io::Error::from_raw_os_error(libc::EIO))
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl BlockDev for FaultDev {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.lock().volatile.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if self.ctl.crashed() {
            return Err(self.failed("read"));
        }
        let im = self.lock();
        let start = offset as usize;
        let end = start
            .checked_add(buf.len())
            .filter(|&e| e <= im.volatile.len());
        match end {
            Some(end) => {
                buf.copy_from_slice(&im.volatile[start..end]);
                Ok(())
            }
            None => Err(self.failed("read")),
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let start = offset as usize;
        let mut im = self.lock();
        if start
            .checked_add(buf.len())
            .is_none_or(|e| e > im.volatile.len())
        {
            return Err(self.failed("write"));
        }
        match self.ctl.tick(true) {
            Ok(()) => {
                im.volatile[start..start + buf.len()].copy_from_slice(buf);
                im.pending.push((offset, buf.to_vec()));
                Ok(())
            }
            Err(true) => {
                // The crashing write may reach the disk in part.
                im.pending.push((offset, buf.to_vec()));
                Err(self.failed("write"))
            }
            Err(false) => Err(self.failed("write")),
        }
    }

    fn sync(&self) -> Result<()> {
        let mut im = self.lock();
        match self.ctl.tick(false) {
            Ok(()) => {
                let pending = std::mem::take(&mut im.pending);
                for (off, data) in pending {
                    let off = off as usize;
                    im.durable[off..off + data.len()].copy_from_slice(&data);
                }
                Ok(())
            }
            Err(_) => Err(self.failed("sync")),
        }
    }
}
