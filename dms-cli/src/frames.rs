//! Streams over the control socket (`dms send` and `dms receive` through
//! the daemon; docs/daemon.md): after the request line, each side writes
//! frames, `[kind: u8][length: u32 big-endian][payload]`:
//!
//! - `d` stream bytes (at most [`MAX_FRAME`] of them),
//! - `e` the end of the stream bytes (empty),
//! - `p` progress: bytes done and bytes to do, two u64 big-endian,
//! - `g` go: the daemon takes the stream (a receive; empty),
//! - `r` the response, JSON, as one request has one: the last frame.
//!
//! A send: the daemon writes `d`... `e` and `p` frames, then `r` (or `r`
//! alone). A receive: the daemon answers `g`, or `r` alone when it refuses
//! or does not hold the store (the client has read none of its input
//! yet); after `g` the client writes `d`... and `e` (its input ended) while
//! the daemon writes `p` frames and, last, `r`. A connection that closes
//! before `e` is a stream cut short.

use crate::proto::Response;
use std::io::{self, Read, Write};

pub const DATA: u8 = b'd';
pub const END: u8 = b'e';
pub const PROGRESS: u8 = b'p';
pub const RESPONSE: u8 = b'r';
pub const GO: u8 = b'g';

/// The largest frame either side writes or accepts.
pub const MAX_FRAME: usize = 1 << 20;

pub fn write_frame(out: &mut dyn Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    out.write_all(&head)?;
    out.write_all(payload)
}

pub fn write_progress(out: &mut dyn Write, done: u64, total: u64) -> io::Result<()> {
    let mut p = [0u8; 16];
    p[..8].copy_from_slice(&done.to_be_bytes());
    p[8..].copy_from_slice(&total.to_be_bytes());
    write_frame(out, PROGRESS, &p)
}

pub fn write_response(out: &mut dyn Write, r: &Response) -> io::Result<()> {
    let json = serde_json::to_vec(r).unwrap_or_else(|_| b"{\"code\":1}".to_vec());
    write_frame(out, RESPONSE, &json)?;
    out.flush()
}

/// One frame: its kind and payload. EOF before a frame's header is
/// `UnexpectedEof`.
pub fn read_frame(input: &mut dyn Read) -> io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    input.read_exact(&mut head)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes (at most {MAX_FRAME})"),
        ));
    }
    let mut payload = vec![0u8; len];
    input.read_exact(&mut payload)?;
    Ok((head[0], payload))
}

pub fn progress_of(payload: &[u8]) -> Option<(u64, u64)> {
    let p: &[u8; 16] = payload.try_into().ok()?;
    let done = u64::from_be_bytes(p[..8].try_into().ok()?);
    let total = u64::from_be_bytes(p[8..].try_into().ok()?);
    Some((done, total))
}

/// Stream bytes out as `d` frames, in pieces of up to [`MAX_FRAME`].
pub struct FrameWriter<W: Write> {
    pub out: W,
    buf: Vec<u8>,
}

impl<W: Write> FrameWriter<W> {
    pub fn new(out: W) -> Self {
        FrameWriter {
            out,
            buf: Vec::with_capacity(MAX_FRAME),
        }
    }

    fn push(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            write_frame(&mut self.out, DATA, &self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// The rest, and the end frame.
    pub fn end(&mut self) -> io::Result<()> {
        self.push()?;
        write_frame(&mut self.out, END, &[])?;
        self.out.flush()
    }
}

impl<W: Write> Write for FrameWriter<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = b.len().min(MAX_FRAME - self.buf.len());
        self.buf.extend_from_slice(&b[..n]);
        if self.buf.len() == MAX_FRAME {
            self.push()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.push()?;
        self.out.flush()
    }
}

/// Stream bytes in from `d` frames until `e`. A closed connection before
/// `e`, or any other frame, is an error: the stream was cut short.
pub struct FrameReader<R: Read> {
    input: R,
    frame: Vec<u8>,
    at: usize,
    ended: bool,
}

impl<R: Read> FrameReader<R> {
    pub fn new(input: R) -> Self {
        FrameReader {
            input,
            frame: Vec::new(),
            at: 0,
            ended: false,
        }
    }
}

impl<R: Read> Read for FrameReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.frame.len() {
            if self.ended {
                return Ok(0);
            }
            let (kind, payload) = read_frame(&mut self.input).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the client went away before the end of the stream",
                    )
                } else {
                    e
                }
            })?;
            match kind {
                DATA => {
                    self.frame = payload;
                    self.at = 0;
                }
                END => self.ended = true,
                k => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("a frame of kind {k:#x} inside the stream"),
                    ))
                }
            }
        }
        let n = buf.len().min(self.frame.len() - self.at);
        buf[..n].copy_from_slice(&self.frame[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
