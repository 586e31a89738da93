//! Python binding of the keydir: `kilndb._core.KeyDir`.
//!
//! The class is frozen and keeps the keydir in a `parking_lot::RwLock`, so concurrent
//! Python threads never meet a PyO3 borrow error. No Python code runs while the lock is
//! held (arguments are converted before, results after), and a thread never waits for
//! the lock while holding the GIL: if the lock is taken it waits with the GIL released.
//! Whole-file work (`load_columns`, `drop_superseded`, `drop_older_than`) runs with the
//! GIL released.

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use pyo3::exceptions::PyMemoryError;
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::errors::{guard, invalid_argument};
use crate::keydir::{self, Freed, HintColumns, NewFact};

pub(crate) fn keydir_error(py: Python<'_>, err: keydir::Error) -> PyErr {
    match err {
        keydir::Error::NoMemory => PyMemoryError::new_err(err.to_string()),
        other => invalid_argument(py, other.to_string()),
    }
}

/// A store name or key to index: one that is not UTF-8 (a lone surrogate) is refused.
fn utf8<'a>(py: Python<'_>, text: &'a Bound<'_, PyString>, what: &str) -> PyResult<&'a str> {
    text.to_str()
        .map_err(|_| invalid_argument(py, format!("{what} is not valid UTF-8 text")))
}

/// A store name, key or prefix to look up: one that is not UTF-8 matches nothing.
fn lookup<'a>(text: &'a Bound<'_, PyString>) -> Option<&'a str> {
    text.to_str().ok()
}

fn check_limit(py: Python<'_>, limit: Option<i64>) -> PyResult<Option<usize>> {
    match limit {
        None => Ok(None),
        Some(limit) => usize::try_from(limit)
            .map(Some)
            .map_err(|_| invalid_argument(py, format!("limit {limit} is negative"))),
    }
}

/// The in-memory index of every retained fact of a database (see `keydir.rs`).
#[pyclass(module = "kilndb._core", frozen)]
pub struct KeyDir {
    inner: RwLock<keydir::KeyDir>,
}

impl KeyDir {
    pub(crate) fn read(&self, py: Python<'_>) -> RwLockReadGuard<'_, keydir::KeyDir> {
        loop {
            if let Some(guard) = self.inner.try_read() {
                return guard;
            }
            py.detach(|| drop(self.inner.read()));
        }
    }

    pub(crate) fn write(&self, py: Python<'_>) -> RwLockWriteGuard<'_, keydir::KeyDir> {
        loop {
            if let Some(guard) = self.inner.try_write() {
                return guard;
            }
            py.detach(|| drop(self.inner.write()));
        }
    }
}

#[pymethods]
impl KeyDir {
    #[new]
    #[pyo3(signature = (base = 1))]
    fn new(py: Python<'_>, base: i64) -> PyResult<Self> {
        guard(py, || {
            let inner = keydir::KeyDir::new(base).map_err(|err| keydir_error(py, err))?;
            Ok(KeyDir {
                inner: RwLock::new(inner),
            })
        })
    }

    #[getter]
    fn base(&self, py: Python<'_>) -> PyResult<i64> {
        guard(py, || Ok(self.read(py).base()))
    }

    #[getter]
    fn last_position(&self, py: Python<'_>) -> PyResult<i64> {
        guard(py, || Ok(self.read(py).last_position()))
    }

    #[getter]
    fn facts(&self, py: Python<'_>) -> PyResult<u64> {
        guard(py, || Ok(self.read(py).facts()))
    }

    #[getter]
    fn key_count(&self, py: Python<'_>) -> PyResult<usize> {
        guard(py, || Ok(self.read(py).key_count()))
    }

    #[getter]
    fn store_count(&self, py: Python<'_>) -> PyResult<usize> {
        guard(py, || Ok(self.read(py).store_count()))
    }

    fn memory_bytes(&self, py: Python<'_>) -> PyResult<usize> {
        guard(py, || Ok(self.read(py).memory_bytes()))
    }

    #[allow(clippy::too_many_arguments)]
    fn add(
        &self,
        py: Python<'_>,
        store: &Bound<'_, PyString>,
        key: &Bound<'_, PyString>,
        position: i64,
        file_id: i64,
        offset: i64,
        size: i64,
        seq: i64,
        deleted: bool,
        ttime: f64,
    ) -> PyResult<()> {
        guard(py, || {
            let fact = NewFact {
                store: utf8(py, store, "store")?,
                key: utf8(py, key, "key")?,
                position,
                offset,
                size,
                seq,
                deleted,
                ttime,
            };
            let result = self.write(py).add(file_id, &fact);
            result.map_err(|err| keydir_error(py, err))
        })
    }

    /// Index a batch of `(store, key, position, offset, size, seq, deleted, ttime)` of
    /// file `file_id`: validated whole before anything changes.
    #[allow(clippy::type_complexity)]
    fn add_many(
        &self,
        py: Python<'_>,
        file_id: i64,
        facts: Vec<(
            Bound<'_, PyString>,
            Bound<'_, PyString>,
            i64,
            i64,
            i64,
            i64,
            bool,
            f64,
        )>,
    ) -> PyResult<()> {
        guard(py, || {
            let mut batch = Vec::with_capacity(facts.len());
            for (store, key, position, offset, size, seq, deleted, ttime) in &facts {
                batch.push(NewFact {
                    store: utf8(py, store, "store")?,
                    key: utf8(py, key, "key")?,
                    position: *position,
                    offset: *offset,
                    size: *size,
                    seq: *seq,
                    deleted: *deleted,
                    ttime: *ttime,
                });
            }
            let result = self.write(py).add_many(file_id, &batch);
            result.map_err(|err| keydir_error(py, err))
        })
    }

    /// Index a hint file's columns (little-endian raw bytes), with the GIL released.
    #[allow(clippy::too_many_arguments)]
    fn load_columns(
        &self,
        py: Python<'_>,
        file_id: i64,
        positions: &[u8],
        offsets: &[u8],
        sizes: &[u8],
        seqs: &[u8],
        ttimes: &[u8],
        store_index: &[u8],
        store_names: Vec<Bound<'_, PyString>>,
        keys: Vec<Bound<'_, PyString>>,
    ) -> PyResult<()> {
        guard(py, || {
            let store_names = store_names
                .iter()
                .map(|name| utf8(py, name, "store"))
                .collect::<PyResult<Vec<&str>>>()?;
            let keys = keys
                .iter()
                .map(|key| utf8(py, key, "key"))
                .collect::<PyResult<Vec<&str>>>()?;
            let columns = HintColumns {
                positions,
                offsets,
                sizes,
                seqs,
                ttimes,
                store_index,
                store_names: &store_names,
                keys: &keys,
            };
            let inner = &self.inner;
            let result = py.detach(|| inner.write().load_columns(file_id, &columns));
            result.map_err(|err| keydir_error(py, err))
        })
    }

    /// Make `position` the last indexed position (unretained) if it is beyond it.
    fn pad_to(&self, py: Python<'_>, position: i64) -> PyResult<()> {
        guard(py, || {
            let result = self.write(py).pad_to(position);
            result.map_err(|err| keydir_error(py, err))
        })
    }

    fn location(&self, py: Python<'_>, position: i64) -> PyResult<Option<(u64, u64, u32)>> {
        guard(py, || Ok(self.read(py).location(position)))
    }

    fn locations(
        &self,
        py: Python<'_>,
        positions: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<Option<(u64, u64, u32)>>> {
        guard(py, || {
            let positions = positions
                .try_iter()?
                .map(|position| position?.extract::<i64>())
                .collect::<PyResult<Vec<i64>>>()?;
            let keydir = self.read(py);
            Ok(positions.iter().map(|&p| keydir.location(p)).collect())
        })
    }

    /// Where the retained facts among `positions` are, as a read plan: the ids of the
    /// files involved, and for each fact (in order) 16 bytes, little-endian: u32 index
    /// into those ids, u64 offset, u32 frame size. Not-retained positions are skipped.
    fn plan<'py>(
        &self,
        py: Python<'py>,
        positions: Vec<i64>,
    ) -> PyResult<(Vec<u64>, Bound<'py, pyo3::types::PyBytes>)> {
        guard(py, || {
            let mut files: Vec<u64> = Vec::new();
            let mut packed: Vec<u8> = Vec::with_capacity(positions.len() * 16);
            {
                let keydir = self.read(py);
                for position in positions {
                    let Some((file_id, offset, size)) = keydir.location(position) else {
                        continue;
                    };
                    let index = match files.iter().rposition(|&f| f == file_id) {
                        Some(index) => index,
                        None => {
                            files.push(file_id);
                            files.len() - 1
                        }
                    };
                    packed.extend_from_slice(&(index as u32).to_le_bytes());
                    packed.extend_from_slice(&offset.to_le_bytes());
                    packed.extend_from_slice(&size.to_le_bytes());
                }
            }
            Ok((files, pyo3::types::PyBytes::new(py, &packed)))
        })
    }

    fn relocate(&self, py: Python<'_>, position: i64, file_id: i64, offset: i64) -> PyResult<()> {
        guard(py, || {
            let result = self.write(py).relocate(position, file_id, offset);
            result.map_err(|err| keydir_error(py, err))
        })
    }

    /// The retained facts of data file `file_id`, whose positions are in
    /// `first..end`: their positions, offsets and frame sizes in position order, and
    /// the highest position in the range that is no longer retained (0 if none).
    #[allow(clippy::type_complexity)]
    fn live_in_file(
        &self,
        py: Python<'_>,
        file_id: u64,
        first: i64,
        end: i64,
    ) -> PyResult<(Vec<i64>, Vec<u64>, Vec<u64>, i64)> {
        guard(py, || {
            let keydir = self.read(py);
            let (mut positions, mut offsets, mut sizes) = (Vec::new(), Vec::new(), Vec::new());
            let mut dropped = 0;
            for position in first..end {
                match keydir.location(position) {
                    None => dropped = position,
                    Some((file, offset, size)) if file == file_id => {
                        positions.push(position);
                        offsets.push(offset);
                        sizes.push(u64::from(size));
                    }
                    Some(_) => {}
                }
            }
            Ok((positions, offsets, sizes, dropped))
        })
    }

    /// `{store: highest position}` of the facts freed in data file `file_id` since the
    /// last call for that file (what compacting it removes from each store).
    fn take_dropped<'py>(
        &self,
        py: Python<'py>,
        file_id: u64,
    ) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        guard(py, || {
            let dropped = self.write(py).take_dropped(file_id);
            let result = pyo3::types::PyDict::new(py);
            for (store, position) in dropped {
                result.set_item(store, position)?;
            }
            Ok(result)
        })
    }

    /// Point the facts at `positions` still in data file `file_id` to their `offsets`
    /// in its rewritten copy; the frame bytes (of `sizes`) of those dropped meanwhile.
    fn relocate_many(
        &self,
        py: Python<'_>,
        file_id: i64,
        positions: Vec<i64>,
        offsets: Vec<i64>,
        sizes: Vec<u64>,
    ) -> PyResult<u64> {
        guard(py, || {
            if positions.len() != offsets.len() || positions.len() != sizes.len() {
                return Err(crate::errors::invalid_argument(
                    py,
                    "positions, offsets and sizes differ in length",
                ));
            }
            let mut keydir = self.write(py);
            let mut dead = 0;
            for ((&position, &offset), &size) in positions.iter().zip(&offsets).zip(&sizes) {
                match keydir.location(position) {
                    Some((file, _, _)) if file as i64 == file_id => keydir
                        .relocate(position, file_id, offset)
                        .map_err(|err| keydir_error(py, err))?,
                    _ => dead += size,
                }
            }
            Ok(dead)
        })
    }

    fn is_retained(&self, py: Python<'_>, position: i64) -> PyResult<bool> {
        guard(py, || Ok(self.read(py).is_retained(position)))
    }

    fn seq_of(&self, py: Python<'_>, position: i64) -> PyResult<(u32, bool)> {
        guard(py, || {
            let result = self.read(py).seq_of(position);
            result.map_err(|err| keydir_error(py, err))
        })
    }

    fn ttime_of(&self, py: Python<'_>, position: i64) -> PyResult<f64> {
        guard(py, || {
            let result = self.read(py).ttime_of(position);
            result.map_err(|err| keydir_error(py, err))
        })
    }

    fn position_at_time(&self, py: Python<'_>, as_of: f64) -> PyResult<i64> {
        guard(py, || Ok(self.read(py).position_at_time(as_of)))
    }

    fn first_retained_at_or_after(&self, py: Python<'_>, position: i64) -> PyResult<Option<i64>> {
        guard(py, || {
            Ok(self.read(py).first_retained_at_or_after(position))
        })
    }

    fn latest(
        &self,
        py: Python<'_>,
        store: &Bound<'_, PyString>,
        key: &Bound<'_, PyString>,
    ) -> PyResult<Option<i64>> {
        guard(py, || {
            let (Some(store), Some(key)) = (lookup(store), lookup(key)) else {
                return Ok(None);
            };
            Ok(self.read(py).latest(store, key))
        })
    }

    fn latest_state(
        &self,
        py: Python<'_>,
        store: &Bound<'_, PyString>,
        key: &Bound<'_, PyString>,
    ) -> PyResult<Option<(i64, u32, bool)>> {
        guard(py, || {
            let (Some(store), Some(key)) = (lookup(store), lookup(key)) else {
                return Ok(None);
            };
            Ok(self.read(py).latest_state(store, key))
        })
    }

    fn positions(
        &self,
        py: Python<'_>,
        store: &Bound<'_, PyString>,
        key: &Bound<'_, PyString>,
    ) -> PyResult<Vec<i64>> {
        guard(py, || {
            let (Some(store), Some(key)) = (lookup(store), lookup(key)) else {
                return Ok(Vec::new());
            };
            Ok(self.read(py).positions(store, key))
        })
    }

    /// Where the key's latest retained fact (as of a transaction time, if given) is:
    /// `(position, file_id, offset, size)`, or None.
    #[pyo3(signature = (store, key, as_of = None))]
    fn locate(
        &self,
        py: Python<'_>,
        store: &Bound<'_, PyString>,
        key: &Bound<'_, PyString>,
        as_of: Option<f64>,
    ) -> PyResult<Option<(i64, u64, u64, u32)>> {
        guard(py, || {
            let (Some(store), Some(key)) = (lookup(store), lookup(key)) else {
                return Ok(None);
            };
            let index = self.read(py);
            let position = match as_of {
                None => index.latest(store, key),
                Some(as_of) => index.position_as_of(store, key, as_of),
            };
            Ok(position.and_then(|p| {
                index
                    .location(p)
                    .map(|(file_id, offset, size)| (p, file_id, offset, size))
            }))
        })
    }

    fn position_as_of(
        &self,
        py: Python<'_>,
        store: &Bound<'_, PyString>,
        key: &Bound<'_, PyString>,
        as_of: f64,
    ) -> PyResult<Option<i64>> {
        guard(py, || {
            let (Some(store), Some(key)) = (lookup(store), lookup(key)) else {
                return Ok(None);
            };
            Ok(self.read(py).position_as_of(store, key, as_of))
        })
    }

    #[pyo3(signature = (store, key, since_seq = 0, until_seq = None, limit = None, visible = None))]
    #[allow(clippy::too_many_arguments)]
    fn history(
        &self,
        py: Python<'_>,
        store: &Bound<'_, PyString>,
        key: &Bound<'_, PyString>,
        since_seq: i64,
        until_seq: Option<i64>,
        limit: Option<i64>,
        visible: Option<i64>,
    ) -> PyResult<Vec<i64>> {
        guard(py, || {
            let limit = check_limit(py, limit)?;
            let (Some(store), Some(key)) = (lookup(store), lookup(key)) else {
                return Ok(Vec::new());
            };
            let keydir = self.read(py);
            Ok(keydir.history(store, key, since_seq, until_seq, limit, visible))
        })
    }

    #[pyo3(signature = (store, prefix, limit = None, live_only = true, after = None))]
    fn keys(
        &self,
        py: Python<'_>,
        store: &Bound<'_, PyString>,
        prefix: &Bound<'_, PyString>,
        limit: Option<i64>,
        live_only: bool,
        after: Option<&Bound<'_, PyString>>,
    ) -> PyResult<Vec<String>> {
        guard(py, || {
            let limit = check_limit(py, limit)?;
            let (Some(store), Some(prefix)) = (lookup(store), lookup(prefix)) else {
                return Ok(Vec::new());
            };
            let after = match after {
                None => None,
                Some(after) => match lookup(after) {
                    Some(after) => Some(after),
                    None => return Ok(Vec::new()),
                },
            };
            Ok(self.read(py).keys(store, prefix, limit, live_only, after))
        })
    }

    fn iter_keys(
        &self,
        py: Python<'_>,
        store: &Bound<'_, PyString>,
    ) -> PyResult<Vec<(String, i64)>> {
        guard(py, || match lookup(store) {
            Some(store) => Ok(self.read(py).iter_keys(store)),
            None => Ok(Vec::new()),
        })
    }

    fn stores(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        guard(py, || Ok(self.read(py).stores()))
    }

    fn store_facts(&self, py: Python<'_>, store: &Bound<'_, PyString>) -> PyResult<u64> {
        guard(py, || {
            Ok(lookup(store).map_or(0, |store| self.read(py).store_facts(store)))
        })
    }

    fn drop(
        &self,
        py: Python<'_>,
        store: &Bound<'_, PyString>,
        key: &Bound<'_, PyString>,
        positions: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<Freed>> {
        guard(py, || {
            let positions = positions
                .try_iter()?
                .map(|position| position?.extract::<i64>())
                .collect::<PyResult<Vec<i64>>>()?;
            let (Some(store), Some(key)) = (lookup(store), lookup(key)) else {
                return Ok(Vec::new());
            };
            Ok(self.write(py).drop_positions(store, key, &positions))
        })
    }

    fn drop_superseded(&self, py: Python<'_>, store: &Bound<'_, PyString>) -> PyResult<Vec<Freed>> {
        guard(py, || {
            let Some(store) = lookup(store) else {
                return Ok(Vec::new());
            };
            let inner = &self.inner;
            Ok(py.detach(|| inner.write().drop_superseded(store)))
        })
    }

    fn drop_older_than(
        &self,
        py: Python<'_>,
        store: &Bound<'_, PyString>,
        horizon: f64,
    ) -> PyResult<Vec<Freed>> {
        guard(py, || {
            let Some(store) = lookup(store) else {
                return Ok(Vec::new());
            };
            let inner = &self.inner;
            Ok(py.detach(|| inner.write().drop_older_than(store, horizon)))
        })
    }

    /// Check every internal invariant (tests): raises KilnError naming the first broken.
    fn _check_invariants(&self, py: Python<'_>) -> PyResult<()> {
        guard(py, || {
            let result = self.read(py).check_invariants();
            result.map_err(|problem| {
                crate::errors::kiln_error(
                    py,
                    "KilnError",
                    (format!("keydir invariant: {problem}"),),
                )
            })
        })
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        guard(py, || {
            let keydir = self.read(py);
            Ok(format!(
                "KeyDir(base={}, last_position={}, facts={}, keys={}, stores={})",
                keydir.base(),
                keydir.last_position(),
                keydir.facts(),
                keydir.key_count(),
                keydir.store_count()
            ))
        })
    }
}
