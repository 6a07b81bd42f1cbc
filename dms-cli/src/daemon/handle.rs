//! Request handling. Each refusal is one line naming the thing at fault and
//! happens before anything changes.

use super::devices::{
    busy, create, create_args, freeze, mounts_of_tag, remove, remove_all, users_of, CreateOptions,
    Exposure,
};
use super::fail::{fail, Fail, Res};
use super::{Daemon, State};
use crate::proto::{Request, Response};
use dms_engine::table::{self, Message};
use dms_engine::ErrorKind;
use dms_engine::{Error, Store};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub(crate) fn handle(d: &Arc<Daemon>, req: Request) -> Response {
    let res = match req {
        Request::Ping => Ok(Response::ok(String::new())),
        Request::Create {
            name,
            table,
            loop_dev,
            read_only,
        } => create(
            d,
            &CreateOptions {
                name: &name,
                table: &table,
                exposure: Exposure {
                    loop_dev,
                    read_only,
                },
                fresh: true,
            },
        ),
        Request::CreateArgs {
            name,
            args,
            loop_dev,
            read_only,
        } => create_args(
            d,
            &name,
            &args,
            Exposure {
                loop_dev,
                read_only,
            },
        ),
        Request::Remove { name, force } => {
            let removed = remove(d, &mut d.lock(), &name, force);
            removed
                .and_then(|r| r.finish(d))
                .map(|_| Response::ok(String::new()))
        }
        Request::RemoveAll { force } => remove_all(d, force),
        Request::Message { name, args } => message(d, &name, &args),
        Request::Status { name } => super::list::status(d, name.as_deref()),
        Request::Table { name } => super::list::table(d, name.as_deref()),
        Request::List { name } => super::list::list(d, name.as_deref()),
        Request::Settle => settle(d),
        Request::Du { name } => super::usage::du(d, &name),
        Request::Grow { name } => super::usage::grow(d, &name),
        Request::Policy {
            name,
            low_water,
            hook,
            on_full,
            keep_min,
        } => super::usage::policy(
            d,
            &name,
            super::usage::PolicyChange {
                low_water,
                hook,
                on_full,
                keep_min,
            },
        ),
        Request::Inspect { cow, what } => super::transfer::inspect(d, &cow, what),
        // Answered in frames by serve().
        Request::Send(_) | Request::Receive(_) => Err(Fail::new(2, "a stream request")),
        Request::Shutdown { force } => shutdown(d, force),
    };
    match res {
        Ok(r) => r,
        Err(f) => Response::fail(f.code, f.msg, f.kind),
    }
}

fn message(d: &Arc<Daemon>, name: &str, args: &[String]) -> Res<Response> {
    let msg = table::parse_message(args).map_err(|e| Fail::new(2, e.to_string()))?;
    let mut st = d.lock();
    let Some(dev) = st.devs.get(name) else {
        return Err(Fail::kind(
            format!("dm_dev {name} does not exist"),
            ErrorKind::NotFound,
        ));
    };
    let (cow, origin_id) = (dev.cow.clone(), dev.origin_id.clone());
    let store = match st.stores.get(&cow) {
        Some(e) => e.store.clone(),
        None => return fail(format!("the store of {name} is not open")),
    };
    let exposed = |st: &State, tag: u32| {
        st.devs
            .iter()
            .find(|(_, x)| x.cow == cow && x.origin_id == origin_id && x.target.tag() == tag)
            .map(|(n, _)| n.clone())
    };
    match msg {
        // Freezes and commits run without the state lock: `dms list`, NBD
        // connections and other devices' commands go on meanwhile.
        Message::SnapshotOrigin { memo } => {
            let mounts = mounts_of_tag(d, &st, &cow, &origin_id, 0);
            drop(st);
            let t0 = std::time::Instant::now();
            let frozen = freeze(&mounts)?;
            let t1 = std::time::Instant::now();
            test_pause();
            let tag = store.snapshot_origin(&origin_id, &memo);
            let t2 = std::time::Instant::now();
            drop(frozen);
            tracing::debug!(
                freeze = ?(t1 - t0),
                snapshot = ?(t2 - t1),
                thaw = ?t2.elapsed(),
                "snapshot of {origin_id}"
            );
            let tag = tag?;
            Ok(Response {
                data: Some(serde_json::json!({ "tag": tag })),
                ..Default::default()
            })
        }
        Message::SnapshotOf { tag, memo } => {
            let mounts = if tag != 0 {
                mounts_of_tag(d, &st, &cow, &origin_id, tag)
            } else {
                Vec::new()
            };
            drop(st);
            let frozen = freeze(&mounts)?;
            let new = store.snapshot_of(&origin_id, tag, &memo);
            drop(frozen);
            let new = new?;
            Ok(Response {
                data: Some(serde_json::json!({ "tag": new })),
                ..Default::default()
            })
        }
        Message::DeleteSnapshot { tag } => {
            if tag != 0 {
                if let Some(n) = exposed(&st, tag) {
                    return fail(format!(
                        "snapshot {tag} is exposed as dm_dev {n}; remove it first"
                    ));
                }
            }
            // While the delete commits without the state lock, the tag
            // cannot be exposed.
            let key = (cow.clone(), origin_id.clone(), tag);
            st.deleting.insert(key.clone());
            drop(st);
            let res = store.delete(&origin_id, tag);
            d.lock().deleting.remove(&key);
            res?;
            d.kick();
            Ok(Response::ok(String::new()))
        }
        Message::DeleteOrigin => {
            let snaps = store.tags(&origin_id)?;
            if !snaps.is_empty() {
                return Err(Error::HasSnapshots {
                    origin: origin_id,
                    count: snaps.len() as u64,
                }
                .into());
            }
            let others: Vec<String> = st
                .devs
                .iter()
                .filter(|(n, x)| n.as_str() != name && x.cow == cow && x.origin_id == origin_id)
                .map(|(n, _)| n.clone())
                .collect();
            if !others.is_empty() {
                return fail(format!(
                    "origin {origin_id} is also exposed as {}; remove it first",
                    others.join(", ")
                ));
            }
            let removed = remove(d, &mut st, name, false)?;
            drop(st);
            removed.finish(d)?;
            store.unbind(&origin_id)?;
            let mut st = d.lock();
            if let Some(k) = st.known.get_mut(&cow) {
                k.remove(&origin_id);
                if k.is_empty() {
                    st.known.remove(&cow);
                }
            }
            d.save_registry(&st)
                .map_err(|e| Fail::new(1, format!("{e:#}")))?;
            if let Some(e) = st.stores.get_mut(&cow) {
                e.origins.remove(&origin_id);
            }
            if users_of(&st, &cow).is_none() {
                st.stores.remove(&cow);
            }
            Ok(Response::ok(String::new()))
        }
        Message::Rollback { tag, background } => {
            if let Some(n) = exposed(&st, 0) {
                return fail(format!(
                    "the origin {origin_id} is exposed as dm_dev {n}; remove it first"
                ));
            }
            if st.rolling.contains(&(cow.clone(), origin_id.clone())) {
                return fail(format!("origin {origin_id} is already being rolled back"));
            }
            if st.receiving.contains_key(&(cow.clone(), origin_id.clone())) {
                return Err(Fail::kind(
                    format!("origin {origin_id} is receiving a stream"),
                    ErrorKind::Busy,
                ));
            }
            if tag == 0 {
                return Err(Error::TagZero {
                    origin: origin_id,
                    op: "rollback",
                }
                .into());
            }
            // Validate the tag now, so a background rollback fails here.
            if !store.tags(&origin_id)?.contains(&tag) {
                return Err(Error::UnknownTag {
                    origin: origin_id,
                    tag,
                }
                .into());
            }
            let mounts = mounts_of_tag(d, &st, &cow, &origin_id, tag);
            // Marked as rolling before the lock is let go: a second rollback
            // is refused meanwhile.
            st.rolling.insert((cow.clone(), origin_id.clone()));
            drop(st);
            let started = freeze(&mounts).and_then(|frozen| {
                let r = store.rollback_start(&origin_id, tag);
                drop(frozen);
                r.map_err(Fail::from)
            });
            if let Err(e) = started {
                d.lock().rolling.remove(&(cow.clone(), origin_id.clone()));
                return Err(e);
            }
            let job = {
                let (d, cow, origin_id) = (d.clone(), cow.clone(), origin_id.clone());
                move || {
                    let r = store.finish_rollback(&origin_id);
                    let mut st = d.lock();
                    st.rolling.remove(&(cow.clone(), origin_id.clone()));
                    if let Err(e) = &r {
                        st.stalled.insert((cow, origin_id), e.to_string());
                    }
                    drop(st);
                    d.kick();
                    r
                }
            };
            if background {
                std::thread::spawn(move || {
                    if let Err(e) = job() {
                        tracing::error!("background rollback failed: {e}");
                    }
                });
                Ok(Response::ok(String::new()))
            } else {
                job()?;
                Ok(Response::ok(String::new()))
            }
        }
    }
}

/// A test hook: `DMS_TEST_SNAPSHOT_PAUSE_MS` in the daemon's environment
/// makes a snapshot of an origin take that much longer while its
/// filesystems are frozen, so that tests can see what goes on meanwhile.
fn test_pause() {
    if let Some(ms) = std::env::var("DMS_TEST_SNAPSHOT_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(Duration::from_millis(ms.min(60_000)));
    }
}

fn settle(d: &Daemon) -> Res<Response> {
    loop {
        let pending = {
            let st = d.lock();
            !st.rolling.is_empty()
                || st
                    .stores
                    .values()
                    .any(|e| e.store.cleaning_pending().unwrap_or(false))
        };
        if !pending {
            // A rollback that stopped is not settled: say why.
            let st = d.lock();
            if let Some(((_, origin_id), why)) = st.stalled.iter().next() {
                return Err(Fail::kind(
                    format!(
                        "the rollback into {origin_id} stopped ({why}); it starts again after dms grow or dms policy"
                    ),
                    ErrorKind::Busy,
                ));
            }
            return Ok(Response::ok(String::new()));
        }
        d.kick();
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn shutdown(d: &Daemon, force: bool) -> Res<Response> {
    let st = d.lock();
    if !force {
        for (n, dev) in &st.devs {
            if let Some(why) = busy(d, n, dev, super::devices::LEAVING) {
                return Err(Fail::kind(why, ErrorKind::Busy));
            }
        }
    }
    drop(st);
    d.stop.store(true, Ordering::SeqCst);
    Ok(Response::ok(String::new()))
}

/// Background cleaning: wakes on deletes and every few seconds.
pub(crate) fn cleaner(d: &Daemon) {
    let (m, cv) = &d.work;
    let mut seen = 0u64;
    while !d.stop.load(Ordering::SeqCst) {
        {
            let g = m.lock().unwrap_or_else(|e| e.into_inner());
            let (g, _) = cv
                .wait_timeout_while(g, Duration::from_secs(2), |n| {
                    *n == seen && !d.stop.load(Ordering::SeqCst)
                })
                .unwrap_or_else(|e| e.into_inner());
            seen = *g;
        }
        super::usage::watch_low_water(d);
        let stores: Vec<Store> = d.lock().stores.values().map(|e| e.store.clone()).collect();
        for s in stores {
            if s.cleaning_pending().unwrap_or(false) {
                match s.clean() {
                    Ok(r) => tracing::info!(
                        versions = r.versions_removed,
                        chunks = r.chunks_freed,
                        "cleaned"
                    ),
                    Err(e) => tracing::error!("cleaning failed: {e}"),
                }
            }
        }
    }
}
