//! The native stream format (docs/stream.md gives every byte): a header,
//! then typed records, each followed by the value of a BLAKE3 chain over
//! everything before it, the last one an end record that seals the count.
//! A reader checks each record's chain value before it hands the record
//! out, so nothing it returns was damaged on the way.

use super::{Identity, ZERO_ID};
use crate::error::{Error, Result};
use std::io::{Read, Write};

pub const MAGIC: &[u8; 8] = b"dms-strm";
pub const VERSION: u32 = 1;
/// Feature bits a receiver must understand (none defined yet).
pub const KNOWN_REQUIRED: u64 = 0;
/// Bytes of the header before the memo.
pub const HEADER_FIXED: usize = 112;
/// The largest record payload a reader accepts.
pub const MAX_PAYLOAD: u32 = 16 << 20;
/// Data per record a writer makes.
pub const DATA_PER_RECORD: usize = 1 << 20;

const CHAIN_DOMAIN: &[u8] = b"dms stream v1";

pub const REC_DATA: u8 = 1;
pub const REC_ZERO: u8 = 2;
pub const REC_END: u8 = 3;
/// Record flag: a receiver that does not know the type may skip it.
pub const FLAG_OPTIONAL: u8 = 1;

/// What a stream's header says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub required: u64,
    pub optional: u64,
    pub stream: Identity,
    /// ZERO_ID for a full stream.
    pub base: Identity,
    pub target: Identity,
    pub size: u64,
    pub birthday: u64,
    /// Offset this segment starts at (0: from the start; else a resume).
    pub resume_offset: u64,
    pub chunk_bytes: u32,
    pub memo: String,
}

impl Header {
    pub fn is_incremental(&self) -> bool {
        self.base != ZERO_ID
    }

    pub fn encode(&self) -> Vec<u8> {
        let memo = self.memo.as_bytes();
        let mut h = Vec::with_capacity(HEADER_FIXED + memo.len());
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&((HEADER_FIXED + memo.len()) as u32).to_le_bytes());
        h.extend_from_slice(&self.required.to_le_bytes());
        h.extend_from_slice(&self.optional.to_le_bytes());
        h.extend_from_slice(&self.stream);
        h.extend_from_slice(&self.base);
        h.extend_from_slice(&self.target);
        h.extend_from_slice(&self.size.to_le_bytes());
        h.extend_from_slice(&self.birthday.to_le_bytes());
        h.extend_from_slice(&self.resume_offset.to_le_bytes());
        h.extend_from_slice(&self.chunk_bytes.to_le_bytes());
        h.extend_from_slice(&(memo.len() as u16).to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(memo);
        h
    }
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn id16(b: &[u8]) -> Identity {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    a
}

fn chain_start(header: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(CHAIN_DOMAIN);
    h.update(header);
    *h.finalize().as_bytes()
}

/// Writes a stream segment.
pub struct Writer<'a> {
    out: &'a mut dyn Write,
    chain: [u8; 32],
    records: u64,
    covered: u64,
    pub bytes: u64,
}

impl<'a> Writer<'a> {
    pub fn new(out: &'a mut dyn Write, header: &Header) -> Result<Writer<'a>> {
        let h = header.encode();
        let mut w = Writer {
            chain: chain_start(&h),
            out,
            records: 0,
            covered: 0,
            bytes: 0,
        };
        w.put(&h)?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.out
            .write_all(b)
            .map_err(|e| Error::io("the stream", "write", e))?;
        self.bytes += b.len() as u64;
        Ok(())
    }

    fn record(&mut self, kind: u8, flags: u8, parts: &[&[u8]]) -> Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut head = [0u8; 8];
        head[0] = kind;
        head[1] = flags;
        head[4..8].copy_from_slice(&(len as u32).to_le_bytes());
        let mut h = blake3::Hasher::new();
        h.update(&self.chain);
        h.update(&head);
        for p in parts {
            h.update(p);
        }
        self.chain = *h.finalize().as_bytes();
        self.put(&head)?;
        for p in parts {
            self.put(p)?;
        }
        let chain = self.chain;
        self.put(&chain)?;
        if kind == REC_DATA || kind == REC_ZERO {
            self.records += 1;
        }
        Ok(())
    }

    pub fn data(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.covered += data.len() as u64;
        self.record(REC_DATA, 0, &[&offset.to_le_bytes(), data])
    }

    pub fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        self.covered += len;
        self.record(REC_ZERO, 0, &[&offset.to_le_bytes(), &len.to_le_bytes()])
    }

    pub fn end(mut self) -> Result<u64> {
        let (r, c) = (self.records, self.covered);
        self.record(REC_END, 0, &[&r.to_le_bytes(), &c.to_le_bytes()])?;
        self.out
            .flush()
            .map_err(|e| Error::io("the stream", "write", e))?;
        Ok(self.bytes)
    }
}

/// A record as a reader hands it out (verified).
#[derive(Debug, PartialEq, Eq)]
pub enum Record {
    Data { offset: u64, data: Vec<u8> },
    Zero { offset: u64, len: u64 },
    End,
}

/// Why reading stopped: the stream is damaged, or it just ended early.
pub enum ReadError {
    /// Damage: the stream cannot be trusted from here on.
    Bad(Error),
    /// The input ended (or failed) before the end record: what was read
    /// and verified so far stands.
    Cut(Error),
}

/// Reads and verifies a stream segment.
pub struct Reader<'a> {
    input: &'a mut dyn Read,
    chain: [u8; 32],
    /// Bytes read so far (for messages).
    pub pos: u64,
    records: u64,
    covered: u64,
    done: bool,
    /// A buffer for the next record's payload.
    spare: Vec<u8>,
}

fn bad(at: u64, reason: impl Into<String>) -> ReadError {
    ReadError::Bad(Error::BadStream {
        at,
        reason: reason.into(),
    })
}

impl<'a> Reader<'a> {
    /// Read the header; the first bytes read are the magic.
    pub fn start(input: &'a mut dyn Read) -> std::result::Result<(Reader<'a>, Header), ReadError> {
        let mut r = Reader {
            input,
            chain: [0; 32],
            pos: 0,
            records: 0,
            covered: 0,
            done: false,
            spare: Vec::new(),
        };
        let fixed = r.exact(HEADER_FIXED)?;
        if &fixed[..8] != MAGIC {
            return Err(bad(0, "not a dms stream (bad magic)"));
        }
        let version = le32(&fixed[8..]);
        if version != VERSION {
            return Err(bad(
                8,
                format!("stream format version {version}; this dms reads version {VERSION}"),
            ));
        }
        let len = le32(&fixed[12..]) as usize;
        let memo_len = u16::from_le_bytes([fixed[108], fixed[109]]) as usize;
        if memo_len > crate::versions::record::MAX_MEMO || len != HEADER_FIXED + memo_len {
            return Err(bad(12, "header length does not match its memo"));
        }
        let required = le64(&fixed[16..]);
        if required & !KNOWN_REQUIRED != 0 {
            return Err(bad(
                16,
                format!(
                    "the stream needs features {:#x} that this dms does not know",
                    required & !KNOWN_REQUIRED
                ),
            ));
        }
        let memo_bytes = r.exact(memo_len)?;
        let memo = String::from_utf8(memo_bytes.clone())
            .map_err(|_| bad(HEADER_FIXED as u64, "memo is not UTF-8"))?;
        let header = Header {
            required,
            optional: le64(&fixed[24..]),
            stream: id16(&fixed[32..]),
            base: id16(&fixed[48..]),
            target: id16(&fixed[64..]),
            size: le64(&fixed[80..]),
            birthday: le64(&fixed[88..]),
            resume_offset: le64(&fixed[96..]),
            chunk_bytes: le32(&fixed[104..]),
            memo,
        };
        let mut all = fixed;
        all.extend_from_slice(&memo_bytes);
        r.chain = chain_start(&all);
        Ok((r, header))
    }

    /// Give back a data record's buffer for the next one.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if buf.capacity() > self.spare.capacity() {
            self.spare = buf;
        }
    }

    fn exact(&mut self, n: usize) -> std::result::Result<Vec<u8>, ReadError> {
        let mut buf = vec![0u8; n];
        self.fill(&mut buf)?;
        Ok(buf)
    }

    fn fill(&mut self, buf: &mut [u8]) -> std::result::Result<(), ReadError> {
        let n = buf.len();
        let mut got = 0;
        while got < n {
            match self.input.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(ReadError::Cut(Error::BadStream {
                        at: self.pos + got as u64,
                        reason: "the stream ends before its end record".into(),
                    }))
                }
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadError::Cut(Error::io("the stream", "read", e))),
            }
        }
        self.pos += n as u64;
        Ok(())
    }

    /// The next verified record (None after the end record). Unknown
    /// optional records are skipped.
    pub fn next(&mut self) -> std::result::Result<Option<Record>, ReadError> {
        loop {
            if self.done {
                return Ok(None);
            }
            let at = self.pos;
            let head = self.exact(8)?;
            let (kind, flags) = (head[0], head[1]);
            let len = le32(&head[4..]);
            if head[2] != 0 || head[3] != 0 || flags & !FLAG_OPTIONAL != 0 {
                return Err(bad(at, "record header has reserved bits set"));
            }
            if len > MAX_PAYLOAD {
                return Err(bad(at, format!("record of {len} bytes is too long")));
            }
            // The payload's first 8 bytes (a data record's offset) apart,
            // the rest into a reused buffer: no copy, no fresh pages.
            let prefix = self.exact((len as usize).min(8))?;
            let mut rest = std::mem::take(&mut self.spare);
            rest.clear();
            rest.resize(len as usize - prefix.len(), 0);
            self.fill(&mut rest)?;
            let chain_at = self.pos;
            let seal = self.exact(32)?;
            let mut h = blake3::Hasher::new();
            h.update(&self.chain);
            h.update(&head);
            h.update(&prefix);
            h.update(&rest);
            let want = *h.finalize().as_bytes();
            if seal[..] != want[..] {
                return Err(bad(
                    chain_at,
                    "the chain does not match: the stream was damaged or reordered",
                ));
            }
            self.chain = want;
            if kind == REC_DATA && !rest.is_empty() {
                let rec = Record::Data {
                    offset: le64(&prefix),
                    data: rest,
                };
                self.records += 1;
                self.covered += len as u64 - 8;
                return Ok(Some(rec));
            }
            let mut payload = prefix;
            payload.extend_from_slice(&rest);
            self.spare = rest;
            let rec = match kind {
                REC_ZERO if payload.len() == 16 => Record::Zero {
                    offset: le64(&payload),
                    len: le64(&payload[8..]),
                },
                REC_END if payload.len() == 16 => {
                    let (records, covered) = (le64(&payload), le64(&payload[8..]));
                    if records != self.records || covered != self.covered {
                        return Err(bad(
                            at,
                            format!(
                                "the end record counts {records} records and {covered} bytes; \
                                 {} and {} came",
                                self.records, self.covered
                            ),
                        ));
                    }
                    self.done = true;
                    return Ok(Some(Record::End));
                }
                REC_DATA | REC_ZERO | REC_END => {
                    return Err(bad(at, format!("record of type {kind} has a bad length")))
                }
                _ if flags & FLAG_OPTIONAL != 0 => continue,
                _ => {
                    return Err(bad(
                        at,
                        format!("unknown record type {kind} that a receiver must understand"),
                    ))
                }
            };
            self.records += 1;
            self.covered += match &rec {
                Record::Data { data, .. } => data.len() as u64,
                Record::Zero { len, .. } => *len,
                Record::End => 0,
            };
            return Ok(Some(rec));
        }
    }
}
