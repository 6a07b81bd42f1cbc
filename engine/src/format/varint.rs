//! LEB128 variable-length integers, used to pack B-tree nodes.

use crate::error::{Error, Result};

pub fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Zigzag-encode a signed difference.
pub fn put_signed(out: &mut Vec<u8>, v: i64) {
    put(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// A cursor over a payload that reports corruption against its block.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    block: u64,
    kind: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], block: u64, kind: &'static str) -> Self {
        Reader {
            buf,
            pos: 0,
            block,
            kind,
        }
    }

    pub fn err(&self, why: &str) -> Error {
        Error::corrupt(
            self.block,
            self.kind,
            format!("{why} at payload byte {}", self.pos),
        )
    }

    pub fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn get(&mut self) -> Result<u64> {
        let mut v: u64 = 0;
        let mut shift = 0u32;
        loop {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.err("truncated integer"));
            };
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(self.err("integer overflow"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
            shift += 7;
            if shift > 63 {
                return Err(self.err("integer too long"));
            }
        }
    }

    pub fn get_signed(&mut self) -> Result<i64> {
        let z = self.get()?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    pub fn get_u32(&mut self) -> Result<u32> {
        let v = self.get()?;
        u32::try_from(v).map_err(|_| self.err("value exceeds 32 bits"))
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.err("truncated bytes")),
        }
    }
}
