//! Loop devices, through losetup(8).

use std::path::Path;
use std::process::Command;

/// Attach a loop device to `file`, with direct I/O where the kernel allows
/// it: the mapper files bypass the page cache anyway, and a direct-I/O loop
/// device keeps many requests in flight instead of one at a time.
pub fn attach(file: &Path, read_only: bool) -> Result<String, String> {
    attach_with(file, read_only, true).or_else(|_| attach_with(file, read_only, false))
}

fn attach_with(file: &Path, read_only: bool, direct: bool) -> Result<String, String> {
    let mut cmd = Command::new("losetup");
    cmd.args(["--find", "--show"]);
    if read_only {
        cmd.arg("--read-only");
    }
    if direct {
        cmd.arg("--direct-io=on");
    }
    let out = cmd
        .arg(file)
        .output()
        .map_err(|e| format!("running losetup: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `losetup <op> <dev>`; its error line on failure.
fn losetup(op: &str, dev: &str) -> Result<(), String> {
    let out = Command::new("losetup")
        .args([op, dev])
        .output()
        .map_err(|e| format!("running losetup: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(())
}

pub fn detach(dev: &str) -> Result<(), String> {
    losetup("--detach", dev)
}

/// Make a loop device take its backing file's size again.
pub fn set_capacity(dev: &str) -> Result<(), String> {
    losetup("--set-capacity", dev)
}

/// Where a block device is mounted, if it is.
pub fn mounted_at(dev: &str) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (src, dst) = (f.next()?, f.next()?);
        (src == dev).then(|| dst.to_string())
    })
}

/// Loop devices whose backing file is `file` (ours or a user's).
pub fn backed_by(file: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
            if Path::new(b.trim()) == file {
                out.push(format!("/dev/{name}"));
            }
        }
    }
    out
}

/// Mount points of filesystems on loop devices backed by `file`.
pub fn mounts_of(file: &Path) -> Vec<String> {
    backed_by(file)
        .iter()
        .filter_map(|l| mounted_at(l))
        .collect()
}

/// A filesystem frozen (FIFREEZE) until this is dropped.
pub struct Frozen {
    dir: std::fs::File,
    path: String,
}

/// `_IOWR('X', 119, int)` and `_IOWR('X', 120, int)` from `<linux/fs.h>`.
const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;

/// Freeze a mounted filesystem so that what it has cached reaches the device
/// and nothing changes until the thaw: what device-mapper does on suspend.
pub fn freeze(mountpoint: &str) -> Result<Frozen, String> {
    let dir = std::fs::File::open(mountpoint).map_err(|e| format!("{mountpoint}: {e}"))?;
    // SAFETY: FIFREEZE takes an int argument that the kernel ignores.
    let rc = unsafe { libc::ioctl(std::os::unix::io::AsRawFd::as_raw_fd(&dir), FIFREEZE, 0) };
    if rc != 0 {
        return Err(format!(
            "freezing {mountpoint}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(Frozen {
        dir,
        path: mountpoint.to_string(),
    })
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: as above.
        let rc =
            unsafe { libc::ioctl(std::os::unix::io::AsRawFd::as_raw_fd(&self.dir), FITHAW, 0) };
        if rc != 0 {
            tracing::error!("thawing {}: {}", self.path, std::io::Error::last_os_error());
        }
    }
}

/// Detach loop devices whose backing file lies in `dir` (the mapper
/// directory of a daemon that died); mounted ones are left, with a warning.
pub fn detach_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        let backing = Path::new(b.trim());
        if backing.parent() != Some(dir) {
            continue;
        }
        let dev = format!("/dev/{name}");
        match mounted_at(&dev) {
            Some(m) => tracing::warn!(
                "{dev} (a file of the previous daemon) is still mounted on {m}; unmount it"
            ),
            None => match detach(&dev) {
                Ok(()) => tracing::info!("detached {dev}, left by the previous daemon"),
                Err(e) => tracing::warn!("cannot detach {dev}: {e}"),
            },
        }
    }
}
