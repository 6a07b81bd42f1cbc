//! `dms.Volume`: one version of an origin opened for I/O.

use crate::{closed_err, err};
use dms_engine as engine;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::PyMemoryView;
use std::sync::{Arc, Mutex};

/// One version of an origin, opened for I/O. A context manager.
#[pyclass(frozen, module = "dms")]
pub(crate) struct Volume {
    pub(crate) inner: Mutex<Option<Arc<engine::Volume>>>,
    pub(crate) size: u64,
    pub(crate) tag: u32,
    pub(crate) origin_id: String,
}

impl Volume {
    fn get(&self) -> PyResult<Arc<engine::Volume>> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| closed_err("volume"))
    }
}

fn bytes_of(data: &Bound<'_, PyAny>) -> PyResult<PyBackedBytes> {
    match data.extract::<PyBackedBytes>() {
        Ok(b) => Ok(b),
        Err(_) => PyMemoryView::from(data)?
            .call_method0("tobytes")?
            .extract::<PyBackedBytes>()
            .map_err(Into::into),
    }
}

#[pymethods]
impl Volume {
    /// Read ``length`` bytes at ``offset``.
    fn read(&self, py: Python<'_>, offset: u64, length: usize) -> PyResult<Vec<u8>> {
        let v = self.get()?;
        py.detach(|| {
            let mut buf = vec![0u8; length];
            v.read_at(&mut buf, offset).map(|_| buf)
        })
        .map_err(err)
    }

    /// Write ``data`` (bytes, bytearray, memoryview or any buffer) at ``offset``.
    /// Durable after ``flush``.
    fn write(&self, py: Python<'_>, offset: u64, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let v = self.get()?;
        let data = bytes_of(data)?;
        py.detach(|| v.write_at(&data, offset)).map_err(err)
    }

    /// Make every completed write durable.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let v = self.get()?;
        py.detach(|| v.flush()).map_err(err)
    }

    /// Discard ``length`` bytes at ``offset``: they read as zeros afterwards.
    fn discard(&self, py: Python<'_>, offset: u64, length: u64) -> PyResult<()> {
        let v = self.get()?;
        py.detach(|| v.discard(offset, length)).map_err(err)
    }

    /// Size in bytes (an open origin's follows ``Store.grow_origin``).
    #[getter]
    fn size(&self) -> u64 {
        self.get().map_or(self.size, |v| v.size())
    }

    /// The tag this volume shows (0 = the origin).
    #[getter]
    fn tag(&self) -> u32 {
        self.tag
    }

    #[getter]
    fn origin_id(&self) -> &str {
        &self.origin_id
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    /// Close the volume (idempotent).
    fn close(&self) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        slf.get().get()?;
        Ok(slf)
    }

    #[pyo3(signature = (_exc_type = None, _exc_value = None, _traceback = None))]
    fn __exit__(
        &self,
        _exc_type: Option<&Bound<'_, PyAny>>,
        _exc_value: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) -> bool {
        self.close();
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "<Volume {} tag {} {}>",
            self.origin_id,
            self.tag,
            if self.closed() { "closed" } else { "open" }
        )
    }
}
