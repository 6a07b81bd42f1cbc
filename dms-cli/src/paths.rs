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

/// A device argument: a path, or a bare kernel name meaning `/dev/<name>`,
/// made absolute ([`dms_engine::io::device_path`]).
pub fn device(arg: &str) -> Result<PathBuf, String> {
    dms_engine::io::device_path(arg).map_err(|e| e.to_string())
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
    dms_engine::io::device_size(path).map_err(|e| e.to_string())
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
