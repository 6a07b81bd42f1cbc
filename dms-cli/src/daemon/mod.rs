//! The daemon: owns the open stores, exposes dm_devs, answers the control
//! socket, keeps the registry, and cleans in the background.

mod devices;
mod fail;
mod fuse;
mod handle;
mod list;
mod loopdev;
mod nbd;
mod receiving;
pub mod registry;
mod rolling;
mod service;
mod transfer;
mod usage;

use crate::paths;
use crate::proto::{Request, Response};
use anyhow::{bail, Context, Result};
use dms_engine::table::Target;
use dms_engine::{Store, Volume};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// An open store and the origins attached to it.
pub(crate) struct StoreEntry {
    pub store: Store,
    /// origin id -> origin device path.
    pub origins: HashMap<String, PathBuf>,
    /// Above its policy's low-water mark when last looked (the hook runs
    /// once per crossing).
    pub low: bool,
}

/// One exposed dm_dev.
pub(crate) struct DmDev {
    pub target: Target,
    pub cow: PathBuf,
    pub origin_path: PathBuf,
    pub origin_id: String,
    pub sectors: u64,
    pub loop_dev: Option<String>,
    pub volume: Arc<Volume>,
    pub read_only: bool,
    /// NBD clients connected to this dm_dev.
    pub nbd_clients: Arc<AtomicUsize>,
    /// Cleared on removal: NBD requests still in flight then fail.
    pub alive: Arc<AtomicBool>,
}

impl DmDev {
    /// The table line it was created from (options that act once removed).
    pub fn table(&self) -> dms_engine::table::Table {
        dms_engine::table::Table {
            sectors: self.sectors,
            target: self.target.clone(),
        }
    }
}

#[derive(Default)]
pub(crate) struct State {
    pub stores: HashMap<PathBuf, StoreEntry>,
    pub devs: BTreeMap<String, DmDev>,
    /// (cow, origin id) with a rollback running in the background.
    pub rolling: HashSet<(PathBuf, String)>,
    /// (cow, origin id) whose rollback stopped with an error (a full COW
    /// device): why. `dms grow` and `dms policy` start it again.
    pub stalled: HashMap<(PathBuf, String), String>,
    /// (cow, origin id, tag) of snapshots being deleted: the commit runs
    /// without the state lock, and no dm_dev may expose them meanwhile.
    pub deleting: HashSet<(PathBuf, String, u32)>,
    /// (cow, origin id) receiving a stream: its origin may not be exposed,
    /// rolled back or receive another meanwhile.
    /// Bytes of the device the running receive has written, as it goes.
    pub receiving: HashMap<(PathBuf, String), Arc<std::sync::atomic::AtomicU64>>,
    /// Every store used, open or not, with its origins (id -> device):
    /// kept in the registry for `dms list`.
    pub known: BTreeMap<PathBuf, BTreeMap<String, PathBuf>>,
}

/// How the daemon runs (`dms daemon` flags).
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Also serve NBD on this TCP address.
    pub nbd_listen: Option<String>,
    /// Bound on held overwrites per store (bytes); None: the engine's default.
    pub held_limit: Option<u64>,
    /// The log file, reopened on SIGHUP (the daemon's stderr goes there).
    pub log: Option<PathBuf>,
    pub tls: TlsOptions,
}

pub use nbd::tls::Mode as TlsMode;

/// `--tls`, `--tls-certificates`, `--tls-verify-peer`.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    pub mode: TlsMode,
    pub certificates: Option<PathBuf>,
    pub verify_peer: bool,
}

pub(crate) struct Daemon {
    pub opts: Options,
    pub run: PathBuf,
    pub state: Mutex<State>,
    pub mapper: fuse::Mapper,
    pub stop: Arc<AtomicBool>,
    pub work: (Mutex<u64>, Condvar),
}

impl Daemon {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wake the cleaner.
    pub fn kick(&self) {
        let (m, cv) = &self.work;
        *m.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        cv.notify_all();
    }

    pub fn save_registry(&self, st: &State) -> Result<()> {
        let mut reg = registry::Registry {
            version: 1,
            ..Default::default()
        };
        for (cow, origins) in &st.known {
            reg.stores.push(registry::KnownStore {
                cow: cow.display().to_string(),
                origins: origins
                    .iter()
                    .map(|(id, p)| (id.clone(), p.display().to_string()))
                    .collect(),
            });
        }
        for (name, d) in &st.devs {
            reg.devices.push(registry::Entry {
                name: name.clone(),
                table: d.table().to_string(),
                loop_dev: d.loop_dev.is_some(),
                read_only: d.read_only,
            });
        }
        registry::save(&paths::registry(&self.run), &reg).context("writing the registry")
    }
}

fn serve(d: &Arc<Daemon>, stream: UnixStream) {
    // One request line, bounded: a peer cannot make the daemon buffer more.
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    if std::io::Read::take(&mut reader, 1 << 20)
        .read_line(&mut line)
        .is_err()
        || line.is_empty()
    {
        return;
    }
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(Request::Send(args)) => {
            tracing::info!(?args, "send");
            return transfer::send(d, &args, &stream);
        }
        Ok(Request::Receive(args)) => {
            tracing::info!(?args, "receive");
            return transfer::receive(d, &args, &mut reader, &stream);
        }
        Ok(req) => {
            tracing::info!(?req, "request");
            handle::handle(d, req)
        }
        Err(e) => Response::fail(2, format!("bad request: {e}"), dms_engine::ErrorKind::Usage),
    };
    if let Some(err) = &resp.error {
        tracing::warn!("refused: {err}");
    }
    let mut out = serde_json::to_string(&resp).unwrap_or_else(|_| "{\"code\":1}".into());
    out.push('\n');
    let _ = (&stream).write_all(out.as_bytes());
}

/// Only the daemon's own user may talk to it.
fn peer_allowed(stream: &UnixStream) -> bool {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred of the size we pass.
    let rc = unsafe {
        libc::getsockopt(
            std::os::unix::io::AsRawFd::as_raw_fd(stream),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    // SAFETY: geteuid has no preconditions.
    rc == 0 && (cred.uid == 0 || cred.uid == unsafe { libc::geteuid() })
}

/// Take the daemon lock file: one daemon per runtime directory.
fn lock_run_dir(run: &Path) -> Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(run.join("daemon.lock"))?;
    // SAFETY: flock on our own descriptor.
    let rc = unsafe {
        libc::flock(
            std::os::unix::io::AsRawFd::as_raw_fd(&f),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if rc != 0 {
        bail!("another dms daemon is running for {}", run.display());
    }
    Ok(f)
}

/// NBD exports: the daemon's dm_devs.
struct DaemonExports(std::sync::Weak<Daemon>);

impl nbd::Exports for DaemonExports {
    fn get(&self, name: &str) -> Option<nbd::Export> {
        let d = self.0.upgrade()?;
        let st = d.lock();
        st.devs.get(name).map(|x| nbd::Export {
            volume: x.volume.clone(),
            read_only: x.read_only,
            clients: x.nbd_clients.clone(),
            alive: x.alive.clone(),
        })
    }

    fn names(&self) -> Vec<String> {
        self.0
            .upgrade()
            .map(|d| d.lock().devs.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// A stop asked for by SIGTERM or SIGINT.
#[derive(Default)]
struct Stopping {
    /// Signals acted on.
    seen: usize,
    /// Why the last look could not stop (logged when it changes).
    busy: Vec<String>,
    last_look: Option<std::time::Instant>,
}

impl Stopping {
    /// Stop once no dm_dev is busy after a first signal; at once after a
    /// second (everything is still written out on the way).
    fn poll(&mut self, d: &Daemon) {
        let n = service::stops();
        if n == 0 {
            return;
        }
        if n >= 2 {
            if self.seen < 2 {
                tracing::warn!("stopping now (signal {n}): devices still in use are cut off");
            }
            self.seen = n;
            d.stop.store(true, Ordering::SeqCst);
            return;
        }
        if self.seen == 0 {
            tracing::info!("stopping (signal): as `dms shutdown` does");
            self.seen = 1;
        }
        if self
            .last_look
            .is_some_and(|t| t.elapsed() < Duration::from_millis(500))
        {
            return;
        }
        self.last_look = Some(std::time::Instant::now());
        let busy: Vec<String> = {
            let st = d.lock();
            st.devs
                .iter()
                .filter_map(|(n, dev)| devices::busy(d, n, dev, Duration::ZERO))
                .collect()
        };
        if busy.is_empty() {
            d.stop.store(true, Ordering::SeqCst);
        } else if busy != self.busy {
            tracing::warn!(
                "not stopping yet: {}; serving until that is over (signal again to stop now)",
                busy.join("; ")
            );
            self.busy = busy;
        }
    }
}

/// Threads serving the mapper files. A loop device with direct I/O hands
/// the daemon as many requests at once as its submitter keeps in flight
/// (fio at iodepth 16: 16); 16 threads serve those and leave room for
/// requests that wait (an fsync waits for a commit). More threads than
/// that measured slower on two CPUs (docs/benchmarks.md).
const FUSE_THREADS: usize = 16;

fn fuse_threads() -> usize {
    std::env::var("DMS_FUSE_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(FUSE_THREADS)
}

/// `dms daemon`: run in the foreground until `dms shutdown`.
pub fn run(opts: Options) -> Result<()> {
    service::install();
    let run = paths::run_dir();
    std::fs::create_dir_all(&run).with_context(|| format!("creating {}", run.display()))?;
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700))?;
    let _lock = lock_run_dir(&run)?;
    std::fs::write(run.join("daemon.pid"), format!("{}\n", std::process::id()))?;
    let mapper = fuse::Mapper::mount(&paths::mapper_dir(&run), fuse_threads())
        .context("mounting the mapper directory")?;
    let d = Arc::new(Daemon {
        opts: opts.clone(),
        run: run.clone(),
        state: Mutex::new(State::default()),
        mapper,
        stop: Arc::new(AtomicBool::new(false)),
        work: (Mutex::new(0), Condvar::new()),
    });
    devices::restore(&d);
    let tls = match (&opts.tls.mode, &opts.tls.certificates) {
        (TlsMode::Off, None) if !opts.tls.verify_peer => None,
        (TlsMode::Off, _) => {
            bail!("--tls-certificates and --tls-verify-peer need --tls on or require")
        }
        (_, None) => bail!("--tls on and --tls require need --tls-certificates DIR"),
        (mode, Some(dir)) => Some(Arc::new(
            nbd::tls::Server::load(dir, *mode, opts.tls.verify_peer)
                .context("loading the TLS certificates")?,
        )),
    };
    let exports: Arc<dyn nbd::Exports> = Arc::new(DaemonExports(Arc::downgrade(&d)));
    let nbd_sock = run.join("nbd.sock");
    let _ = std::fs::remove_file(&nbd_sock);
    let nbd_unix =
        UnixListener::bind(&nbd_sock).with_context(|| format!("binding {}", nbd_sock.display()))?;
    std::fs::set_permissions(&nbd_sock, std::fs::Permissions::from_mode(0o600))?;
    let mut servers = Vec::new();
    {
        let (ex, tls, stop) = (exports.clone(), tls.clone(), d.stop.clone());
        servers.push(std::thread::spawn(move || {
            nbd::serve_unix(nbd_unix, ex, tls, stop)
        }));
    }
    if let Some(addr) = opts.nbd_listen {
        let l = std::net::TcpListener::bind(&addr)
            .with_context(|| format!("listening for NBD on {addr}"))?;
        tracing::info!("NBD on tcp {addr}");
        let (ex, tls, stop) = (exports.clone(), tls.clone(), d.stop.clone());
        servers.push(std::thread::spawn(move || nbd::serve_tcp(l, ex, tls, stop)));
    }
    let sock = paths::control_socket(&run);
    let _ = std::fs::remove_file(&sock);
    let listener =
        UnixListener::bind(&sock).with_context(|| format!("binding {}", sock.display()))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!("dms daemon listening on {}", sock.display());
    let cleaner = {
        let d = d.clone();
        std::thread::spawn(move || handle::cleaner(&d))
    };
    listener.set_nonblocking(true)?;
    service::notify("READY=1");
    let mut stopping = Stopping::default();
    while !d.stop.load(Ordering::SeqCst) {
        if service::take_hup() {
            match &opts.log {
                Some(p) => service::reopen_log(p),
                None => tracing::info!("SIGHUP: no log file to reopen (the log is stderr)"),
            }
        }
        stopping.poll(&d);
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                if !peer_allowed(&stream) {
                    tracing::warn!("refused a connection from another user");
                    continue;
                }
                let d = d.clone();
                std::thread::spawn(move || serve(&d, stream));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                nbd::wait_for_connection(std::os::fd::AsRawFd::as_raw_fd(&listener), 20)
            }
            Err(e) => tracing::warn!("accept: {e}"),
        }
    }
    service::notify("STOPPING=1");
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_file(&nbd_sock);
    for s in servers {
        let _ = s.join();
    }
    d.kick();
    let _ = cleaner.join();
    devices::close_all(&d);
    d.mapper.unmount();
    let _ = std::fs::remove_file(run.join("daemon.pid"));
    tracing::info!("dms daemon stopped");
    Ok(())
}
