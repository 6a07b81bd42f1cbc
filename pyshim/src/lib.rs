//! The Python module `dms._dms`: the engine embedded (no daemon needed),
//! with the engine's errors as a Python exception hierarchy. The daemon
//! client (`dms.create`, `dms.snapshot`, ...) is pure Python in `dms/_client.py`.
//! Every call that does I/O releases the GIL.

use dms_engine as engine;
use dms_engine::io::{Dev, FileDev};
mod errors;
mod records;
mod stream;
mod volume;

use errors::*;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyType};
use records::{CheckReport, OriginStatus, StoreStatus, Version};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use volume::Volume;

fn closed_err(what: &str) -> PyErr {
    PyValueError::new_err(format!("operation on a closed {what}"))
}

fn open_dev(path: &PathBuf) -> PyResult<Dev> {
    Ok(Arc::new(FileDev::open(path, true).map_err(err)?))
}

/// A COW device holding snapshots of one or more origins, opened in this
/// process (no daemon). The device is locked while open. A context manager.
#[pyclass(frozen, module = "dms")]
struct Store {
    inner: Mutex<Option<engine::Store>>,
    path: PathBuf,
}

impl Store {
    fn get(&self) -> PyResult<engine::Store> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| closed_err("store"))
    }
}

#[pymethods]
impl Store {
    /// Format the COW device at ``path`` as an empty store and open it.
    /// ``chunk_pages`` is the chunk size in 4 KiB pages (1, 2, 4 ... 64);
    /// ``force`` overwrites a device that already holds a store.
    #[staticmethod]
    #[pyo3(signature = (path, *, chunk_pages = 1, force = false))]
    fn format(py: Python<'_>, path: PathBuf, chunk_pages: u32, force: bool) -> PyResult<Store> {
        let dev = open_dev(&path)?;
        let store = py
            .detach(|| engine::Store::format(dev, &engine::FormatOptions { chunk_pages, force }))
            .map_err(err)?;
        Ok(Store {
            inner: Mutex::new(Some(store)),
            path,
        })
    }

    /// Open the store on the COW device at ``path``.
    #[staticmethod]
    fn open(py: Python<'_>, path: PathBuf) -> PyResult<Store> {
        let dev = open_dev(&path)?;
        let store = py.detach(|| engine::Store::open(dev)).map_err(err)?;
        Ok(Store {
            inner: Mutex::new(Some(store)),
            path,
        })
    }

    /// The COW device's path.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Bind a new origin device under ``origin_id`` (its first use).
    fn bind(&self, py: Python<'_>, origin_id: &str, origin: PathBuf) -> PyResult<()> {
        let s = self.get()?;
        let dev = open_dev(&origin)?;
        py.detach(|| s.bind(origin_id, dev)).map_err(err)
    }

    /// Give a bound origin its device after opening the store (resumes an
    /// interrupted rollback).
    fn attach(&self, py: Python<'_>, origin_id: &str, origin: PathBuf) -> PyResult<()> {
        let s = self.get()?;
        let dev = open_dev(&origin)?;
        py.detach(|| {
            s.attach(origin_id, dev)?;
            // A rollback interrupted by a crash is carried to its end here.
            s.finish_rollback(origin_id)
        })
        .map_err(err)
    }

    /// Remove an origin without snapshots from the store.
    fn unbind(&self, py: Python<'_>, origin_id: &str) -> PyResult<()> {
        let s = self.get()?;
        py.detach(|| s.unbind(origin_id)).map_err(err)
    }

    /// Take a snapshot of the origin, or with ``tag`` of that snapshot.
    /// Returns the new tag. Durable on return.
    #[pyo3(signature = (origin_id, tag = None, memo = ""))]
    fn snapshot(
        &self,
        py: Python<'_>,
        origin_id: &str,
        tag: Option<u32>,
        memo: &str,
    ) -> PyResult<u32> {
        let s = self.get()?;
        py.detach(|| match tag {
            None => s.snapshot_origin(origin_id, memo),
            Some(t) => s.snapshot_of(origin_id, t, memo),
        })
        .map_err(err)
    }

    /// Delete snapshot ``tag``; its space returns when ``clean`` runs.
    fn delete(&self, py: Python<'_>, origin_id: &str, tag: u32) -> PyResult<()> {
        let s = self.get()?;
        py.detach(|| s.delete(origin_id, tag)).map_err(err)
    }

    /// Make the origin read as snapshot ``tag`` reads now; other snapshots
    /// keep their content.
    fn rollback(&self, py: Python<'_>, origin_id: &str, tag: u32) -> PyResult<()> {
        let s = self.get()?;
        py.detach(|| s.rollback(origin_id, tag)).map_err(err)
    }

    /// Snapshots the on-full rule (``delete-oldest``) deleted since the
    /// last call, as ``(origin_id, tag)`` pairs.
    fn sacrificed(&self) -> PyResult<Vec<(String, u32)>> {
        Ok(self.get()?.take_sacrificed())
    }

    /// Return the space of deleted snapshots. Returns (versions removed, chunks freed).
    fn clean(&self, py: Python<'_>) -> PyResult<(u64, u64)> {
        let s = self.get()?;
        let r = py.detach(|| s.clean()).map_err(err)?;
        Ok((r.versions_removed, r.chunks_freed))
    }

    /// Walk all metadata and the space map; raises CorruptError on a damaged block.
    fn check(&self, py: Python<'_>) -> PyResult<CheckReport> {
        let s = self.get()?;
        let r = py.detach(|| s.check()).map_err(err)?;
        Ok(CheckReport {
            clean: r.is_clean(),
            problems: r.problems,
            exceptions: r.exceptions,
            data_chunks: r.data_chunks,
            metadata_pages: r.metadata_pages,
        })
    }

    /// Make every completed write durable.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let s = self.get()?;
        py.detach(|| s.flush()).map_err(err)
    }

    /// The bound on memory held by writes waiting for their copy-outs'
    /// commit, in bytes (writers wait at it). Settable.
    #[getter]
    fn held_limit(&self) -> PyResult<u64> {
        Ok(self.get()?.held().limit)
    }

    #[setter]
    fn set_held_limit(&self, bytes: u64) -> PyResult<()> {
        self.get()?.set_held_limit(bytes);
        Ok(())
    }

    /// Held writes now: ``(chunks, bytes, peak_bytes)``.
    fn held(&self) -> PyResult<(u64, u64, u64)> {
        let h = self.get()?.held();
        Ok((h.chunks, h.bytes, h.peak_bytes))
    }

    /// Write a stream of snapshot ``tag`` to ``file`` (anything with
    /// ``write``): all of it, or with ``from_tag`` only what differs from
    /// that older tag; with ``resume`` (a token) the rest of an interrupted
    /// receive. ``format``: ``"dms"``, ``"rbd-v1"`` or ``"rbd-v2"``.
    /// Returns the bytes written.
    #[pyo3(signature = (origin_id, tag, file, *, from_tag = None, format = "dms", resume = None))]
    fn send(
        &self,
        origin_id: &str,
        tag: u32,
        file: Bound<'_, PyAny>,
        from_tag: Option<u32>,
        format: &str,
        resume: Option<String>,
    ) -> PyResult<u64> {
        let py = file.py();
        let file = file.unbind();
        let s = self.get()?;
        let opts = engine::stream::SendOptions {
            from: from_tag,
            format: stream_format(format)?,
            resume,
        };
        py.detach(|| {
            let mut out = stream::PyWriter::new(file);
            let r = s.send(origin_id, tag, &opts, &mut out, &mut |_, _| {})?;
            std::io::Write::flush(&mut out).map_err(|e| engine::Error::Io {
                device: "the stream's file".into(),
                op: "write",
                source: e,
            })?;
            Ok(r.bytes)
        })
        .map_err(err)
    }

    /// Read a stream from ``file`` (anything with ``read``) into an origin
    /// and return the new snapshot's tag. ``force``: for an incremental
    /// stream, roll the origin back to its base first.
    #[pyo3(signature = (origin_id, file, *, format = "dms", force = false))]
    fn receive(
        &self,
        py: Python<'_>,
        origin_id: &str,
        file: Py<PyAny>,
        format: &str,
        force: bool,
    ) -> PyResult<u32> {
        let s = self.get()?;
        let opts = engine::stream::ReceiveOptions {
            format: stream_format(format)?,
            force,
        };
        py.detach(|| {
            let mut input = std::io::BufReader::with_capacity(1 << 20, stream::PyReader::new(file));
            s.receive(origin_id, &opts, &mut input, &mut |_, _| {})
                .map(|r| r.tag)
        })
        .map_err(err)
    }

    /// The token to resume an interrupted receive into an origin with
    /// (``None`` when there is none).
    fn receive_token(&self, origin_id: &str) -> PyResult<Option<String>> {
        self.get()?.receive_token(origin_id).map_err(err)
    }

    /// Undo an interrupted receive: the origin reads as before it began.
    fn receive_abort(&self, py: Python<'_>, origin_id: &str) -> PyResult<()> {
        let s = self.get()?;
        py.detach(|| s.receive_abort(origin_id)).map_err(err)
    }

    /// The space of an origin's snapshots: ``{"chunks", "pending_free",
    /// "tags": [{"tag", "owned", "shared", "freed_if_deleted"}]}`` (COW
    /// chunks; ``freed_if_deleted`` is exactly what deleting that tag gives
    /// back once the cleaner has run).
    fn usage<'py>(&self, py: Python<'py>, origin_id: &str) -> PyResult<Bound<'py, PyDict>> {
        let s = self.get()?;
        let u = py.detach(|| s.usage(origin_id)).map_err(err)?;
        let d = PyDict::new(py);
        d.set_item("chunks", u.chunks)?;
        d.set_item("pending_free", u.pending_free)?;
        let tags = PyList::empty(py);
        for t in &u.tags {
            let x = PyDict::new(py);
            x.set_item("tag", t.tag)?;
            x.set_item("owned", t.owned)?;
            x.set_item("shared", t.shared)?;
            x.set_item("freed_if_deleted", t.freed_if_deleted)?;
            tags.append(x)?;
        }
        d.set_item("tags", tags)?;
        Ok(d)
    }

    /// The store's space policy: a dict with ``low_water`` (0: none),
    /// ``hook`` (``""``: none), ``on_full`` (``"fail"`` or
    /// ``"delete-oldest"``) and ``keep_min``.
    fn policy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let p = self.get()?.policy().map_err(err)?;
        let d = PyDict::new(py);
        d.set_item("low_water", p.low_water)?;
        d.set_item("hook", p.hook)?;
        d.set_item("on_full", p.on_full.name())?;
        d.set_item("keep_min", p.keep_min)?;
        Ok(d)
    }

    /// Set the store's space policy (kept in the store). ``on_full``:
    /// ``"fail"`` (a write to a full COW device fails with ENOSPC) or
    /// ``"delete-oldest"`` (the origin's oldest snapshots go, never an open
    /// one, never fewer than ``keep_min``).
    #[pyo3(signature = (low_water = 0, hook = String::new(), on_full = "fail", keep_min = 0))]
    fn set_policy(
        &self,
        py: Python<'_>,
        low_water: u8,
        hook: String,
        on_full: &str,
        keep_min: u32,
    ) -> PyResult<()> {
        let on_full: engine::OnFull = on_full
            .parse()
            .map_err(|e: String| PyValueError::new_err(format!("on_full {e}")))?;
        let s = self.get()?;
        py.detach(|| {
            s.set_policy(engine::StorePolicy {
                low_water,
                hook,
                on_full,
                keep_min,
            })
        })
        .map_err(err)
    }

    /// The origin's device was made larger underneath: the origin takes
    /// the new size now; its snapshots keep theirs. Returns the origin's
    /// size in bytes before and after.
    fn grow_origin(&self, py: Python<'_>, origin_id: &str) -> PyResult<(u64, u64)> {
        let s = self.get()?;
        py.detach(|| s.grow_origin(origin_id)).map_err(err)
    }

    /// The COW device was made larger underneath: use the new space now.
    /// Returns the store's size in bytes before and after.
    fn grow(&self, py: Python<'_>) -> PyResult<(u64, u64)> {
        let s = self.get()?;
        py.detach(|| s.grow()).map_err(err)
    }

    /// Open version ``tag`` of an origin (0 = the origin itself).
    #[pyo3(signature = (origin_id, tag = 0))]
    fn volume(&self, origin_id: &str, tag: u32) -> PyResult<Volume> {
        let v = self.get()?.volume(origin_id, tag).map_err(err)?;
        Ok(Volume {
            size: v.size(),
            tag,
            origin_id: origin_id.to_string(),
            inner: Mutex::new(Some(Arc::new(v))),
        })
    }

    /// Ids of the bound origins.
    fn origins(&self) -> PyResult<Vec<String>> {
        self.get()?.origins().map_err(err)
    }

    /// Tags of an origin's snapshots, ascending.
    fn tags(&self, origin_id: &str) -> PyResult<Vec<u32>> {
        self.get()?.tags(origin_id).map_err(err)
    }

    /// The versions of an origin: the origin, its snapshots, and with
    /// ``ghosts`` the internal untagged versions too.
    #[pyo3(signature = (origin_id, *, ghosts = false))]
    fn versions(&self, origin_id: &str, ghosts: bool) -> PyResult<Vec<Version>> {
        let st = self.get()?.status().map_err(err)?;
        let o = st
            .origins
            .iter()
            .find(|o| o.id == origin_id)
            .ok_or_else(|| err(engine::Error::UnknownOrigin(origin_id.to_string())))?;
        let mut out: Vec<Version> = o
            .list
            .iter()
            .filter(|v| ghosts || !v.ghost)
            .map(|v| Version {
                tag: v.tag,
                version: v.version,
                ghost: v.ghost,
                parent_tag: v.parent_tag,
                birthday: v.birthday,
                chunks: v.exceptions,
                memo: v.memo.clone(),
                uuid: engine::stream::hex_id(&v.uuid),
                size: v.size,
            })
            .collect();
        out.sort_by_key(|v| (v.ghost, v.tag, v.version));
        Ok(out)
    }

    /// What ``dms list`` and ``dmsetup status`` show, as a record.
    fn status(&self) -> PyResult<StoreStatus> {
        let st = self.get()?.status().map_err(err)?;
        Ok(StoreStatus {
            chunk_pages: st.chunk_pages,
            chunk_bytes: st.chunk_bytes,
            total_chunks: st.total_chunks,
            used_chunks: st.used_chunks,
            data_chunks: st.data_chunks,
            metadata_pages: st.metadata_pages,
            used_versions: st.used_versions,
            max_versions: st.max_versions,
            valid: st.valid,
            full: st.full,
            generation: st.generation,
            origins: st
                .origins
                .iter()
                .map(|o| OriginStatus {
                    id: o.id.clone(),
                    size: o.size,
                    attached: o.attached,
                    versions: o.versions,
                    max_versions: o.max_versions,
                    rollback: o.rollback,
                    cleaning: o.cleaning,
                    ghosts: o.ghosts,
                })
                .collect(),
        })
    }

    /// Flush and close the store (idempotent). Volumes still open keep it
    /// alive until they close.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let s = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(s) = s {
            py.detach(|| s.flush()).map_err(err)?;
        }
        Ok(())
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        slf.get().get()?;
        Ok(slf)
    }

    #[pyo3(signature = (_exc_type = None, _exc_value = None, _traceback = None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: Option<&Bound<'_, PyAny>>,
        _exc_value: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "<Store {} {}>",
            self.path.display(),
            if self.closed() { "closed" } else { "open" }
        )
    }
}

fn stream_format(name: &str) -> PyResult<engine::stream::StreamFormat> {
    engine::stream::StreamFormat::from_name(name).ok_or_else(|| {
        PyValueError::new_err(format!(
            "unknown stream format {name:?} (dms, rbd-v1, rbd-v2)"
        ))
    })
}

/// Compiled core of the ``dms`` package.
/// A device argument as ``dms`` takes it (a path, or a bare kernel name
/// meaning ``/dev/<name>``) as the absolute path the daemon is given.
#[pyfunction]
fn device_path(arg: &str) -> PyResult<String> {
    engine::io::device_path(arg)
        .map(|p| p.display().to_string())
        .map_err(err)
}

/// The exception class of an error kind as the daemon names it
/// (``"not_found"``, ``"busy"``, ...); unknown names give ``DmsError``.
#[pyfunction]
fn error_class<'py>(py: Python<'py>, kind: &str) -> PyResult<Bound<'py, PyType>> {
    match engine::ErrorKind::from_name(kind) {
        Some(k) => class_of(py, k),
        None => Ok(py.get_type::<DmsError>()),
    }
}

#[pymodule]
fn _dms(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("DmsError", py.get_type::<DmsError>())?;
    m.add("CorruptError", py.get_type::<CorruptError>())?;
    m.add("NotFoundError", py.get_type::<NotFoundError>())?;
    m.add("AlreadyExistsError", py.get_type::<AlreadyExistsError>())?;
    m.add("BusyError", py.get_type::<BusyError>())?;
    m.add("LimitError", py.get_type::<LimitError>())?;
    m.add("StoreFailedError", py.get_type::<StoreFailedError>())?;
    m.add("UsageError", py.get_type::<UsageError>())?;
    m.add("DaemonError", py.get_type::<DaemonError>())?;
    m.add("IOFailure", io_failure(py)?)?;
    m.add("NoSpaceError", no_space(py)?)?;
    m.add("InvalidArgumentError", invalid(py)?)?;
    m.add_function(wrap_pyfunction!(error_class, m)?)?;
    m.add_function(wrap_pyfunction!(device_path, m)?)?;
    m.add_class::<Store>()?;
    m.add_class::<Volume>()?;
    m.add_class::<Version>()?;
    m.add_class::<OriginStatus>()?;
    m.add_class::<StoreStatus>()?;
    m.add_class::<CheckReport>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
