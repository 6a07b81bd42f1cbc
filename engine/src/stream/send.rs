//! Sending: a frozen copy of the tag (and of the base) is taken, the chunks
//! to send listed (all of them, or those where the two may differ, from
//! the metadata in batches), their data read from the copy and written as
//! records (runs of zeros as zero records), then the copies let go.

use super::native::{self, Header};
use super::{hex_id, rbd, runs, Progress, SendOptions, SendReport, StreamFormat, Token, ZERO_ID};
use crate::error::{Error, Result};
use crate::store::Store;
use crate::versions::record::flags;
use crate::volume::Volume;
use std::io::Write;

/// Where the records of a stream go, whatever its format.
enum Out<'a> {
    Dms(native::Writer<'a>),
    Rbd(rbd::Writer<'a>),
}

impl Out<'_> {
    fn data(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        match self {
            Out::Dms(w) => w.data(offset, data),
            Out::Rbd(w) => w.data(offset, data),
        }
    }

    fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        match self {
            Out::Dms(w) => w.zero(offset, len),
            Out::Rbd(w) => w.zero(offset, len),
        }
    }

    fn end(self) -> Result<u64> {
        match self {
            Out::Dms(w) => w.end(),
            Out::Rbd(w) => w.end(),
        }
    }
}

/// Zero runs wait here so that neighbouring ones become one record.
struct Emitter<'a> {
    out: Out<'a>,
    zeros: Option<(u64, u64)>,
    report: SendReport,
}

impl Emitter<'_> {
    fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        self.report.zero_bytes += len;
        match &mut self.zeros {
            Some((o, n)) if *o + *n == offset => *n += len,
            _ => {
                self.flush_zeros()?;
                self.zeros = Some((offset, len));
            }
        }
        Ok(())
    }

    fn flush_zeros(&mut self) -> Result<()> {
        if let Some((o, n)) = self.zeros.take() {
            self.out.zero(o, n)?;
        }
        Ok(())
    }

    fn data(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.flush_zeros()?;
        self.report.data_bytes += data.len() as u64;
        self.out.data(offset, data)
    }
}

/// What a send reads and how it writes it.
struct Plan {
    index: u32,
    /// The frozen copies of the tag and of the base.
    copy: u32,
    base_copy: Option<u32>,
    header: Header,
    resume_offset: u64,
    format: StreamFormat,
    /// The tags, as an RBD diff names them.
    from_name: Option<String>,
    to_name: String,
}

impl Store {
    /// Write a stream of snapshot `tag` of an origin to `out`: all of it,
    /// or with `opts.from` only the chunks that differ from that tag; or,
    /// with `opts.resume`, the rest of the stream an interrupted receive
    /// names in its token (`tag` must then be the token's target, or 0).
    /// I/O to the origin and its snapshots goes on
    /// meanwhile: the stream is what the versions held when it started.
    pub fn send(
        &self,
        origin_id: &str,
        tag: u32,
        opts: &SendOptions,
        out: &mut dyn Write,
        progress: Progress<'_>,
    ) -> Result<SendReport> {
        let index = self.origin_index(origin_id)?;
        let (target, base, stream, resume_offset) = match &opts.resume {
            Some(t) => {
                if opts.format != StreamFormat::Dms {
                    return Err(Error::BadToken(
                        "only native (dms) streams can be resumed".into(),
                    ));
                }
                let tok = Token::decode(t)?;
                // The token names versions by identity; they must be ours,
                // unchanged (a write would have changed the identity).
                let find = |id: &super::Identity, what: &str| -> Result<u32> {
                    self.version_by_uuid(index, id)?.ok_or_else(|| {
                        Error::BadToken(format!(
                            "its {what} {} is not a version of {origin_id} here (changed or deleted since)",
                            hex_id(id)
                        ))
                    })
                };
                let target = find(&tok.target, "target")?;
                let base = if tok.base == ZERO_ID {
                    None
                } else {
                    Some(find(&tok.base, "base")?)
                };
                let target_tag = self.version_info(index, target)?.0;
                if tag != 0 && tag != target_tag {
                    return Err(Error::BadToken(format!(
                        "the token resumes snapshot {target_tag}, not {tag}"
                    )));
                }
                if opts.from.is_some() {
                    return Err(Error::BadToken(
                        "a resumed stream takes its base from the token, not --from".into(),
                    ));
                }
                if tok.offset > self.origin_size(origin_id)? {
                    return Err(Error::BadToken(format!(
                        "its offset {} is past the device's end",
                        tok.offset
                    )));
                }
                (target, base, tok.stream, tok.offset)
            }
            None => {
                if tag == 0 {
                    return Err(Error::TagZero {
                        origin: origin_id.to_string(),
                        op: "send (send a snapshot of it)",
                    });
                }
                let target = self.version_of_tag(index, tag)?;
                let base = match opts.from {
                    Some(0) => {
                        return Err(Error::TagZero {
                            origin: origin_id.to_string(),
                            op: "send --from",
                        })
                    }
                    Some(f) if f == tag => {
                        return Err(Error::WrongBase(format!(
                            "--from {f} is the snapshot being sent: name an older one"
                        )))
                    }
                    Some(f) => Some(self.version_of_tag(index, f)?),
                    None => None,
                };
                (target, base, crate::store::new_uuid(), 0)
            }
        };
        let (size, base_size) = {
            let m = self.inner.meta()?;
            let o = m.origin_ref(index)?;
            (o.version_size(target), base.map(|b| o.version_size(b)))
        };
        if let Some(bs) = base_size.filter(|&bs| bs != size) {
            return Err(Error::SizeDiffers(format!(
                "snapshot {tag} is {size} bytes and its base {bs}: the origin grew between them; send a full stream"
            )));
        }
        let (target_tag, target_id, birthday, memo) = self.version_info(index, target)?;
        let (base_tag, base_id) = match base {
            Some(b) => {
                let (t, id, _, _) = self.version_info(index, b)?;
                (Some(t), id)
            }
            None => (None, ZERO_ID),
        };
        // Its identity goes out: a write to it from now on gives it a new one.
        self.mark_exported(index, target)?;
        let copy = self.freeze_copy(index, Some(target), flags::SENDING)?;
        let base_copy = match base {
            Some(b) => match self.freeze_copy(index, Some(b), flags::SENDING) {
                Ok(c) => Some(c),
                Err(e) => {
                    let _ = self.release_copy(index, copy);
                    return Err(e);
                }
            },
            None => None,
        };
        let header = Header {
            required: 0,
            optional: 0,
            stream,
            base: base_id,
            target: target_id,
            size,
            birthday,
            resume_offset: 0,
            chunk_bytes: self.chunk_bytes() as u32,
            memo,
        };
        let plan = Plan {
            index,
            copy,
            base_copy,
            header,
            resume_offset,
            format: opts.format,
            from_name: base_tag.map(|t| t.to_string()),
            to_name: target_tag.to_string(),
        };
        let res = self.send_copies(plan, out, progress);
        let released = self
            .release_copy(index, copy)
            .and_then(|()| base_copy.map_or(Ok(()), |b| self.release_copy(index, b)));
        let report = res?;
        released?;
        Ok(report)
    }

    fn send_copies(
        &self,
        plan: Plan,
        out: &mut dyn Write,
        progress: Progress<'_>,
    ) -> Result<SendReport> {
        let Plan {
            index,
            copy,
            base_copy,
            mut header,
            resume_offset,
            format,
            from_name,
            to_name,
        } = plan;
        let cb = self.chunk_bytes();
        let size = header.size;
        let nchunks = size.div_ceil(cb);
        let start = resume_offset / cb;
        header.resume_offset = start * cb;
        let out = match format {
            StreamFormat::Dms => Out::Dms(native::Writer::new(out, &header)?),
            StreamFormat::RbdV1 | StreamFormat::RbdV2 => Out::Rbd(rbd::Writer::new(
                out,
                format == StreamFormat::RbdV2,
                from_name.as_deref(),
                &to_name,
                size,
            )?),
        };
        let mut em = Emitter {
            out,
            zeros: None,
            report: SendReport::default(),
        };
        let vol = Volume::open_version(self, index, copy)?;
        let per_record = (native::DATA_PER_RECORD as u64 / cb).max(1);
        let total = size.saturating_sub(start * cb);
        let mut buf = Vec::new();
        let mut send_run = |em: &mut Emitter, first: u64, count: u64| -> Result<()> {
            let from = first * cb;
            let to = ((first + count) * cb).min(size);
            buf.resize((to - from) as usize, 0);
            vol.read_at(&mut buf, from)?;
            // Zero chunks as zero runs, the rest as data, in order.
            let mut i = 0usize;
            while i < buf.len() {
                let end = (i + cb as usize).min(buf.len());
                let zero = buf[i..end].iter().all(|&b| b == 0);
                let mut j = end;
                while j < buf.len() {
                    let e = (j + cb as usize).min(buf.len());
                    if buf[j..e].iter().all(|&b| b == 0) != zero {
                        break;
                    }
                    j = e;
                }
                if zero {
                    em.zero(from + i as u64, (j - i) as u64)?;
                } else {
                    em.data(from + i as u64, &buf[i..j])?;
                }
                i = j;
            }
            progress((to - start * cb).min(total), total);
            Ok(())
        };
        // The devices are asked to begin reading the records after the one
        // being read (a hint only): an incremental stream's runs lie
        // scattered, where the kernel's own read-ahead does not reach.
        let hint = |first: u64, count: u64| vol.will_read(first * cb, count * cb);
        match base_copy {
            None => {
                let mut c = start;
                while c < nchunks {
                    let n = per_record.min(nchunks - c);
                    let next = c + n;
                    hint(next, per_record.min(nchunks.saturating_sub(next)));
                    send_run(&mut em, c, n)?;
                    c = next;
                }
            }
            Some(b) => {
                let mut from = start;
                loop {
                    let (chunks, next) = self.differing_chunks(index, b, copy, from)?;
                    let chunks: Vec<u64> = chunks
                        .into_iter()
                        .filter(|&c| c >= start && c < nchunks)
                        .collect();
                    let runs = runs(&chunks, per_record);
                    for (k, &(first, count)) in runs.iter().enumerate() {
                        if k == 0 {
                            if let Some(&(f, n)) = runs.get(1) {
                                hint(f, n);
                            }
                        }
                        if let Some(&(f, n)) = runs.get(k + 2) {
                            hint(f, n);
                        }
                        send_run(&mut em, first, count)?;
                    }
                    match next {
                        Some(n) => from = n,
                        None => break,
                    }
                }
                progress(total, total);
            }
        }
        em.flush_zeros()?;
        let mut report = em.report;
        report.bytes = em.out.end()?;
        Ok(report)
    }
}
