//! Scans: the facts of a data file in position order, for replay, the changefeed and
//! consumers, a read chunk per call.
//!
//! A scan reads the frames of one file from an offset, skips everything that is not a
//! fact, and keeps the facts with `last < position <= until` that the keydir still
//! retains and whose store is followed (without a filter, KilnDB's own `kiln.` stores
//! stay out of sight). It filters on the record's leading fields read straight from the
//! bytes ([`crate::record::fact_head`]) and decodes only the facts it keeps: into
//! `Fact` objects, or, for transports, `(position, body)` pairs whose body is the
//! fact's wire JSON as stored.

use hashbrown::HashSet;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple, PyType};

use crate::errors::guard;
use crate::py_frame::FrameReader;
use crate::py_keydir::KeyDir;
use crate::record::{fact_head, FACT_PREFIX};

const RESERVED_STORE_PREFIX: &[u8] = b"kiln.";

/// A fact's position, its store's name, and its record if it had to be parsed to tell.
type Located<'py> = (u64, Vec<u8>, Option<Bound<'py, PyDict>>);

/// Where a fact's record says it belongs, from its leading fields or, for a record not
/// laid out the usual way, from its parsed JSON.
fn position_and_store<'py>(py: Python<'py>, body: &[u8]) -> PyResult<Option<Located<'py>>> {
    if let Some(head) = fact_head(body) {
        if !head.escaped || !head.store.contains(&b'\\') {
            return Ok(Some((head.position, head.store.to_vec(), None)));
        }
    }
    let parsed = crate::jsonw::decoded(py, body)?.into_bound(py);
    let Ok(record) = parsed.cast_into::<PyDict>() else {
        return Ok(None);
    };
    let position: u64 = match record.get_item("position")? {
        Some(p) => p.extract()?,
        None => return Ok(None),
    };
    let store: String = match record.get_item("store")? {
        Some(s) => s.extract()?,
        None => return Ok(None),
    };
    Ok(Some((position, store.into_bytes(), Some(record))))
}

/// A scan of one data file (see the module docs).
#[pyclass(module = "kilndb._core")]
pub struct FactScanner {
    reader: FrameReader,
    /// The highest position read so far (kept or not).
    #[pyo3(get)]
    last: u64,
    until: u64,
    stores: Option<HashSet<Vec<u8>>>,
    raw: bool,
    fact_type: Py<PyType>,
    /// Whether a fact beyond `until` was reached (the scan is over for every file).
    #[pyo3(get)]
    reached_until: bool,
}

#[pymethods]
impl FactScanner {
    /// Scan `[start, end)` of the data file open as `fd` for facts after `last` up to
    /// `until`; `stores`: the stores followed (None: all but KilnDB's own); `raw`: yield
    /// `(position, body)` instead of `fact_type` instances.
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (fd, path, start, end, last, until, stores, raw, fact_type))]
    fn new(
        fd: i32,
        path: String,
        start: u64,
        end: u64,
        last: u64,
        until: u64,
        stores: Option<Vec<String>>,
        raw: bool,
        fact_type: Bound<'_, PyType>,
    ) -> Self {
        FactScanner {
            reader: FrameReader::new(fd, start, end, path),
            last,
            until,
            stores: stores.map(|names| names.into_iter().map(String::into_bytes).collect()),
            raw,
            fact_type: fact_type.unbind(),
            reached_until: false,
        }
    }

    /// Where the file's frames stopped being readable, and why (see `FrameReader`).
    #[getter]
    fn stop_offset(&self) -> u64 {
        self.reader.stop_offset
    }

    #[getter]
    fn stop_reason(&self) -> Option<&'static str> {
        self.reader.stop.reason()
    }

    /// The kept facts of the next read chunk (possibly none), or None when the scan of
    /// this file is over. `keydir` says which positions are still retained.
    fn next_batch<'py>(
        &mut self,
        py: Python<'py>,
        keydir: &Bound<'py, KeyDir>,
    ) -> PyResult<Option<Bound<'py, PyList>>> {
        guard(py, || {
            if self.reached_until || self.reader.finished {
                return Ok(None);
            }
            let ranges = self.reader.next_ranges(py)?;
            let _pause = crate::pyfact::GcPause::new(py);
            let out = PyList::empty(py);
            let index = keydir.get();
            for (_, start, end) in ranges {
                let body = &self.reader.buf[start..end];
                if !body.starts_with(FACT_PREFIX) {
                    continue;
                }
                let Some((position, store, parsed)) = position_and_store(py, body)? else {
                    continue;
                };
                if position <= self.last {
                    continue;
                }
                if position > self.until {
                    self.reached_until = true;
                    break;
                }
                self.last = position;
                if !index.read(py).is_retained(position as i64) {
                    continue;
                }
                let followed = match &self.stores {
                    Some(stores) => stores.contains(&store),
                    None => !store.starts_with(RESERVED_STORE_PREFIX),
                };
                if !followed {
                    continue;
                }
                if self.raw {
                    let pair = PyTuple::new(
                        py,
                        [
                            position.into_pyobject(py)?.into_any(),
                            PyBytes::new(py, body).into_any(),
                        ],
                    )?;
                    out.append(pair)?;
                    continue;
                }
                match parsed {
                    Some(record) => out.append(crate::pyfact::new_fact(
                        py,
                        self.fact_type.bind(py),
                        record,
                    )?)?,
                    None => out.append(crate::py_json::loads_instance(
                        py,
                        body,
                        self.fact_type.bind(py),
                    )?)?,
                }
            }
            Ok(Some(out))
        })
    }
}
