//! The daemon as a service: signals, the log file, and readiness for a
//! service manager.
//!
//! SIGTERM and SIGINT ask for the stop `dms shutdown` makes: if a dm_dev is
//! busy (a filesystem mounted on it, a client connected), the daemon says
//! which and keeps serving until it is free; a second signal stops it as
//! `dms shutdown --force` does, writing everything out first. SIGHUP
//! reopens the log file given with `--log` (for log rotation).
//!
//! The handlers only count; the main loop acts on the counts.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static STOPS: AtomicUsize = AtomicUsize::new(0);
static HUP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOPS.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn on_hup(_: libc::c_int) {
    HUP.store(true, Ordering::SeqCst);
}

fn handle(sig: libc::c_int, f: extern "C" fn(libc::c_int)) {
    // SAFETY: a zeroed sigaction with a handler that only touches atomics
    // (async-signal-safe), an empty mask and SA_RESTART.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = f as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            tracing::warn!(
                "cannot handle signal {sig}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Install the handlers of SIGTERM, SIGINT and SIGHUP.
pub fn install() {
    handle(libc::SIGTERM, on_stop);
    handle(libc::SIGINT, on_stop);
    handle(libc::SIGHUP, on_hup);
}

/// Stop signals received so far.
pub fn stops() -> usize {
    STOPS.load(Ordering::SeqCst)
}

/// Whether SIGHUP came since the last call.
pub fn take_hup() -> bool {
    HUP.swap(false, Ordering::SeqCst)
}

/// Reopen the log file (after rotation): it replaces stdout and stderr.
pub fn reopen_log(path: &Path) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path);
    match file {
        Ok(f) => {
            use std::os::unix::io::AsRawFd;
            // SAFETY: dup2 onto the standard descriptors of this process;
            // `f` stays open until both are replaced.
            unsafe {
                libc::dup2(f.as_raw_fd(), 1);
                libc::dup2(f.as_raw_fd(), 2);
            }
            tracing::info!("log reopened: {}", path.display());
        }
        Err(e) => tracing::error!("reopening the log {}: {e}", path.display()),
    }
}

/// Tell a service manager (systemd `Type=notify`) how the daemon is, if
/// one asked (`$NOTIFY_SOCKET`): `READY=1` once it serves, `STOPPING=1`.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), Path::new(&path))
    };
    if let Err(e) = sent {
        tracing::warn!("notifying the service manager: {e}");
    }
}
