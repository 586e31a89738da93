//! Errors that cross into Python: every failure of the core is raised as one of the
//! `kilndb.errors` classes (never a new class), with its structured fields.
//!
//! A panic inside the core is a bug, but it must not abort the interpreter nor reach
//! Python as `pyo3_runtime.PanicException` (a `BaseException` that `except Exception`
//! would not catch): [`guard`] turns it into a plain `KilnError` naming the bug.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;

static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn errors_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    ERRORS
        .get_or_try_init(py, || Ok(py.import("kilndb.errors")?.unbind()))
        .map(|module| module.bind(py))
}

/// An instance of `kilndb.errors.<class>` built from `args`, as a `PyErr`.
pub fn kiln_error<'py, A>(py: Python<'py>, class: &str, args: A) -> PyErr
where
    A: pyo3::call::PyCallArgs<'py>,
{
    let built = errors_module(py)
        .and_then(|module| module.getattr(class))
        .and_then(|cls| cls.call1(args));
    match built {
        Ok(instance) => PyErr::from_value(instance),
        Err(err) => err,
    }
}

pub fn protocol_error(py: Python<'_>, message: impl Into<String>) -> PyErr {
    kiln_error(py, "ProtocolError", (message.into(),))
}

pub fn frame_too_large(py: Python<'_>, size: u64, limit: u64) -> PyErr {
    kiln_error(py, "FrameTooLargeError", (size, limit))
}

pub fn invalid_argument(py: Python<'_>, message: impl Into<String>) -> PyErr {
    kiln_error(py, "InvalidArgumentError", (message.into(),))
}

pub fn corrupt_record(py: Python<'_>, path: &str, offset: u64) -> PyErr {
    kiln_error(py, "CorruptRecordError", (path.to_owned(), offset))
}

/// A failed system call on a file, as `DiskFullError` (ENOSPC, EDQUOT) or `StorageError`.
pub fn storage_error(py: Python<'_>, action: &str, path: &str, err: &std::io::Error) -> PyErr {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    match err.raw_os_error() {
        Some(ENOSPC) | Some(EDQUOT) => kiln_error(
            py,
            "DiskFullError",
            (format!("disk full while trying to {action} {path}"),),
        ),
        _ => kiln_error(
            py,
            "StorageError",
            (format!("could not {action} {path}: {err}"),),
        ),
    }
}

/// Run `body`, turning a panic into `KilnError` so that it never aborts the process.
pub fn guard<T>(py: Python<'_>, body: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result,
        Err(payload) => {
            let detail = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(kiln_error(
                py,
                "KilnError",
                (format!("internal error in kilndb._core (a bug): {detail}"),),
            ))
        }
    }
}
