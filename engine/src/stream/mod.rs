//! Data off the machine: a version's content as a stream (everything, or
//! only the chunks that differ from a base), and a stream received into an
//! origin as a new snapshot carrying the sender's identity.
//!
//! Formats: the native one (`native.rs`, docs/stream.md: typed records, a
//! BLAKE3 chain over them sealed by an end record, resumable) and Ceph's
//! RBD diffs v1 and v2 (`rbd.rs`: no checksums, not resumable).
//!
//! Promises: a send reads a frozen copy of its versions, so I/O goes on
//! meanwhile and the stream is one consistent state. A receive shows
//! nothing half done: until the end record has been checked, no snapshot
//! appears; a damaged stream puts the origin back as it was (an undo copy
//! taken first), an interrupted one leaves a resume token.

mod native;
mod rbd;
pub(crate) mod receive;
mod send;

use crate::error::{Error, Result};

pub use native::Header;

/// A 128-bit identity (a stream's, a version's).
pub type Identity = [u8; 16];
pub(crate) const ZERO_ID: Identity = [0; 16];

/// A stream format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StreamFormat {
    /// Records with lengths, a BLAKE3 chain, resumable (docs/stream.md).
    #[default]
    Dms,
    /// Ceph's `rbd export-diff` format v1.
    RbdV1,
    /// Ceph's `rbd export-diff --export-format 2` format.
    RbdV2,
}

impl StreamFormat {
    pub fn from_name(name: &str) -> Option<StreamFormat> {
        match name {
            "dms" => Some(StreamFormat::Dms),
            "rbd-v1" => Some(StreamFormat::RbdV1),
            "rbd-v2" => Some(StreamFormat::RbdV2),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StreamFormat::Dms => "dms",
            StreamFormat::RbdV1 => "rbd-v1",
            StreamFormat::RbdV2 => "rbd-v2",
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            StreamFormat::Dms => 0,
            StreamFormat::RbdV1 => 1,
            StreamFormat::RbdV2 => 2,
        }
    }
}

/// What to send.
#[derive(Clone, Debug, Default)]
pub struct SendOptions {
    /// Only what differs from this tag (an incremental stream).
    pub from: Option<u32>,
    pub format: StreamFormat,
    /// Continue an interrupted receive (its token) instead: the tags are
    /// then the ones the token names.
    pub resume: Option<String>,
}

/// What a send did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendReport {
    /// Bytes of stream written.
    pub bytes: u64,
    /// Bytes of the device the stream carries as data.
    pub data_bytes: u64,
    /// Bytes it carries as zero runs.
    pub zero_bytes: u64,
}

/// How to receive.
#[derive(Clone, Debug, Default)]
pub struct ReceiveOptions {
    pub format: StreamFormat,
    /// For an incremental stream whose base is not what the origin reads
    /// now: roll the origin back to the base first.
    pub force: bool,
}

/// What a receive did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiveReport {
    /// The new snapshot's tag.
    pub tag: u32,
    /// Bytes of stream read.
    pub bytes: u64,
}

/// Progress: (bytes of the device done, bytes to do).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// What a sender needs to continue an interrupted receive: the stream, its
/// base and target identities, and the offset below which the receiver has
/// everything. Printed as `dms1-` and 112 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    pub stream: Identity,
    pub base: Identity,
    pub target: Identity,
    pub offset: u64,
}

const TOKEN_PREFIX: &str = "dms1-";

impl Token {
    pub fn encode(&self) -> String {
        let mut b = Vec::with_capacity(56);
        b.extend_from_slice(&self.stream);
        b.extend_from_slice(&self.base);
        b.extend_from_slice(&self.target);
        b.extend_from_slice(&self.offset.to_be_bytes());
        let mut s = String::from(TOKEN_PREFIX);
        for x in b {
            s.push_str(&format!("{x:02x}"));
        }
        s
    }

    pub fn decode(s: &str) -> Result<Token> {
        let bad = || Error::BadToken(s.chars().take(80).collect());
        let hex = s.trim().strip_prefix(TOKEN_PREFIX).ok_or_else(bad)?;
        if hex.len() != 112 || !hex.is_ascii() {
            return Err(bad());
        }
        let mut b = [0u8; 56];
        for (i, x) in b.iter_mut().enumerate() {
            *x = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        let id = |o: usize| {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[o..o + 16]);
            a
        };
        let mut off = [0u8; 8];
        off.copy_from_slice(&b[48..56]);
        Ok(Token {
            stream: id(0),
            base: id(16),
            target: id(32),
            offset: u64::from_be_bytes(off),
        })
    }
}

impl crate::store::ReceiveStatus {
    /// The token to resume this receive with (native streams only).
    pub fn token(&self) -> Option<String> {
        self.resumable.then(|| {
            Token {
                stream: self.stream,
                base: self.base,
                target: self.target,
                offset: self.next_offset,
            }
            .encode()
        })
    }
}

/// An identity as hex, for messages and `--json`.
pub fn hex_id(id: &Identity) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs of neighbouring chunks: (first chunk, count), at most `max` long.
fn runs(chunks: &[u64], max: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &c in chunks {
        match out.last_mut() {
            Some((s, n)) if *s + *n == c && *n < max => *n += 1,
            _ => out.push((c, 1)),
        }
    }
    out
}
