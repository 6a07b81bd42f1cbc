//! An NBD server (fixed newstyle handshake, simple replies) for every
//! dm_dev: export name = dm_dev name. Each connection has a reader thread
//! and a small fixed pool of workers, so requests are pipelined without a
//! thread per request. Constants from the NBD protocol specification
//! (NetworkBlockDevice/nbd, doc/proto.md); all integers are big-endian.

use dms_engine::Volume;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const FLAG_NO_ZEROES: u16 = 1 << 1;
const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
const CLIENT_NO_ZEROES: u32 = 1 << 1;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const REP_ERR_INVALID: u32 = (1 << 31) + 3;
const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

const TF_HAS_FLAGS: u16 = 1 << 0;
const TF_READ_ONLY: u16 = 1 << 1;
const TF_SEND_FLUSH: u16 = 1 << 2;
const TF_SEND_FUA: u16 = 1 << 3;
const TF_SEND_TRIM: u16 = 1 << 5;
const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;
const TF_CAN_MULTI_CONN: u16 = 1 << 8;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;
const CMD_FLAG_FUA: u16 = 1 << 0;

const EPERM: u32 = 1;
const EIO: u32 = 5;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;
const ESHUTDOWN: u32 = 108;

/// Largest option payload and request payload accepted.
const MAX_OPTION: u32 = 64 * 1024;
const MAX_REQUEST: u32 = 32 << 20;
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

trait Conn: Read + Write + Send + 'static {
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

fn rd_u16(r: &mut dyn Read) -> io::Result<u16> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

fn rd_u32(r: &mut dyn Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn rd_u64(r: &mut dyn Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn opt_reply(w: &mut dyn Write, opt: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    w.write_all(&b)
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

fn transmission_flags(e: &Export) -> u16 {
    let mut f = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_CAN_MULTI_CONN;
    if e.read_only {
        f |= TF_READ_ONLY;
    } else {
        f |= TF_SEND_TRIM | TF_SEND_WRITE_ZEROES;
    }
    f
}

/// The handshake; returns the export chosen, or None if the client left.
fn negotiate(c: &mut dyn Conn, exports: &dyn Exports) -> io::Result<Option<Export>> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    c.write_all(&hello)?;
    let cflags = rd_u32(c)?;
    if cflags & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0 {
        return Err(bad("unknown client flags"));
    }
    let no_zeroes = cflags & CLIENT_NO_ZEROES != 0;
    loop {
        if rd_u64(c)? != IHAVEOPT {
            return Err(bad("bad option magic"));
        }
        let opt = rd_u32(c)?;
        let len = rd_u32(c)?;
        if len > MAX_OPTION {
            // Skip what we will not read, then refuse.
            io::copy(&mut (&mut *c).take(u64::from(len)), &mut io::sink())?;
            opt_reply(c, opt, REP_ERR_TOO_BIG, b"option too large")?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        c.read_exact(&mut data)?;
        match opt {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).to_string();
                let Some(e) = exports.get(&name) else {
                    return Err(bad("unknown export"));
                };
                let mut b = Vec::new();
                b.extend_from_slice(&e.volume.size().to_be_bytes());
                b.extend_from_slice(&transmission_flags(&e).to_be_bytes());
                if !no_zeroes {
                    b.extend_from_slice(&[0u8; 124]);
                }
                c.write_all(&b)?;
                return Ok(Some(e));
            }
            OPT_ABORT => {
                let _ = opt_reply(c, opt, REP_ACK, &[]);
                return Ok(None);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    opt_reply(c, opt, REP_ERR_INVALID, b"LIST takes no data")?;
                    continue;
                }
                for n in exports.names() {
                    let mut d = (n.len() as u32).to_be_bytes().to_vec();
                    d.extend_from_slice(n.as_bytes());
                    opt_reply(c, opt, REP_SERVER, &d)?;
                }
                opt_reply(c, opt, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => {
                let parsed = (|| {
                    let mut r = &data[..];
                    let nlen = rd_u32(&mut r).ok()? as usize;
                    if nlen > r.len() {
                        return None;
                    }
                    let name = String::from_utf8(r[..nlen].to_vec()).ok()?;
                    r = &r[nlen..];
                    let n = rd_u16(&mut r).ok()? as usize;
                    if r.len() != n * 2 {
                        return None;
                    }
                    let reqs: Vec<u16> = r
                        .chunks(2)
                        .map(|x| u16::from_be_bytes([x[0], x[1]]))
                        .collect();
                    Some((name, reqs))
                })();
                let Some((name, reqs)) = parsed else {
                    opt_reply(c, opt, REP_ERR_INVALID, b"malformed INFO/GO request")?;
                    continue;
                };
                let Some(e) = exports.get(&name) else {
                    opt_reply(
                        c,
                        opt,
                        REP_ERR_UNKNOWN,
                        format!("no export named {name:?}").as_bytes(),
                    )?;
                    continue;
                };
                let mut info = INFO_EXPORT.to_be_bytes().to_vec();
                info.extend_from_slice(&e.volume.size().to_be_bytes());
                info.extend_from_slice(&transmission_flags(&e).to_be_bytes());
                opt_reply(c, opt, REP_INFO, &info)?;
                if reqs.contains(&INFO_BLOCK_SIZE) {
                    let mut bs = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                    bs.extend_from_slice(&1u32.to_be_bytes());
                    bs.extend_from_slice(&4096u32.to_be_bytes());
                    bs.extend_from_slice(&MAX_REQUEST.to_be_bytes());
                    opt_reply(c, opt, REP_INFO, &bs)?;
                }
                opt_reply(c, opt, REP_ACK, &[])?;
                if opt == OPT_GO {
                    return Ok(Some(e));
                }
            }
            _ => opt_reply(c, opt, REP_ERR_UNSUP, b"option not supported")?,
        }
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

/// Serve one request; returns (error, data for a read).
fn serve(e: &Export, r: &Req) -> (u32, Vec<u8>) {
    if !e.alive.load(Ordering::SeqCst) {
        return (ESHUTDOWN, Vec::new());
    }
    let size = e.volume.size();
    let end = r.offset.checked_add(u64::from(r.len));
    let in_range = end.is_some_and(|x| x <= size);
    let writes = matches!(r.cmd, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && e.read_only {
        return (EPERM, Vec::new());
    }
    if matches!(r.cmd, CMD_READ | CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES) && !in_range {
        return (if r.cmd == CMD_WRITE { ENOSPC } else { EINVAL }, Vec::new());
    }
    let res = match r.cmd {
        CMD_READ => {
            let mut buf = vec![0u8; r.len as usize];
            return match e.volume.read_at(&mut buf, r.offset) {
                Ok(()) => (0, buf),
                Err(err) => (nbd_errno(&err), Vec::new()),
            };
        }
        CMD_WRITE => e.volume.write_at(&r.data, r.offset),
        CMD_FLUSH => e.volume.flush(),
        CMD_TRIM => e.volume.discard(r.offset, u64::from(r.len)),
        CMD_WRITE_ZEROES => e.volume.write_zeroes(r.offset, u64::from(r.len)),
        _ => return (EINVAL, Vec::new()),
    };
    let res = res.and_then(|()| {
        if writes && r.flags & CMD_FLAG_FUA != 0 {
            e.volume.flush()
        } else {
            Ok(())
        }
    });
    match res {
        Ok(()) => (0, Vec::new()),
        Err(err) => (nbd_errno(&err), Vec::new()),
    }
}

fn transmit(mut c: Box<dyn Conn>, e: Export) -> io::Result<()> {
    let writer: Arc<Mutex<Box<dyn Conn>>> = Arc::new(Mutex::new(c.try_clone_conn()?));
    let (tx, rx) = mpsc::sync_channel::<Req>(64);
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (rx, writer, e) = (rx.clone(), writer.clone(), e.clone());
        workers.push(std::thread::spawn(move || loop {
            let req = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                Ok(r) => r,
                Err(_) => return,
            };
            let (err, data) = serve(&e, &req);
            let mut out = Vec::with_capacity(16 + data.len());
            out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
            out.extend_from_slice(&err.to_be_bytes());
            out.extend_from_slice(&req.cookie.to_be_bytes());
            if err == 0 {
                out.extend_from_slice(&data);
            }
            let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
            if w.write_all(&out).is_err() {
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
                let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
                let mut out = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
                out.extend_from_slice(&EINVAL.to_be_bytes());
                out.extend_from_slice(&cookie.to_be_bytes());
                w.write_all(&out)?;
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

fn handle_conn(mut c: Box<dyn Conn>, exports: Arc<dyn Exports>) {
    match negotiate(&mut *c, &*exports) {
        Ok(Some(e)) => {
            e.clients.fetch_add(1, Ordering::SeqCst);
            let clients = e.clients.clone();
            if let Err(err) = transmit(c, e) {
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

/// Accept connections on a unix socket until `stop`.
pub fn serve_unix(
    listener: std::os::unix::net::UnixListener,
    exports: Arc<dyn Exports>,
    stop: Arc<AtomicBool>,
) {
    let _ = listener.set_nonblocking(true);
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((s, _)) => {
                let _ = s.set_nonblocking(false);
                let ex = exports.clone();
                std::thread::spawn(move || handle_conn(Box::new(s), ex));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => tracing::warn!("nbd accept: {e}"),
        }
    }
}

/// Accept connections on TCP until `stop`.
pub fn serve_tcp(
    listener: std::net::TcpListener,
    exports: Arc<dyn Exports>,
    stop: Arc<AtomicBool>,
) {
    let _ = listener.set_nonblocking(true);
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((s, _)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_nodelay(true);
                let ex = exports.clone();
                std::thread::spawn(move || handle_conn(Box::new(s), ex));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => tracing::warn!("nbd accept: {e}"),
        }
    }
}
