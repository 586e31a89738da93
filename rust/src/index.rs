//! Indexing a data file: what recovery and hint files need of every fact, in one pass.
//!
//! Theory of operation
//! -------------------
//! [`index_file`] reads the frames of a data file from just after its header and
//! applies the record rules of recovery (see `kilndb.storage.recovery`):
//!
//! * a fact record is indexed by its position, store, key, seq, tombstone flag,
//!   transaction time and id, read by walking the record's fields in their fixed order
//!   ([`fact_fields`]) — every byte of the record is checked to be valid JSON, and a
//!   record not laid out the usual way is parsed as JSON instead;
//! * a batch header `{"batch": n, ...}` makes the next `n` facts one unit: they are
//!   indexed together when the `n`-th arrives, or not at all;
//! * positions must grow; anything else (an unknown record, a header inside a batch,
//!   invalid JSON) stops the scan there.
//!
//! The result says where the intact prefix ends (`good_end`), where a torn tail would be
//! cut (`bad_offset`: a torn batch is cut at its header) and where the damage begins.

use pyo3::prelude::*;

use crate::ids::IdIndex;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::errors::guard;
use crate::errors::storage_error;
use crate::frame::Step;
use crate::frame::Stop;
use crate::keydir::{HintColumns, NewFact};
use crate::py_frame::{borrowed_file, pread_exact};
use crate::py_keydir::{keydir_error, KeyDir};
use crate::record::{is_generated, Walk, BATCH_PREFIX, FACT_PREFIX};

/// The fields of a fact record that the keydir and hint files hold.
#[derive(Debug, Clone, PartialEq)]
pub struct FactFields {
    pub id: String,
    pub store: String,
    pub key: String,
    pub seq: u64,
    pub position: u64,
    pub ttime: f64,
    pub deleted: bool,
}

/// The indexed fields of a fact record laid out as KilnDB writes it (fields in
/// `FACT_FIELDS` order, no spaces), every byte checked; None for anything else.
pub fn fact_fields(body: &[u8]) -> Option<FactFields> {
    let mut w = Walk { buf: body, at: 0 };
    w.literal(FACT_PREFIX)?;
    let id = w.string()?;
    w.literal(b",\"store\":")?;
    let store = w.string()?;
    w.literal(b",\"key\":")?;
    let key = w.string()?;
    w.literal(b",\"seq\":")?;
    let seq = w.unsigned()?;
    w.literal(b",\"position\":")?;
    let position = w.unsigned()?;
    w.literal(b",\"value\":")?;
    w.value(0)?;
    w.literal(b",\"value_hash\":")?;
    w.value(0)?;
    w.literal(b",\"transaction_time\":")?;
    let ttime: f64 = w.number()?.parse().ok()?;
    for field in [
        &b",\"valid_time\":"[..],
        b",\"causation\":",
        b",\"schema_version\":",
        b",\"producer\":",
        b",\"derivation\":",
        b",\"metadata\":",
    ] {
        w.literal(field)?;
        w.value(0)?;
    }
    w.literal(b",\"deleted\":")?;
    let deleted = match w.peek()? {
        b't' => {
            w.literal(b"true")?;
            true
        }
        _ => {
            w.literal(b"false")?;
            false
        }
    };
    w.literal(b"}")?;
    (w.at == body.len()).then_some(FactFields {
        id,
        store,
        key,
        seq,
        position,
        ttime,
        deleted,
    })
}

/// The fields of a fact record in any JSON layout (parsed by Python's decoder).
fn parsed_fields(py: Python<'_>, body: &[u8]) -> PyResult<Option<FactFields>> {
    let Ok(parsed) = crate::jsonw::decoded(py, body) else {
        return Ok(None);
    };
    let Ok(record) = parsed.bind(py).clone().cast_into::<PyDict>() else {
        return Ok(None);
    };
    let text = |name: &str| -> Option<String> { record.get_item(name).ok()??.extract().ok() };
    let number = |name: &str| -> Option<u64> {
        let item = record.get_item(name).ok()??;
        if item.is_instance_of::<pyo3::types::PyBool>() {
            return None;
        }
        item.extract().ok()
    };
    let fields = (|| {
        let ttime_obj = record.get_item("transaction_time").ok()??;
        Some(FactFields {
            id: text("id")?,
            store: text("store")?,
            key: text("key")?,
            seq: number("seq")?,
            position: number("position")?,
            ttime: ttime_obj.extract().ok()?,
            deleted: record.get_item("deleted").ok()??.is_truthy().ok()?,
        })
    })();
    Ok(fields)
}

/// The count of a batch header `{"batch": n, "first": p}`, or None if the body is not one.
fn batch_count(py: Python<'_>, body: &[u8]) -> PyResult<Option<u64>> {
    let Ok(parsed) = crate::jsonw::decoded(py, body) else {
        return Ok(None);
    };
    let Ok(record) = parsed.bind(py).clone().cast_into::<PyDict>() else {
        return Ok(None);
    };
    Ok(match record.get_item("batch")? {
        Some(count) => count.extract::<u64>().ok(),
        None => None,
    })
}

/// One indexed fact and where its frame is.
#[derive(Debug, PartialEq)]
pub(crate) struct Indexed {
    pub(crate) offset: u64,
    pub(crate) size: u64,
    pub(crate) fields: FactFields,
}

/// The facts of one data file and how its frames ended.
#[pyclass(module = "kilndb._core")]
pub struct IndexedFile {
    pub(crate) facts: Vec<Indexed>,
    /// Where the intact prefix of indexed records ends.
    #[pyo3(get)]
    pub(crate) good_end: u64,
    /// Where to cut a torn tail (None if the file ended cleanly).
    #[pyo3(get)]
    pub(crate) bad_offset: Option<u64>,
    /// Where the unreadable bytes begin.
    #[pyo3(get)]
    pub(crate) damage: u64,
    /// How the frames ended: None, "end-marker", "short", "length" or "crc".
    #[pyo3(get)]
    pub(crate) stop_reason: Option<&'static str>,
    /// Records taken: facts and batch headers.
    #[pyo3(get)]
    pub(crate) records: u64,
}

#[pymethods]
impl IndexedFile {
    /// Index the facts into `keydir` (file `file_id`, their offsets moved by `base`),
    /// their client-supplied ids (those that are not what `id_prefix` generates) into
    /// `ids`; returns the last transaction time, or None if no fact was indexed.
    #[pyo3(signature = (keydir, file_id, id_prefix, ids, base = 0))]
    fn load_into(
        &self,
        py: Python<'_>,
        keydir: &Bound<'_, KeyDir>,
        file_id: i64,
        id_prefix: &str,
        ids: &Bound<'_, IdIndex>,
        base: i64,
    ) -> PyResult<Option<f64>> {
        guard(py, || {
            let batch: Vec<NewFact<'_>> = self
                .facts
                .iter()
                .map(|f| NewFact {
                    store: &f.fields.store,
                    key: &f.fields.key,
                    position: f.fields.position as i64,
                    offset: base + f.offset as i64,
                    size: f.size as i64,
                    seq: f.fields.seq as i64,
                    deleted: f.fields.deleted,
                    ttime: f.fields.ttime,
                })
                .collect();
            keydir
                .get()
                .write(py)
                .add_many(file_id, &batch)
                .map_err(|err| keydir_error(py, err))?;
            let mut ids = ids.borrow_mut();
            for f in &self.facts {
                if !is_generated(id_prefix, &f.fields.id, f.fields.position) {
                    ids.ids.insert(&f.fields.id, f.fields.position);
                }
            }
            Ok(self.facts.last().map(|f| f.fields.ttime))
        })
    }

    /// The hint of this file (file `file_id`): the columns of the facts `keydir` still
    /// retains at their place here, as little-endian bytes (position u64, offset u64,
    /// size u32, seq u32 with the tombstone bit, ttime f64, store index u32), then the
    /// store names, the keys, `{position: id}` of client-supplied ids and the bytes of
    /// the facts no longer retained.
    #[allow(clippy::type_complexity)]
    fn hint_columns<'py>(
        &self,
        py: Python<'py>,
        keydir: &Bound<'py, KeyDir>,
        file_id: u64,
        id_prefix: &str,
    ) -> PyResult<(
        Bound<'py, PyTuple>,
        Vec<String>,
        Vec<String>,
        Bound<'py, PyDict>,
        u64,
    )> {
        guard(py, || {
            let (mut positions, mut offsets, mut sizes) = (Vec::new(), Vec::new(), Vec::new());
            let (mut seqs, mut ttimes, mut store_index) = (Vec::new(), Vec::new(), Vec::new());
            let mut stores: Vec<String> = Vec::new();
            let mut store_of: hashbrown::HashMap<&str, u32> = hashbrown::HashMap::new();
            let mut keys: Vec<String> = Vec::new();
            let ids = PyDict::new(py);
            let mut dead = 0u64;
            {
                let index = keydir.get().read(py);
                for f in &self.facts {
                    let position = f.fields.position;
                    let here = index.location(position as i64);
                    if here != Some((file_id, f.offset, f.size as u32)) {
                        dead += f.size;
                        continue;
                    }
                    let store = *store_of.entry(f.fields.store.as_str()).or_insert_with(|| {
                        stores.push(f.fields.store.clone());
                        (stores.len() - 1) as u32
                    });
                    let seq = f.fields.seq as u32 | if f.fields.deleted { 1 << 31 } else { 0 };
                    positions.extend_from_slice(&position.to_le_bytes());
                    offsets.extend_from_slice(&f.offset.to_le_bytes());
                    sizes.extend_from_slice(&(f.size as u32).to_le_bytes());
                    seqs.extend_from_slice(&seq.to_le_bytes());
                    ttimes.extend_from_slice(&f.fields.ttime.to_le_bytes());
                    store_index.extend_from_slice(&store.to_le_bytes());
                    keys.push(f.fields.key.clone());
                    if !is_generated(id_prefix, &f.fields.id, position) {
                        ids.set_item(position, &f.fields.id)?;
                    }
                }
            }
            let columns = PyTuple::new(
                py,
                [positions, offsets, sizes, seqs, ttimes, store_index]
                    .iter()
                    .map(|column| PyBytes::new(py, column)),
            )?;
            Ok((columns, stores, keys, ids, dead))
        })
    }

    /// `{store: highest position}` of the facts of this file (file `file_id`) that
    /// `keydir` no longer retains at their place here: what compacting the file removes
    /// from each store.
    fn dropped_by_store<'py>(
        &self,
        py: Python<'py>,
        keydir: &Bound<'py, KeyDir>,
        file_id: u64,
    ) -> PyResult<Bound<'py, PyDict>> {
        guard(py, || {
            let mut highest: hashbrown::HashMap<&str, u64> = hashbrown::HashMap::new();
            {
                let index = keydir.get().read(py);
                for f in &self.facts {
                    let position = f.fields.position;
                    if index.location(position as i64) != Some((file_id, f.offset, f.size as u32)) {
                        let entry = highest.entry(f.fields.store.as_str()).or_insert(position);
                        *entry = (*entry).max(position);
                    }
                }
            }
            let result = PyDict::new(py);
            for (store, position) in highest {
                result.set_item(store, position)?;
            }
            Ok(result)
        })
    }

    fn __len__(&self) -> usize {
        self.facts.len()
    }

    /// The position of the first fact indexed (0 if none).
    #[getter]
    fn first_position(&self) -> u64 {
        self.facts.first().map_or(0, |f| f.fields.position)
    }

    /// The position of the last fact indexed (0 if none).
    #[getter]
    fn last_position(&self) -> u64 {
        self.facts.last().map_or(0, |f| f.fields.position)
    }

    /// How a hint's columns (as `kilndb.storage.hint.Hint` holds them, the numeric
    /// ones as little-endian bytes) disagree with these facts, or None if every entry
    /// names a fact here with the same fields. `id_prefix`: the database's generated-id
    /// prefix (None: not known, so every id must be listed in `ids`).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (positions, offsets, sizes, seqs, ttimes, store_index, stores, keys, ids, id_prefix))]
    fn hint_mismatch(
        &self,
        py: Python<'_>,
        positions: &[u8],
        offsets: &[u8],
        sizes: &[u8],
        seqs: &[u8],
        ttimes: &[u8],
        store_index: &[u8],
        stores: Vec<String>,
        keys: Vec<String>,
        ids: std::collections::HashMap<u64, String>,
        id_prefix: Option<&str>,
    ) -> PyResult<Option<String>> {
        guard(py, || {
            let store_names: Vec<&str> = stores.iter().map(String::as_str).collect();
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let hint = HintColumns {
                positions,
                offsets,
                sizes,
                seqs,
                ttimes,
                store_index,
                store_names: &store_names,
                keys: &keys,
            };
            Ok(crate::check::hint_mismatch(
                &self.facts,
                &hint,
                &ids,
                id_prefix,
            ))
        })
    }

    /// `(offset, size, position, store, key, seq, deleted, transaction_time, id)` of each
    /// indexed fact, in file order.
    fn facts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        guard(py, || {
            let out = PyList::empty(py);
            for f in &self.facts {
                let fields = &f.fields;
                out.append((
                    f.offset,
                    f.size,
                    fields.position,
                    fields.store.as_str(),
                    fields.key.as_str(),
                    fields.seq,
                    fields.deleted,
                    fields.ttime,
                    fields.id.as_str(),
                ))?;
            }
            Ok(out)
        })
    }
}

/// What a record needs that only Python can give: parsing a record not laid out the
/// usual way.
pub(crate) enum Needs {
    Fact {
        offset: u64,
        size: u64,
        body: (usize, usize),
    },
    Batch {
        offset: u64,
        body: (usize, usize),
    },
}

/// The recovery rules, applied frame by frame (see the module docs).
pub(crate) struct IndexState {
    pub(crate) facts: Vec<Indexed>,
    pending: Vec<Indexed>,
    pub(crate) expected: u64,
    batch_offset: u64,
    /// The position the open batch's header names for its first fact (0: not known).
    batch_first: u64,
    good_end: u64,
    last: u64,
    pub(crate) failed_at: Option<u64>,
    pub(crate) stop: Stop,
    pub(crate) stop_offset: u64,
    /// Records taken: facts and batch headers.
    pub(crate) records: u64,
    /// The stricter rules of `kiln check` (see [`crate::check`]): a seq in range, and a
    /// batch's facts numbered from its header's first position without a gap.
    strict: bool,
}

impl IndexState {
    /// An empty walk of a file whose facts must all be above position `after`; `start`
    /// is the offset it begins at.
    pub(crate) fn new(start: u64, after: u64, strict: bool) -> Self {
        IndexState {
            facts: Vec::new(),
            pending: Vec::new(),
            expected: 0,
            batch_offset: start,
            batch_first: 0,
            good_end: start,
            last: after,
            failed_at: None,
            stop: Stop::Clean,
            stop_offset: start,
            records: 0,
            strict,
        }
    }

    /// Whether a fact breaks the stricter rules of `kiln check`.
    fn irregular(&self, fields: &FactFields) -> bool {
        let numbered = self.batch_first == 0
            || fields.position == self.batch_first + self.pending.len() as u64;
        self.strict && (fields.seq == 0 || fields.seq >= 1 << 31 || !numbered)
    }

    /// Take a fact record (None: not a valid one); false stops the scan.
    fn fact(&mut self, offset: u64, size: u64, fields: Option<FactFields>) -> bool {
        let Some(fields) = fields.filter(|f| !self.irregular(f)) else {
            self.failed_at = Some(offset);
            return false;
        };
        self.records += 1;
        self.pending.push(Indexed {
            offset,
            size,
            fields,
        });
        if (self.pending.len() as u64) < self.expected {
            return true;
        }
        // As recovery always has: a complete batch is taken fact by fact, and a
        // position out of order stops the scan at the frame that completed it.
        self.expected = 0;
        self.batch_first = 0;
        for fact in std::mem::take(&mut self.pending) {
            if fact.fields.position <= self.last {
                self.failed_at = Some(offset);
                return false;
            }
            self.last = fact.fields.position;
            self.facts.push(fact);
        }
        self.good_end = offset + size;
        true
    }

    /// Take a batch header with its count and first position (None: not a valid one;
    /// a first position of 0: not known).
    fn batch(&mut self, offset: u64, header: Option<(u64, u64)>) -> bool {
        match header {
            Some((count, first))
                if count > 0
                    && self.pending.is_empty()
                    && self.expected == 0
                    && !(self.strict && first == 0) =>
            {
                self.expected = count;
                self.batch_offset = offset;
                self.batch_first = first;
                self.records += 1;
                true
            }
            _ => {
                self.failed_at = Some(offset);
                false
            }
        }
    }

    /// Walk the frames of `data` (the bytes of `[base, end)`) from `*p`, natively;
    /// stops when done or at a record only Python can parse.
    pub(crate) fn run(&mut self, data: &[u8], p: &mut usize, base: u64, end: u64) -> Option<Needs> {
        while self.failed_at.is_none() {
            match crate::frame::step(data, *p, base, end, true) {
                Step::Frame {
                    body_start,
                    body_end,
                } => {
                    let offset = base + *p as u64;
                    let size = (body_end - body_start + crate::frame::OVERHEAD) as u64;
                    *p = body_end + crate::frame::CRC_SIZE;
                    let body = &data[body_start..body_end];
                    if body.starts_with(FACT_PREFIX) {
                        match fact_fields(body) {
                            Some(fields) => {
                                self.fact(offset, size, Some(fields));
                            }
                            None => {
                                return Some(Needs::Fact {
                                    offset,
                                    size,
                                    body: (body_start, body_end),
                                })
                            }
                        }
                    } else if body.starts_with(BATCH_PREFIX) {
                        match batch_header(body) {
                            Some(header) => {
                                self.batch(offset, Some(header));
                            }
                            None => {
                                return Some(Needs::Batch {
                                    offset,
                                    body: (body_start, body_end),
                                })
                            }
                        }
                    } else {
                        self.failed_at = Some(offset);
                    }
                }
                Step::Stop(stop) => {
                    self.stop = stop;
                    self.stop_offset = if stop == Stop::Clean {
                        end
                    } else {
                        base + *p as u64
                    };
                    return None;
                }
                Step::More { .. } => unreachable!("a complete buffer never asks for more"),
            }
        }
        None
    }
}

/// The count and first position of a batch header laid out as KilnDB writes it:
/// `{"batch":N,"first":P}`.
pub(crate) fn batch_header(body: &[u8]) -> Option<(u64, u64)> {
    let mut w = Walk { buf: body, at: 0 };
    w.literal(BATCH_PREFIX)?;
    let count = w.unsigned()?;
    w.literal(b",\"first\":")?;
    let first = w.unsigned()?;
    w.literal(b"}")?;
    (w.at == body.len()).then_some((count, first))
}

/// The bytes of `[start, end)` of the file open as `fd` (fewer if it is shorter), read
/// with the GIL released.
pub(crate) fn read_range(
    py: Python<'_>,
    fd: i32,
    path: &str,
    start: u64,
    end: u64,
) -> PyResult<Vec<u8>> {
    let want = end.saturating_sub(start) as usize;
    py.detach(|| pread_exact(&borrowed_file(fd), start, want))
        .map_err(|err| storage_error(py, "read", path, &err))
}

/// Index the facts in `[start, end)` of the data file open as `fd`, whose positions
/// must all be above `after` (see the module docs). The file is read and walked with
/// the GIL released, so that a hint built in the background does not stall the
/// threads serving requests.
#[pyfunction]
pub fn index_file(
    py: Python<'_>,
    fd: i32,
    path: String,
    start: u64,
    end: u64,
    after: u64,
) -> PyResult<IndexedFile> {
    guard(py, || {
        let data = read_range(py, fd, &path, start, end)?;
        // Bytes the file no longer has are a short read: the walk sees them as torn.
        let end = start + data.len() as u64;
        let mut state = IndexState::new(start, after, false);
        let mut p = 0usize;
        loop {
            let needs = py.detach(|| state.run(&data, &mut p, start, end));
            match needs {
                None => break,
                Some(Needs::Fact { offset, size, body }) => {
                    let fields = parsed_fields(py, &data[body.0..body.1])?;
                    state.fact(offset, size, fields);
                }
                Some(Needs::Batch { offset, body }) => {
                    let count = batch_count(py, &data[body.0..body.1])?;
                    state.batch(offset, count.map(|count| (count, 0)));
                }
            }
        }
        let (bad_offset, damage) = if let Some(offset) = state.failed_at {
            let cut = if state.expected > 0 {
                state.batch_offset
            } else {
                offset
            };
            (Some(cut), offset)
        } else if state.expected > 0 {
            (Some(state.batch_offset), state.stop_offset)
        } else if !matches!(state.stop, Stop::Clean | Stop::EndMarker) {
            (Some(state.stop_offset), state.stop_offset)
        } else {
            (None, state.stop_offset)
        };
        Ok(IndexedFile {
            records: state.records,
            facts: state.facts,
            good_end: state.good_end,
            bad_offset,
            damage,
            stop_reason: if state.failed_at.is_some() {
                None
            } else {
                state.stop.reason()
            },
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &[u8] = br#"{"id":"i\u00e9","store":"s","key":"k\"1","seq":2,"position":9,"value":{"a":[1,2.5e3,"x\\y",null,true]},"value_hash":"ab","transaction_time":1733300000.25,"valid_time":null,"causation":null,"schema_version":1,"producer":null,"derivation":{"n":[]},"metadata":{"by":"ann"},"deleted":true}"#;

    #[test]
    fn walks_a_fact_record() {
        let fields = fact_fields(RECORD).expect("a fact");
        assert_eq!(fields.id, "ié");
        assert_eq!(fields.key, "k\"1");
        assert_eq!((fields.seq, fields.position), (2, 9));
        assert_eq!(fields.ttime, 1733300000.25);
        assert!(fields.deleted);
    }

    #[test]
    fn refuses_damaged_or_unusual_records() {
        for cut in [10, 60, RECORD.len() - 1] {
            assert!(fact_fields(&RECORD[..cut]).is_none());
        }
        let mut bad = RECORD.to_vec();
        let at = bad.iter().position(|&b| b == b'[').unwrap();
        bad[at] = b'(';
        assert!(fact_fields(&bad).is_none());
        let spaced = String::from_utf8(RECORD.to_vec())
            .unwrap()
            .replace(",\"seq\"", ", \"seq\"");
        assert!(fact_fields(spaced.as_bytes()).is_none());
        assert!(fact_fields(br#"{"id":"\ud800","store":"s"}"#).is_none());
    }
}
