//! Regular files and block devices, by positional I/O.

use super::BlockDev;
use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// A regular file or a block device.
pub struct FileDev {
    name: String,
    file: File,
    /// Bytes; looked at again by `refresh_size`.
    size: std::sync::atomic::AtomicU64,
}

/// `BLKGETSIZE64` from `<linux/fs.h>`: `_IOR(0x12, 114, size_t)`.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

impl FileDev {
    /// Open `path` read-write. With `exclusive`, take an advisory lock so that
    /// a second process opening the same device is refused.
    pub fn open(path: impl AsRef<Path>, exclusive: bool) -> Result<FileDev> {
        let path = path.as_ref();
        let name = path.display().to_string();
        // O_NOFOLLOW: a symlink swapped in for the device is refused, not followed.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::io(&name, "open", e))?;
        let size = size_of(&file, &name)?;
        if exclusive {
            // SAFETY: flock on a descriptor we own.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                let err = std::io::Error::last_os_error();
                let err = if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    std::io::Error::new(
                        std::io::ErrorKind::WouldBlock,
                        "device is in use by another process",
                    )
                } else {
                    err
                };
                return Err(Error::io(&name, "lock", err));
            }
        }
        Ok(FileDev {
            name,
            file,
            size: size.into(),
        })
    }
}

/// Size in bytes of an open regular file or block device.
fn size_of(file: &File, name: &str) -> Result<u64> {
    let meta = file.metadata().map_err(|e| Error::io(name, "stat", e))?;
    let ft = meta.file_type();
    if ft.is_block_device() {
        let mut bytes: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer we pass.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut bytes) };
        if rc != 0 {
            return Err(Error::io(
                name,
                "BLKGETSIZE64",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(bytes)
    } else if ft.is_file() {
        Ok(meta.len())
    } else {
        Err(Error::io(
            name,
            "open",
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file or block device",
            ),
        ))
    }
}

/// Size in bytes of the regular file or block device at `path`.
pub fn device_size(path: &Path) -> Result<u64> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|e| Error::io(&name, "open", e))?;
    size_of(&file, &name)
}

/// A device argument as users give it: a path, or a bare kernel name
/// (`sdb1`) meaning `/dev/sdb1`. Returns an absolute path with the
/// directories' symlinks resolved; a final component that is a symlink (a
/// device node under `/dev/disk/by-id`, say) is resolved once here, after
/// which devices are opened with `O_NOFOLLOW`.
pub fn device_path(arg: &str) -> Result<PathBuf> {
    let missing = |looked_at: &Path| Error::NoSuchDevice {
        arg: arg.to_string(),
        looked_at: looked_at.display().to_string(),
    };
    if arg.is_empty() {
        return Err(missing(Path::new("")));
    }
    let p = if !arg.contains('/') && !Path::new(arg).exists() {
        Path::new("/dev").join(arg)
    } else {
        PathBuf::from(arg)
    };
    if !p.exists() {
        return Err(missing(&p));
    }
    let abs = if p.is_absolute() {
        p
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io(arg, "find the current directory", e))?
            .join(p)
    };
    let parent = abs
        .parent()
        .map(|d| d.canonicalize().unwrap_or_else(|_| d.to_path_buf()));
    let (Some(dir), Some(name)) = (parent, abs.file_name()) else {
        return Err(missing(&abs));
    };
    let full = dir.join(name);
    match std::fs::symlink_metadata(&full) {
        Ok(m) if m.file_type().is_symlink() => full
            .canonicalize()
            .map_err(|e| Error::io(&full.display().to_string(), "resolve", e)),
        _ => Ok(full),
    }
}

impl FileDev {
    /// `lseek(SEEK_DATA | SEEK_HOLE)`: None when the file cannot tell (a
    /// block device, a file system without it).
    fn seek(&self, offset: u64, whence: libc::c_int) -> Option<u64> {
        use std::os::fd::AsRawFd;
        if !self.file.metadata().ok()?.is_file() {
            return None;
        }
        let off = libc::off_t::try_from(offset).ok()?;
        // SAFETY: lseek on a descriptor we own; reads and writes are
        // positional (pread/pwrite), so moving the offset changes nothing.
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), off, whence) };
        if r >= 0 {
            return Some((r as u64).min(self.size()));
        }
        match std::io::Error::last_os_error().raw_os_error() {
            // Nothing (no data, or no hole) past `offset`: the end.
            Some(libc::ENXIO) => Some(self.size().max(offset)),
            _ => None,
        }
    }
}

impl BlockDev for FileDev {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.size.load(std::sync::atomic::Ordering::Acquire)
    }

    fn can_punch(&self) -> bool {
        self.file.metadata().is_ok_and(|m| m.is_file())
    }

    fn punch_hole(&self, offset: u64, len: u64) -> Result<bool> {
        use std::os::fd::AsRawFd;
        if !self
            .file
            .metadata()
            .map_err(|e| Error::io(&self.name, "stat", e))?
            .is_file()
        {
            return Ok(false);
        }
        let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Ok(false);
        };
        // SAFETY: fallocate on a descriptor we own; the range reads as
        // zeros before and after.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                n,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(false),
            _ => Err(Error::io(&self.name, "punch a hole", e)),
        }
    }

    fn refresh_size(&self) -> Result<u64> {
        let n = size_of(&self.file, &self.name)?;
        self.size.store(n, std::sync::atomic::Ordering::Release);
        Ok(n)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io(&self.name, "read", e))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| Error::io(&self.name, "write", e))
    }

    fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io(&self.name, "sync", e))
    }

    fn next_data(&self, offset: u64) -> Option<u64> {
        self.seek(offset, libc::SEEK_DATA)
    }

    fn next_hole(&self, offset: u64) -> Option<u64> {
        self.seek(offset, libc::SEEK_HOLE)
    }

    fn will_need(&self, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
        let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return;
        };
        // SAFETY: an advisory call on a descriptor we own; a failure only
        // means no read-ahead.
        unsafe {
            libc::posix_fadvise(self.file.as_raw_fd(), off, n, libc::POSIX_FADV_WILLNEED);
        }
    }
}
