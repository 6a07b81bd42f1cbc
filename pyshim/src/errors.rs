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

/// The engine's error as the Python exception of its kind.
pub(crate) fn err(e: engine::Error) -> PyErr {
    let msg = e.to_string();
    match e.kind() {
        "corrupt" => CorruptError::new_err(msg),
        "not_found" => NotFoundError::new_err(msg),
        "exists" => AlreadyExistsError::new_err(msg),
        "busy" => BusyError::new_err(msg),
        "limit" => LimitError::new_err(msg),
        "store_failed" => StoreFailedError::new_err(msg),
        kind => Python::attach(|py| {
            let made = match kind {
                "no_space" => {
                    no_space(py).map(|t| PyErr::from_type(t.clone(), (e.errno(), msg.clone())))
                }
                "io" => {
                    io_failure(py).map(|t| PyErr::from_type(t.clone(), (e.errno(), msg.clone())))
                }
                _ => invalid(py).map(|t| PyErr::from_type(t.clone(), (msg.clone(),))),
            };
            made.unwrap_or_else(|x| x)
        }),
    }
}
