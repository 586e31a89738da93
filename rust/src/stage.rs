//! Staging a batch of writes: the write half of the log's one door, called once per batch
//! with the log's lock held.
//!
//! Theory of operation
//! -------------------
//! [`Stager::stage`] takes a batch of `kilndb.Write` tuples and, in two passes:
//!
//! 1. *prepares* each write: checks its arguments, serialises its value as canonical JSON
//!    and hashes it. The common write (valid plain arguments, a plain JSON value) is done
//!    here; anything else is handed to the Python `prepare` function, which raises the
//!    precise `InvalidArgumentError` or returns a `PreparedWrite` for the exotic value.
//!    A write that comes with the value hash it claims (a whole fact being imported) is
//!    refused when the hash computed here differs.
//! 2. *stages* each prepared write against the state of its key (expected-seq check,
//!    tombstones, idempotent ids), gives it its position, seq and transaction time (the
//!    batch's, or the write's own when the caller decided one per write), encodes its
//!    record (the frame body written to the data file, byte for byte what the
//!    pure-Python engine wrote) and builds the `Fact` the caller gets back.
//!
//! An id is looked up in the log's id index and keydir without leaving Rust when the log
//! has its index at hand (`log.ids`, an `IdIndex`); the log's `_stored_position` answers
//! for any other log, for an id that is not ASCII but has this database's generated
//! form, and refuses a generated id naming a position not written yet.
//!
//! [`Stager::stage_import`] stages a batch of an import that [`crate::import`] read
//! from JSON text: its writes come prepared, with no Python object behind them, and go
//! through the second pass alone, each fact's transaction time decided once it is known
//! to be written (the rule of `FactLog.commit_imported`).
//!
//! Nothing is written or indexed here: the caller appends [`Staged::data`] to the active
//! file and then calls [`Staged::apply`] with where it landed, so a failed append leaves
//! the keydir untouched. Each fact is indexed with its own transaction time.

use std::borrow::Cow;
use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use pyo3::prelude::*;

use crate::ids::IdIndex;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple, PyType};

use crate::errors::{guard, invalid_argument, kiln_error};
use crate::frame;
use crate::import::{with_origin_time, ImportLines};
use crate::jsonw;
use crate::keydir::NewFact;
use crate::py_keydir::{keydir_error, KeyDir};

pub(crate) const MAX_KEY_CHARS: usize = 1024;
pub(crate) const MAX_ID_CHARS: usize = 256;
const RESERVED_STORE_PREFIX: &str = "kiln.";
/// The largest frame buffer kept between batches.
const SCRATCH_LIMIT: usize = 16 << 20;

/// The fields of a fact, in the order of its record (`kilndb.model.FACT_FIELDS`).
pub(crate) const FACT_FIELDS: [&str; 15] = [
    "id",
    "store",
    "key",
    "seq",
    "position",
    "value",
    "value_hash",
    "transaction_time",
    "valid_time",
    "causation",
    "schema_version",
    "producer",
    "derivation",
    "metadata",
    "deleted",
];

static FIELD_NAMES: PyOnceLock<Vec<Py<PyString>>> = PyOnceLock::new();
static WRITE_FIELD_NAMES: PyOnceLock<Vec<Py<PyString>>> = PyOnceLock::new();

/// The fields of a `kilndb.Write`, in order.
const WRITE_FIELDS: [&str; 12] = [
    "store",
    "key",
    "value",
    "expected_seq",
    "id",
    "causation",
    "valid_time",
    "schema_version",
    "producer",
    "derivation",
    "metadata",
    "deleted",
];

fn write_field_names(py: Python<'_>) -> &[Py<PyString>] {
    WRITE_FIELD_NAMES.get_or_init(py, || {
        WRITE_FIELDS
            .iter()
            .map(|name| PyString::intern(py, name).unbind())
            .collect()
    })
}

fn field_names(py: Python<'_>) -> &[Py<PyString>] {
    FIELD_NAMES.get_or_init(py, || {
        FACT_FIELDS
            .iter()
            .map(|name| PyString::intern(py, name).unbind())
            .collect()
    })
}

/// Is `name` a store name a user may write to (`[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}`, not
/// under the reserved prefix)? False sends the write to Python for the precise error.
pub(crate) fn plain_store_name(name: &str, trusted: bool) -> bool {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > 128 {
        return false;
    }
    let first_ok = bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_';
    let rest_ok = bytes[1..]
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    first_ok && rest_ok && (trusted || !name.starts_with(RESERVED_STORE_PREFIX))
}

pub(crate) fn char_len_at_most(text: &str, limit: usize) -> bool {
    text.len() <= limit || text.chars().count() <= limit
}

/// A field's JSON: most are `null` or `{}`, which need no buffer of their own.
pub(crate) type Json = Cow<'static, [u8]>;
pub(crate) const NULL: Json = Cow::Borrowed(b"null");
pub(crate) const EMPTY_OBJECT: Json = Cow::Borrowed(b"{}");

/// One write, checked and serialised: everything its record is made of.
pub(crate) struct Prepared {
    pub(crate) store_text: String,
    pub(crate) key_text: String,
    pub(crate) value_json: Vec<u8>,
    pub(crate) value_hash: String,
    pub(crate) expected_seq: Option<u64>,
    pub(crate) id_text: Option<String>,
    pub(crate) causation_json: Json,
    pub(crate) valid_time: Option<f64>,
    pub(crate) schema_version: i64,
    pub(crate) producer_json: Json,
    pub(crate) derivation_json: Json,
    pub(crate) metadata_json: Json,
    pub(crate) deleted: bool,
    /// The write's fields as Python objects, for the Fact returned; None for a write
    /// read from JSON text, which is only ever staged for the wire.
    pub(crate) objects: Option<Objects>,
}

/// A write's fields as the Fact returned for it holds them.
pub(crate) struct Objects {
    store: Py<PyString>,
    key: Py<PyString>,
    /// The value as readers see it (a private copy for mutable values; the value itself
    /// when staged for the wire, where no Fact is built); None if deleted.
    value: Option<Py<PyAny>>,
    id: Option<Py<PyString>>,
    causation: Option<Py<PyString>>,
    producer: Py<PyAny>,
    derivation: Py<PyAny>,
    /// The metadata as readers see it (a private copy); None when staged for the wire.
    metadata: Option<Py<PyDict>>,
}

/// What became of one write of the batch.
enum Outcome {
    /// Written by this batch: index into the staged facts.
    Written(usize),
    /// An idempotent retry: the fact already stored.
    Stored(Py<PyAny>),
    /// Refused (only when the batch is not atomic).
    Refused(PyErr),
}

/// One fact this batch writes, as the keydir will index it.
struct Entry {
    store: String,
    key: String,
    position: u64,
    size: u64,
    seq: u64,
    deleted: bool,
    id: Option<String>,
    ttime: f64,
    /// Where its write is in the batch.
    write: usize,
}

/// Where a batch is staged: the log (for ids stored already), its keydir, its next
/// position and its limit on a batch's bytes.
struct Target<'a, 'py> {
    log: &'a Bound<'py, PyAny>,
    keydir: &'a Bound<'py, KeyDir>,
    next_position: u64,
    max_record_bytes: u64,
}

/// How a batch is staged: see [`Stager::stage`].
#[derive(Clone, Copy)]
struct Mode {
    atomic: bool,
    wire: bool,
    raw: bool,
    outcomes: bool,
}

/// The position a generated id of the database with `prefix` encodes, or None if `id`
/// is not one (the rule of `kilndb.storage.ids.IdCodec.position_of`, for ASCII ids).
fn generated_position(prefix: &str, id: &str) -> Option<u64> {
    let bytes = id.as_bytes();
    if bytes.len() != 36 || !id.starts_with(prefix) || bytes[23] != b'-' {
        return None;
    }
    let mut low: u64 = 0;
    for &b in bytes[19..23].iter().chain(&bytes[24..]) {
        low = (low << 4) | u64::from((b as char).to_digit(16)?);
    }
    (low >> 62 == 2).then_some(low & ((1 << 62) - 1))
}

/// The message refusing a whole fact whose claimed value hash is not its value's (as
/// `kilndb.engine.writes.fact_write` words it).
fn hash_mismatch(py: Python<'_>, claimed: &str, actual: &str) -> PyResult<PyErr> {
    let head: String = claimed.chars().take(80).collect();
    let shown = PyString::new(py, &head).repr()?;
    Ok(invalid_argument(
        py,
        format!(
            "value_hash {} does not match the value (its SHA-256 of canonical JSON is \
             '{actual}'): the fact was altered or hashed otherwise",
            shown.to_str()?
        ),
    ))
}

/// Builds staged batches for one database.
#[pyclass(module = "kilndb._core", frozen)]
pub struct Stager {
    scratch: parking_lot::Mutex<Vec<u8>>,
    write_type: Py<PyType>,
    fact_type: Py<PyType>,
    prepare: Py<PyAny>,
    fragment: Py<PyAny>,
    id_prefix: String,
}

impl Stager {
    fn prepare_one(
        &self,
        py: Python<'_>,
        write: &Bound<'_, PyAny>,
        trusted: bool,
        wire: bool,
    ) -> PyResult<Prepared> {
        if let Some(prepared) = self.fast_prepare(py, write, trusted, wire)? {
            return Ok(prepared);
        }
        let prepared = self.prepare.bind(py).call1((write, trusted))?;
        self.python_prepared(py, &prepared)
    }

    /// The common write, prepared without leaving Rust; None sends it to Python.
    /// `wire`: no Fact will be built, so the value needs no private copy.
    fn fast_prepare(
        &self,
        py: Python<'_>,
        write: &Bound<'_, PyAny>,
        trusted: bool,
        wire: bool,
    ) -> PyResult<Option<Prepared>> {
        // A `kilndb.Write`, or a write request's checked params (a dict of the same
        // fields by name, as the wire protocol carries them).
        let fields: [Bound<'_, PyAny>; 12] = if write.get_type().is(self.write_type.bind(py)) {
            let tuple = write.cast::<PyTuple>()?;
            if tuple.len() != 12 {
                return Ok(None);
            }
            let mut items = tuple.iter();
            std::array::from_fn(|_| items.next().unwrap_or_else(|| py.None().into_bound(py)))
        } else if let Ok(params) = write.cast_exact::<PyDict>() {
            let mut fields = Vec::with_capacity(WRITE_FIELDS.len());
            for (i, name) in write_field_names(py).iter().enumerate() {
                let field = match (params.get_item(name.bind(py))?, i) {
                    (Some(found), _) => found,
                    (None, 0..=2) => return Ok(None), // store, key and value are required
                    (None, 7) => 1i64.into_pyobject(py)?.into_any(), // schema_version
                    (None, 11) => PyBool::new(py, false).to_owned().into_any(), // deleted
                    (None, _) => py.None().into_bound(py),
                };
                fields.push(field);
            }
            match fields.try_into() {
                Ok(fields) => fields,
                Err(_) => return Ok(None),
            }
        } else {
            return Ok(None);
        };
        let [store, key, value, expected_seq, id, causation, valid_time, schema_version, producer, derivation, metadata, deleted] =
            fields;

        let Ok(store_str) = store.cast_exact::<PyString>() else {
            return Ok(None);
        };
        let store_text = store_str.to_str()?.to_owned();
        if !plain_store_name(&store_text, trusted) {
            return Ok(None);
        }
        let Ok(key_str) = key.cast_exact::<PyString>() else {
            return Ok(None);
        };
        let key_text = key_str.to_str()?.to_owned();
        if key_text.is_empty() || !char_len_at_most(&key_text, MAX_KEY_CHARS) {
            return Ok(None);
        }
        let Ok(deleted_bool) = deleted.cast_exact::<PyBool>() else {
            return Ok(None);
        };
        let deleted = deleted_bool.is_true();
        let (value_obj, value_json) = if deleted {
            (None, b"null".to_vec())
        } else {
            match jsonw::dumps(py, &value, true)? {
                Some(json) => {
                    let copy = if wire {
                        value.clone().unbind()
                    } else {
                        match crate::pyfact::private_copy(py, &value)? {
                            Some(copy) => copy.unbind(),
                            None => jsonw::decoded(py, &json)?,
                        }
                    };
                    (Some(copy), json)
                }
                None => return Ok(None),
            }
        };
        let expected = if expected_seq.is_none() {
            None
        } else {
            match expected_seq.cast_exact::<PyInt>() {
                Ok(n) => match n.extract::<u64>() {
                    Ok(n) => Some(n),
                    Err(_) => return Ok(None),
                },
                Err(_) => return Ok(None),
            }
        };
        let optional_text = |obj: &Bound<'_, PyAny>| -> PyResult<Option<Option<Py<PyString>>>> {
            if obj.is_none() {
                return Ok(Some(None));
            }
            match obj.cast_exact::<PyString>() {
                Ok(s) => {
                    let text = s.to_str()?;
                    if text.is_empty() || !char_len_at_most(text, MAX_ID_CHARS) {
                        Ok(None)
                    } else {
                        Ok(Some(Some(s.clone().unbind())))
                    }
                }
                Err(_) => Ok(None),
            }
        };
        let Some(id) = optional_text(&id)? else {
            return Ok(None);
        };
        let Some(causation) = optional_text(&causation)? else {
            return Ok(None);
        };
        let valid_time = if valid_time.is_none() {
            None
        } else if let Ok(f) = valid_time.cast_exact::<PyFloat>() {
            let v = f.value();
            if !v.is_finite() {
                return Ok(None);
            }
            Some(v)
        } else {
            return Ok(None); // ints and the rest: Python converts or refuses them
        };
        let schema = match schema_version.cast_exact::<PyInt>() {
            Ok(n) => match n.extract::<i64>() {
                Ok(n) if n >= 1 => n,
                _ => return Ok(None),
            },
            Err(_) => return Ok(None),
        };
        let json_field = |obj: &Bound<'_, PyAny>| -> PyResult<Option<Json>> {
            if obj.is_none() {
                return Ok(Some(NULL));
            }
            Ok(jsonw::dumps(py, obj, false)?.map(Cow::Owned))
        };
        let Some(producer_json) = json_field(&producer)? else {
            return Ok(None);
        };
        let Some(derivation_json) = json_field(&derivation)? else {
            return Ok(None);
        };
        let metadata_dict = if metadata.is_none() {
            None
        } else {
            let Ok(dict) = metadata.cast_exact::<PyDict>() else {
                return Ok(None);
            };
            for (k, v) in dict.iter() {
                if !k.is_exact_instance_of::<PyString>() || !v.is_exact_instance_of::<PyString>() {
                    return Ok(None);
                }
            }
            Some(dict)
        };
        let metadata_json = match metadata_dict {
            Some(dict) if !dict.is_empty() => match jsonw::dumps(py, dict.as_any(), false)? {
                Some(json) => Cow::Owned(json),
                None => return Ok(None),
            },
            _ => EMPTY_OBJECT,
        };
        let metadata_copy = match (wire, metadata_dict) {
            (true, _) => None,
            (false, Some(dict)) => Some(dict.copy()?.unbind()),
            (false, None) => Some(PyDict::new(py).unbind()),
        };
        let value_hash = if deleted {
            jsonw::sha256_hex(b"null")
        } else {
            jsonw::sha256_hex(&value_json)
        };
        let id_text = match &id {
            Some(s) => Some(s.bind(py).to_str()?.to_owned()),
            None => None,
        };
        let causation_json = match &causation {
            Some(s) => Cow::Owned(jsonw::string_json(s.bind(py).to_str()?)),
            None => NULL,
        };
        Ok(Some(Prepared {
            store_text,
            key_text,
            value_json,
            value_hash,
            expected_seq: expected,
            id_text,
            causation_json,
            valid_time,
            schema_version: schema,
            objects: Some(Objects {
                store: store_str.clone().unbind(),
                key: key_str.clone().unbind(),
                value: value_obj,
                id,
                causation,
                producer: as_read(py, &producer, &producer_json)?,
                derivation: as_read(py, &derivation, &derivation_json)?,
                metadata: metadata_copy,
            }),
            producer_json,
            derivation_json,
            metadata_json,
            deleted,
        }))
    }

    /// A `kilndb.storage.records.PreparedWrite` that Python prepared.
    fn python_prepared(&self, py: Python<'_>, w: &Bound<'_, PyAny>) -> PyResult<Prepared> {
        let text = |name: &str| -> PyResult<(Py<PyString>, String)> {
            let s = w.getattr(name)?.cast_into::<PyString>()?;
            let owned = s.to_str()?.to_owned();
            Ok((s.unbind(), owned))
        };
        let optional = |name: &str| -> PyResult<Option<Py<PyString>>> {
            let obj = w.getattr(name)?;
            if obj.is_none() {
                Ok(None)
            } else {
                Ok(Some(obj.cast_into::<PyString>()?.unbind()))
            }
        };
        let any_json = |obj: &Bound<'_, PyAny>| -> PyResult<Json> {
            match jsonw::dumps(py, obj, false)? {
                Some(json) => Ok(Cow::Owned(json)),
                None => Ok(Cow::Owned(jsonw::orjson_dumps(py, obj)?)),
            }
        };
        let (store, store_text) = text("store")?;
        let (key, key_text) = text("key")?;
        let deleted: bool = w.getattr("deleted")?.extract()?;
        let value_json: Vec<u8> = w.getattr("value_json")?.extract()?;
        let value = if deleted {
            None
        } else {
            Some(w.call_method0("stored_value")?.unbind())
        };
        let id = optional("id")?;
        let causation = optional("causation")?;
        let producer = w.getattr("producer")?;
        let producer_json = any_json(&producer)?;
        let derivation = w.getattr("derivation")?;
        let derivation_json = any_json(&derivation)?;
        let metadata = w.getattr("metadata")?.cast_into::<PyDict>()?;
        Ok(Prepared {
            store_text,
            key_text,
            value_hash: w.getattr("value_hash")?.extract()?,
            value_json,
            expected_seq: w.getattr("expected_seq")?.extract()?,
            id_text: match &id {
                Some(s) => Some(s.bind(py).to_str()?.to_owned()),
                None => None,
            },
            causation_json: match &causation {
                Some(s) => Cow::Owned(jsonw::string_json(s.bind(py).to_str()?)),
                None => NULL,
            },
            valid_time: w.getattr("valid_time")?.extract()?,
            schema_version: w.getattr("schema_version")?.extract()?,
            objects: Some(Objects {
                store,
                key,
                value,
                id,
                causation,
                producer: as_read(py, &producer, &producer_json)?,
                derivation: as_read(py, &derivation, &derivation_json)?,
                metadata: Some(metadata.clone().unbind()),
            }),
            producer_json,
            derivation_json,
            metadata_json: any_json(metadata.as_any())?,
            deleted,
        })
    }

    /// Stage prepared writes against the state of their keys (pass 2 of
    /// [`Stager::stage`]): idempotent ids, expected-seq checks and tombstones, then each
    /// written fact's position, seq, transaction time and record. `time_of(i, write)`
    /// gives write `i` its transaction time once it is known to be written (it may
    /// amend the write's metadata); `shared_ttime` is the time object shared by the
    /// Facts of a batch with one transaction time.
    fn stage_prepared(
        &self,
        py: Python<'_>,
        prepared: Vec<Result<Prepared, PyErr>>,
        target: Target<'_, '_>,
        mode: Mode,
        time_of: &mut dyn FnMut(usize, &mut Prepared) -> f64,
        shared_ttime: Option<&Bound<'_, PyFloat>>,
    ) -> PyResult<Staged> {
        let Target {
            log,
            keydir,
            next_position,
            max_record_bytes,
        } = target;
        let Mode {
            atomic,
            wire,
            raw,
            outcomes: keep_outcomes,
        } = mode;
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(prepared.len());
        let mut entries: Vec<Entry> = Vec::with_capacity(prepared.len());
        // The frames, back to back, in a buffer kept between batches (no fresh pages
        // to fault in for every batch).
        let mut frames = std::mem::take(&mut *self.scratch.lock());
        frames.clear();
        let mut facts: Vec<Py<PyAny>> = Vec::with_capacity(prepared.len());
        // The entry of each key's latest fact in this batch, and of each id written by
        // it (entries and facts are pushed together: an entry's index is its fact's).
        let hasher = DefaultHashBuilder::default();
        let key_hash = |store: &str, key: &str| hasher.hash_one((store, key));
        let id_hash = |id: &str| hasher.hash_one(id);
        let mut latest: HashTable<usize> = HashTable::with_capacity(prepared.len());
        let mut written_ids: HashTable<usize> = HashTable::with_capacity(prepared.len());
        let mut must_be_durable: u64 = 0;
        let mut position = next_position;
        let names = field_names(py);
        let ids = log
            .getattr(pyo3::intern!(py, "ids"))
            .ok()
            .and_then(|ids| ids.cast_into::<IdIndex>().ok());
        for (i, item) in prepared.into_iter().enumerate() {
            let mut w = match item {
                Ok(w) => w,
                Err(err) => {
                    outcomes.push(Outcome::Refused(err));
                    continue;
                }
            };
            if let Some(id_text) = &w.id_text {
                let repeated = written_ids.find(id_hash(id_text), |&e| {
                    entries[e].id.as_deref() == Some(id_text.as_str())
                });
                if let Some(&index) = repeated {
                    outcomes.push(Outcome::Written(index));
                    continue;
                }
                let existing =
                    self.stored_position(py, log, ids.as_ref(), keydir, next_position, id_text)?;
                if let Some(at) = existing {
                    let fact = if !keep_outcomes {
                        py.None()
                    } else if wire {
                        let fact = log.call_method1("_stored_fact", (at,))?;
                        fact.call_method0("to_dict")?.unbind()
                    } else {
                        log.call_method1("_stored_fact", (at,))?.unbind()
                    };
                    outcomes.push(Outcome::Stored(fact));
                    must_be_durable = must_be_durable.max(at);
                    continue;
                }
            }
            let slot_hash = key_hash(&w.store_text, &w.key_text);
            let same_key =
                |e: &usize| entries[*e].store == w.store_text && entries[*e].key == w.key_text;
            let (current, is_deleted) = match latest.find(slot_hash, same_key) {
                Some(&e) => (entries[e].seq, entries[e].deleted),
                None => match keydir
                    .get()
                    .read(py)
                    .latest_state(&w.store_text, &w.key_text)
                {
                    Some((_, seq, deleted)) => (u64::from(seq), deleted),
                    None => (0, false),
                },
            };
            let refusal = if let Some(expected) = w.expected_seq.filter(|e| *e != current) {
                Some(kiln_error(
                    py,
                    "ConflictError",
                    (&w.store_text, &w.key_text, expected, current),
                ))
            } else if w.deleted && (current == 0 || is_deleted) {
                Some(kiln_error(
                    py,
                    "NotFoundError",
                    (format!(
                        "{}/{} has no value to delete",
                        w.store_text, w.key_text
                    ),),
                ))
            } else {
                None
            };
            if let Some(err) = refusal {
                if atomic {
                    return Err(err);
                }
                outcomes.push(Outcome::Refused(err));
                continue;
            }
            let seq = current + 1;
            let ttime = time_of(i, &mut w);
            let fact_id: Cow<'_, str> = match &w.id_text {
                Some(id) => Cow::Borrowed(id),
                None => Cow::Owned(self.generated_id(position)),
            };
            let start = frames.len();
            frames.extend_from_slice(&[0; frame::HEADER_SIZE]);
            encode_record(&mut frames, &w, &fact_id, seq, position, ttime);
            let body_len = frames.len() - start - frame::HEADER_SIZE;
            let size = (body_len + frame::OVERHEAD) as u64;
            if !atomic && size > max_record_bytes {
                frames.truncate(start);
                outcomes.push(Outcome::Refused(invalid_argument(
                    py,
                    format!("record of {size} bytes exceeds max_record_bytes ({max_record_bytes})"),
                )));
                continue;
            }
            frames[start..start + frame::HEADER_SIZE]
                .copy_from_slice(&(body_len as u32).to_be_bytes());
            let body = start + frame::HEADER_SIZE..frames.len();
            let crc = frame::crc32(&frames[body.clone()]);
            let fact = if !keep_outcomes {
                py.None()
            } else if wire && raw {
                PyBytes::new(py, &frames[body]).into_any().unbind()
            } else if wire {
                self.fragment
                    .bind(py)
                    .call1((PyBytes::new(py, &frames[body]),))?
                    .unbind()
            } else {
                let Some(objects) = &w.objects else {
                    unreachable!("a write read from JSON text is staged for the wire only")
                };
                let id_obj: Bound<'_, PyAny> = match &objects.id {
                    Some(id) => id.bind(py).clone().into_any(),
                    None => PyString::new(py, &fact_id).into_any(),
                };
                let values: [Bound<'_, PyAny>; 15] = [
                    id_obj,
                    objects.store.bind(py).clone().into_any(),
                    objects.key.bind(py).clone().into_any(),
                    seq.into_pyobject(py)?.into_any(),
                    position.into_pyobject(py)?.into_any(),
                    match &objects.value {
                        Some(v) => v.bind(py).clone(),
                        None => py.None().into_bound(py),
                    },
                    PyString::new(py, &w.value_hash).into_any(),
                    match shared_ttime {
                        Some(shared) => shared.clone().into_any(),
                        None => PyFloat::new(py, ttime).into_any(),
                    },
                    match w.valid_time {
                        Some(v) => PyFloat::new(py, v).into_any(),
                        None => py.None().into_bound(py),
                    },
                    match &objects.causation {
                        Some(c) => c.bind(py).clone().into_any(),
                        None => py.None().into_bound(py),
                    },
                    w.schema_version.into_pyobject(py)?.into_any(),
                    objects.producer.bind(py).clone(),
                    objects.derivation.bind(py).clone(),
                    match &objects.metadata {
                        Some(m) => m.bind(py).clone().into_any(),
                        None => PyDict::new(py).into_any(),
                    },
                    PyBool::new(py, w.deleted).to_owned().into_any(),
                ];
                crate::pyfact::fact_with(py, self.fact_type.bind(py), names, values)?.unbind()
            };
            frames.extend_from_slice(&crc.to_be_bytes());
            let index = entries.len();
            entries.push(Entry {
                store: std::mem::take(&mut w.store_text),
                key: std::mem::take(&mut w.key_text),
                position,
                size,
                seq,
                deleted: w.deleted,
                id: w.id_text.take(),
                ttime,
                write: i,
            });
            let entry = &entries[index];
            let same_key =
                |e: &usize| entries[*e].store == entry.store && entries[*e].key == entry.key;
            match latest.find_mut(slot_hash, same_key) {
                Some(slot) => *slot = index,
                None => {
                    latest.insert_unique(slot_hash, index, |&e| {
                        key_hash(&entries[e].store, &entries[e].key)
                    });
                }
            }
            if let Some(id) = &entry.id {
                written_ids.insert_unique(id_hash(id), index, |&e| {
                    id_hash(entries[e].id.as_deref().unwrap_or_default())
                });
            }
            outcomes.push(Outcome::Written(facts.len()));
            facts.push(fact);
            position += 1;
        }
        // An atomic batch of several facts goes behind a batch header.
        let header = if atomic && entries.len() > 1 {
            let text = format!(
                "{{\"batch\":{},\"first\":{}}}",
                entries.len(),
                next_position
            );
            frame::encode(text.as_bytes())
        } else {
            Vec::new()
        };
        let total = header.len() + frames.len();
        let largest = if atomic {
            total as u64
        } else {
            entries.iter().map(|e| e.size).max().unwrap_or(0)
        };
        if !entries.is_empty() && largest > max_record_bytes {
            return Err(invalid_argument(
                py,
                format!("record of {largest} bytes exceeds max_record_bytes ({max_record_bytes})"),
            ));
        }
        let data = PyBytes::new_with(py, total, |out| {
            out[..header.len()].copy_from_slice(&header);
            out[header.len()..].copy_from_slice(&frames);
            Ok(())
        })?;
        if frames.capacity() <= SCRATCH_LIMIT {
            *self.scratch.lock() = frames;
        }
        let results = PyList::empty(py);
        if !keep_outcomes {
            outcomes.clear();
        }
        for outcome in outcomes {
            match outcome {
                Outcome::Written(index) => results.append(facts[index].bind(py))?,
                Outcome::Stored(fact) => results.append(fact)?,
                Outcome::Refused(err) => results.append(err.into_value(py))?,
            }
        }
        let last = if entries.is_empty() { 0 } else { position - 1 };
        Ok(Staged {
            data: data.unbind(),
            header_len: header.len() as u64,
            last,
            must_be_durable: must_be_durable.max(last),
            results: results.unbind(),
            entries,
        })
    }

    fn generated_id(&self, position: u64) -> String {
        crate::record::generated_id(&self.id_prefix, position)
    }

    /// The position of the retained fact stored under `id`, or None, by the rule of
    /// `FactLog._stored_position`: natively when the log's id index is at hand, else (and
    /// for an unusual id, or a generated one naming a position not written yet, which it
    /// refuses) by calling that method.
    #[allow(clippy::too_many_arguments)]
    fn stored_position(
        &self,
        py: Python<'_>,
        log: &Bound<'_, PyAny>,
        ids: Option<&Bound<'_, IdIndex>>,
        keydir: &Bound<'_, KeyDir>,
        next_position: u64,
        id: &str,
    ) -> PyResult<Option<u64>> {
        if let Some(ids) = ids {
            let retained = |at: u64| keydir.get().read(py).is_retained(at as i64);
            let client = ids.borrow().ids.get(id);
            if let Some(at) = client {
                return Ok(retained(at).then_some(at));
            }
            if id.is_ascii() {
                match generated_position(&self.id_prefix, id) {
                    None => return Ok(None),
                    Some(at) if at < next_position => return Ok(retained(at).then_some(at)),
                    Some(_) => {}
                }
            } else if !id.starts_with(&self.id_prefix) {
                return Ok(None);
            }
        }
        log.call_method1(pyo3::intern!(py, "_stored_position"), (id,))?
            .extract()
    }
}

/// Encode the record of one fact into `out` (the body only).
#[allow(clippy::too_many_arguments)]
fn encode_record(
    out: &mut Vec<u8>,
    w: &Prepared,
    fact_id: &str,
    seq: u64,
    position: u64,
    ttime: f64,
) {
    out.extend_from_slice(b"{\"id\":");
    jsonw::write_str(out, fact_id);
    out.extend_from_slice(b",\"store\":");
    jsonw::write_str(out, &w.store_text);
    out.extend_from_slice(b",\"key\":");
    jsonw::write_str(out, &w.key_text);
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    out.extend_from_slice(b",\"position\":");
    out.extend_from_slice(itoa::Buffer::new().format(position).as_bytes());
    out.extend_from_slice(b",\"value\":");
    out.extend_from_slice(&w.value_json);
    out.extend_from_slice(b",\"value_hash\":\"");
    out.extend_from_slice(w.value_hash.as_bytes());
    out.extend_from_slice(b"\",\"transaction_time\":");
    jsonw::write_f64(out, ttime);
    out.extend_from_slice(b",\"valid_time\":");
    match w.valid_time {
        Some(v) => jsonw::write_f64(out, v),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"causation\":");
    out.extend_from_slice(&w.causation_json);
    out.extend_from_slice(b",\"schema_version\":");
    out.extend_from_slice(itoa::Buffer::new().format(w.schema_version).as_bytes());
    out.extend_from_slice(b",\"producer\":");
    out.extend_from_slice(&w.producer_json);
    out.extend_from_slice(b",\"derivation\":");
    out.extend_from_slice(&w.derivation_json);
    out.extend_from_slice(b",\"metadata\":");
    out.extend_from_slice(&w.metadata_json);
    out.extend_from_slice(if w.deleted {
        b",\"deleted\":true}"
    } else {
        b",\"deleted\":false}"
    });
}

#[pymethods]
impl Stager {
    /// `write_type`: `kilndb.Write`; `fact_type`: `kilndb.Fact`; `prepare(write,
    /// trusted)`: the Python preparation for writes the core leaves to it; `id_prefix`:
    /// the database's generated-id prefix (`IdCodec.prefix`).
    #[new]
    fn new(
        py: Python<'_>,
        write_type: Bound<'_, PyType>,
        fact_type: Bound<'_, PyType>,
        prepare: Bound<'_, PyAny>,
        id_prefix: String,
    ) -> PyResult<Self> {
        guard(py, || {
            let fragment = py.import("orjson")?.getattr("Fragment")?.unbind();
            Ok(Stager {
                scratch: parking_lot::Mutex::new(Vec::new()),
                write_type: write_type.unbind(),
                fact_type: fact_type.unbind(),
                prepare: prepare.unbind(),
                fragment,
                id_prefix,
            })
        })
    }

    /// Prepare and stage `writes` at positions from `next_position` (hold the log lock).
    ///
    /// `keydir` gives the state of the keys; `log` answers `_stored_position(id)` and
    /// `_stored_fact(position)` for writes with an id. With `atomic`, the first refused write raises and
    /// the facts are framed as one batch; otherwise each refused write's outcome is its
    /// error. `wire` makes the outcomes of written facts `orjson.Fragment`s of their JSON
    /// (with `raw`, that JSON as bytes).
    ///
    /// `ttimes`: one transaction time per write, each given to its fact instead of
    /// `ttime`. `hashes`: one claimed value hash (or None) per write; a write whose
    /// value hashes otherwise is refused with `InvalidArgumentError`. Without
    /// `outcomes`, the results are left empty (nor is a fact stored already read): for a
    /// caller that needs only what was written.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (writes, log, keydir, next_position, ttime, atomic, trusted, max_record_bytes, wire = false, raw = false, *, ttimes = None, hashes = None, outcomes = true))]
    fn stage(
        &self,
        py: Python<'_>,
        writes: &Bound<'_, PyAny>,
        log: &Bound<'_, PyAny>,
        keydir: &Bound<'_, KeyDir>,
        next_position: u64,
        ttime: f64,
        atomic: bool,
        trusted: bool,
        max_record_bytes: u64,
        wire: bool,
        raw: bool,
        ttimes: Option<Vec<f64>>,
        hashes: Option<Vec<Option<String>>>,
        outcomes: bool,
    ) -> PyResult<Staged> {
        let keep_outcomes = outcomes;
        guard(py, || {
            let _pause = crate::pyfact::GcPause::new(py);
            let writes = writes.try_iter()?.collect::<PyResult<Vec<_>>>()?;
            for (name, given) in [
                ("ttimes", ttimes.as_ref().map(Vec::len)),
                ("hashes", hashes.as_ref().map(Vec::len)),
            ] {
                if let Some(len) = given.filter(|len| *len != writes.len()) {
                    return Err(invalid_argument(
                        py,
                        format!("{name} has {len} entries for {} writes", writes.len()),
                    ));
                }
            }
            // Pass 1: prepare every write (an atomic batch refuses the first bad one).
            let mut prepared: Vec<Result<Prepared, PyErr>> = Vec::with_capacity(writes.len());
            for (i, write) in writes.iter().enumerate() {
                let checked = self
                    .prepare_one(py, write, trusted, wire)
                    .and_then(|p| match hashes.as_ref().and_then(|h| h[i].as_deref()) {
                        Some(claimed) if claimed != p.value_hash => {
                            Err(hash_mismatch(py, claimed, &p.value_hash)?)
                        }
                        _ => Ok(p),
                    });
                match checked {
                    Ok(p) => prepared.push(Ok(p)),
                    Err(err) if atomic => return Err(err),
                    Err(err) => {
                        if !is_kiln_error(py, &err)? {
                            return Err(err);
                        }
                        prepared.push(Err(err));
                    }
                }
            }
            // Pass 2: stage them against the state of their keys.
            let mode = Mode {
                atomic,
                wire,
                raw,
                outcomes: keep_outcomes,
            };
            let batch_ttime = PyFloat::new(py, ttime);
            let mut time_of = |i: usize, _: &mut Prepared| ttimes.as_ref().map_or(ttime, |t| t[i]);
            let shared = if ttimes.is_none() {
                Some(&batch_ttime)
            } else {
                None
            };
            self.stage_prepared(
                py,
                prepared,
                Target {
                    log,
                    keydir,
                    next_position,
                    max_record_bytes,
                },
                mode,
                &mut time_of,
                shared,
            )
        })
    }

    /// Stage a batch of an import read by `read_import_lines` (hold the log lock), as
    /// `FactLog.commit_imported` stages the writes of the same lines: atomically, for
    /// the wire, without outcomes; facts whose id is stored already or repeats one
    /// earlier in the batch are skipped. The batch is consumed.
    ///
    /// `floor` is the log's last transaction time and `now` the current time (not
    /// earlier than `floor`). A fact keeps its own transaction time when it is neither
    /// earlier than the time of the fact written before it (the floor, for the first)
    /// nor later than `now`; otherwise it gets `max(now, floor)` and its own time goes
    /// to its metadata (`kiln.origin_transaction_time`, unless present).
    ///
    /// None if the batch is refused (a tombstone for a key without a value, a generated
    /// id naming no stored fact, the batch over `max_record_bytes`): the Python path then
    /// stages the lines and raises the precise error.
    #[allow(clippy::too_many_arguments)]
    fn stage_import(
        &self,
        py: Python<'_>,
        lines: &Bound<'_, ImportLines>,
        log: &Bound<'_, PyAny>,
        keydir: &Bound<'_, KeyDir>,
        next_position: u64,
        floor: f64,
        now: f64,
        max_record_bytes: u64,
    ) -> PyResult<Option<Staged>> {
        guard(py, || {
            let _pause = crate::pyfact::GcPause::new(py);
            let facts = std::mem::take(&mut lines.borrow_mut().facts);
            let mut own_times = Vec::with_capacity(facts.len());
            let prepared = facts
                .into_iter()
                .map(|fact| {
                    own_times.push((fact.own_time, fact.has_origin));
                    Ok(fact.write)
                })
                .collect();
            let mut floor = floor;
            let mut time_of = |i: usize, w: &mut Prepared| {
                let (own, has_origin) = own_times[i];
                let ttime = if floor <= own && own <= now {
                    own
                } else {
                    if !has_origin {
                        w.metadata_json = with_origin_time(&w.metadata_json, own).into();
                    }
                    now.max(floor)
                };
                floor = ttime;
                ttime
            };
            let mode = Mode {
                atomic: true,
                wire: true,
                raw: true,
                outcomes: false,
            };
            let target = Target {
                log,
                keydir,
                next_position,
                max_record_bytes,
            };
            match self.stage_prepared(py, prepared, target, mode, &mut time_of, None) {
                Ok(staged) => Ok(Some(staged)),
                Err(err) if is_kiln_error(py, &err)? => Ok(None),
                Err(err) => Err(err),
            }
        })
    }
}

/// A field as a reader of the record will see it: scalars as they are, containers
/// decoded from the JSON written (so the fact returned equals the fact read back).
fn as_read(py: Python<'_>, obj: &Bound<'_, PyAny>, json: &[u8]) -> PyResult<Py<PyAny>> {
    if obj.is_none()
        || obj.is_exact_instance_of::<PyString>()
        || obj.is_exact_instance_of::<PyInt>()
        || obj.is_exact_instance_of::<PyFloat>()
        || obj.is_exact_instance_of::<PyBool>()
    {
        Ok(obj.clone().unbind())
    } else {
        jsonw::decoded(py, json)
    }
}

fn is_kiln_error(py: Python<'_>, err: &PyErr) -> PyResult<bool> {
    let class = py.import("kilndb.errors")?.getattr("KilnError")?;
    err.value(py).is_instance(&class)
}

/// A staged batch: its frames, ready to append, and what to index once they are written.
#[pyclass(module = "kilndb._core")]
pub struct Staged {
    /// The frames to append to the active file (a batch header first, if any).
    #[pyo3(get)]
    data: Py<PyBytes>,
    /// Bytes of the batch header at the start of `data` (0 if none).
    #[pyo3(get)]
    header_len: u64,
    /// The last position this batch writes (0 if it writes nothing).
    #[pyo3(get)]
    last: u64,
    /// The highest position that must be durable before any outcome is acknowledged.
    #[pyo3(get)]
    must_be_durable: u64,
    /// One outcome per write: its Fact (or wire JSON), the fact already stored under
    /// its id, or the KilnError that refused it.
    #[pyo3(get)]
    results: Py<PyList>,
    entries: Vec<Entry>,
}

#[pymethods]
impl Staged {
    /// Facts this batch writes.
    #[getter]
    fn count(&self) -> usize {
        self.entries.len()
    }

    /// The transaction time of the last fact this batch writes (None if it writes
    /// none).
    #[getter]
    fn last_ttime(&self) -> Option<f64> {
        self.entries.last().map(|e| e.ttime)
    }

    /// Where each fact this batch writes is among the writes staged, in position order
    /// (a write left out was refused, or named an id stored already).
    #[getter]
    fn written(&self) -> Vec<usize> {
        self.entries.iter().map(|e| e.write).collect()
    }

    /// Index the written facts, each with its transaction time: `data` was appended at
    /// `offset` of data file `file_id`. `ids` is the client-id index; for stores in `latest_only` (retention
    /// `keep="latest"`) the key's previous fact is dropped. Returns the
    /// `(file_id, size)` of every frame that became dead.
    #[allow(clippy::too_many_arguments)]
    fn apply<'py>(
        &self,
        py: Python<'py>,
        keydir: &Bound<'py, KeyDir>,
        ids: &Bound<'py, IdIndex>,
        file_id: i64,
        offset: i64,
        latest_only: std::collections::HashSet<String>,
    ) -> PyResult<Vec<(u64, u32)>> {
        guard(py, || {
            let mut at = offset + self.header_len as i64;
            let mut freed = Vec::new();
            {
                let mut index = keydir.get().write(py);
                for e in &self.entries {
                    let (store, key) = (e.store.as_str(), e.key.as_str());
                    let previous = if latest_only.contains(store) {
                        index.latest(store, key)
                    } else {
                        None
                    };
                    let fact = NewFact {
                        store,
                        key,
                        position: e.position as i64,
                        offset: at,
                        size: e.size as i64,
                        seq: e.seq as i64,
                        deleted: e.deleted,
                        ttime: e.ttime,
                    };
                    index
                        .add(file_id, &fact)
                        .map_err(|err| keydir_error(py, err))?;
                    if let Some(previous) = previous {
                        freed.extend(index.drop_positions(store, key, &[previous]));
                    }
                    at += e.size as i64;
                }
            }
            let mut ids = ids.borrow_mut();
            for e in &self.entries {
                if let Some(id) = &e.id {
                    ids.ids.insert(id, e.position);
                }
            }
            Ok(freed)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_positions_are_read_back_from_ids_of_this_database_only() {
        let prefix = "0f1e2d3c-4b5a-8000-";
        for position in [1, 5, 4096, (1 << 62) - 1] {
            let id = crate::record::generated_id(prefix, position);
            assert_eq!(generated_position(prefix, &id), Some(position));
            assert_eq!(generated_position(prefix, &id.to_uppercase()), None);
        }
        let upper = "0f1e2d3c-4b5a-8000-8000-00000000000A";
        assert_eq!(generated_position(prefix, upper), Some(10));
        for other in [
            "1f1e2d3c-4b5a-8000-8000-000000000005", // another database
            "0f1e2d3c-4b5a-8000-4000-000000000005", // not the variant
            "0f1e2d3c-4b5a-8000-8000x000000000005",
            "0f1e2d3c-4b5a-8000-8000-00000000000g",
            "0f1e2d3c-4b5a-8000-8000-0000000000005",
            "order-17",
        ] {
            assert_eq!(generated_position(prefix, other), None, "{other}");
        }
    }
}
