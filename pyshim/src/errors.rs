//! The engine's errors as a Python exception hierarchy.

use dms_engine as engine;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

create_exception!(dms, DmsError, PyException, "Base class of every dms error.");
create_exception!(
    dms,
    CorruptError,
    DmsError,
    "Metadata failed validation; the message names the block."
);
create_exception!(
    dms,
    NotFoundError,
    DmsError,
    "An unknown origin, tag or dm_dev."
);
create_exception!(
    dms,
    AlreadyExistsError,
    DmsError,
    "An origin, dm_dev or store that already exists."
);
create_exception!(
    dms,
    BusyError,
    DmsError,
    "In use: open, mounted, being rolled back, or still has snapshots."
);
create_exception!(
    dms,
    LimitError,
    DmsError,
    "A limit was reached (versions, tags, origins)."
);
create_exception!(
    dms,
    StoreFailedError,
    DmsError,
    "The store failed earlier (an I/O error during commit); reopen it."
);
create_exception!(
    dms,
    UsageError,
    DmsError,
    "A malformed command, table or message."
);
create_exception!(
    dms,
    DaemonError,
    DmsError,
    "The dms daemon could not be reached or started."
);

static IO_FAILURE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static NO_SPACE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static INVALID: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// A class with two bases (create_exception! takes one): `type(name, bases, {})`.
fn two_bases<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyType>>,
    name: &str,
    second: Bound<'py, PyType>,
    doc: &str,
) -> PyResult<&'py Bound<'py, PyType>> {
    cell.get_or_try_init(py, || {
        let bases = PyTuple::new(py, [py.get_type::<DmsError>(), second])?;
        let dict = PyDict::new(py);
        dict.set_item("__module__", "dms")?;
        dict.set_item("__doc__", doc)?;
        let ty = py.get_type::<PyType>().call1((name, bases, dict))?;
        Ok::<_, PyErr>(ty.cast_into::<PyType>()?.unbind())
    })
    .map(|t| t.bind(py))
}

pub(crate) fn io_failure(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    two_bases(
        py,
        &IO_FAILURE,
        "IOFailure",
        py.get_type::<PyOSError>(),
        "An I/O error of a device (also an OSError).",
    )
}

pub(crate) fn no_space(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    two_bases(
        py,
        &NO_SPACE,
        "NoSpaceError",
        py.get_type::<PyOSError>(),
        "The COW device is full (also an OSError with errno ENOSPC).",
    )
}

pub(crate) fn invalid(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    two_bases(
        py,
        &INVALID,
        "InvalidArgumentError",
        py.get_type::<PyValueError>(),
        "An invalid argument: chunk size, tag 0, memo length, range (also a ValueError).",
    )
}

/// The Python exception class of an error kind.
pub(crate) fn class_of(py: Python<'_>, kind: engine::ErrorKind) -> PyResult<Bound<'_, PyType>> {
    use engine::ErrorKind as K;
    Ok(match kind {
        K::Io => io_failure(py)?.clone(),
        K::NoSpace => no_space(py)?.clone(),
        K::Invalid => invalid(py)?.clone(),
        K::Corrupt => py.get_type::<CorruptError>(),
        K::NotFound => py.get_type::<NotFoundError>(),
        K::Exists => py.get_type::<AlreadyExistsError>(),
        K::Busy => py.get_type::<BusyError>(),
        K::Limit => py.get_type::<LimitError>(),
        K::StoreFailed => py.get_type::<StoreFailedError>(),
        K::Usage => py.get_type::<UsageError>(),
        _ => py.get_type::<DmsError>(),
    })
}

/// The engine's error as the Python exception of its kind; the OSError
/// kinds carry the errno.
pub(crate) fn err(e: engine::Error) -> PyErr {
    let msg = e.to_string();
    let kind = e.kind();
    Python::attach(|py| {
        let made = class_of(py, kind).map(|t| match kind {
            engine::ErrorKind::Io | engine::ErrorKind::NoSpace => {
                PyErr::from_type(t, (e.errno(), msg.clone()))
            }
            _ => PyErr::from_type(t, (msg.clone(),)),
        });
        made.unwrap_or_else(|x| x)
    })
}
