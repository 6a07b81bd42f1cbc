//! Send, receive and inspection on stores the daemon holds. Streams go in
//! frames over the control socket (src/frames.rs); the state lock is held
//! only to look things up and mark the origin, never while data moves.

use super::devices::open_file;
use super::fail::{fail, usage, Fail, Res};
use super::{Daemon, State};
use crate::frames::{self, FrameReader, FrameWriter};
use crate::proto::{Inspect, ReceiveAction, ReceiveArgs, Response, SendArgs};
use dms_engine::stream::{ReceiveOptions, SendOptions, StreamFormat};
use dms_engine::{ErrorKind, Store};
use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

fn answer(res: Res<Response>) -> Response {
    match res {
        Ok(r) => r,
        Err(f) => Response::fail(f.code, f.msg, f.kind),
    }
}

fn format_of(name: &str) -> Res<StreamFormat> {
    StreamFormat::from_name(name).ok_or_else(|| Fail::new(2, format!("unknown format {name:?}")))
}

/// The origin of a request: the one named, else the store's only one.
fn the_origin(store: &Store, id: Option<&str>) -> Res<String> {
    if let Some(id) = id {
        return Ok(id.to_string());
    }
    let origins = store.origins()?;
    match origins.as_slice() {
        [one] => Ok(one.clone()),
        _ => usage(format!(
            "the store holds {} origins; name one with -i",
            origins.len()
        )),
    }
}

/// Make sure origin `id` of the store at `cow` is attached, from `dev`
/// (or where the registry last saw it). Returns its device path.
fn attached(st: &mut State, cow: &PathBuf, id: &str, dev: Option<&str>) -> Res<PathBuf> {
    let known = st.known.get(cow).and_then(|o| o.get(id)).cloned();
    let entry = st
        .stores
        .get_mut(cow)
        .ok_or_else(|| Fail::new(1, "store vanished"))?;
    if let Some(p) = entry.origins.get(id) {
        if let Some(dev) = dev {
            if std::path::Path::new(dev) != p {
                return fail(format!(
                    "origin {id} is attached from {}, not {dev}",
                    p.display()
                ));
            }
        }
        return Ok(p.clone());
    }
    if !entry.store.origins()?.iter().any(|o| o == id) {
        return Err(dms_engine::Error::UnknownOrigin(id.to_string()).into());
    }
    let path = match dev.map(PathBuf::from).or(known) {
        Some(p) => p,
        None if PathBuf::from(id).is_absolute() => PathBuf::from(id),
        None => {
            return fail(format!(
                "where the origin device of {id} is is not known; name it with --origin-dev"
            ))
        }
    };
    entry.store.attach(id, open_file(&path)?)?;
    entry.origins.insert(id.to_string(), path.clone());
    st.known
        .entry(cow.clone())
        .or_default()
        .insert(id.to_string(), path.clone());
    Ok(path)
}

/// `dms send` of a held store: frames of the stream, then the answer.
pub(crate) fn send(d: &Arc<Daemon>, args: &SendArgs, sock: &UnixStream) {
    let cow = PathBuf::from(&args.cow);
    let found = {
        let mut st = d.lock();
        let store = st.stores.get(&cow).map(|e| e.store.clone());
        store.map(|store| {
            the_origin(&store, args.origin_id.as_deref()).and_then(|id| {
                attached(&mut st, &cow, &id, args.origin_dev.as_deref())?;
                Ok((store, id))
            })
        })
    };
    let resp = match found {
        None => Response::not_held(&args.cow),
        Some(Err(f)) => answer(Err(f)),
        Some(Ok((store, id))) => answer(send_store(&store, &id, args, sock)),
    };
    if let Some(e) = &resp.error {
        tracing::warn!("send refused or failed: {e}");
    }
    let _ = frames::write_response(&mut &*sock, &resp);
}

fn send_store(store: &Store, id: &str, args: &SendArgs, sock: &UnixStream) -> Res<Response> {
    let opts = SendOptions {
        from: args.from,
        format: format_of(&args.format)?,
        resume: args.resume.clone(),
    };
    let mut out = FrameWriter::new(sock);
    // Progress at most every 64 MiB of device, and at the end.
    let mut last = 0u64;
    let mut progress = |done: u64, total: u64| {
        if done == total || done >= last + (64 << 20) || done < last {
            last = done;
            let _ = frames::write_progress(&mut &*sock, done, total);
        }
    };
    let report = store.send(id, args.tag, &opts, &mut out, &mut progress)?;
    out.end()
        .map_err(|e| Fail::new(1, format!("writing the stream: {e}")))?;
    tracing::info!(
        "sent tag {} of {id}: {} bytes ({} of data)",
        args.tag,
        report.bytes,
        report.data_bytes
    );
    Ok(Response::ok(String::new()))
}

/// `dms receive` into a held store: `g`, the client's frames, the answer.
pub(crate) fn receive(
    d: &Arc<Daemon>,
    args: &ReceiveArgs,
    reader: &mut BufReader<&UnixStream>,
    sock: &UnixStream,
) {
    let cow = PathBuf::from(&args.cow);
    let id = args
        .origin_id
        .clone()
        .unwrap_or_else(|| args.origin.clone());
    let key = (cow.clone(), id.clone());
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let prepared = {
        let mut st = d.lock();
        if st.stores.contains_key(&cow) {
            Some(prepare(d, &mut st, args, &id).inspect(|_| {
                if args.action == ReceiveAction::Stream {
                    st.receiving.insert(key.clone(), done.clone());
                }
            }))
        } else {
            None
        }
    };
    let resp = match prepared {
        None => Response::not_held(&args.cow),
        Some(Err(f)) => answer(Err(f)),
        Some(Ok(store)) => {
            let r = answer(receive_store(&store, &id, args, reader, sock, &done));
            if args.action == ReceiveAction::Stream {
                let mut st = d.lock();
                st.receiving.remove(&key);
                let unbound = !store.origins().is_ok_and(|o| o.contains(&id));
                if args.bind && r.code != 0 && unbound {
                    if let Some(e) = st.stores.get_mut(&cow) {
                        e.origins.remove(&id);
                    }
                    if let Some(k) = st.known.get_mut(&cow) {
                        k.remove(&id);
                    }
                    let _ = d.save_registry(&st);
                }
            }
            r
        }
    };
    if let Some(e) = &resp.error {
        tracing::warn!("receive refused or failed: {e}");
    }
    let _ = frames::write_response(&mut &*sock, &resp);
}

/// The refusals, then bind or attach the origin.
fn prepare(d: &Arc<Daemon>, st: &mut State, args: &ReceiveArgs, id: &str) -> Res<Store> {
    let cow = PathBuf::from(&args.cow);
    let origin = PathBuf::from(&args.origin);
    if args.format_store.is_some() {
        return fail(format!(
            "COW device {} is in use by this daemon; it cannot be formatted",
            cow.display()
        ));
    }
    if let Some((n, _)) = st.devs.iter().find(|(_, x)| {
        args.action != ReceiveAction::Token
            && x.cow == cow
            && x.origin_id == id
            && x.target.tag() == 0
    }) {
        return fail(format!(
            "the origin {id} is exposed as dm_dev {n}; a receive writes the origin: remove it first"
        ));
    }
    let key = (cow.clone(), id.to_string());
    if st.rolling.contains(&key) {
        return Err(Fail::kind(
            format!("origin {id} is being rolled back"),
            ErrorKind::Busy,
        ));
    }
    if st.receiving.contains_key(&key) {
        return Err(Fail::kind(
            format!("origin {id} is already receiving a stream"),
            ErrorKind::Busy,
        ));
    }
    let entry = st
        .stores
        .get_mut(&cow)
        .ok_or_else(|| Fail::new(1, "store vanished"))?;
    let store = entry.store.clone();
    if args.bind {
        if store.origins()?.iter().any(|o| o == id) {
            return fail(format!(
                "origin {id} is already bound to {}; receive without -b",
                cow.display()
            ));
        }
        store.bind(id, open_file(&origin)?)?;
        entry.origins.insert(id.to_string(), origin.clone());
        st.known
            .entry(cow.clone())
            .or_default()
            .insert(id.to_string(), origin.clone());
        d.save_registry(st)
            .map_err(|e| Fail::new(1, format!("{e:#}")))?;
    } else {
        attached(st, &cow, id, Some(&args.origin))?;
    }
    Ok(store)
}

fn receive_store(
    store: &Store,
    id: &str,
    args: &ReceiveArgs,
    reader: &mut BufReader<&UnixStream>,
    sock: &UnixStream,
    done: &std::sync::atomic::AtomicU64,
) -> Res<Response> {
    match args.action {
        ReceiveAction::Token => match store.receive_token(id)? {
            Some(t) => Ok(Response::ok(format!("{t}\n"))),
            None => Err(Fail::kind(
                format!("no resumable receive into {id}"),
                ErrorKind::NotFound,
            )),
        },
        ReceiveAction::Abort => {
            store.receive_abort(id)?;
            store.flush()?;
            Ok(Response::ok(String::new()))
        }
        ReceiveAction::Stream => {
            let opts = ReceiveOptions {
                format: format_of(&args.format)?,
                force: args.force,
            };
            frames::write_frame(&mut &*sock, frames::GO, &[])
                .map_err(|e| Fail::new(1, format!("the control socket: {e}")))?;
            let mut input = FrameReader::new(reader);
            let mut last = 0u64;
            let mut progress = |now: u64, total: u64| {
                done.store(now, std::sync::atomic::Ordering::Relaxed);
                if now == total || now >= last + (64 << 20) || now < last {
                    last = now;
                    let _ = frames::write_progress(&mut &*sock, now, total);
                }
            };
            let report = match store.receive(id, &opts, &mut input, &mut progress) {
                Ok(r) => r,
                Err(e @ dms_engine::Error::Interrupted { .. }) => return Err(e.into()),
                Err(e) => {
                    // Refused: an origin this request bound is unbound again.
                    if args.bind {
                        let _ = store.unbind(id).and_then(|()| store.flush());
                    }
                    return Err(e.into());
                }
            };
            store.flush()?;
            tracing::info!(
                "received tag {} into {id}: {} bytes",
                report.tag,
                report.bytes
            );
            Ok(Response {
                output: format!("{}\n", report.tag),
                data: Some(serde_json::json!({ "tag": report.tag })),
                ..Default::default()
            })
        }
    }
}

/// `dms dump`, `delta` and `check` on a held store.
pub(crate) fn inspect(d: &Arc<Daemon>, cow: &str, what: Inspect) -> Res<Response> {
    let store = match d.lock().stores.get(&PathBuf::from(cow)) {
        Some(e) => e.store.clone(),
        None => return Ok(Response::not_held(cow)),
    };
    crate::inspect::on_store(&store, cow, what)
        .map_err(|crate::Exit(code, msg)| Fail::new(code, msg))
}
