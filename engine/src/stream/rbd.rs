//! Ceph's RBD diff formats, v1 and v2, as `rbd export-diff`, `import-diff`
//! and `merge-diff` read and write them (Ceph's doc/dev/rbd-diff.rst): a
//! text header, metadata records (from-snapshot and to-snapshot names, the
//! image size), data records (`w`: offset, length, bytes; `z`: offset,
//! length of zeros) and an end record `e`. All integers are little-endian.
//! In v2 every record but `e` carries the u64 length of what follows its
//! tag, so a reader can skip tags it does not know. Neither carries a
//! checksum: damage inside data is not detected.

use crate::error::{Error, Result};
use std::io::{Read, Write};

pub const V1: &[u8] = b"rbd diff v1\n";
pub const V2: &[u8] = b"rbd diff v2\n";

/// Longest snapshot name accepted.
const MAX_NAME: u32 = 4096;
/// Largest `w` record a reader takes in one piece (it reads it in parts).
const PART: u64 = 1 << 20;

pub struct Writer<'a> {
    out: &'a mut dyn Write,
    v2: bool,
    pub bytes: u64,
}

impl<'a> Writer<'a> {
    /// Header and metadata: `from` (None for a full diff), `to`, the size.
    pub fn new(
        out: &'a mut dyn Write,
        v2: bool,
        from: Option<&str>,
        to: &str,
        size: u64,
    ) -> Result<Writer<'a>> {
        let mut w = Writer { out, v2, bytes: 0 };
        w.put(if v2 { V2 } else { V1 })?;
        if let Some(f) = from {
            w.name(b'f', f)?;
        }
        w.name(b't', to)?;
        w.tag(b's', 8)?;
        w.put(&size.to_le_bytes())?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.out
            .write_all(b)
            .map_err(|e| Error::io("the stream", "write", e))?;
        self.bytes += b.len() as u64;
        Ok(())
    }

    /// A record's tag and, in v2, the length of what follows it.
    fn tag(&mut self, t: u8, len: u64) -> Result<()> {
        self.put(&[t])?;
        if self.v2 {
            self.put(&len.to_le_bytes())?;
        }
        Ok(())
    }

    fn name(&mut self, t: u8, name: &str) -> Result<()> {
        self.tag(t, 4 + name.len() as u64)?;
        self.put(&(name.len() as u32).to_le_bytes())?;
        self.put(name.as_bytes())
    }

    pub fn data(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.tag(b'w', 16 + data.len() as u64)?;
        self.put(&offset.to_le_bytes())?;
        self.put(&(data.len() as u64).to_le_bytes())?;
        self.put(data)
    }

    pub fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        self.tag(b'z', 16)?;
        self.put(&offset.to_le_bytes())?;
        self.put(&len.to_le_bytes())
    }

    pub fn end(mut self) -> Result<u64> {
        self.put(b"e")?;
        self.out
            .flush()
            .map_err(|e| Error::io("the stream", "write", e))?;
        Ok(self.bytes)
    }
}

/// What an RBD diff says before its data.
#[derive(Debug, Default)]
pub struct Meta {
    pub from: Option<String>,
    pub to: Option<String>,
    pub size: Option<u64>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Record {
    /// A piece of a `w` record (long ones come in parts).
    Data {
        offset: u64,
        data: Vec<u8>,
    },
    Zero {
        offset: u64,
        len: u64,
    },
    End,
}

pub struct Reader<'a> {
    input: &'a mut dyn Read,
    v2: bool,
    pub pos: u64,
    /// The rest of a `w` record being read in parts: (offset, bytes left).
    pending: Option<(u64, u64)>,
    /// A data record read while looking for the end of the metadata.
    first: Option<u8>,
    done: bool,
}

fn bad(at: u64, reason: impl Into<String>) -> Error {
    Error::BadStream {
        at,
        reason: reason.into(),
    }
}

impl<'a> Reader<'a> {
    /// Read the header and the metadata records.
    pub fn start(input: &'a mut dyn Read) -> Result<(Reader<'a>, Meta)> {
        let mut r = Reader {
            input,
            v2: false,
            pos: 0,
            pending: None,
            first: None,
            done: false,
        };
        let head = r.exact(V1.len())?;
        r.v2 = match &head[..] {
            h if h == V1 => false,
            h if h == V2 => true,
            _ => {
                return Err(bad(
                    0,
                    "not an RBD diff (no \"rbd diff v1\" or \"v2\" header)",
                ))
            }
        };
        let mut meta = Meta::default();
        loop {
            let at = r.pos;
            let t = r.exact(1)?[0];
            match t {
                b'f' | b't' => {
                    let len = r.len()?;
                    let n = r.u32()?;
                    if n > MAX_NAME || (r.v2 && len != 4 + u64::from(n)) {
                        return Err(bad(at, "bad snapshot name length"));
                    }
                    let name = String::from_utf8(r.exact(n as usize)?)
                        .map_err(|_| bad(at, "snapshot name is not UTF-8"))?;
                    if t == b'f' {
                        meta.from = Some(name);
                    } else {
                        meta.to = Some(name);
                    }
                }
                b's' => {
                    let len = r.len()?;
                    if r.v2 && len != 8 {
                        return Err(bad(at, "bad size record length"));
                    }
                    meta.size = Some(r.u64()?);
                }
                b'w' | b'z' | b'e' => {
                    r.first = Some(t);
                    return Ok((r, meta));
                }
                other if r.v2 => {
                    // An unknown tag: v2 says how much to skip.
                    let len = r.len()?;
                    r.skip(len, at, other)?;
                }
                other => return Err(bad(at, format!("unknown record tag {other:#x}"))),
            }
        }
    }

    fn exact(&mut self, n: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; n];
        let mut got = 0;
        while got < n {
            match self.input.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(bad(
                        self.pos + got as u64,
                        "the diff ends before its end record",
                    ))
                }
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("the stream", "read", e)),
            }
        }
        self.pos += n as u64;
        Ok(buf)
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.exact(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.exact(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_le_bytes(a))
    }

    /// In v2, the length after a tag; in v1, nothing.
    fn len(&mut self) -> Result<u64> {
        if self.v2 {
            self.u64()
        } else {
            Ok(0)
        }
    }

    fn skip(&mut self, mut n: u64, at: u64, tag: u8) -> Result<()> {
        if n > 1 << 30 {
            return Err(bad(at, format!("record {tag:#x} claims {n} bytes")));
        }
        while n > 0 {
            let k = n.min(PART) as usize;
            self.exact(k)?;
            n -= k as u64;
        }
        Ok(())
    }

    pub fn next(&mut self) -> Result<Option<Record>> {
        if let Some((offset, left)) = self.pending {
            let k = left.min(PART);
            let data = self.exact(k as usize)?;
            self.pending = (left > k).then_some((offset + k, left - k));
            return Ok(Some(Record::Data { offset, data }));
        }
        if self.done {
            return Ok(None);
        }
        loop {
            let at = self.pos;
            let t = match self.first.take() {
                Some(t) => t,
                None => self.exact(1)?[0],
            };
            match t {
                b'w' => {
                    let len = self.len()?;
                    let (offset, n) = (self.u64()?, self.u64()?);
                    if self.v2 && n.checked_add(16) != Some(len) {
                        return Err(bad(at, "data record length does not match"));
                    }
                    if offset.checked_add(n).is_none() {
                        return Err(bad(at, "data record past any device's end"));
                    }
                    if n == 0 {
                        continue;
                    }
                    self.pending = Some((offset, n));
                    return self.next();
                }
                b'z' => {
                    let len = self.len()?;
                    if self.v2 && len != 16 {
                        return Err(bad(at, "zero record length does not match"));
                    }
                    let (offset, n) = (self.u64()?, self.u64()?);
                    if offset.checked_add(n).is_none() {
                        return Err(bad(at, "zero record past any device's end"));
                    }
                    return Ok(Some(Record::Zero { offset, len: n }));
                }
                b'e' => {
                    self.done = true;
                    return Ok(Some(Record::End));
                }
                b'f' | b't' | b's' => {
                    return Err(bad(at, "metadata record after the data records"))
                }
                other if self.v2 => {
                    let len = self.len()?;
                    self.skip(len, at, other)?;
                }
                other => return Err(bad(at, format!("unknown record tag {other:#x}"))),
            }
        }
    }
}
