//! The life of a dm_dev: create (open or format the store, bind or attach
//! the origin, expose the file, attach a loop device), remove, and the
//! registry that brings them back after a restart.

use super::fail::{fail, usage, Fail, Res};
use super::{loopdev, registry, Daemon, DmDev, State, StoreEntry};
use crate::paths;
use crate::proto::Response;
use dms_engine::io::{Dev, FileDev};
use dms_engine::table::{self, Format, Target};
use dms_engine::ErrorKind;
use dms_engine::{FormatOptions, Store};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How a dm_dev is exposed besides its mapper file.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Exposure {
    /// Attach a loop device to the file.
    pub loop_dev: bool,
    /// Refuse writes.
    pub read_only: bool,
}

/// A dm_dev to create.
pub(crate) struct CreateOptions<'a> {
    pub name: &'a str,
    /// The table line `0 <sectors> dm-snap-mv <target args>`.
    pub table: &'a str,
    pub exposure: Exposure,
    /// False when the registry brings it back after a restart (the
    /// registry is not rewritten for each).
    pub fresh: bool,
}

/// Where a dm_dev's data lives: its store, its origin device and id.
pub(crate) struct Placement<'a> {
    pub cow: &'a PathBuf,
    pub origin: &'a PathBuf,
    pub origin_id: &'a str,
}

/// `create` from target arguments: the length is the origin's size.
pub(crate) fn create_args(
    d: &Arc<Daemon>,
    name: &str,
    args: &[String],
    exposure: Exposure,
) -> Res<Response> {
    let target = table::parse_target(args).map_err(|e| Fail::new(2, e.to_string()))?;
    let origin =
        paths::device(target.origin_dev()).map_err(|e| Fail::kind(e, ErrorKind::NotFound))?;
    let cow = paths::device(target.cow_dev()).map_err(|e| Fail::kind(e, ErrorKind::NotFound))?;
    let sectors = paths::device_size(&origin).or_else(fail)? / 512;
    let t = table::with_devices(
        &target,
        &origin.display().to_string(),
        &cow.display().to_string(),
    );
    let line = table::Table { sectors, target: t }.to_string();
    create(
        d,
        &CreateOptions {
            name,
            table: &line,
            exposure,
            fresh: true,
        },
    )
}

pub(crate) fn open_file(path: &PathBuf) -> Res<Dev> {
    Ok(Arc::new(FileDev::open(path, true)?))
}

/// Create a dm_dev.
pub(crate) fn create(d: &Arc<Daemon>, opts: &CreateOptions<'_>) -> Res<Response> {
    let name = opts.name;
    paths::check_name(name).or_else(usage)?;
    let table::Table { sectors, target } =
        table::Table::parse(opts.table).map_err(|e| Fail::new(2, e.to_string()))?;
    let mut st = d.lock();
    if st.devs.contains_key(name) {
        return Err(Fail::kind(
            format!("dm_dev {name} already exists"),
            ErrorKind::Exists,
        ));
    }
    let origin_path =
        paths::device(target.origin_dev()).map_err(|e| Fail::kind(e, ErrorKind::NotFound))?;
    let cow_path =
        paths::device(target.cow_dev()).map_err(|e| Fail::kind(e, ErrorKind::NotFound))?;
    let mapper = paths::mapper_dir(&d.run);
    for p in [&origin_path, &cow_path] {
        if p.starts_with(&mapper) {
            return fail(format!(
                "{} is a dm_dev of this daemon; a dm_dev cannot stand on another",
                p.display()
            ));
        }
    }
    if origin_path == cow_path {
        return fail(format!(
            "{} cannot be both the origin and the COW device",
            origin_path.display()
        ));
    }
    let origin_id = match &target {
        Target::Origin {
            origin_id: Some(id),
            ..
        }
        | Target::Snapshot {
            origin_id: Some(id),
            ..
        } => id.clone(),
        _ => origin_path.display().to_string(),
    };
    if let Target::Snapshot { tag, .. } = &target {
        if st
            .deleting
            .contains(&(cow_path.clone(), origin_id.clone(), *tag))
        {
            return Err(Fail::kind(
                format!("snapshot {tag} of {origin_id} is being deleted"),
                ErrorKind::NotFound,
            ));
        }
    }
    let origin_bytes = paths::device_size(&origin_path).or_else(fail)?;
    // A snapshot taken before its origin grew is smaller, and so is an
    // origin whose device grew before `dms grow`: the length is checked
    // against the version's own once it is open.
    let binds = matches!(target, Target::Origin { bind: true, .. });
    if sectors > origin_bytes / 512 || (binds && sectors != origin_bytes / 512) {
        return fail(format!(
            "the table gives {sectors} sectors but {} has {} sectors",
            origin_path.display(),
            origin_bytes / 512
        ));
    }
    if let Target::Origin {
        format: Some(_), ..
    } = &target
    {
        if let Some(users) = users_of(&st, &cow_path) {
            return fail(format!(
                "COW device {} is in use by {users}; it cannot be formatted",
                cow_path.display()
            ));
        }
    }
    for (other, dev) in &st.devs {
        if dev.origin_path == origin_path && dev.cow != cow_path {
            return fail(format!(
                "{} is the origin of {other} on another COW device",
                origin_path.display()
            ));
        }
    }
    // Open (or format) the store.
    let new_store = !st.stores.contains_key(&cow_path);
    if new_store {
        let cow = open_file(&cow_path)?;
        let store = match &target {
            Target::Origin {
                format: Some(f),
                chunk_pages,
                ..
            } => Store::format(
                cow,
                &FormatOptions {
                    chunk_pages: chunk_pages.unwrap_or(1),
                    force: *f == Format::Force,
                },
            )?,
            _ => Store::open(cow)?,
        };
        if matches!(
            target,
            Target::Origin {
                format: Some(_),
                ..
            }
        ) {
            // A new store: what the registry knew of the old one is gone.
            st.known.remove(&cow_path);
        }
        if let Some(limit) = d.opts.held_limit {
            store.set_held_limit(limit);
        }
        st.stores.insert(
            cow_path.clone(),
            StoreEntry {
                store,
                origins: Default::default(),
                low: false,
            },
        );
    }
    let table = table::Table { sectors, target };
    let at = Placement {
        cow: &cow_path,
        origin: &origin_path,
        origin_id: &origin_id,
    };
    let res = attach_and_expose(d, &mut st, opts, &table, &at);
    if res.is_err() && new_store {
        st.stores.remove(&cow_path);
    }
    let dev_file = res?;
    super::rolling::resume_rollback(d, &mut st, &cow_path, &origin_id);
    if opts.fresh {
        d.save_registry(&st)
            .map_err(|e| Fail::new(1, format!("{e:#}")))?;
    }
    let loop_path = st.devs.get(name).and_then(|x| x.loop_dev.clone());
    let mut out = String::new();
    if let Some(l) = &loop_path {
        out = format!("{l}\n");
    }
    Ok(Response {
        output: out,
        data: Some(serde_json::json!({ "name": name, "path": dev_file, "loop": loop_path })),
        ..Default::default()
    })
}

/// Bind or attach the origin, open the version, expose its file (and a
/// loop device); record the dm_dev.
pub(crate) fn attach_and_expose(
    d: &Arc<Daemon>,
    st: &mut State,
    opts: &CreateOptions<'_>,
    table: &table::Table,
    at: &Placement<'_>,
) -> Res<String> {
    let (name, target, sectors) = (opts.name, &table.target, table.sectors);
    let (cow_path, origin_path, origin_id) = (at.cow, at.origin, at.origin_id);
    let Exposure {
        loop_dev,
        read_only,
    } = opts.exposure;
    let entry = st
        .stores
        .get_mut(cow_path)
        .ok_or_else(|| Fail::new(1, "store vanished"))?;
    let store = entry.store.clone();
    let bind = matches!(target, Target::Origin { bind: true, .. });
    if bind {
        if store.origins()?.iter().any(|o| o == origin_id) {
            return fail(format!(
                "origin {origin_id} is already bound to {}; create without -b",
                cow_path.display()
            ));
        }
        store.bind(origin_id, open_file(origin_path)?)?;
        entry
            .origins
            .insert(origin_id.to_string(), origin_path.clone());
        st.known
            .entry(cow_path.clone())
            .or_default()
            .insert(origin_id.to_string(), origin_path.clone());
    } else {
        match entry.origins.get(origin_id) {
            Some(p) if p != origin_path => {
                return fail(format!(
                    "origin {origin_id} is attached from {}, not {}",
                    p.display(),
                    origin_path.display()
                ))
            }
            Some(_) => {}
            None => {
                if !store.origins()?.iter().any(|o| o == origin_id) {
                    return fail(format!(
                        "origin {origin_id} is not bound to {}; create the origin with -b first",
                        cow_path.display()
                    ));
                }
                store.attach(origin_id, open_file(origin_path)?)?;
                entry
                    .origins
                    .insert(origin_id.to_string(), origin_path.clone());
                st.known
                    .entry(cow_path.clone())
                    .or_default()
                    .insert(origin_id.to_string(), origin_path.clone());
            }
        }
    }
    if target.tag() == 0 {
        super::receiving::origin_free_of_receives(st, &store, cow_path, origin_id)?;
    }
    let volume = Arc::new(store.volume(origin_id, target.tag())?);
    let own = volume.size() / 512;
    let device = paths::device_size(origin_path).or_else(fail)? / 512;
    if sectors != own && sectors != device {
        return fail(format!(
            "the table gives {sectors} sectors but {} of {origin_id} has {own}",
            match target.tag() {
                0 => "the origin".to_string(),
                t => format!("snapshot {t}"),
            }
        ));
    }
    // The table says the version's own length.
    let sectors = own;
    let path = d
        .mapper
        .add(name, volume.clone(), read_only)
        .map_err(|e| Fail::new(1, format!("exposing {name}: {e}")))?;
    let loop_path = if loop_dev {
        match loopdev::attach(&path, read_only) {
            Ok(l) => Some(l),
            Err(e) => {
                let _ = d.mapper.remove(name);
                return fail(format!(
                    "attaching a loop device to {}: {e}",
                    path.display()
                ));
            }
        }
    } else {
        None
    };
    st.devs.insert(
        name.to_string(),
        DmDev {
            target: super::registry::strip_once(target),
            cow: cow_path.clone(),
            origin_path: origin_path.clone(),
            origin_id: origin_id.to_string(),
            sectors,
            loop_dev: loop_path,
            volume,
            read_only,
            nbd_clients: Default::default(),
            alive: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        },
    );
    Ok(path.display().to_string())
}

pub(crate) fn users_of(st: &State, cow: &PathBuf) -> Option<String> {
    let names: Vec<&str> = st
        .devs
        .iter()
        .filter(|(_, d)| &d.cow == cow)
        .map(|(n, _)| n.as_str())
        .collect();
    (!names.is_empty()).then(|| names.join(", "))
}

/// How long a command that takes a dm_dev away waits for NBD clients and
/// file handles that are leaving: a client that has just closed its
/// connection counts until the requests it had in flight are done, a file
/// just closed until the kernel's release of it arrives.
pub(crate) const LEAVING: Duration = Duration::from_secs(2);

/// Why a dm_dev cannot be removed now, if it cannot; NBD clients still
/// connected and file handles still open after waiting up to `grace` for
/// them to go count as busy.
pub(crate) fn busy(d: &Daemon, name: &str, dev: &DmDev, grace: Duration) -> Option<String> {
    let file = d.mapper.path(name);
    for l in loopdev::backed_by(&file) {
        if let Some(m) = loopdev::mounted_at(&l) {
            return Some(format!("dm_dev {name} is busy: {l} is mounted on {m}"));
        }
    }
    let until = std::time::Instant::now() + grace;
    let mut clients = dev.nbd_clients.load(Ordering::SeqCst);
    while clients > 0 && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
        clients = dev.nbd_clients.load(Ordering::SeqCst);
    }
    if clients > 0 {
        return Some(format!(
            "dm_dev {name} is busy: {clients} NBD client(s) connected"
        ));
    }
    // A file closed just now counts until the kernel's release of it
    // arrives, which it sends after close(2) has returned.
    let ours = usize::from(st_loop(dev));
    let mut held = d.mapper.open_count(name);
    while held > ours && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
        held = d.mapper.open_count(name);
    }
    if held > ours {
        return Some(format!(
            "dm_dev {name} is busy: {} open file handle(s)",
            held - ours
        ));
    }
    None
}

pub(crate) fn st_loop(dev: &DmDev) -> bool {
    dev.loop_dev.is_some()
}

/// Mount points of the filesystems on the dm_devs that show `tag` of an
/// origin: what a snapshot or rollback of it freezes.
pub(crate) fn mounts_of_tag(
    d: &Daemon,
    st: &State,
    cow: &PathBuf,
    origin_id: &str,
    tag: u32,
) -> Vec<String> {
    let mut mounts = Vec::new();
    for (n, x) in &st.devs {
        if &x.cow == cow && x.origin_id == origin_id && x.target.tag() == tag {
            mounts.extend(loopdev::mounts_of(&d.mapper.path(n)));
        }
    }
    mounts
}

/// Freeze filesystems, so that a snapshot or rollback sees what they have
/// written; they thaw when the result is dropped. Called without the state
/// lock: a freeze writes the filesystem's cache out through the daemon.
pub(crate) fn freeze(mounts: &[String]) -> Res<Vec<loopdev::Frozen>> {
    mounts
        .iter()
        .map(|m| loopdev::freeze(m).or_else(fail))
        .collect()
}

/// What a removal leaves to do once the state lock is let go: write the
/// dm_dev's data out, and close its store if nothing else uses it.
#[must_use = "finish the removal with Removed::finish, without the state lock"]
pub(crate) struct Removed {
    volume: Arc<dms_engine::Volume>,
    cow: PathBuf,
}

impl Removed {
    /// Flush the removed dm_dev's store, then close it if nothing uses it,
    /// nothing runs on it and the cleaner has nothing left (taking the state
    /// lock only for that last step).
    pub(crate) fn finish(self, d: &Daemon) -> Res<()> {
        self.volume.flush()?;
        let Removed { volume, cow } = self;
        drop(volume);
        let mut st = d.lock();
        if users_of(&st, &cow).is_none() && !st.rolling.iter().any(|(c, _)| *c == cow) {
            if let Some(e) = st.stores.get(&cow) {
                if !e.store.cleaning_pending().unwrap_or(false) {
                    let store = e.store.clone();
                    st.stores.remove(&cow);
                    drop(st);
                    store.flush()?;
                }
            }
        }
        Ok(())
    }
}

/// Take a dm_dev away (refused while busy unless forced); its data goes out
/// in [`Removed::finish`], after the state lock is let go.
pub(crate) fn remove(d: &Daemon, st: &mut State, name: &str, force: bool) -> Res<Removed> {
    let Some(dev) = st.devs.get(name) else {
        return Err(Fail::kind(
            format!("dm_dev {name} does not exist"),
            ErrorKind::NotFound,
        ));
    };
    if !force {
        if let Some(why) = busy(d, name, dev, LEAVING) {
            return Err(Fail::kind(why, ErrorKind::Busy));
        }
    }
    if let Some(l) = &dev.loop_dev {
        loopdev::detach(l).map_err(|e| Fail::new(1, format!("detaching {l}: {e}")))?;
    }
    d.mapper
        .remove(name)
        .map_err(|e| Fail::new(1, format!("removing {name}: {e}")))?;
    let Some(dev) = st.devs.remove(name) else {
        return Err(Fail::kind(
            format!("dm_dev {name} does not exist"),
            ErrorKind::NotFound,
        ));
    };
    dev.alive.store(false, Ordering::SeqCst);
    d.save_registry(st)
        .map_err(|e| Fail::new(1, format!("{e:#}")))?;
    Ok(Removed {
        volume: dev.volume.clone(),
        cow: dev.cow.clone(),
    })
}

pub(crate) fn remove_all(d: &Daemon, force: bool) -> Res<Response> {
    let mut st = d.lock();
    let names: Vec<String> = st.devs.keys().cloned().collect();
    if !force {
        for n in &names {
            if let Some(why) = st.devs.get(n).and_then(|dev| busy(d, n, dev, LEAVING)) {
                return Err(Fail::kind(why, ErrorKind::Busy));
            }
        }
    }
    let mut removed = Vec::new();
    for n in names {
        removed.push(remove(d, &mut st, &n, force)?);
    }
    drop(st);
    for r in removed {
        r.finish(d)?;
    }
    Ok(Response::ok(String::new()))
}

/// Bring back the dm_devs of the registry.
pub(crate) fn restore(d: &Arc<Daemon>) {
    let reg = match registry::load(&paths::registry(&d.run)) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot read the registry: {e}");
            return;
        }
    };
    {
        let mut st = d.lock();
        for s in &reg.stores {
            let origins = st.known.entry(PathBuf::from(&s.cow)).or_default();
            for (id, p) in &s.origins {
                origins.insert(id.clone(), PathBuf::from(p));
            }
        }
    }
    for e in reg.devices {
        let opts = CreateOptions {
            name: &e.name,
            table: &e.table,
            exposure: Exposure {
                loop_dev: e.loop_dev,
                read_only: e.read_only,
            },
            fresh: false,
        };
        match create(d, &opts) {
            Ok(_) => tracing::info!("restored {}", e.name),
            Err(f) => tracing::error!("cannot restore {}: {}", e.name, f.msg),
        }
    }
    let st = d.lock();
    if let Err(e) = d.save_registry(&st) {
        tracing::error!("{e:#}");
    }
}

/// Flush and close everything (shutdown).
pub(crate) fn close_all(d: &Daemon) {
    let mut st = d.lock();
    let names: Vec<String> = st.devs.keys().cloned().collect();
    for n in names {
        if let Some(dev) = st.devs.get(&n) {
            if let Some(l) = &dev.loop_dev {
                let _ = loopdev::detach(l);
            }
        }
        let _ = d.mapper.remove(&n);
        if let Some(dev) = st.devs.remove(&n) {
            let _ = dev.volume.flush();
        }
    }
    for (_, e) in st.stores.drain() {
        let _ = e.store.flush();
    }
}
