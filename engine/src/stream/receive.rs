//! Receiving: the stream's header is checked against the origin (a full
//! stream needs room, an incremental one its base: the origin must read
//! exactly as that snapshot), a hidden undo copy of the origin is taken and
//! the receive recorded; then each record, verified, is written to the
//! origin (copy-outs keep every existing snapshot as it was), progress made
//! durable now and then. At the end record the new snapshot appears, in the
//! same commit that ends the receive. A damaged stream rolls the origin
//! back to the undo copy; one that just stops leaves the receive to resume.

use super::native::{self, ReadError, Record};
use super::{hex_id, rbd, Progress, ReceiveOptions, ReceiveReport, StreamFormat, Token, ZERO_ID};
use crate::error::{Error, Result};
use crate::store::Store;
use crate::versions::record::{flags, ReceiveState};
use crate::volume::Volume;
use std::io::Read;

/// Progress is made durable after this much data.
const DURABLE_EVERY: u64 = 64 << 20;

/// Records read ahead of the one being applied.
const READ_AHEAD: usize = 2;

/// [`DURABLE_EVERY`], or what a test set instead.
pub(crate) static PROGRESS_EVERY: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(DURABLE_EVERY);

/// A record to apply, whatever the format.
enum Apply {
    Data(u64, Vec<u8>),
    Zero(u64, u64),
}

impl Store {
    /// Read a stream from `input` into an origin; returns the new
    /// snapshot's tag. See the module's comment for what is checked and
    /// what a failure leaves.
    pub fn receive(
        &self,
        origin_id: &str,
        opts: &ReceiveOptions,
        input: &mut dyn Read,
        progress: Progress<'_>,
    ) -> Result<ReceiveReport> {
        match opts.format {
            StreamFormat::Dms => self.receive_native(origin_id, opts, input, progress),
            _ => self.receive_rbd(origin_id, opts, input, progress),
        }
    }

    /// The token to resume an interrupted receive with, if one is in
    /// progress (native streams only).
    pub fn receive_token(&self, origin_id: &str) -> Result<Option<String>> {
        let index = self.origin_index(origin_id)?;
        Ok(self
            .receive_state(index)?
            .filter(|s| s.format == 0)
            .map(|s| {
                Token {
                    stream: s.stream,
                    base: s.base,
                    target: s.target,
                    offset: s.next_offset,
                }
                .encode()
            }))
    }

    /// Give up a receive in progress: the origin goes back to what it was
    /// before it began.
    pub fn receive_abort(&self, origin_id: &str) -> Result<()> {
        let index = self.origin_index(origin_id)?;
        match self.receive_state(index)? {
            Some(state) => self.undo_receive(origin_id, index, &state),
            None => Err(Error::NoReceive(origin_id.to_string())),
        }
    }

    /// Check that an origin can take a stream; with an incremental one,
    /// roll it back to the base first if `force`. Returns the base version.
    fn receive_checks(
        &self,
        origin_id: &str,
        index: u32,
        base: Option<u32>,
        size: u64,
        force: bool,
    ) -> Result<()> {
        if let Some(state) = self.receive_state(index)? {
            return Err(Error::Busy {
                what: format!(
                    "origin {origin_id} has a receive that has not ended (stream {}); \
                     `dms receive --token` gives the token to resume it with, \
                     `dms receive --abort` undoes it",
                    hex_id(&state.stream)
                ),
            });
        }
        let have = self.origin_size(origin_id)?;
        if have < size {
            return Err(Error::WrongBase(format!(
                "origin {origin_id} has {have} bytes; the stream's device has {size}"
            )));
        }
        let Some(b) = base else {
            return Ok(());
        };
        let (tag, _, _, _) = self.version_info(index, b)?;
        if !self.origin_equals(index, b)? {
            if !force {
                return Err(Error::WrongBase(format!(
                    "origin {origin_id} no longer reads as its base, snapshot {tag} \
                     (written to since, or a newer snapshot); --force rolls it back to {tag} first"
                )));
            }
            self.rollback_to_version(origin_id, index, b)?;
        }
        Ok(())
    }

    /// Take the undo copy and record the receive, durably.
    fn begin_receive(&self, index: u32, mut state: ReceiveState) -> Result<ReceiveState> {
        // What an abort goes back to: a hidden copy of the origin (its
        // writes then copy out first), or, when a full stream fills an
        // origin that reads as zeros (a fresh device), nothing: an abort
        // zeroes it again (`undo` 0), and the stream is written at the
        // speed of plain writes.
        state.undo = if state.base == ZERO_ID && self.origin_reads_zeros(index)? {
            0
        } else {
            self.freeze_copy(index, None, flags::UNDO)?
        };
        self.set_receive_state(index, Some(state.clone()))?;
        Ok(state)
    }

    /// Start receiving a new native stream: its target not here yet, its
    /// base (if any) a snapshot here that the origin reads as.
    fn begin_native(
        &self,
        origin_id: &str,
        index: u32,
        header: &native::Header,
        force: bool,
    ) -> Result<ReceiveState> {
        if self.version_by_uuid(index, &header.target)?.is_some() {
            return Err(Error::WrongBase(format!(
                "origin {origin_id} already has the stream's snapshot ({})",
                hex_id(&header.target)
            )));
        }
        let base = if header.is_incremental() {
            let b = self.version_by_uuid(index, &header.base)?.ok_or_else(|| {
                Error::WrongBase(format!(
                    "its base {} is not a snapshot of {origin_id} here",
                    hex_id(&header.base)
                ))
            })?;
            Some(b)
        } else {
            None
        };
        self.receive_checks(origin_id, index, base, header.size, force)?;
        self.begin_receive(
            index,
            ReceiveState {
                stream: header.stream,
                base: header.base,
                target: header.target,
                undo: 0,
                next_offset: 0,
                size: header.size,
                birthday: header.birthday,
                memo: header.memo.clone(),
                format: 0,
            },
        )
    }

    fn receive_native(
        &self,
        origin_id: &str,
        opts: &ReceiveOptions,
        input: &mut dyn Read,
        progress: Progress<'_>,
    ) -> Result<ReceiveReport> {
        let index = self.origin_index(origin_id)?;
        let (mut reader, header) = native::Reader::start(input).map_err(|e| match e {
            ReadError::Bad(e) | ReadError::Cut(e) => e,
        })?;
        // The stream the receive in progress came from continues it (from
        // wherever the token said); any other stream starts a new one.
        let current = self.receive_state(index)?;
        let state = match current {
            Some(state) if state.stream == header.stream => {
                if state.format != 0
                    || state.base != header.base
                    || state.target != header.target
                    || header.resume_offset > state.next_offset
                {
                    return Err(Error::WrongBase(format!(
                        "this resumed stream does not continue the receive in progress into \
                         {origin_id} (it starts at byte {}; the receive has up to byte {})",
                        header.resume_offset, state.next_offset
                    )));
                }
                state
            }
            _ if header.resume_offset > 0 => {
                return Err(Error::WrongBase(format!(
                    "a resumed stream (from byte {}), but origin {origin_id} has no receive \
                     of it in progress",
                    header.resume_offset
                )))
            }
            _ => self.begin_native(origin_id, index, &header, opts.force)?,
        };
        let mut next = |spare: Option<Vec<u8>>| -> std::result::Result<Option<Apply>, ReadError> {
            if let Some(b) = spare {
                reader.recycle(b);
            }
            Ok(match reader.next()? {
                Some(Record::Data { offset, data }) => Some(Apply::Data(offset, data)),
                Some(Record::Zero { offset, len }) => Some(Apply::Zero(offset, len)),
                Some(Record::End) | None => None,
            })
        };
        let start = header.resume_offset;
        let mut progressed = state.clone();
        let applied = self.apply_records(index, &mut progressed, start, &mut next, progress);
        let bytes = reader.pos;
        self.end_receive(origin_id, index, &state, progressed, applied, true)
            .map(|tag| ReceiveReport { tag, bytes })
    }

    fn receive_rbd(
        &self,
        origin_id: &str,
        opts: &ReceiveOptions,
        input: &mut dyn Read,
        progress: Progress<'_>,
    ) -> Result<ReceiveReport> {
        let index = self.origin_index(origin_id)?;
        let (mut reader, meta) = rbd::Reader::start(input)?;
        let size = meta.size.ok_or_else(|| Error::BadStream {
            at: reader.pos,
            reason: "the diff has no size record".into(),
        })?;
        // An RBD diff names its base by snapshot name: a snapshot whose
        // memo or tag is that name.
        let base = match &meta.from {
            None => None,
            Some(name) => {
                let tags = self.tags(origin_id)?;
                let st = self.status()?;
                let o = st
                    .origins
                    .iter()
                    .find(|o| o.id == origin_id)
                    .ok_or_else(|| Error::UnknownOrigin(origin_id.to_string()))?;
                let tag = o
                    .list
                    .iter()
                    .find(|v| {
                        !v.ghost && v.tag != 0 && (v.memo == *name || v.tag.to_string() == *name)
                    })
                    .map(|v| v.tag)
                    .filter(|t| tags.contains(t))
                    .ok_or_else(|| {
                        Error::WrongBase(format!(
                            "its from-snapshot {name:?} is not a snapshot of {origin_id} here"
                        ))
                    })?;
                Some(self.version_of_tag(index, tag)?)
            }
        };
        self.receive_checks(origin_id, index, base, size, opts.force)?;
        let base_id = match base {
            Some(b) => self.version_info(index, b)?.1,
            None => ZERO_ID,
        };
        let state = self.begin_receive(
            index,
            ReceiveState {
                stream: crate::store::new_uuid(),
                base: base_id,
                target: crate::store::new_uuid(),
                undo: 0,
                next_offset: 0,
                size,
                birthday: crate::store::now(),
                memo: meta.to.clone().unwrap_or_default(),
                format: opts.format.code(),
            },
        )?;
        let mut next = |_: Option<Vec<u8>>| -> std::result::Result<Option<Apply>, ReadError> {
            // An RBD diff carries no checksum: anything wrong is damage.
            Ok(match reader.next().map_err(ReadError::Bad)? {
                Some(rbd::Record::Data { offset, data }) => Some(Apply::Data(offset, data)),
                Some(rbd::Record::Zero { offset, len }) => Some(Apply::Zero(offset, len)),
                Some(rbd::Record::End) | None => None,
            })
        };
        let mut progressed = state.clone();
        let applied = self.apply_records(index, &mut progressed, 0, &mut next, progress);
        self.end_receive(origin_id, index, &state, progressed, applied, false)
            .map(|tag| ReceiveReport { tag, bytes: 0 })
    }

    /// Write the records to the origin, in ascending order, making progress
    /// durable now and then. Returns how it stopped. The stream is read
    /// (and verified) on this thread while another applies what was read
    /// before: a few records ahead, whose old data the origin's device is
    /// asked to read meanwhile (an incremental receive copies it out).
    fn apply_records(
        &self,
        index: u32,
        state: &mut ReceiveState,
        start: u64,
        next: &mut dyn FnMut(Option<Vec<u8>>) -> std::result::Result<Option<Apply>, ReadError>,
        progress: Progress<'_>,
    ) -> std::result::Result<(), ReadError> {
        let vol = match Volume::open_version(self, index, 0) {
            Ok(v) => v,
            Err(e) => return Err(ReadError::Cut(e)),
        };
        let (size, incremental) = (state.size, state.base != ZERO_ID);
        type Item = std::result::Result<Option<Apply>, ReadError>;
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Item>(READ_AHEAD);
            let (spare_tx, spare_rx) = std::sync::mpsc::channel::<Vec<u8>>();
            let vol = &vol;
            let applier = std::thread::Builder::new()
                .name("dms-receive".into())
                .spawn_scoped(scope, move || {
                    let mut take = |spare: Option<Vec<u8>>| -> Item {
                        if let Some(b) = spare {
                            let _ = spare_tx.send(b);
                        }
                        rx.recv().unwrap_or_else(|_| {
                            Err(ReadError::Cut(Error::io(
                                "stream",
                                "read",
                                std::io::Error::other("the stream's reader stopped"),
                            )))
                        })
                    };
                    self.apply_loop(vol, state, start, &mut take)
                });
            let applier = match applier {
                Ok(a) => a,
                Err(e) => return Err(ReadError::Cut(Error::io("stream", "start a thread", e))),
            };
            loop {
                let item = next(spare_rx.try_recv().ok());
                let more = match &item {
                    Ok(Some(rec)) => {
                        let (o, n) = match rec {
                            Apply::Data(o, d) => (*o, d.len() as u64),
                            Apply::Zero(o, n) => (*o, *n),
                        };
                        if incremental {
                            vol.will_write(o, n);
                        }
                        progress(o.saturating_add(n).min(size), size);
                        true
                    }
                    _ => false,
                };
                // A send fails once the applier has stopped (its error is
                // the answer); the last item ends it.
                if tx.send(item).is_err() || !more {
                    break;
                }
            }
            drop(tx);
            applier
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// The applier's side of [`Self::apply_records`].
    fn apply_loop(
        &self,
        vol: &Volume,
        state: &mut ReceiveState,
        start: u64,
        next: &mut dyn FnMut(Option<Vec<u8>>) -> std::result::Result<Option<Apply>, ReadError>,
    ) -> std::result::Result<(), ReadError> {
        let index = vol.origin_index();
        let size = state.size;
        // A full stream fills the origin: what no record covers (an RBD
        // diff leaves out what was never written; the tail of a larger
        // origin) reads as zeros.
        let full = state.base == ZERO_ID;
        let mut last_end = start;
        let mut since = 0u64;
        let mut spare = None;
        loop {
            let rec = match next(spare.take()) {
                Ok(Some(r)) => r,
                Ok(None) => {
                    if full {
                        if let Err(e) = zero_range(vol, last_end, vol.size() - last_end) {
                            state.next_offset = state.next_offset.max(last_end);
                            return Err(ReadError::Cut(e));
                        }
                    }
                    return Ok(());
                }
                Err(e) => {
                    // Every record up to here was applied whole: a resume
                    // may start at its end (end_receive makes it durable).
                    state.next_offset = state.next_offset.max(last_end);
                    return Err(e);
                }
            };
            let (offset, len) = match &rec {
                Apply::Data(o, d) => (*o, d.len() as u64),
                Apply::Zero(o, n) => (*o, *n),
            };
            let end = offset
                .checked_add(len)
                .filter(|&e| e <= size && e <= vol.size());
            if offset < last_end || end.is_none() {
                let e = Error::BadStream {
                    at: offset,
                    reason: format!(
                        "a record for bytes {offset}..+{len} is out of order or past the device's {size} bytes"
                    ),
                };
                return Err(ReadError::Bad(e));
            }
            let gap = if full && offset > last_end {
                zero_range(vol, last_end, offset - last_end)
            } else {
                Ok(())
            };
            let done = gap.and_then(|()| match rec {
                Apply::Data(o, d) => {
                    let r = vol.write_at(&d, o);
                    spare = Some(d);
                    r
                }
                Apply::Zero(o, n) => zero_range(vol, o, n),
            });
            if let Err(e) = done {
                // The device refused (full, failing): what came before stands.
                state.next_offset = state.next_offset.max(last_end);
                return Err(ReadError::Cut(e));
            }
            last_end = offset + len;
            since += len;
            if since >= PROGRESS_EVERY.load(std::sync::atomic::Ordering::Relaxed) {
                since = 0;
                state.next_offset = last_end;
                if let Err(e) = self.set_receive_state(index, Some(state.clone())) {
                    return Err(ReadError::Cut(e));
                }
            }
        }
    }

    /// The end of a receive: the snapshot if all went well; the origin
    /// rolled back if the stream was bad (or cannot be resumed); else the
    /// progress recorded and the token in the error.
    fn end_receive(
        &self,
        origin_id: &str,
        index: u32,
        state: &ReceiveState,
        progressed: ReceiveState,
        applied: std::result::Result<(), ReadError>,
        resumable: bool,
    ) -> Result<u32> {
        match applied {
            Ok(()) => self.finish_receive(index, state),
            Err(ReadError::Cut(cause)) if resumable => {
                // Everything written so far becomes durable, then the
                // point to resume from.
                let token = Token {
                    stream: progressed.stream,
                    base: progressed.base,
                    target: progressed.target,
                    offset: progressed.next_offset,
                };
                self.set_receive_state(index, Some(progressed))?;
                let cause = match cause {
                    // The input ended: cut short, not damaged.
                    Error::BadStream { at, .. } => {
                        format!("the stream ends at byte {at}, before its end record")
                    }
                    e => e.to_string(),
                };
                Err(Error::Interrupted {
                    cause,
                    token: token.encode(),
                })
            }
            Err(ReadError::Cut(e) | ReadError::Bad(e)) => {
                match self.undo_receive(origin_id, index, state) {
                    Ok(()) => Err(e),
                    Err(u) => Err(Error::Failed(format!(
                        "{e}; undoing the receive failed: {u}"
                    ))),
                }
            }
        }
    }
}

impl Store {
    /// Whether the origin reads as zeros everywhere (it stops at the first
    /// byte that is not).
    fn origin_reads_zeros(&self, index: u32) -> Result<bool> {
        const STEP: u64 = 1 << 20;
        // Held writes go to the device first: its holes are then zeros.
        self.flush()?;
        let dev = self.origin_device(index)?;
        let vol = Volume::open_version(self, index, 0)?;
        let mut buf = vec![0u8; STEP as usize];
        let mut at = 0;
        while at < vol.size() {
            if let Some(d) = dev.next_data(at) {
                if d >= vol.size() {
                    break;
                }
                at = at.max(d);
            }
            let n = STEP.min(vol.size() - at) as usize;
            vol.read_at(&mut buf[..n], at)?;
            if !is_zero(&buf[..n]) {
                return Ok(false);
            }
            at += n as u64;
        }
        Ok(true)
    }

    /// Undo a receive that began on an origin reading as zeros.
    pub(crate) fn zero_origin(&self, index: u32) -> Result<()> {
        let vol = Volume::open_version(self, index, 0)?;
        zero_range(&vol, 0, vol.size())
    }
}

/// Make a range of the origin read as zeros, writing only where it does
/// not already (a fresh device costs reads, not writes and copy-outs).
fn zero_range(vol: &Volume, offset: u64, len: u64) -> Result<()> {
    const STEP: u64 = 1 << 20;
    let mut buf = vec![0u8; STEP.min(len) as usize];
    let mut at = offset;
    while at < offset + len {
        let n = STEP.min(offset + len - at) as usize;
        vol.read_at(&mut buf[..n], at)?;
        if !is_zero(&buf[..n]) {
            vol.write_zeroes(at, n as u64)?;
        }
        at += n as u64;
    }
    Ok(())
}

/// All zeros? (Folded in pieces, which vectorizes, rather than byte by
/// byte with an early exit.)
fn is_zero(b: &[u8]) -> bool {
    b.chunks(4096)
        .all(|c| c.iter().fold(0u8, |acc, &x| acc | x) == 0)
}
