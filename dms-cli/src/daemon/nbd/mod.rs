//! An NBD server for every dm_dev: export name = dm_dev name. Fixed
//! newstyle handshake; simple replies, or structured ones when the client
//! asks (reads as data and hole chunks, errors as error chunks); metadata
//! contexts and block status (`context.rs`); TLS through STARTTLS
//! (`tls.rs`). Each connection has a reader thread and a small fixed pool
//! of workers, so requests are pipelined without a thread per request.
//! docs/cli.md lists what is offered.

mod context;
pub mod tls;
mod wire;

use context::Context;
use dms_engine::Volume;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use wire::*;

/// Workers per connection: enough for an iodepth of 16 to wait on one commit.
const WORKERS: usize = 16;

/// One dm_dev as an NBD export.
#[derive(Clone)]
pub struct Export {
    pub volume: Arc<Volume>,
    pub read_only: bool,
    /// Connections in the transmission phase.
    pub clients: Arc<AtomicUsize>,
    /// Cleared when the dm_dev is removed: requests then fail.
    pub alive: Arc<AtomicBool>,
}

/// How the server finds exports.
pub trait Exports: Send + Sync + 'static {
    fn get(&self, name: &str) -> Option<Export>;
    fn names(&self) -> Vec<String>;
}

/// A connection: a socket, or TLS over one.
pub trait Conn: Read + Write + Send + 'static {
    fn try_clone_conn(&self) -> io::Result<Box<dyn Conn>>;
    fn shutdown_both(&self);
}

impl Conn for std::os::unix::net::UnixStream {
    fn try_clone_conn(&self) -> io::Result<Box<dyn Conn>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shutdown_both(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

impl Conn for std::net::TcpStream {
    fn try_clone_conn(&self) -> io::Result<Box<dyn Conn>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shutdown_both(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

fn transmission_flags(e: &Export, structured: bool) -> u16 {
    let mut f = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_CAN_MULTI_CONN;
    if structured {
        f |= TF_SEND_DF;
    }
    if e.read_only {
        f |= TF_READ_ONLY;
    } else {
        f |= TF_SEND_TRIM | TF_SEND_WRITE_ZEROES;
    }
    f
}

/// What the transmission phase needs from the handshake.
struct Session {
    export: Export,
    structured: bool,
    /// Selected contexts; a context's id is its index + 1.
    contexts: Vec<Context>,
}

/// The handshake's state between options.
#[derive(Default)]
struct Negotiation {
    structured: bool,
    /// The export and contexts the last SET_META_CONTEXT chose.
    meta: Option<(String, Vec<Context>)>,
    tls: bool,
}

/// A string of an option's data: u32 length, then UTF-8.
fn take_string(r: &mut &[u8]) -> Option<String> {
    let n = rd_u32(r).ok()? as usize;
    if n > MAX_STRING || n > r.len() {
        return None;
    }
    let s = String::from_utf8(r[..n].to_vec()).ok()?;
    *r = &r[n..];
    Some(s)
}

/// LIST_META_CONTEXT and SET_META_CONTEXT data: an export name and queries.
fn parse_meta(data: &[u8]) -> Option<(String, Vec<String>)> {
    let mut r = data;
    let name = take_string(&mut r)?;
    let n = rd_u32(&mut r).ok()? as usize;
    // Each query takes at least its 4-byte length.
    if n > r.len() / 4 {
        return None;
    }
    let mut qs = Vec::with_capacity(n);
    for _ in 0..n {
        qs.push(take_string(&mut r)?);
    }
    r.is_empty().then_some((name, qs))
}

/// The handshake; returns the session chosen, or None if the client left.
/// `c` may be replaced by a TLS connection over it (STARTTLS).
fn negotiate(
    c: &mut Box<dyn Conn>,
    exports: &dyn Exports,
    tls: Option<&tls::Server>,
) -> io::Result<Option<Session>> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    c.write_all(&hello)?;
    let cflags = rd_u32(&mut **c)?;
    if cflags & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0 {
        return Err(bad("unknown client flags"));
    }
    let no_zeroes = cflags & CLIENT_NO_ZEROES != 0;
    let mut n = Negotiation::default();
    let required = tls.is_some_and(|t| t.required());
    loop {
        if rd_u64(&mut **c)? != IHAVEOPT {
            return Err(bad("bad option magic"));
        }
        let opt = rd_u32(&mut **c)?;
        let len = rd_u32(&mut **c)?;
        if len > MAX_OPTION {
            // Skip what we will not read, then refuse.
            io::copy(&mut (&mut **c).take(u64::from(len)), &mut io::sink())?;
            opt_reply(&mut **c, opt, REP_ERR_TOO_BIG, b"option too large")?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        c.read_exact(&mut data)?;
        if required && !n.tls && !matches!(opt, OPT_STARTTLS | OPT_ABORT) {
            if opt == OPT_EXPORT_NAME {
                // It cannot be refused: the session ends.
                return Err(bad("EXPORT_NAME before STARTTLS on a TLS-only server"));
            }
            opt_reply(
                &mut **c,
                opt,
                REP_ERR_TLS_REQD,
                b"TLS is required: STARTTLS first",
            )?;
            continue;
        }
        match opt {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).to_string();
                let Some(e) = exports.get(&name) else {
                    return Err(bad("unknown export"));
                };
                let mut b = Vec::new();
                b.extend_from_slice(&e.volume.size().to_be_bytes());
                b.extend_from_slice(&transmission_flags(&e, n.structured).to_be_bytes());
                if !no_zeroes {
                    b.extend_from_slice(&[0u8; 124]);
                }
                c.write_all(&b)?;
                let contexts = selected(&n, &name);
                return Ok(Some(Session {
                    export: e,
                    structured: n.structured,
                    contexts,
                }));
            }
            OPT_ABORT => {
                let _ = opt_reply(&mut **c, opt, REP_ACK, &[]);
                return Ok(None);
            }
            OPT_STARTTLS => {
                let Some(t) = tls else {
                    opt_reply(&mut **c, opt, REP_ERR_POLICY, b"TLS is not configured")?;
                    continue;
                };
                if n.tls || !data.is_empty() {
                    opt_reply(
                        &mut **c,
                        opt,
                        REP_ERR_INVALID,
                        b"STARTTLS once, without data",
                    )?;
                    continue;
                }
                opt_reply(&mut **c, opt, REP_ACK, &[])?;
                let plain = c.try_clone_conn()?;
                *c = t.accept(plain)?;
                // Nothing negotiated before the handshake survives it.
                n = Negotiation {
                    tls: true,
                    ..Default::default()
                };
            }
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    opt_reply(
                        &mut **c,
                        opt,
                        REP_ERR_INVALID,
                        b"STRUCTURED_REPLY takes no data",
                    )?;
                    continue;
                }
                n.structured = true;
                opt_reply(&mut **c, opt, REP_ACK, &[])?;
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                let set = opt == OPT_SET_META_CONTEXT;
                if set {
                    // Replaced even when it fails.
                    n.meta = None;
                }
                if !n.structured {
                    opt_reply(
                        &mut **c,
                        opt,
                        REP_ERR_INVALID,
                        b"negotiate structured replies first",
                    )?;
                    continue;
                }
                let Some((name, queries)) = parse_meta(&data) else {
                    opt_reply(&mut **c, opt, REP_ERR_INVALID, b"malformed context request")?;
                    continue;
                };
                let Some(e) = exports.get(&name) else {
                    unknown_export(&mut **c, opt, &name)?;
                    continue;
                };
                let mut chosen: Vec<Context> = Vec::new();
                if queries.is_empty() && !set {
                    chosen = context::available(&e);
                }
                for q in &queries {
                    for ctx in context::matching(&e, q, !set) {
                        if !chosen.contains(&ctx) {
                            chosen.push(ctx);
                        }
                    }
                }
                for (i, ctx) in chosen.iter().enumerate() {
                    let id = if set { i as u32 + 1 } else { 0 };
                    let mut d = id.to_be_bytes().to_vec();
                    d.extend_from_slice(ctx.name().as_bytes());
                    opt_reply(&mut **c, opt, REP_META_CONTEXT, &d)?;
                }
                opt_reply(&mut **c, opt, REP_ACK, &[])?;
                if set {
                    n.meta = Some((name, chosen));
                }
            }
            OPT_LIST => {
                if !data.is_empty() {
                    opt_reply(&mut **c, opt, REP_ERR_INVALID, b"LIST takes no data")?;
                    continue;
                }
                for name in exports.names() {
                    let mut d = (name.len() as u32).to_be_bytes().to_vec();
                    d.extend_from_slice(name.as_bytes());
                    opt_reply(&mut **c, opt, REP_SERVER, &d)?;
                }
                opt_reply(&mut **c, opt, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => {
                let parsed = (|| {
                    let mut r = &data[..];
                    let name = take_string(&mut r)?;
                    let k = rd_u16(&mut r).ok()? as usize;
                    if r.len() != k * 2 {
                        return None;
                    }
                    let reqs: Vec<u16> = r
                        .chunks(2)
                        .map(|x| u16::from_be_bytes([x[0], x[1]]))
                        .collect();
                    Some((name, reqs))
                })();
                let Some((name, reqs)) = parsed else {
                    opt_reply(&mut **c, opt, REP_ERR_INVALID, b"malformed INFO/GO request")?;
                    continue;
                };
                let Some(e) = exports.get(&name) else {
                    unknown_export(&mut **c, opt, &name)?;
                    continue;
                };
                let mut info = INFO_EXPORT.to_be_bytes().to_vec();
                info.extend_from_slice(&e.volume.size().to_be_bytes());
                info.extend_from_slice(&transmission_flags(&e, n.structured).to_be_bytes());
                opt_reply(&mut **c, opt, REP_INFO, &info)?;
                if reqs.contains(&INFO_BLOCK_SIZE) {
                    let mut bs = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                    bs.extend_from_slice(&1u32.to_be_bytes());
                    bs.extend_from_slice(&4096u32.to_be_bytes());
                    bs.extend_from_slice(&MAX_REQUEST.to_be_bytes());
                    opt_reply(&mut **c, opt, REP_INFO, &bs)?;
                }
                opt_reply(&mut **c, opt, REP_ACK, &[])?;
                if opt == OPT_GO {
                    let contexts = selected(&n, &name);
                    return Ok(Some(Session {
                        export: e,
                        structured: n.structured,
                        contexts,
                    }));
                }
            }
            _ => opt_reply(&mut **c, opt, REP_ERR_UNSUP, b"option not supported")?,
        }
    }
}

fn unknown_export(c: &mut dyn Conn, opt: u32, name: &str) -> io::Result<()> {
    let msg = format!("no export named {name:?}");
    opt_reply(c, opt, REP_ERR_UNKNOWN, msg.as_bytes())
}

/// The contexts chosen for `export`: those of the last SET_META_CONTEXT if
/// it named the same export, else none.
fn selected(n: &Negotiation, export: &str) -> Vec<Context> {
    match &n.meta {
        Some((name, ctxs)) if name == export => ctxs.clone(),
        _ => Vec::new(),
    }
}

struct Req {
    cmd: u16,
    flags: u16,
    cookie: u64,
    offset: u64,
    len: u32,
    data: Vec<u8>,
}

fn nbd_errno(e: &dms_engine::Error) -> u32 {
    match e.errno() {
        libc::ENOSPC => ENOSPC,
        libc::EINVAL => EINVAL,
        libc::EPERM | libc::EROFS => EPERM,
        _ => EIO,
    }
}

/// An error reply, simple or structured.
fn error_reply(s: &Session, err: u32, cookie: u64, msg: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    if s.structured {
        error_chunk(&mut out, err, cookie, msg);
    } else {
        simple_reply(&mut out, err, cookie);
    }
    out
}

/// A read's reply: simple, or structured as data chunks and hole chunks
/// for 4 KiB-aligned runs of zeros (one data chunk with DF).
fn read_reply(s: &Session, r: &Req, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + data.len());
    if !s.structured {
        simple_reply(&mut out, 0, r.cookie);
        out.extend_from_slice(data);
        return out;
    }
    const PIECE: usize = 4096;
    let mut pieces: Vec<(usize, usize, bool)> = Vec::new();
    if r.flags & CMD_FLAG_DF != 0 || data.len() < 2 * PIECE {
        pieces.push((0, data.len(), false));
    } else {
        let mut at = 0;
        while at < data.len() {
            // Runs end at 4 KiB boundaries of the device.
            let boundary = ((r.offset as usize + at) / PIECE + 1) * PIECE - r.offset as usize;
            let end = boundary.min(data.len());
            let zero = data[at..end].iter().all(|&b| b == 0);
            match pieces.last_mut() {
                Some(p) if p.2 == zero => p.1 = end,
                _ => pieces.push((at, end, zero)),
            }
            at = end;
        }
    }
    let last = pieces.len() - 1;
    for (i, &(a, b, zero)) in pieces.iter().enumerate() {
        let flags = if i == last { REPLY_FLAG_DONE } else { 0 };
        let off = (r.offset + a as u64).to_be_bytes();
        if zero {
            let n = ((b - a) as u32).to_be_bytes();
            chunk(&mut out, flags, REPLY_OFFSET_HOLE, r.cookie, &[&off, &n]);
        } else {
            chunk(
                &mut out,
                flags,
                REPLY_OFFSET_DATA,
                r.cookie,
                &[&off, &data[a..b]],
            );
        }
    }
    out
}

/// Block status: one chunk per selected context, the last one DONE.
fn block_status(s: &Session, r: &Req) -> Vec<u8> {
    if !s.structured || s.contexts.is_empty() {
        return error_reply(s, EINVAL, r.cookie, "no metadata context was negotiated");
    }
    let req_one = r.flags & CMD_FLAG_REQ_ONE != 0;
    let mut all = Vec::with_capacity(s.contexts.len());
    for (i, ctx) in s.contexts.iter().enumerate() {
        match context::status(&s.export, ctx, r.offset, u64::from(r.len), req_one) {
            Ok(d) => all.push((i as u32 + 1, d)),
            Err(err) => {
                return error_reply(s, err, r.cookie, &format!("block status of {}", ctx.name()))
            }
        }
    }
    let mut out = Vec::new();
    let last = all.len() - 1;
    for (i, (id, descs)) in all.iter().enumerate() {
        let mut p = Vec::with_capacity(4 + 8 * descs.len());
        p.extend_from_slice(&id.to_be_bytes());
        for (l, f) in descs {
            p.extend_from_slice(&l.to_be_bytes());
            p.extend_from_slice(&f.to_be_bytes());
        }
        let flags = if i == last { REPLY_FLAG_DONE } else { 0 };
        chunk(&mut out, flags, REPLY_BLOCK_STATUS, r.cookie, &[&p]);
    }
    out
}

/// Serve one request; returns the encoded reply.
fn serve(s: &Session, r: &Req) -> Vec<u8> {
    let e = &s.export;
    if !e.alive.load(Ordering::SeqCst) {
        return error_reply(s, ESHUTDOWN, r.cookie, "the dm_dev was removed");
    }
    let size = e.volume.size();
    let end = r.offset.checked_add(u64::from(r.len));
    let in_range = end.is_some_and(|x| x <= size);
    let writes = matches!(r.cmd, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && e.read_only {
        return error_reply(s, EPERM, r.cookie, "the export is read-only");
    }
    if matches!(
        r.cmd,
        CMD_READ | CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES | CMD_BLOCK_STATUS
    ) && !in_range
    {
        let err = if r.cmd == CMD_WRITE { ENOSPC } else { EINVAL };
        return error_reply(s, err, r.cookie, "past the end of the export");
    }
    let res = match r.cmd {
        CMD_READ => {
            let mut buf = vec![0u8; r.len as usize];
            return match e.volume.read_at(&mut buf, r.offset) {
                Ok(()) => read_reply(s, r, &buf),
                Err(err) => error_reply(s, nbd_errno(&err), r.cookie, &err.to_string()),
            };
        }
        CMD_BLOCK_STATUS => return block_status(s, r),
        CMD_WRITE => e.volume.write_at(&r.data, r.offset),
        CMD_FLUSH => e.volume.flush(),
        CMD_TRIM => e.volume.discard(r.offset, u64::from(r.len)),
        CMD_WRITE_ZEROES => e.volume.write_zeroes(r.offset, u64::from(r.len)),
        _ => return error_reply(s, EINVAL, r.cookie, "unknown command"),
    };
    let res = res.and_then(|()| {
        if writes && r.flags & CMD_FLAG_FUA != 0 {
            e.volume.flush()
        } else {
            Ok(())
        }
    });
    let mut out = Vec::with_capacity(16);
    match res {
        // Commands other than reads and block status take simple replies
        // even in structured mode, as the protocol allows.
        Ok(()) => simple_reply(&mut out, 0, r.cookie),
        Err(err) => simple_reply(&mut out, nbd_errno(&err), r.cookie),
    }
    out
}

fn transmit(mut c: Box<dyn Conn>, s: Session) -> io::Result<()> {
    let writer: Arc<Mutex<Box<dyn Conn>>> = Arc::new(Mutex::new(c.try_clone_conn()?));
    let (tx, rx) = mpsc::sync_channel::<Req>(64);
    let rx = Arc::new(Mutex::new(rx));
    let s = Arc::new(s);
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (rx, writer, s) = (rx.clone(), writer.clone(), s.clone());
        workers.push(std::thread::spawn(move || loop {
            let req = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                Ok(r) => r,
                Err(_) => return,
            };
            let out = serve(&s, &req);
            let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
            if w.write_all(&out).and_then(|()| w.flush()).is_err() {
                w.shutdown_both();
            }
        }));
    }
    let result = (|| -> io::Result<()> {
        loop {
            let mut h = [0u8; 28];
            c.read_exact(&mut h)?;
            let magic = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
            if magic != REQUEST_MAGIC {
                return Err(bad("bad request magic"));
            }
            let flags = u16::from_be_bytes([h[4], h[5]]);
            let cmd = u16::from_be_bytes([h[6], h[7]]);
            let cookie = u64::from_be_bytes(h[8..16].try_into().unwrap_or_default());
            let offset = u64::from_be_bytes(h[16..24].try_into().unwrap_or_default());
            let len = u32::from_be_bytes([h[24], h[25], h[26], h[27]]);
            if cmd == CMD_DISC {
                return Ok(());
            }
            let mut data = Vec::new();
            if cmd == CMD_WRITE {
                if len > MAX_REQUEST {
                    // The payload cannot be skipped safely: end the connection.
                    return Err(bad("write larger than the maximum"));
                }
                data = vec![0u8; len as usize];
                c.read_exact(&mut data)?;
            } else if cmd == CMD_READ && len > MAX_REQUEST {
                let out = error_reply(&s, EINVAL, cookie, "read larger than the maximum");
                let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
                w.write_all(&out)?;
                w.flush()?;
                continue;
            }
            if tx
                .send(Req {
                    cmd,
                    flags,
                    cookie,
                    offset,
                    len,
                    data,
                })
                .is_err()
            {
                return Ok(());
            }
        }
    })();
    drop(tx);
    for w in workers {
        let _ = w.join();
    }
    c.shutdown_both();
    result
}

/// Serve one connection: the handshake, then requests until it ends.
pub fn handle_conn(mut c: Box<dyn Conn>, exports: Arc<dyn Exports>, tls: Option<Arc<tls::Server>>) {
    match negotiate(&mut c, &*exports, tls.as_deref()) {
        Ok(Some(s)) => {
            s.export.clients.fetch_add(1, Ordering::SeqCst);
            let clients = s.export.clients.clone();
            if let Err(err) = transmit(c, s) {
                tracing::debug!("nbd connection ended: {err}");
            }
            clients.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(None) => {}
        Err(err) => {
            tracing::debug!("nbd handshake ended: {err}");
            c.shutdown_both();
        }
    }
}

/// Serve every connection `accept` gives until `stop` (it polls: the
/// listener is non-blocking).
fn accept_loop(
    mut accept: impl FnMut() -> io::Result<Box<dyn Conn>>,
    exports: Arc<dyn Exports>,
    tls: Option<Arc<tls::Server>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        match accept() {
            Ok(c) => {
                let (ex, tls) = (exports.clone(), tls.clone());
                std::thread::spawn(move || handle_conn(c, ex, tls));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => tracing::warn!("nbd accept: {e}"),
        }
    }
}

/// Accept connections on a unix socket until `stop`.
pub fn serve_unix(
    listener: std::os::unix::net::UnixListener,
    exports: Arc<dyn Exports>,
    tls: Option<Arc<tls::Server>>,
    stop: Arc<AtomicBool>,
) {
    let _ = listener.set_nonblocking(true);
    let accept = || -> io::Result<Box<dyn Conn>> {
        let (s, _) = listener.accept()?;
        s.set_nonblocking(false)?;
        Ok(Box::new(s))
    };
    accept_loop(accept, exports, tls, stop);
}

/// Accept connections on TCP until `stop`.
pub fn serve_tcp(
    listener: std::net::TcpListener,
    exports: Arc<dyn Exports>,
    tls: Option<Arc<tls::Server>>,
    stop: Arc<AtomicBool>,
) {
    let _ = listener.set_nonblocking(true);
    let accept = || -> io::Result<Box<dyn Conn>> {
        let (s, _) = listener.accept()?;
        s.set_nonblocking(false)?;
        let _ = s.set_nodelay(true);
        Ok(Box::new(s))
    };
    accept_loop(accept, exports, tls, stop);
}
