//! Python file objects as the engine's stream reader and writer: the GIL
//! is taken only around each call of the file's method.

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::io;

fn py_io(e: PyErr) -> io::Error {
    io::Error::other(format!("the file object: {e}"))
}

/// Writes go to `file.write` in pieces of up to 1 MiB.
pub struct PyWriter {
    file: Py<PyAny>,
    buf: Vec<u8>,
}

const PIECE: usize = 1 << 20;

impl PyWriter {
    pub fn new(file: Py<PyAny>) -> Self {
        PyWriter {
            file,
            buf: Vec::with_capacity(PIECE),
        }
    }

    fn push(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        Python::attach(|py| -> PyResult<()> {
            let mut at = 0;
            while at < self.buf.len() {
                let n =
                    self.file
                        .call_method1(py, "write", (PyBytes::new(py, &self.buf[at..]),))?;
                // Raw files may write less; None means everything.
                let n: Option<usize> = n.extract(py)?;
                at += n.unwrap_or(self.buf.len() - at).max(1);
            }
            Ok(())
        })
        .map_err(py_io)?;
        self.buf.clear();
        Ok(())
    }
}

impl io::Write for PyWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = b.len().min(PIECE - self.buf.len());
        self.buf.extend_from_slice(&b[..n]);
        if self.buf.len() == PIECE {
            self.push()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.push()?;
        Python::attach(|py| -> PyResult<()> {
            if self.file.bind(py).hasattr("flush")? {
                self.file.call_method0(py, "flush")?;
            }
            Ok(())
        })
        .map_err(py_io)
    }
}

/// Reads come from `file.read(n)` (bytes; empty at the end).
pub struct PyReader {
    file: Py<PyAny>,
}

impl PyReader {
    pub fn new(file: Py<PyAny>) -> Self {
        PyReader { file }
    }
}

impl io::Read for PyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(PIECE);
        Python::attach(|py| -> PyResult<usize> {
            let got = self.file.call_method1(py, "read", (want,))?;
            let b: &[u8] = got
                .extract::<&[u8]>(py)
                .map_err(|_| pyo3::exceptions::PyTypeError::new_err("read() must return bytes"))?;
            let n = b.len().min(buf.len());
            buf[..n].copy_from_slice(&b[..n]);
            Ok(n)
        })
        .map_err(py_io)
    }
}
