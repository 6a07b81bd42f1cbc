//! Where things live: the runtime directory and device paths.

use std::path::{Path, PathBuf};

/// `$DMS_RUN_DIR`, else `/run/dms` for root, else `$XDG_RUNTIME_DIR/dms`.
pub fn run_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DMS_RUN_DIR") {
        return PathBuf::from(d);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/run/dms");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => Path::new(&d).join("dms"),
        None => std::env::temp_dir().join(format!("dms-{}", unsafe { libc::geteuid() })),
    }
}

pub fn control_socket(run: &Path) -> PathBuf {
    run.join("control.sock")
}

pub fn mapper_dir(run: &Path) -> PathBuf {
    run.join("mapper")
}

pub fn registry(run: &Path) -> PathBuf {
    run.join("registry.json")
}

/// A device argument: a path, or a bare kernel name meaning `/dev/<name>`.
/// Returns an absolute path (symlinks in the directories resolved).
pub fn device(arg: &str) -> Result<PathBuf, String> {
    if arg.is_empty() {
        return Err("empty device name".into());
    }
    let p = if !arg.contains('/') && !Path::new(arg).exists() {
        Path::new("/dev").join(arg)
    } else {
        PathBuf::from(arg)
    };
    if !p.exists() {
        if !arg.contains('/') {
            return Err(format!(
                "{arg}: no such file here, and no device {}",
                p.display()
            ));
        }
        return Err(format!("{}: no such device or file", p.display()));
    }
    // Resolve the directory part only: the final component is opened with
    // O_NOFOLLOW, so a symlink swapped in later is refused.
    let abs = if p.is_absolute() {
        p
    } else {
        std::env::current_dir().map_err(|e| e.to_string())?.join(p)
    };
    let parent = abs
        .parent()
        .map(|d| d.canonicalize().unwrap_or_else(|_| d.to_path_buf()));
    let name = abs.file_name().map(|n| n.to_os_string());
    match (parent, name) {
        (Some(d), Some(n)) => {
            let full = d.join(n);
            // A device node given as a symlink (e.g. /dev/disk/by-id/...) is
            // resolved once here.
            match std::fs::symlink_metadata(&full) {
                Ok(m) if m.file_type().is_symlink() => full
                    .canonicalize()
                    .map_err(|e| format!("{}: {e}", full.display())),
                _ => Ok(full),
            }
        }
        _ => Err(format!("{arg}: not a device path")),
    }
}

/// Valid dm_dev names: what a file name under mapper/ can be.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) || name.starts_with('-') {
        return Err(format!(
            "invalid dm_dev name {name:?}: no spaces, control characters or leading '-'"
        ));
    }
    if name.len() > 127 {
        return Err("invalid dm_dev name: at most 127 bytes".to_string());
    }
    if name.is_empty()
        || name.len() > 127
        || name.contains('/')
        || name == "."
        || name == ".."
        || name.contains('\0')
    {
        return Err(format!("invalid dm_dev name {name:?}"));
    }
    Ok(())
}

/// Size in bytes of a regular file or block device.
pub fn device_size(path: &Path) -> Result<u64, String> {
    use std::os::unix::fs::FileTypeExt;
    let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if m.file_type().is_block_device() {
        let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut bytes: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64.
        let rc = unsafe {
            libc::ioctl(
                std::os::unix::io::AsRawFd::as_raw_fd(&f),
                0x8008_1272,
                &mut bytes,
            )
        };
        if rc != 0 {
            return Err(format!(
                "{}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(bytes)
    } else if m.is_file() {
        Ok(m.len())
    } else {
        Err(format!(
            "{}: not a regular file or block device",
            path.display()
        ))
    }
}

/// "maj:min" of a block device, for `dms list`.
pub fn dev_numbers(path: &Path) -> Option<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(path).ok()?;
    if !m.file_type().is_block_device() {
        return None;
    }
    let rdev = m.rdev();
    Some(format!("{}:{}", libc::major(rdev), libc::minor(rdev)))
}
