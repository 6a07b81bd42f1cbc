//! An NBD server for every dm_dev: export name = dm_dev name. Fixed
//! newstyle handshake; simple replies, or structured ones when the client
//! asks (reads as data and hole chunks, errors as error chunks); metadata
//! contexts and block status (`context.rs`); TLS through STARTTLS
//! (`tls.rs`). Each connection has a reader thread and a small fixed pool
//! of workers, so requests are pipelined without a thread per request.
//! docs/cli.md lists what is offered.

mod context;
mod handshake;
pub mod tls;
mod wire;

use dms_engine::Volume;
use handshake::{negotiate, Session};
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

/// Serve every connection `accept` gives until `stop`: the listener
/// (`fd`) is non-blocking, and the loop waits on it for at most 20 ms at a
/// time to look at `stop`.
fn accept_loop(
    fd: std::os::fd::RawFd,
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
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_for_connection(fd, 20),
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
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let accept = || -> io::Result<Box<dyn Conn>> {
        let (s, _) = listener.accept()?;
        s.set_nonblocking(false)?;
        Ok(Box::new(s))
    };
    accept_loop(fd, accept, exports, tls, stop);
}

/// Accept connections on TCP until `stop`.
pub fn serve_tcp(
    listener: std::net::TcpListener,
    exports: Arc<dyn Exports>,
    tls: Option<Arc<tls::Server>>,
    stop: Arc<AtomicBool>,
) {
    let _ = listener.set_nonblocking(true);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let accept = || -> io::Result<Box<dyn Conn>> {
        let (s, _) = listener.accept()?;
        s.set_nonblocking(false)?;
        let _ = s.set_nodelay(true);
        Ok(Box::new(s))
    };
    accept_loop(fd, accept, exports, tls, stop);
}

/// Wait until the listening socket `fd` has a connection to accept, or
/// `ms` milliseconds have passed (the caller's loop looks at its stop flag
/// meanwhile): a client is accepted at once rather than at the next turn
/// of a polling loop.
pub(crate) fn wait_for_connection(fd: std::os::fd::RawFd, ms: i32) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd of our own, for the duration of the call.
    unsafe {
        libc::poll(&mut p, 1, ms);
    }
}
