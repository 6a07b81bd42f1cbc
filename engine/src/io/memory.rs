//! An in-memory backend, sparse so that huge sizes cost nothing until written.

use super::BlockDev;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

const PAGE: u64 = 4096;

/// Bytes in memory; unwritten pages read as zeros.
pub struct MemDev {
    name: String,
    size: AtomicU64,
    pages: RwLock<HashMap<u64, Box<[u8]>>>,
}

impl MemDev {
    /// A zero-filled device of `size` bytes.
    pub fn new(name: &str, size: u64) -> MemDev {
        MemDev {
            name: name.to_string(),
            size: AtomicU64::new(size),
            pages: RwLock::new(HashMap::new()),
        }
    }

    /// A device holding a copy of `bytes`.
    pub fn from_bytes(name: &str, bytes: &[u8]) -> MemDev {
        let dev = MemDev::new(name, bytes.len() as u64);
        let mut pages = HashMap::new();
        for (i, page) in bytes.chunks(PAGE as usize).enumerate() {
            if page.iter().any(|&b| b != 0) {
                let mut p = vec![0u8; PAGE as usize].into_boxed_slice();
                p[..page.len()].copy_from_slice(page);
                pages.insert(i as u64, p);
            }
        }
        *dev.pages.write().unwrap_or_else(|e| e.into_inner()) = pages;
        dev
    }

    /// Make the device larger; the new bytes read as zeros.
    pub fn grow(&self, size: u64) {
        self.size.fetch_max(size, Ordering::AcqRel);
    }

    /// The whole content (for small devices in tests).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.size() as usize];
        if let Err(e) = self.read_at(&mut out, 0) {
            panic!("reading a memory device cannot fail: {e}");
        }
        out
    }

    fn check(&self, offset: u64, len: usize) -> Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(Error::io(
                &self.name,
                "range check",
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "past end of device"),
            )),
        }
    }
}

impl BlockDev for MemDev {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check(offset, buf.len())?;
        let pages = self.pages.read().unwrap_or_else(|e| e.into_inner());
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (pno, off) = (pos / PAGE, (pos % PAGE) as usize);
            let n = (PAGE as usize - off).min(buf.len() - done);
            match pages.get(&pno) {
                Some(p) => buf[done..done + n].copy_from_slice(&p[off..off + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check(offset, buf.len())?;
        let mut pages = self.pages.write().unwrap_or_else(|e| e.into_inner());
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (pno, off) = (pos / PAGE, (pos % PAGE) as usize);
            let n = (PAGE as usize - off).min(buf.len() - done);
            let p = pages
                .entry(pno)
                .or_insert_with(|| vec![0u8; PAGE as usize].into_boxed_slice());
            p[off..off + n].copy_from_slice(&buf[done..done + n]);
            done += n;
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }
}
