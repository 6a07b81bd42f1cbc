//! The registry of dm_devs: what a restarted daemon exposes again. A small
//! JSON file replaced atomically (write, fsync, rename, fsync the directory).

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    /// The table line, without -b/-f/-F/-c (those act once, at creation).
    pub table: String,
    /// Attach a loop device when exposing.
    pub loop_dev: bool,
    /// Exposed read-only (file and NBD export).
    #[serde(default)]
    pub read_only: bool,
}

/// A store the daemon has used, with the origins bound in it and their
/// devices: `dms list` shows it even when no dm_dev of it is exposed.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct KnownStore {
    pub cow: String,
    /// (origin id, origin device).
    pub origins: Vec<(String, String)>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Registry {
    pub version: u32,
    pub devices: Vec<Entry>,
    #[serde(default)]
    pub stores: Vec<KnownStore>,
}

pub fn load(path: &Path) -> std::io::Result<Registry> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Registry {
            version: 1,
            ..Default::default()
        }),
        Err(e) => Err(e),
    }
}

pub fn save(path: &Path, reg: &Registry) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(reg).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The target as the registry keeps it: -b/-f/-F/-c act only once.
pub(crate) fn strip_once(t: &dms_engine::table::Target) -> dms_engine::table::Target {
    use dms_engine::table::Target;
    match t {
        Target::Origin {
            origin_dev,
            cow_dev,
            origin_id,
            ..
        } => Target::Origin {
            origin_dev: origin_dev.clone(),
            cow_dev: cow_dev.clone(),
            origin_id: origin_id.clone(),
            bind: false,
            format: None,
            chunk_pages: None,
        },
        other => other.clone(),
    }
}
