//! `dms du`: what each snapshot of a dm_dev's origin owns, shares, and
//! would give back if deleted (`Store::usage`).

use super::fail::{Fail, Res};
use super::{Daemon, DmDev, State};
use crate::proto::Response;
use dms_engine::{ErrorKind, Store};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A dm_dev and its open store.
fn dev_and_store<'a>(st: &'a State, name: &str) -> Res<(&'a DmDev, Store)> {
    let Some(dev) = st.devs.get(name) else {
        return Err(Fail::kind(
            format!("dm_dev {name} does not exist"),
            ErrorKind::NotFound,
        ));
    };
    let store = st
        .stores
        .get(&dev.cow)
        .map(|e| e.store.clone())
        .ok_or_else(|| Fail::new(1, format!("the store of {name} is not open")))?;
    Ok((dev, store))
}

/// `dms grow`: the store of `name` takes the COW device's new space.
pub(crate) fn grow(d: &Arc<Daemon>, name: &str) -> Res<Response> {
    let (store, cow, origin_id) = {
        let st = d.lock();
        let (dev, store) = dev_and_store(&st, name)?;
        (store, dev.cow.clone(), dev.origin_id.clone())
    };
    // The origin's device first, so that a shrunk one refuses the whole
    // command with nothing changed.
    let (recorded, device) = store.origin_device_size(&origin_id)?;
    let (old, new) = store.grow()?;
    let cb = store.chunk_bytes();
    let mut out = if new > old {
        tracing::info!("grew {}: {old} -> {new} bytes", cow.display());
        // Under the low-water mark again, maybe: looked at from now on, so
        // that crossing it again runs the hook again at once.
        if let Some(e) = d.lock().stores.get_mut(&cow) {
            e.low = false;
        }
        d.kick();
        format!(
            "{}: {old} -> {new} bytes ({} -> {} chunks)\n",
            cow.display(),
            old / cb,
            new / cb
        )
    } else {
        format!("{}: {old} bytes, as before\n", cow.display())
    };
    // The origin takes a larger device's size; its snapshots keep theirs.
    let (o_old, o_new) = if device > recorded {
        match store.grow_origin(&origin_id) {
            Ok(sizes) => sizes,
            // A rollback or receive into it: the COW device grew all the
            // same; the origin grows once that has ended.
            Err(e) if e.kind() == ErrorKind::Busy => {
                out.push_str(&format!(
                    "origin {origin_id}: not grown now ({e}); run dms grow again then\n"
                ));
                (recorded, recorded)
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        (recorded, recorded)
    };
    if o_new > o_old {
        out.push_str(&format!(
            "origin {origin_id}: {o_old} -> {o_new} bytes (its snapshots keep their sizes)\n"
        ));
        tracing::info!("grew origin {origin_id}: {o_old} -> {o_new} bytes");
        grown_origin(d, &cow, &origin_id, o_new)?;
    }
    // Room may have come for a rollback that stopped on a full device.
    if new > old {
        super::rolling::resume_stalled(d, &cow);
    }
    // Other origins of the store whose devices grew: each grows through
    // one of its own dm_devs.
    for other in store.origins()?.iter().filter(|o| **o != origin_id) {
        if let Ok((r, now)) = store.origin_device_size(other) {
            if now > r {
                out.push_str(&format!(
                    "origin {other}: its device has {now} bytes, the origin {r}: grow it through one of its dm_devs\n"
                ));
            }
        }
    }
    Ok(Response {
        output: out,
        data: Some(serde_json::json!({
            "old_bytes": old,
            "new_bytes": new,
            "origin_old_bytes": o_old,
            "origin_new_bytes": o_new,
        })),
        ..Default::default()
    })
}

/// After origin `origin_id` grew to `bytes`: its dm_devs' tables say the
/// new length (and the registry keeps it for a restart), and every loop
/// device over their mapper files, ours or a user's, takes the new
/// capacity (`losetup --set-capacity`, LOOP_SET_CAPACITY). The mapper
/// files report the new size at once; NBD clients see it when they
/// connect again.
fn grown_origin(d: &Arc<Daemon>, cow: &std::path::Path, origin_id: &str, bytes: u64) -> Res<()> {
    let mut st = d.lock();
    let mut files = Vec::new();
    for (name, x) in st.devs.iter_mut() {
        if x.cow == cow && x.origin_id == origin_id && x.target.tag() == 0 {
            x.sectors = bytes / 512;
            files.push(crate::paths::mapper_dir(&d.run).join(name));
        }
    }
    d.save_registry(&st)
        .map_err(|e| Fail::new(1, format!("saving the registry: {e}")))?;
    drop(st);
    for f in files {
        for l in super::loopdev::backed_by(&f) {
            if let Err(e) = super::loopdev::set_capacity(&l) {
                tracing::warn!("{l}: the new capacity was not taken: {e}");
            }
        }
    }
    Ok(())
}

pub(crate) fn du(d: &Arc<Daemon>, name: &str) -> Res<Response> {
    let (store, cow, origin_id, exposed) = {
        let st = d.lock();
        let (dev, store) = dev_and_store(&st, name)?;
        let exposed: Vec<(u32, String)> = st
            .devs
            .iter()
            .filter(|(_, x)| x.cow == dev.cow && x.origin_id == dev.origin_id)
            .map(|(n, x)| (x.target.tag(), n.clone()))
            .collect();
        (store, dev.cow.clone(), dev.origin_id.clone(), exposed)
    };
    // Walks every exception of the origin: without the state lock.
    let u = store.usage(&origin_id)?;
    let status = store.status()?;
    let memo_of = |tag: u32| {
        status
            .origins
            .iter()
            .find(|o| o.id == origin_id)
            .and_then(|o| o.list.iter().find(|v| !v.ghost && v.tag == tag))
            .map(|v| (v.memo.clone(), v.birthday))
            .unwrap_or_default()
    };
    let devs_of = |tag: u32| -> Option<String> {
        let v: Vec<&str> = exposed
            .iter()
            .filter(|(t, _)| *t == tag)
            .map(|(_, n)| n.as_str())
            .collect();
        (!v.is_empty()).then(|| v.join(","))
    };
    let cb = store.chunk_bytes();
    let mut out = format!(
        "origin : {origin_id}\ncow-device : {}\nchunk-size : {} bytes\nused-chunks : {} of {} (the store: data, metadata, superblocks)\ncopies : {} chunk(s) hold this origin's copies; the cleaner will free {} more\n",
        cow.display(),
        cb,
        status.used_chunks,
        status.total_chunks,
        u.chunks,
        u.pending_free
    );
    out.push_str("Tag Owned Shared Frees DM_Dev Memo\n");
    let mut rows = Vec::new();
    for t in &u.tags {
        let (memo, birthday) = memo_of(t.tag);
        let dm = devs_of(t.tag);
        out.push_str(&format!(
            "{} {} {} {} {} {:?}\n",
            t.tag,
            t.owned,
            t.shared,
            t.freed_if_deleted,
            dm.as_deref().unwrap_or("-"),
            memo
        ));
        rows.push(serde_json::json!({
            "tag": t.tag, "owned": t.owned, "shared": t.shared,
            "freed_if_deleted": t.freed_if_deleted, "dm_dev": dm,
            "memo": memo, "birthday": birthday,
        }));
    }
    Ok(Response {
        output: out,
        data: Some(serde_json::json!({
            "origin_id": origin_id,
            "cow_device": cow.display().to_string(),
            "chunk_bytes": cb,
            "used_chunks": status.used_chunks,
            "total_chunks": status.total_chunks,
            "chunks": u.chunks,
            "pending_free": u.pending_free,
            "tags": rows,
        })),
        ..Default::default()
    })
}

/// A store's space policy as `dms policy` and `dms list --json` show it.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Policy {
    /// Percent in use at which the store is low (0: none).
    pub low_water: u8,
    /// Run once per crossing ("" for none).
    pub hook: String,
    /// `fail` or `delete-oldest`.
    pub on_full: String,
    /// Under `delete-oldest`, the fewest snapshots an origin keeps.
    pub keep_min: u32,
}

impl From<&dms_engine::StorePolicy> for Policy {
    fn from(p: &dms_engine::StorePolicy) -> Policy {
        Policy {
            low_water: p.low_water,
            hook: p.hook.clone(),
            on_full: p.on_full.name().into(),
            keep_min: p.keep_min,
        }
    }
}

/// What `dms policy` asks to change (None: keep).
pub(crate) struct PolicyChange {
    pub low_water: Option<u8>,
    pub hook: Option<String>,
    pub on_full: Option<String>,
    pub keep_min: Option<u32>,
}

/// `dms policy`: show the store's policy, or set what is given.
pub(crate) fn policy(d: &Arc<Daemon>, name: &str, change: PolicyChange) -> Res<Response> {
    let (cow, store) = {
        let st = d.lock();
        let (dev, store) = dev_and_store(&st, name)?;
        (dev.cow.clone(), store)
    };
    let mut p = store.policy()?;
    let on_full = match &change.on_full {
        Some(s) => Some(
            s.parse::<dms_engine::OnFull>()
                .map_err(|e| Fail::new(2, format!("--on-full {e}")))?,
        ),
        None => None,
    };
    let changes = change.low_water.is_some()
        || change.hook.is_some()
        || on_full.is_some()
        || change.keep_min.is_some();
    if changes {
        if let Some(l) = change.low_water {
            p.low_water = l;
        }
        if let Some(h) = change.hook {
            p.hook = h;
        }
        if let Some(r) = on_full {
            p.on_full = r;
        }
        if let Some(k) = change.keep_min {
            p.keep_min = k;
        }
        store.set_policy(p.clone())?;
        // Looked at again from now on: a mark crossed already counts.
        if let Some(e) = d.lock().stores.get_mut(&cow) {
            e.low = false;
        }
        // The new rule may let a rollback that stopped go on.
        super::rolling::resume_stalled(d, &cow);
        d.kick();
    }
    let out = format!(
        "low-water : {}\nhook : {}\non-full : {}\nkeep-min : {}\n",
        if p.low_water == 0 {
            "none".to_string()
        } else {
            format!("{}%", p.low_water)
        },
        if p.hook.is_empty() { "none" } else { &p.hook },
        p.on_full.name(),
        p.keep_min
    );
    Ok(Response {
        output: out,
        data: Some(serde_json::to_value(Policy::from(&p)).unwrap_or_default()),
        ..Default::default()
    })
}

/// Percent of a store's COW device in use.
pub(crate) fn used_percent(s: &dms_engine::StoreStatus) -> u64 {
    s.used_chunks.saturating_mul(100) / s.total_chunks.max(1)
}

/// Every store whose use crossed its low-water mark since the last look:
/// a warning in the log and, once per crossing, its hook (with the figures
/// in its environment).
pub(crate) fn watch_low_water(d: &Daemon) {
    let stores: Vec<(std::path::PathBuf, Store)> = d
        .lock()
        .stores
        .iter()
        .map(|(c, e)| (c.clone(), e.store.clone()))
        .collect();
    for (cow, store) in stores {
        let (Ok(p), Ok(status)) = (store.policy(), store.status()) else {
            continue;
        };
        let pct = used_percent(&status);
        let low = p.low_water > 0 && pct >= u64::from(p.low_water);
        let (crossed, devs) = {
            let mut st = d.lock();
            let devs: Vec<String> = st
                .devs
                .iter()
                .filter(|(_, x)| x.cow == cow)
                .map(|(n, _)| n.clone())
                .collect();
            let Some(e) = st.stores.get_mut(&cow) else {
                continue;
            };
            let crossed = low && !e.low;
            e.low = low;
            (crossed, devs)
        };
        if !crossed {
            continue;
        }
        tracing::warn!(
            "{}: {pct}% of the COW device in use, over the low-water mark of {}%",
            cow.display(),
            p.low_water
        );
        if p.hook.is_empty() {
            continue;
        }
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(&p.hook)
            .env("DMS_COW_DEVICE", &cow)
            .env("DMS_DM_DEVS", devs.join(" "))
            .env("DMS_DM_DEV", devs.first().cloned().unwrap_or_default())
            .env("DMS_USED_CHUNKS", status.used_chunks.to_string())
            .env("DMS_TOTAL_CHUNKS", status.total_chunks.to_string())
            .env("DMS_USED_PERCENT", pct.to_string())
            .env("DMS_LOW_WATER", p.low_water.to_string())
            .stdin(std::process::Stdio::null())
            .spawn();
        match child {
            Ok(mut c) => {
                std::thread::spawn(move || match c.wait() {
                    Ok(s) if !s.success() => tracing::warn!("the low-water hook ended with {s}"),
                    Err(e) => tracing::warn!("the low-water hook: {e}"),
                    _ => {}
                });
            }
            Err(e) => tracing::error!("running the low-water hook: {e}"),
        }
    }
}
