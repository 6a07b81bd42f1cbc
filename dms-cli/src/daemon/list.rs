//! `dms list`, `dmsetup status` and `dmsetup table`, as text and as data.

use super::fail::Fail;
use super::{Daemon, DmDev, State};
use crate::paths;
use crate::proto::Response;
use dms_engine::ErrorKind;
use dms_engine::StoreStatus;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One row of the table under an origin's header.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Row {
    pub date: String,
    pub birthday: u64,
    pub tag: u32,
    /// Being rolled back into the origin.
    pub rollback: bool,
    pub chunks: u64,
    pub dm_dev: Option<String>,
    pub memo: String,
    pub parent: Option<u32>,
    /// The version's identity (hex), kept across send and receive.
    pub uuid: String,
    /// Size in bytes: a snapshot taken before its origin grew keeps its own.
    #[serde(default)]
    pub size: u64,
}

/// A receive into the origin that has not ended (interrupted, or running).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Receiving {
    /// What `dms send --resume` takes (native streams only).
    pub receive_token: Option<String>,
    /// Bytes of the device that have arrived, of `size` (live while a
    /// receive runs).
    pub done_bytes: u64,
    /// Of those, the ones that are durable: where a resume starts.
    pub durable_bytes: u64,
    pub size: u64,
    /// A daemon thread is reading the stream now.
    pub running: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Rollback {
    pub tag: u32,
    pub done_chunks: u64,
    pub total_chunks: u64,
}

/// One origin's header block and rows.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct OriginList {
    pub origin_device: String,
    pub origin_numbers: Option<String>,
    pub origin_id: String,
    pub cow_device: String,
    pub cow_numbers: Option<String>,
    pub chunk_pages: u32,
    pub used_versions: u64,
    pub max_versions: u64,
    pub used_chunks: u64,
    pub total_chunks: u64,
    pub cow_status: String,
    pub cleaning: bool,
    pub cleaning_versions: u64,
    pub rollbacking: Option<Rollback>,
    pub receiving: Option<Receiving>,
    /// The store's space policy (`dms policy`); absent when the store is
    /// not available.
    #[serde(default)]
    pub policy: Option<super::usage::Policy>,
    pub snapshots: Vec<Row>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct ListData {
    pub origins: Vec<OriginList>,
}

fn date(secs: u64) -> String {
    let t = secs as libc::time_t;
    // SAFETY: localtime_r writes into the tm we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::localtime_r(&t, &mut tm) };
    format!(
        "{:04}/{:02}/{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// `valid`, `low` (over the policy's low-water mark), `full` or `invalid`.
fn cow_status(s: &StoreStatus, low_water: u8) -> &'static str {
    if !s.valid {
        "invalid"
    } else if s.full {
        "full"
    } else if low_water > 0 && super::usage::used_percent(s) >= u64::from(low_water) {
        "low"
    } else {
        "valid"
    }
}

fn pct(a: u64, b: u64) -> u64 {
    a.saturating_mul(100).checked_div(b).unwrap_or(0)
}

fn gather(st: &State, only: Option<&str>) -> Result<ListData, Fail> {
    let mut data = ListData::default();
    let want: Option<(PathBuf, String)> = match only {
        Some(n) => match st.devs.get(n) {
            Some(d) => Some((d.cow.clone(), d.origin_id.clone())),
            None => {
                return Err(Fail::kind(
                    format!("dm_dev {n} does not exist"),
                    ErrorKind::NotFound,
                ))
            }
        },
        None => None,
    };
    let mut cows: Vec<&PathBuf> = st.stores.keys().chain(st.known.keys()).collect();
    cows.sort();
    cows.dedup();
    for cow in cows {
        if want.as_ref().is_some_and(|(c, _)| c != cow) {
            continue;
        }
        let no_paths = BTreeMap::new();
        let known = st.known.get(cow).unwrap_or(&no_paths);
        let status = match st.stores.get(cow) {
            Some(entry) => entry.store.status()?,
            // A store the registry knows with nothing exposed: opened for
            // the moment (it is not in use, or someone else has it).
            None => match open_status(cow) {
                Ok(s) => s,
                Err(why) => {
                    for (id, path) in known {
                        data.origins.push(unavailable(cow, id, path, &why));
                    }
                    continue;
                }
            },
        };
        for o in &status.origins {
            if want.as_ref().is_some_and(|(_, id)| *id != o.id) {
                continue;
            }
            let origin_path = st
                .stores
                .get(cow)
                .and_then(|e| e.origins.get(&o.id))
                .or_else(|| known.get(&o.id))
                .cloned()
                .unwrap_or_else(|| PathBuf::from(&o.id));
            data.origins
                .push(origin_list(st, cow, &origin_path, &status, o));
        }
    }
    Ok(data)
}

/// The status of a store no dm_dev holds open, read without changing it.
fn open_status(cow: &PathBuf) -> Result<StoreStatus, String> {
    let dev = dms_engine::io::FileDev::open(cow, true).map_err(|e| e.to_string())?;
    let store = dms_engine::Store::open(std::sync::Arc::new(dev)).map_err(|e| e.to_string())?;
    store.status().map_err(|e| e.to_string())
}

fn unavailable(cow: &std::path::Path, id: &str, path: &std::path::Path, why: &str) -> OriginList {
    OriginList {
        origin_device: path.display().to_string(),
        origin_numbers: paths::dev_numbers(path),
        origin_id: id.to_string(),
        cow_device: cow.display().to_string(),
        cow_numbers: paths::dev_numbers(cow),
        chunk_pages: 0,
        used_versions: 0,
        max_versions: 0,
        used_chunks: 0,
        total_chunks: 0,
        cow_status: format!("unavailable ({why})"),
        cleaning: false,
        cleaning_versions: 0,
        rollbacking: None,
        receiving: None,
        policy: None,
        snapshots: Vec::new(),
    }
}

/// The policy of a store the daemon holds.
fn policy(st: &State, cow: &PathBuf) -> Option<dms_engine::StorePolicy> {
    st.stores.get(cow).and_then(|e| e.store.policy().ok())
}

/// The low-water mark of a store the daemon holds (0: none, or not held).
fn low_water(st: &State, cow: &PathBuf) -> u8 {
    policy(st, cow).map_or(0, |p| p.low_water)
}

fn origin_list(
    st: &State,
    cow: &PathBuf,
    origin_path: &std::path::Path,
    status: &StoreStatus,
    o: &dms_engine::OriginStatus,
) -> OriginList {
    let rolling = o.rollback.map(|(tag, done, total)| Rollback {
        tag,
        done_chunks: done.min(total),
        total_chunks: total,
    });
    let mut rows = Vec::new();
    for v in o.list.iter().filter(|v| !v.ghost) {
        let names: Vec<&str> = st
            .devs
            .iter()
            .filter(|(_, d)| &d.cow == cow && d.origin_id == o.id && d.target.tag() == v.tag)
            .map(|(n, _)| n.as_str())
            .collect();
        let dm_dev = (!names.is_empty()).then(|| names.join(","));
        rows.push(Row {
            date: date(v.birthday),
            birthday: v.birthday,
            tag: v.tag,
            rollback: rolling.as_ref().is_some_and(|r| r.tag == v.tag),
            chunks: v.exceptions,
            dm_dev,
            memo: if v.tag == 0 {
                "ORIGIN".into()
            } else {
                v.memo.clone()
            },
            parent: v.parent_tag,
            uuid: dms_engine::stream::hex_id(&v.uuid),
            size: v.size,
        });
    }
    rows.sort_by_key(|r| r.tag);
    OriginList {
        origin_device: origin_path.display().to_string(),
        origin_numbers: paths::dev_numbers(origin_path),
        origin_id: o.id.clone(),
        cow_device: cow.display().to_string(),
        cow_numbers: paths::dev_numbers(cow),
        chunk_pages: status.chunk_pages,
        used_versions: o.versions,
        max_versions: o.max_versions,
        used_chunks: status.used_chunks,
        total_chunks: status.total_chunks,
        cow_status: cow_status(status, low_water(st, cow)).into(),
        policy: policy(st, cow).as_ref().map(super::usage::Policy::from),
        cleaning: o.cleaning.is_some() || o.ghosts > 0,
        cleaning_versions: o.ghosts,
        rollbacking: rolling,
        receiving: o.receive.as_ref().map(|r| {
            // A running receive says how far it has written; the store has
            // what is durable (where a resume starts).
            let live = st.receiving.get(&(cow.clone(), o.id.clone()));
            Receiving {
                receive_token: r.token(),
                done_bytes: live.map_or(r.next_offset, |d| {
                    d.load(std::sync::atomic::Ordering::Relaxed)
                        .max(r.next_offset)
                }),
                durable_bytes: r.next_offset,
                size: r.size,
                running: live.is_some(),
            }
        }),
        snapshots: rows,
    }
}

fn with_numbers(path: &str, numbers: &Option<String>) -> String {
    match numbers {
        Some(n) => format!("{path} ({n})"),
        None => path.to_string(),
    }
}

/// The seed's `dms list` layout.
pub fn render(data: &ListData) -> String {
    let mut out = String::new();
    for (i, o) in data.origins.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let short = |p: &str| p.strip_prefix("/dev/").unwrap_or(p).to_string();
        out.push_str(&format!(
            "origin-device : {}\n",
            with_numbers(&short(&o.origin_device), &o.origin_numbers)
        ));
        out.push_str(&format!(
            "cow-device : {}\n",
            with_numbers(&short(&o.cow_device), &o.cow_numbers)
        ));
        out.push_str(&format!("chunk-size : {} page(s)\n", o.chunk_pages));
        out.push_str(&format!(
            "used-versions : {}% ({}/{})\n",
            pct(o.used_versions, o.max_versions),
            o.used_versions,
            o.max_versions
        ));
        out.push_str(&format!(
            "used-chunks : {}% ({}/{})\n",
            pct(o.used_chunks, o.total_chunks),
            o.used_chunks,
            o.total_chunks
        ));
        out.push_str(&format!("cow-status : {}\n", o.cow_status));
        if o.cleaning {
            out.push_str(&format!(
                "cleaning : yes ({} version(s) to remove)\n",
                o.cleaning_versions
            ));
        } else {
            out.push_str("cleaning : no\n");
        }
        match &o.rollbacking {
            Some(r) => out.push_str(&format!(
                "rollbacking : yes (tag {}, {} of {} chunks left)\n",
                r.tag,
                r.total_chunks - r.done_chunks,
                r.total_chunks
            )),
            None => out.push_str("rollbacking : no\n"),
        }
        if let Some(r) = &o.receiving {
            out.push_str(&format!(
                "receiving : {} ({} of {} bytes{})\n",
                if r.running { "yes" } else { "interrupted" },
                r.done_bytes,
                r.size,
                r.receive_token
                    .as_ref()
                    .map(|t| format!("; token {t}"))
                    .unwrap_or_default()
            ));
        }
        out.push_str("YYYY/MM/DD HH:MM:SS Tag R Chunks DM_Dev Memo\n");
        for r in &o.snapshots {
            out.push_str(&format!(
                "{} {} {} {} {} {:?}\n",
                r.date,
                r.tag,
                if r.rollback { "R" } else { "." },
                r.chunks,
                r.dm_dev.as_deref().unwrap_or("-"),
                r.memo
            ));
        }
    }
    out
}

pub fn list(d: &Daemon, only: Option<&str>) -> Result<Response, Fail> {
    let st = d.lock();
    let data = gather(&st, only)?;
    Ok(Response {
        output: render(&data),
        data: Some(serde_json::to_value(&data).map_err(|e| Fail::new(1, e.to_string()))?),
        ..Default::default()
    })
}

fn names<'a>(st: &'a State, only: Option<&'a str>) -> Result<Vec<&'a str>, Fail> {
    match only {
        Some(n) if st.devs.contains_key(n) => Ok(vec![n]),
        Some(n) => Err(Fail::kind(
            format!("dm_dev {n} does not exist"),
            ErrorKind::NotFound,
        )),
        None => Ok(st.devs.keys().map(String::as_str).collect()),
    }
}

/// One line per dm_dev as dmsetup prints them: prefixed with the name when
/// all devices are listed; `line` returns None to skip a device.
fn per_device(
    d: &Daemon,
    only: Option<&str>,
    line: impl Fn(&State, &DmDev) -> Result<Option<String>, Fail>,
) -> Result<Response, Fail> {
    let st = d.lock();
    let mut out = String::new();
    let list = names(&st, only)?;
    for n in &list {
        let Some(l) = line(&st, &st.devs[*n])? else {
            continue;
        };
        if only.is_some() {
            out.push_str(&format!("{l}\n"));
        } else {
            out.push_str(&format!("{n}: {l}\n"));
        }
    }
    if list.is_empty() {
        out.push_str("No devices found\n");
    }
    Ok(Response::ok(out))
}

/// `dmsetup status`: `0 <sectors> dm-snap-mv <used>/<total> <metadata> <versions>/<max> <state> <cleaning> <rollback>`,
/// chunk figures in chunks; the last two are `-` when idle, else the
/// versions left to clean and `<tag>:<left>/<total>` chunks left to merge.
pub fn status(d: &Daemon, only: Option<&str>) -> Result<Response, Fail> {
    per_device(d, only, |st, dev| {
        let Some(s) = st
            .stores
            .get(&dev.cow)
            .map(|e| e.store.status())
            .transpose()?
        else {
            return Ok(None);
        };
        let o = s.origins.iter().find(|o| o.id == dev.origin_id);
        let meta_chunks = s.metadata_pages.div_ceil(u64::from(s.chunk_pages));
        let cleaning = o
            .filter(|o| o.cleaning.is_some() || o.ghosts > 0)
            .map_or("-".to_string(), |o| o.ghosts.to_string());
        let rollback = o
            .and_then(|o| o.rollback)
            .map_or("-".to_string(), |(t, done, total)| {
                // Chunks left, falling to 0 as the rollback goes on.
                format!("{t}:{}/{total}", total.saturating_sub(done))
            });
        Ok(Some(format!(
            "0 {} dm-snap-mv {}/{} {} {}/{} {} {} {}",
            dev.sectors,
            s.used_chunks,
            s.total_chunks,
            meta_chunks,
            o.map_or(0, |o| o.versions),
            o.map_or(s.max_versions, |o| o.max_versions),
            cow_status(&s, low_water(st, &dev.cow)),
            cleaning,
            rollback
        )))
    })
}

pub fn table(d: &Daemon, only: Option<&str>) -> Result<Response, Fail> {
    per_device(d, only, |_, dev| Ok(Some(dev.table().to_string())))
}
