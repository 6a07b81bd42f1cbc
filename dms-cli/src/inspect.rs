//! `dms dump`, `dms delta` and `dms check`: through the daemon when it
//! holds the store (on its committed state, while I/O goes on), else
//! offline.

use crate::client;
use crate::paths;
use crate::proto::{Inspect, Request, Response};
use crate::Exit;
use dms_engine::Store;

/// Run an inspection of `cow_dev`: the daemon's answer when it holds the
/// store, else this process opens it.
pub fn run(cow_dev: &str, what: Inspect) -> Result<Response, Exit> {
    let path = paths::device(cow_dev).map_err(|e| Exit(1, e))?;
    let req = Request::Inspect {
        cow: path.display().to_string(),
        what: what.clone(),
    };
    if let Ok(r) = client::call(&req, false) {
        if !r.is_not_held() {
            return Ok(r);
        }
    }
    let store = open(cow_dev)?;
    on_store(&store, &path.display().to_string(), what)
}

/// An inspection of an open store.
pub fn on_store(store: &Store, name: &str, what: Inspect) -> Result<Response, Exit> {
    match what {
        Inspect::Dump {
            origin_id,
            tag,
            json,
        } => dump(store, origin_id, tag, json),
        Inspect::Delta {
            origin_id,
            tag_a,
            tag_b,
            json,
        } => delta(store, tag_a, tag_b, origin_id, json),
        Inspect::Check { json } => check(store, name, json),
    }
}

/// Open a store that no daemon holds.
pub fn open(cow_dev: &str) -> Result<Store, Exit> {
    let path = paths::device(cow_dev).map_err(|e| Exit(1, e))?;
    let dev = dms_engine::io::FileDev::open(&path, true).map_err(|e| Exit(1, e.to_string()))?;
    Store::open(std::sync::Arc::new(dev)).map_err(|e| Exit(1, e.to_string()))
}

pub fn the_origin(store: &Store, origin_id: Option<String>) -> Result<String, Exit> {
    let origins = store.origins().map_err(|e| Exit(1, e.to_string()))?;
    match origin_id {
        Some(id) => Ok(id),
        None if origins.len() == 1 => Ok(origins[0].clone()),
        None => Err(Exit(
            2,
            format!(
                "the store holds {} origins; name one with -i",
                origins.len()
            ),
        )),
    }
}

fn dump(
    store: &Store,
    origin_id: Option<String>,
    tag: Option<u32>,
    json: bool,
) -> Result<Response, Exit> {
    let st = store.status().map_err(|e| Exit(1, e.to_string()))?;
    let fail = |e: dms_engine::Error| Exit(1, e.to_string());
    if let Some(id) = &origin_id {
        if !st.origins.iter().any(|o| &o.id == id) {
            return Err(Exit(
                1,
                dms_engine::Error::UnknownOrigin(id.clone()).to_string(),
            ));
        }
    }
    let mut out = String::new();
    let mut doc = Vec::new();
    for o in &st.origins {
        if origin_id.as_ref().is_some_and(|id| *id != o.id) {
            continue;
        }
        let excs = store.exceptions_of(&o.id, tag).map_err(fail)?;
        let zeros = store.zero_map(&o.id).map_err(fail)?;
        if json {
            doc.push(serde_json::json!({
                "origin": o.id,
                "size": o.size,
                "versions": o.list.iter().map(|v| serde_json::json!({
                    "version": v.version, "tag": v.tag, "ghost": v.ghost, "parent": v.parent,
                    "birthday": v.birthday, "exceptions": v.exceptions, "memo": v.memo,
                })).collect::<Vec<_>>(),
                "exceptions": excs.iter().map(|e| serde_json::json!({
                                        "chunk": e.chunk, "version": e.version,
                    "tag": (e.tag != 0).then_some(e.tag), "cow_chunk": e.cow_chunk,
                })).collect::<Vec<_>>(),
                "zeroed": zeros.iter().map(|&(first, count)| serde_json::json!({
                    "chunk": first, "count": count,
                })).collect::<Vec<_>>(),
            }));
            continue;
        }
        out.push_str(&format!(
            "origin {} ({} bytes, {} versions)\n",
            o.id, o.size, o.versions
        ));
        for v in &o.list {
            let parent = v.parent.map_or("-".to_string(), |p| p.to_string());
            let tag = if v.ghost {
                "ghost".to_string()
            } else {
                format!("tag {}", v.tag)
            };
            out.push_str(&format!(
                "  version {} ({tag}) parent {parent} exceptions {} memo {:?}\n",
                v.version, v.exceptions, v.memo
            ));
        }
        for e in &excs {
            let to = e
                .cow_chunk
                .map_or("merged".to_string(), |c| format!("cow {c}"));
            let who = if e.tag == 0 {
                "ghost".to_string()
            } else {
                format!("tag {}", e.tag)
            };
            out.push_str(&format!(
                "  chunk {} version {} ({who}) -> {to}\n",
                e.chunk, e.version
            ));
        }
        for &(first, count) in &zeros {
            out.push_str(&format!(
                "  chunks {first}..{} zeroed (discarded)\n",
                first + count
            ));
        }
    }
    if json {
        out = serde_json::to_string_pretty(&serde_json::json!({
            "chunk_pages": st.chunk_pages,
            "total_chunks": st.total_chunks,
            "used_chunks": st.used_chunks,
            "generation": st.generation,
            "origins": doc,
        }))
        .unwrap_or_default()
            + "\n";
    }
    Ok(Response::ok(out))
}

fn delta(
    store: &Store,
    a: u32,
    b: u32,
    origin_id: Option<String>,
    json: bool,
) -> Result<Response, Exit> {
    let origin = the_origin(store, origin_id)?;
    let chunks = store
        .delta(&origin, a, b)
        .map_err(|e| Exit(1, e.to_string()))?;
    let cb = store.chunk_bytes();
    // Runs of neighbouring chunks.
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for c in chunks {
        match runs.last_mut() {
            Some((start, len)) if *start + *len == c => *len += 1,
            _ => runs.push((c, 1)),
        }
    }
    let out = if json {
        serde_json::to_string_pretty(&serde_json::json!({
            "origin": origin, "from": a, "to": b, "chunk_bytes": cb,
            "runs": runs.iter().map(|(s, n)| serde_json::json!({"chunk": s, "chunks": n, "offset": s * cb, "bytes": n * cb})).collect::<Vec<_>>(),
        }))
        .unwrap_or_default()
            + "\n"
    } else {
        let total: u64 = runs.iter().map(|r| r.1).sum();
        let mut s = format!(
            "origin {origin}: tags {a} -> {b}: {total} chunk(s) may differ ({} bytes); the others are the same\n",
            total * cb
        );
        for (start, n) in &runs {
            s.push_str(&format!(
                "chunks {start}+{n} (bytes {}+{})\n",
                start * cb,
                n * cb
            ));
        }
        s
    };
    Ok(Response::ok(out))
}

/// Commit what is pending, then walk every metadata block, the version
/// trees and the allocation.
fn check(store: &Store, name: &str, json: bool) -> Result<Response, Exit> {
    let r = store.check().map_err(|e| Exit(1, e.to_string()))?;
    let out = if json {
        serde_json::to_string_pretty(&serde_json::json!({
            "clean": r.is_clean(),
            "problems": r.problems,
            "exceptions": r.exceptions,
            "data_chunks": r.data_chunks,
            "metadata_pages": r.metadata_pages,
                        "exception_tree_depth": r.exception_tree_depth,
            "metadata": r.metadata,
        }))
        .unwrap_or_default()
            + "\n"
    } else {
        let mut s = format!(
            "{}: {} exceptions, {} data chunks, {} metadata pages, exception tree depth {}\n",
            name, r.exceptions, r.data_chunks, r.metadata_pages, r.exception_tree_depth
        );
        for p in &r.problems {
            s.push_str(&format!("problem: {p}\n"));
        }
        s.push_str(if r.is_clean() {
            "clean\n"
        } else {
            "NOT CLEAN\n"
        });
        s
    };
    if r.is_clean() {
        Ok(Response::ok(out))
    } else {
        let mut resp = Response::fail(
            1,
            format!("{}: {} problem(s) found", name, r.problems.len()),
            dms_engine::ErrorKind::Corrupt,
        );
        resp.output = out;
        Ok(resp)
    }
}
