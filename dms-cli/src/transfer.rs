//! `dms send` and `dms receive`: streams of snapshots on stdout and stdin,
//! through the daemon when it holds the store (frames over the control
//! socket, src/frames.rs), else offline in this process.

use crate::client;
use crate::daemon::registry;
use crate::frames::{self, FrameWriter};
use crate::inspect;
use crate::paths;
use crate::proto::{ReceiveAction, ReceiveArgs, Request, Response, SendArgs};
use crate::Exit;
use dms_engine::stream::{ReceiveOptions, SendOptions, StreamFormat};
use dms_engine::{FormatOptions, Store};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Read, Write};
use std::sync::Arc;

/// `dms send`.
#[derive(clap::Args)]
pub struct SendCmd {
    /// The COW device holding the snapshot.
    cow_dev: String,
    /// The snapshot to send.
    tag: u32,
    /// The origin (needed when the store holds several).
    #[arg(short = 'i', long = "origin")]
    origin_id: Option<String>,
    /// Send only what differs from this older tag (an incremental stream).
    #[arg(long)]
    from: Option<u32>,
    /// The stream format: dms (checked, resumable), rbd-v1 or rbd-v2
    /// (what `rbd import-diff` reads).
    #[arg(long, default_value = "dms", value_parser = ["dms", "rbd-v1", "rbd-v2"])]
    format: String,
    /// Continue the interrupted receive this token names (from `dms
    /// receive --token` on the receiving side); <tag> must be its target.
    #[arg(long)]
    resume: Option<String>,
    /// The origin device, when the daemon does not hold the store and its
    /// registry does not know where the origin is.
    #[arg(long = "origin-dev")]
    origin_dev: Option<String>,
}

/// `dms receive`.
#[derive(clap::Args)]
pub struct ReceiveCmd {
    /// The origin device the stream fills.
    origin_dev: String,
    /// The COW device the new snapshot goes to.
    cow_dev: String,
    /// The origin's identity in the COW device (default: its path).
    #[arg(short = 'i')]
    origin_id: Option<String>,
    /// Bind the origin device to the COW device first (its first use).
    #[arg(short = 'b')]
    bind: bool,
    /// Format the COW device first (refused if it holds a store); with -b.
    #[arg(short = 'f')]
    format_store: bool,
    /// Format the COW device even if it holds a store; with -b.
    #[arg(short = 'F')]
    force_format: bool,
    /// Chunk size in 4 KiB pages, with -f or -F.
    #[arg(short = 'c')]
    chunk_size: Option<u32>,
    /// The stream format: dms, rbd-v1 or rbd-v2 (`rbd export-diff`).
    #[arg(long, default_value = "dms", value_parser = ["dms", "rbd-v1", "rbd-v2"])]
    format: String,
    /// For an incremental stream: roll the origin back to the stream's base
    /// first when it no longer equals it.
    #[arg(long)]
    force: bool,
    /// Print the resume token of an interrupted receive and read nothing.
    #[arg(long, conflicts_with = "abort")]
    token: bool,
    /// Undo an interrupted receive: the origin goes back to the base.
    #[arg(long)]
    abort: bool,
}

fn err(e: impl std::fmt::Display) -> Exit {
    Exit(1, e.to_string())
}

fn format_of(name: &str) -> Result<StreamFormat, Exit> {
    StreamFormat::from_name(name).ok_or_else(|| Exit(2, format!("unknown format {name:?}")))
}

/// A progress bar on stderr when it is a terminal.
fn bar(what: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("#>."),
    );
    pb.set_prefix(what.to_string());
    Some(pb)
}

fn show(pb: &Option<ProgressBar>, done: u64, total: u64) {
    if let Some(pb) = pb {
        pb.set_length(total);
        pb.set_position(done);
    }
}

impl SendCmd {
    pub fn run(self) -> Result<Response, Exit> {
        let format = format_of(&self.format)?;
        if std::io::stdout().is_terminal() {
            return Err(Exit(
                2,
                "a stream is not for a terminal: redirect stdout to a file or a pipe".into(),
            ));
        }
        let cow = paths::device(&self.cow_dev).map_err(err)?;
        let origin_dev = match &self.origin_dev {
            Some(p) => Some(paths::device(p).map_err(err)?.display().to_string()),
            None => None,
        };
        let args = SendArgs {
            cow: cow.display().to_string(),
            origin_id: self.origin_id.clone(),
            origin_dev,
            tag: self.tag,
            from: self.from,
            format: self.format.clone(),
            resume: self.resume.clone(),
        };
        let pb = bar("send");
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
        if let Ok(sock) = client::open(&Request::Send(args.clone()), false) {
            let r = send_through(&sock, &mut out, &pb)?;
            if !r.is_not_held() {
                if let Some(pb) = pb {
                    pb.finish_and_clear();
                }
                return Ok(r);
            }
        }
        // Offline.
        let store = inspect::open(&self.cow_dev)?;
        let origin = inspect::the_origin(&store, self.origin_id.clone())?;
        let dev = origin_device(&cow, &origin, args.origin_dev.as_deref())?;
        let file = dms_engine::io::FileDev::open(&dev, false)
            .map_err(|e| Exit(1, format!("{}: {e}", dev.display())))?;
        store.attach(&origin, Arc::new(file)).map_err(err)?;
        let opts = SendOptions {
            from: self.from,
            format,
            resume: self.resume,
        };
        let report = store
            .send(&origin, self.tag, &opts, &mut out, &mut |d, t| {
                show(&pb, d, t)
            })
            .map_err(err)?;
        out.flush()
            .map_err(|e| Exit(1, format!("writing the stream: {e}")))?;
        if let Some(pb) = pb {
            pb.finish_and_clear();
        }
        let _ = report;
        Ok(Response::ok(String::new()))
    }
}

/// Where the origin device of `origin` in store `cow` is: given, known to
/// the daemon's registry, or its id (an origin's id is by default its path).
fn origin_device(
    cow: &std::path::Path,
    origin: &str,
    given: Option<&str>,
) -> Result<std::path::PathBuf, Exit> {
    if let Some(g) = given {
        return Ok(g.into());
    }
    let reg = registry::load(&paths::registry(&paths::run_dir())).unwrap_or_default();
    let cow_s = cow.display().to_string();
    if let Some(p) = reg
        .stores
        .iter()
        .filter(|s| s.cow == cow_s)
        .flat_map(|s| s.origins.iter())
        .find(|(id, _)| id == origin)
        .map(|(_, p)| p.clone())
    {
        return Ok(p.into());
    }
    let p = std::path::PathBuf::from(origin);
    if p.is_absolute() && p.exists() {
        return Ok(p);
    }
    Err(Exit(
        1,
        format!("where the origin device of {origin} is is not known; name it with --origin-dev"),
    ))
}

/// The daemon's last frame: its answer.
fn answer(payload: &[u8]) -> Result<Response, Exit> {
    serde_json::from_slice(payload).map_err(|e| Exit(1, format!("the daemon's answer: {e}")))
}

fn unexpected(kind: u8) -> Exit {
    Exit(1, format!("the daemon sent a frame of kind {kind:#x}"))
}

/// Read a send's frames: stream bytes to `out`, progress to the bar.
fn send_through(
    sock: &std::os::unix::net::UnixStream,
    out: &mut dyn Write,
    pb: &Option<ProgressBar>,
) -> Result<Response, Exit> {
    let mut input = std::io::BufReader::with_capacity(1 << 20, sock);
    loop {
        let (kind, payload) = frames::read_frame(&mut input)
            .map_err(|e| Exit(1, format!("the daemon's stream: {e}")))?;
        match kind {
            frames::DATA => out
                .write_all(&payload)
                .map_err(|e| Exit(1, format!("writing the stream: {e}")))?,
            frames::END => out
                .flush()
                .map_err(|e| Exit(1, format!("writing the stream: {e}")))?,
            frames::PROGRESS => {
                if let Some((d, t)) = frames::progress_of(&payload) {
                    show(pb, d, t);
                }
            }
            frames::RESPONSE => return answer(&payload),
            k => return Err(unexpected(k)),
        }
    }
}

impl ReceiveCmd {
    pub fn run(self) -> Result<Response, Exit> {
        let format = format_of(&self.format)?;
        if (self.format_store || self.force_format || self.chunk_size.is_some()) && !self.bind {
            return Err(Exit(
                2,
                "-f, -F and -c format the COW device only together with -b".into(),
            ));
        }
        if self.format_store && self.force_format {
            return Err(Exit(2, "-f and -F: give one".into()));
        }
        let action = match (self.token, self.abort) {
            (true, _) => ReceiveAction::Token,
            (_, true) => ReceiveAction::Abort,
            _ => ReceiveAction::Stream,
        };
        if action != ReceiveAction::Stream && (self.bind || self.force) {
            return Err(Exit(
                2,
                "--token and --abort take no -b, -f, -F, -c or --force".into(),
            ));
        }
        if action == ReceiveAction::Stream && std::io::stdin().is_terminal() {
            return Err(Exit(
                2,
                "a stream comes on stdin: redirect it from a file or a pipe".into(),
            ));
        }
        let origin = paths::device(&self.origin_dev).map_err(err)?;
        let cow = paths::device(&self.cow_dev).map_err(err)?;
        let origin_s = origin.display().to_string();
        let args = ReceiveArgs {
            origin: origin_s.clone(),
            cow: cow.display().to_string(),
            origin_id: self.origin_id.clone(),
            bind: self.bind,
            format_store: (self.format_store || self.force_format).then_some(self.force_format),
            chunk_pages: self.chunk_size,
            format: self.format.clone(),
            force: self.force,
            action,
        };
        let pb = (action == ReceiveAction::Stream)
            .then(|| bar("receive"))
            .flatten();
        // The stream's first bytes, checked before anything is formatted,
        // bound or written: an empty or foreign input changes nothing.
        let mut input: Option<Box<dyn Read + Send>> = None;
        if action == ReceiveAction::Stream {
            let head = stream_head(format)?;
            input = Some(Box::new(std::io::Cursor::new(head).chain(std::io::stdin())));
        }
        if let Ok(sock) = client::open(&Request::Receive(args.clone()), false) {
            let r = receive_through(sock, &mut input, &pb)?;
            if !r.is_not_held() {
                if let Some(pb) = pb {
                    pb.finish_and_clear();
                }
                return Ok(r);
            }
        }
        // Offline.
        let id = self.origin_id.clone().unwrap_or(origin_s);
        let cow_dev =
            dms_engine::io::FileDev::open(&cow, true).map_err(|e| Exit(1, e.to_string()))?;
        let cow_dev: dms_engine::io::Dev = Arc::new(cow_dev);
        let store = match args.format_store {
            Some(force) => Store::format(
                cow_dev,
                &FormatOptions {
                    chunk_pages: self.chunk_size.unwrap_or(1),
                    force,
                },
            ),
            None => Store::open(cow_dev),
        }
        .map_err(err)?;
        let file = dms_engine::io::FileDev::open(&origin, true)
            .map_err(|e| Exit(1, format!("{}: {e}", origin.display())))?;
        if self.bind {
            store.bind(&id, Arc::new(file)).map_err(err)?;
        } else {
            store.attach(&id, Arc::new(file)).map_err(err)?;
        }
        let r = match action {
            ReceiveAction::Token => match store.receive_token(&id).map_err(err)? {
                Some(t) => Response::ok(format!("{t}\n")),
                None => return Err(Exit(1, format!("no resumable receive into {id}"))),
            },
            ReceiveAction::Abort => {
                store.receive_abort(&id).map_err(err)?;
                Response::ok(String::new())
            }
            ReceiveAction::Stream => {
                let opts = ReceiveOptions {
                    format,
                    force: self.force,
                };
                let input = input.unwrap_or_else(|| Box::new(std::io::empty()));
                let mut input = std::io::BufReader::with_capacity(1 << 20, input);
                let rep = store.receive(&id, &opts, &mut input, &mut |d, t| show(&pb, d, t));
                match rep {
                    Ok(rep) => Response::ok(format!("{}\n", rep.tag)),
                    // Cut short: what arrived stays, to be resumed.
                    Err(e @ dms_engine::Error::Interrupted { .. }) => return Err(err(e)),
                    Err(e) => {
                        // Refused: take back what this command did first.
                        undo_setup(store, &cow, &id, args.format_store.is_some(), self.bind);
                        return Err(err(e));
                    }
                }
            }
        };
        store.flush().map_err(err)?;
        if let Some(pb) = pb {
            pb.finish_and_clear();
        }
        Ok(r)
    }
}

/// Read the start of the stream on stdin (up to its magic) and check it is
/// one of `format`: one line and nothing changed when it is not.
fn stream_head(format: StreamFormat) -> Result<Vec<u8>, Exit> {
    let magic: &[&[u8]] = match format {
        StreamFormat::Dms => &[b"dms-strm"],
        StreamFormat::RbdV1 => &[b"rbd diff v1\n"],
        StreamFormat::RbdV2 => &[b"rbd diff v2\n"],
    };
    let want = magic[0].len();
    let mut head = Vec::with_capacity(want);
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 16];
    while head.len() < want {
        match stdin.read(&mut buf[..want - head.len()]) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Exit(1, format!("reading the stream: {e}"))),
        }
    }
    if head.is_empty() {
        return Err(Exit(1, "nothing on stdin: the stream is empty".into()));
    }
    if !magic.iter().any(|m| head[..] == m[..]) {
        let other = if head.starts_with(b"dms-strm") {
            " (it is a dms stream: --format dms)"
        } else if head.starts_with(b"rbd diff") {
            " (it is an RBD diff: --format rbd-v1 or rbd-v2)"
        } else {
            ""
        };
        return Err(Exit(
            1,
            format!(
                "the input is not a {} stream{other}; nothing was changed",
                format.name()
            ),
        ));
    }
    Ok(head)
}

/// After a refused receive: a COW device this command formatted is
/// unformatted again (its superblock slots zeroed: it held no store
/// before), an origin it bound is unbound.
fn undo_setup(store: Store, cow: &std::path::Path, id: &str, formatted: bool, bound: bool) {
    if formatted {
        let _ = store.flush();
        drop(store);
        // Once the store has let the device go (its committer thread ends
        // just after the drop), nothing else writes it.
        for _ in 0..500 {
            if let Ok(dev) = dms_engine::io::FileDev::open(cow, true) {
                use dms_engine::io::BlockDev;
                let zeros = vec![0u8; 2 * dms_engine::PAGE_SIZE];
                let _ = dev.write_at(&zeros, 0).and_then(|()| dev.sync());
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    } else if bound {
        let _ = store.unbind(id);
        let _ = store.flush();
    }
}

/// A receive through the daemon: wait for its go, then pump stdin into
/// frames while reading its progress and answer.
fn receive_through(
    sock: std::os::unix::net::UnixStream,
    input: &mut Option<Box<dyn Read + Send>>,
    pb: &Option<ProgressBar>,
) -> Result<Response, Exit> {
    let mut from_daemon = std::io::BufReader::new(&sock);
    let bad = |e: std::io::Error| Exit(1, format!("the daemon's answer: {e}"));
    let (kind, payload) = frames::read_frame(&mut from_daemon).map_err(bad)?;
    match kind {
        frames::RESPONSE => return answer(&payload),
        frames::GO => {}
        k => return Err(unexpected(k)),
    }
    let mut stdin = input.take().unwrap_or_else(|| Box::new(std::io::empty()));
    let writer = sock
        .try_clone()
        .map_err(|e| Exit(1, format!("the control socket: {e}")))?;
    // The pump ends with the input, or when the daemon stops reading (it
    // then answers why); it is not waited for.
    std::thread::spawn(move || {
        let mut out = FrameWriter::new(std::io::BufWriter::new(&writer));
        let mut buf = vec![0u8; frames::MAX_FRAME];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => {
                    let _ = out.end();
                    break;
                }
                Ok(n) => {
                    if out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // A failing input is a stream cut short: close without
                // the end frame.
                Err(_) => {
                    let _ = out.flush();
                    let _ = writer.shutdown(std::net::Shutdown::Write);
                    break;
                }
            }
        }
    });
    loop {
        let (kind, payload) = frames::read_frame(&mut from_daemon).map_err(bad)?;
        match kind {
            frames::PROGRESS => {
                if let Some((d, t)) = frames::progress_of(&payload) {
                    show(pb, d, t);
                }
            }
            frames::RESPONSE => return answer(&payload),
            k => return Err(unexpected(k)),
        }
    }
}
