//! Typed records returned to Python.

use pyo3::prelude::*;

fn py_opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "None".to_string(), |x| x.to_string())
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// One version of an origin, as ``Store.versions`` lists it.
#[pyclass(get_all, frozen, module = "dms")]
#[derive(Clone)]
pub(crate) struct Version {
    /// 0 for the origin; 0 with ``ghost`` for internal untagged versions.
    pub(crate) tag: u32,
    /// Internal version id.
    pub(crate) version: u32,
    pub(crate) ghost: bool,
    /// Nearest tagged ancestor's tag (None for the origin).
    pub(crate) parent_tag: Option<u32>,
    /// Creation time, Unix seconds.
    pub(crate) birthday: u64,
    /// Chunks this version owns (its own exceptions).
    pub(crate) chunks: u64,
    pub(crate) memo: String,
    /// The version's identity (32 hex digits), kept across send and receive.
    pub(crate) uuid: String,
    /// Size in bytes: a snapshot taken before its origin grew keeps its own.
    pub(crate) size: u64,
}

#[pymethods]
impl Version {
    fn __repr__(&self) -> String {
        format!(
            "Version(tag={}, parent_tag={}, chunks={}, memo={:?}{})",
            self.tag,
            py_opt(self.parent_tag),
            self.chunks,
            self.memo,
            if self.ghost { ", ghost" } else { "" }
        )
    }
}

/// One origin in ``StoreStatus.origins``.
#[pyclass(get_all, frozen, module = "dms")]
#[derive(Clone)]
pub(crate) struct OriginStatus {
    pub(crate) id: String,
    pub(crate) size: u64,
    pub(crate) attached: bool,
    pub(crate) versions: u64,
    /// The most versions this origin can still have.
    pub(crate) max_versions: u64,
    /// (tag, next chunk, chunks) of a rollback in progress.
    pub(crate) rollback: Option<(u32, u64, u64)>,
    /// Next chunk of a cleaning pass in progress.
    pub(crate) cleaning: Option<u64>,
    pub(crate) ghosts: u64,
}

#[pymethods]
impl OriginStatus {
    fn __repr__(&self) -> String {
        format!(
            "OriginStatus(id={:?}, size={}, versions={})",
            self.id, self.size, self.versions
        )
    }
}

/// What ``dms list`` and ``dmsetup status`` report about a store.
#[pyclass(get_all, frozen, module = "dms")]
pub(crate) struct StoreStatus {
    pub(crate) chunk_pages: u32,
    pub(crate) chunk_bytes: u64,
    pub(crate) total_chunks: u64,
    pub(crate) used_chunks: u64,
    pub(crate) data_chunks: u64,
    pub(crate) metadata_pages: u64,
    pub(crate) used_versions: u64,
    pub(crate) max_versions: u64,
    pub(crate) valid: bool,
    pub(crate) full: bool,
    pub(crate) generation: u64,
    pub(crate) origins: Vec<OriginStatus>,
}

#[pymethods]
impl StoreStatus {
    fn __repr__(&self) -> String {
        format!(
            "StoreStatus(used_chunks={}/{}, versions={}, valid={}, full={})",
            self.used_chunks,
            self.total_chunks,
            self.used_versions,
            py_bool(self.valid),
            py_bool(self.full)
        )
    }
}

/// The result of ``Store.check``.
#[pyclass(get_all, frozen, module = "dms")]
pub(crate) struct CheckReport {
    pub(crate) clean: bool,
    pub(crate) problems: Vec<String>,
    pub(crate) exceptions: u64,
    pub(crate) data_chunks: u64,
    pub(crate) metadata_pages: u64,
}

#[pymethods]
impl CheckReport {
    fn __repr__(&self) -> String {
        format!(
            "CheckReport(clean={}, problems={}, exceptions={})",
            py_bool(self.clean),
            self.problems.len(),
            self.exceptions
        )
    }
}
