//! The JSON of records, for the staging of writes and the reading of facts: a thin
//! seam over the native codec ([`crate::json`], [`crate::py_json`]) plus orjson for the
//! values the core leaves to it.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

pub use crate::json::write_f64;
pub(crate) use crate::py_json::sha256_hex;

static ORJSON_DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `orjson.dumps(obj)` (insertion order), for values the native writer leaves alone.
pub fn orjson_dumps(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    ORJSON_DUMPS
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("orjson")?.getattr("dumps")?.unbind())
        })?
        .bind(py)
        .call1((obj,))?
        .extract::<Vec<u8>>()
}

/// `json` decoded (a value's private copy where a native copy cannot be made, or a
/// record read back).
pub fn decoded(py: Python<'_>, json: &[u8]) -> PyResult<Py<PyAny>> {
    Ok(crate::py_json::loads_bytes(py, json)?.unbind())
}

/// `obj` serialised natively (sorted keys with `sort_keys`), or None if it holds a type
/// or a value the core leaves to the Python path.
pub fn dumps(py: Python<'_>, obj: &Bound<'_, PyAny>, sort_keys: bool) -> PyResult<Option<Vec<u8>>> {
    crate::py_json::dumps_plain(py, obj, sort_keys)
}

/// Write `text` as a JSON string, escaped as orjson escapes.
pub fn write_str(out: &mut Vec<u8>, text: &str) {
    crate::json::write_str(out, text.as_bytes());
}

pub fn string_json(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 2);
    write_str(&mut out, text);
    out
}
