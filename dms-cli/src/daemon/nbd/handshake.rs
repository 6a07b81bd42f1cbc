//! The NBD handshake: options up to GO (or EXPORT_NAME), structured
//! replies, metadata contexts, STARTTLS.

use super::context::{self, Context};
use super::wire::*;
use super::{tls, Conn, Export, Exports};
use std::io::{self, Read, Write};

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
pub(super) struct Session {
    pub export: Export,
    pub structured: bool,
    /// Selected contexts; a context's id is its index + 1.
    pub contexts: Vec<Context>,
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
pub(super) fn negotiate(
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
