//! The streams view's hot paths: a segment's produce and consume crossing into the core
//! once per batch, on both sides of the wire.
//!
//! Theory of operation
//! -------------------
//! The forms are those of `kilndb.streams` (its module docs): a record on the wire is
//! `{"metadata": …, "payload": …}` or `{"metadata": …, "payload_base64": "…"}`, an entry
//! `{"space", "segment", "sequence", "timestamp", "position", "id", "metadata",
//! "payload" | "payload_base64"}`, and a `produce` reply lists `{"sequence",
//! "timestamp", "position", "id"}` per record. Every function here gives exactly what the
//! Python functions it stands for give, byte for byte, or — for anything outside the
//! common case (an exotic payload, reserved metadata, a base64 payload that is not in its
//! canonical form, a record not laid out as KilnDB writes them) — declines, returning
//! None (or calling the `fallback` it was given), so that the Python path decides and
//! raises its precise errors.
//!
//! * Client, produce: [`produce_records`] checks the records as `record_write` and
//!   `prepare_write` would and writes the `records` array of the request;
//!   [`produced_entries`] builds the `Entry` objects from the reply.
//! * Server, produce: [`produce_writes`] turns the request's records into the write
//!   params the stager takes; [`produced_wire`] writes the reply's `produced` array
//!   from the stored records of the batch.
//! * Server, consume: [`entries_wire`] writes the reply's `entries` array from the
//!   stored records of the segment, never building a fact.
//! * Client, consume: [`consume_entries`] parses a reply's entries straight into
//!   `Entry` objects; [`entries_from_wire`] builds them from decoded entries.
//!
//! Entries are built as the core builds facts ([`crate::pyfact::fact_with`]): an instance
//! of the plain `Entry` class made without running its `__init__`, each field set with
//! `object.__setattr__`.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyMemoryView, PyString, PyTuple, PyType};

use crate::errors::guard;
use crate::py_json::dumps_plain;
use crate::record::Walk;

/// Metadata key marking a bytes payload; keys under `kiln.` are reserved.
const PAYLOAD_KEY: &[u8] = b"kiln.payload";
const RESERVED_PREFIX: &str = "kiln.";

/// The fields of a `kilndb.streams.Entry`, in its order.
const ENTRY_FIELDS: [&str; 8] = [
    "space",
    "segment",
    "sequence",
    "timestamp",
    "payload",
    "metadata",
    "position",
    "id",
];
static ENTRY_NAMES: PyOnceLock<Vec<Py<PyString>>> = PyOnceLock::new();
/// The wire names read from reply objects (interned: looked up once per entry each).
const WIRE_FIELDS: [&str; 9] = [
    "space",
    "segment",
    "sequence",
    "timestamp",
    "payload",
    "metadata",
    "position",
    "id",
    "payload_base64",
];
static WIRE_NAMES: PyOnceLock<Vec<Py<PyString>>> = PyOnceLock::new();

fn wire_names(py: Python<'_>) -> &[Py<PyString>] {
    WIRE_NAMES.get_or_init(py, || {
        WIRE_FIELDS
            .iter()
            .map(|name| PyString::intern(py, name).unbind())
            .collect()
    })
}

fn entry_names(py: Python<'_>) -> &[Py<PyString>] {
    ENTRY_NAMES.get_or_init(py, || {
        ENTRY_FIELDS
            .iter()
            .map(|name| PyString::intern(py, name).unbind())
            .collect()
    })
}

// -- base64 (RFC 4648, standard alphabet, padded: what `base64.b64encode` writes) -----

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64_encode(data: &[u8], out: &mut Vec<u8>) {
    out.reserve(data.len().div_ceil(3) * 4);
    let mut chunks = data.chunks_exact(3);
    for c in &mut chunks {
        let n = u32::from(c[0]) << 16 | u32::from(c[1]) << 8 | u32::from(c[2]);
        out.extend_from_slice(&[
            B64[(n >> 18) as usize & 63],
            B64[(n >> 12) as usize & 63],
            B64[(n >> 6) as usize & 63],
            B64[n as usize & 63],
        ]);
    }
    match *chunks.remainder() {
        [a] => {
            let n = u32::from(a) << 16;
            out.extend_from_slice(&[B64[(n >> 18) as usize & 63], B64[(n >> 12) as usize & 63]]);
            out.extend_from_slice(b"==");
        }
        [a, b] => {
            let n = u32::from(a) << 16 | u32::from(b) << 8;
            out.extend_from_slice(&[
                B64[(n >> 18) as usize & 63],
                B64[(n >> 12) as usize & 63],
                B64[(n >> 6) as usize & 63],
            ]);
            out.push(b'=');
        }
        _ => {}
    }
}

fn b64_value(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some(u32::from(c - b'A')),
        b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Is `text` exactly what `base64.b64encode` writes for some bytes? Such a text is one
/// `base64.b64decode(text, validate=True)` accepts and that encodes back to itself.
fn canonical_base64(text: &[u8]) -> bool {
    if text.len() % 4 != 0 {
        return false;
    }
    let pad = text.iter().rev().take_while(|&&c| c == b'=').count();
    if pad > 2 {
        return false;
    }
    let data = &text[..text.len() - pad];
    let mut last = 0;
    for &c in data {
        match b64_value(c) {
            Some(v) => last = v,
            None => return false,
        }
    }
    // The bits after the last whole byte must be zero (else it would not encode back).
    match pad {
        1 => last & 0b11 == 0,
        2 => last & 0b1111 == 0,
        _ => true,
    }
}

// -- the client's produce ------------------------------------------------------------

/// One record's checked metadata: None, or an exact dict of exact str to exact str
/// with no reserved key. None from the outer Option: the Python path decides.
fn plain_metadata<'py>(
    metadata: &Bound<'py, PyAny>,
) -> PyResult<Option<Option<Bound<'py, PyDict>>>> {
    if metadata.is_none() {
        return Ok(Some(None));
    }
    let Ok(dict) = metadata.cast_exact::<PyDict>() else {
        return Ok(None);
    };
    for (k, v) in dict.iter() {
        let Ok(key) = k.cast_exact::<PyString>() else {
            return Ok(None);
        };
        if !v.is_exact_instance_of::<PyString>() || key.to_str()?.starts_with(RESERVED_PREFIX) {
            return Ok(None);
        }
    }
    Ok(Some(Some(dict.clone())))
}

/// The `records` array of a `produce` request, as `orjson.dumps([record_to_wire(r) for r
/// in records])` writes it, for records that `record_write` and `prepare_write` accept
/// (each a `record_type`, metadata a dict of strings with no reserved key, a bytes
/// payload or one that serialises natively); None if any record needs the Python path.
#[pyfunction]
pub fn produce_records<'py>(
    py: Python<'py>,
    records: &Bound<'py, PyList>,
    record_type: &Bound<'py, PyType>,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    guard(py, || {
        let mut out = Vec::with_capacity(records.len() * 128 + 2);
        out.push(b'[');
        for (i, record) in records.iter().enumerate() {
            if !record.get_type().is(record_type) {
                return Ok(None);
            }
            let record = record.cast_into::<PyTuple>()?;
            if record.len() != 2 {
                return Ok(None);
            }
            let payload = record.get_item(0)?;
            let Some(metadata) = plain_metadata(&record.get_item(1)?)? else {
                return Ok(None);
            };
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"metadata\":");
            match &metadata {
                None => out.extend_from_slice(b"null"),
                Some(dict) => match dumps_plain(py, dict.as_any(), false)? {
                    Some(json) => out.extend_from_slice(&json),
                    None => return Ok(None),
                },
            }
            if let Ok(bytes) = payload.cast_exact::<PyBytes>() {
                out.extend_from_slice(b",\"payload_base64\":\"");
                b64_encode(bytes.as_bytes(), &mut out);
                out.extend_from_slice(b"\"}");
                continue;
            }
            if payload.is_instance_of::<PyBytes>()
                || payload.is_instance_of::<PyByteArray>()
                || payload.is_instance_of::<PyMemoryView>()
            {
                return Ok(None);
            }
            // `prepare_write` serialises the value canonically: the native writer takes
            // and refuses the same values with sorted keys or without.
            let Some(json) = dumps_plain(py, &payload, false)? else {
                return Ok(None);
            };
            out.extend_from_slice(b",\"payload\":");
            out.extend_from_slice(&json);
            out.push(b'}');
        }
        out.push(b']');
        Ok(Some(PyBytes::new(py, &out)))
    })
}

/// `wire[name]` (KeyError if absent), `name` an interned wire name.
fn field<'py>(wire: &Bound<'py, PyDict>, name: &Py<PyString>) -> PyResult<Bound<'py, PyAny>> {
    let name = name.bind(wire.py());
    wire.get_item(name)?
        .ok_or_else(|| pyo3::exceptions::PyKeyError::new_err(name.clone().unbind()))
}

/// `[entry_from_produced(space, segment, record, wire) for record, wire in
/// zip(records, produced, strict=True)]`: the entries the records became.
#[pyfunction]
pub fn produced_entries<'py>(
    py: Python<'py>,
    space: &Bound<'py, PyString>,
    segment: &Bound<'py, PyString>,
    records: &Bound<'py, PyList>,
    produced: &Bound<'py, PyList>,
    entry_type: &Bound<'py, PyType>,
) -> PyResult<Bound<'py, PyList>> {
    guard(py, || {
        if records.len() != produced.len() {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "the produce reply does not list one entry per record",
            ));
        }
        let _pause = crate::pyfact::GcPause::new(py);
        let names = entry_names(py);
        let wire_names = wire_names(py);
        let bytes_type = py.get_type::<PyBytes>();
        let out = PyList::empty(py);
        for (record, wire) in records.iter().zip(produced.iter()) {
            let record = record.cast_into::<PyTuple>()?;
            let wire = wire.cast_into::<PyDict>()?;
            let mut payload = record.get_item(0)?;
            if payload.is_instance_of::<PyByteArray>() || payload.is_instance_of::<PyMemoryView>() {
                payload = bytes_type.call1((payload,))?;
            }
            let metadata = record.get_item(1)?;
            let metadata = if metadata.is_none() {
                PyDict::new(py)
            } else if let Ok(dict) = metadata.cast_exact::<PyDict>() {
                dict.copy()?
            } else {
                py.get_type::<PyDict>()
                    .call1((metadata,))?
                    .cast_into::<PyDict>()?
            };
            let values = [
                space.clone().into_any(),
                segment.clone().into_any(),
                field(&wire, &wire_names[2])?,
                field(&wire, &wire_names[3])?,
                payload,
                metadata.into_any(),
                field(&wire, &wire_names[6])?,
                field(&wire, &wire_names[7])?,
            ];
            out.append(crate::pyfact::fact_with(py, entry_type, names, values)?)?;
        }
        Ok(out)
    })
}

// -- the server's produce ------------------------------------------------------------

/// The names of the write params [`produce_writes`] makes, interned.
const WRITE_PARAMS: [&str; 5] = ["store", "key", "value", "metadata", "expected_seq"];
static WRITE_PARAM_NAMES: PyOnceLock<Vec<Py<PyString>>> = PyOnceLock::new();

/// The write params of a `produce` request's records (checked objects), as
/// `record_write(space, segment, record_from_wire(wire))` makes them, with
/// `expected_seq` on the first: `{"store", "key", "value", "metadata"[, "expected_seq"]}`
/// each. None if any record needs the Python path (a missing or odd payload, metadata
/// that is not a dict of strings or holds a reserved key, base64 not in canonical form).
#[pyfunction]
pub fn produce_writes<'py>(
    py: Python<'py>,
    space: &Bound<'py, PyString>,
    segment: &Bound<'py, PyString>,
    records: &Bound<'py, PyList>,
    expected_seq: Option<Bound<'py, PyAny>>,
) -> PyResult<Option<Bound<'py, PyList>>> {
    guard(py, || {
        let names = WRITE_PARAM_NAMES.get_or_init(py, || {
            WRITE_PARAMS
                .iter()
                .map(|name| PyString::intern(py, name).unbind())
                .collect()
        });
        let [store, key, value, metadata_name, expected_name] =
            [0, 1, 2, 3, 4].map(|i| names[i].bind(py));
        let wire_names = wire_names(py);
        let out = PyList::empty(py);
        for (i, wire) in records.iter().enumerate() {
            let Ok(wire) = wire.cast_exact::<PyDict>() else {
                return Ok(None);
            };
            let given = wire.get_item(metadata_name)?;
            let Some(metadata) =
                plain_metadata(&given.unwrap_or_else(|| py.None().into_bound(py)))?
            else {
                return Ok(None);
            };
            let write = PyDict::new(py);
            write.set_item(store, space)?;
            write.set_item(key, segment)?;
            if let Some(encoded) = wire.get_item(wire_names[8].bind(py))? {
                let Ok(text) = encoded.cast_exact::<PyString>() else {
                    return Ok(None);
                };
                if !canonical_base64(text.to_str()?.as_bytes()) {
                    return Ok(None);
                }
                let marked = match metadata {
                    Some(dict) => dict.copy()?,
                    None => PyDict::new(py),
                };
                marked.set_item("kiln.payload", "base64")?;
                write.set_item(value, text)?;
                write.set_item(metadata_name, marked)?;
            } else {
                let Some(payload) = wire.get_item(wire_names[4].bind(py))? else {
                    return Ok(None);
                };
                write.set_item(value, payload)?;
                write.set_item(metadata_name, metadata)?;
            }
            if i == 0 {
                if let Some(expected) = &expected_seq {
                    write.set_item(expected_name, expected)?;
                }
            }
            out.append(write)?;
        }
        Ok(Some(out))
    })
}

/// The fields of a stored fact record that the streams view shows, as their JSON text.
struct Shown<'a> {
    id: &'a [u8],
    store: &'a [u8],
    key: &'a [u8],
    seq: &'a [u8],
    position: &'a [u8],
    value: &'a [u8],
    timestamp: &'a [u8],
    metadata: &'a [u8],
    /// The metadata holds the bytes-payload marker (the Python path shows it).
    marked: bool,
}

/// Skip one JSON value of a stored record (CRC-checked, written by KilnDB, no
/// whitespace): strings by their quotes, containers by their brackets, without decoding
/// anything. None if the value is cut short.
fn skip_value(w: &mut Walk<'_>) -> Option<()> {
    let buf = w.buf;
    let mut depth = 0usize;
    loop {
        match *buf.get(w.at)? {
            b'"' => {
                w.at += 1;
                loop {
                    w.at += memchr::memchr2(b'"', b'\\', buf.get(w.at..)?)?;
                    if buf[w.at] == b'"' {
                        w.at += 1;
                        break;
                    }
                    w.at += 2; // the backslash and the character it escapes
                }
            }
            b'{' | b'[' => {
                depth += 1;
                w.at += 1;
                continue;
            }
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                w.at += 1;
            }
            b',' | b':' if depth > 0 => {
                w.at += 1;
                continue;
            }
            _ => {
                // A number or a literal: up to the next delimiter.
                let start = w.at;
                while let Some(&c) = buf.get(w.at) {
                    if matches!(c, b',' | b'}' | b']' | b':') {
                        break;
                    }
                    w.at += 1;
                }
                if w.at == start {
                    return None;
                }
            }
        }
        if depth == 0 {
            return Some(());
        }
    }
}

/// The JSON text of the value the walk passes over.
fn span<'a>(w: &mut Walk<'a>, skip: impl FnOnce(&mut Walk<'a>) -> Option<()>) -> Option<&'a [u8]> {
    let start = w.at;
    skip(w)?;
    Some(&w.buf[start..w.at])
}

/// A fact record's fields (see `crate::record`), or None if it is not laid out as
/// KilnDB writes them.
fn shown(body: &[u8]) -> Option<Shown<'_>> {
    let mut w = Walk { buf: body, at: 0 };
    w.literal(crate::record::FACT_PREFIX)?;
    let id = span(&mut w, |w| w.raw_string().map(drop))?;
    w.literal(b",\"store\":")?;
    let store = span(&mut w, |w| w.raw_string().map(drop))?;
    w.literal(b",\"key\":")?;
    let key = span(&mut w, |w| w.raw_string().map(drop))?;
    w.literal(b",\"seq\":")?;
    let seq = span(&mut w, |w| w.unsigned().map(drop))?;
    w.literal(b",\"position\":")?;
    let position = span(&mut w, |w| w.unsigned().map(drop))?;
    w.literal(b",\"value\":")?;
    let value = span(&mut w, skip_value)?;
    w.literal(b",\"value_hash\":")?;
    w.raw_string()?;
    w.literal(b",\"transaction_time\":")?;
    let timestamp = span(&mut w, |w| w.number().map(drop))?;
    for name in [
        &b",\"valid_time\":"[..],
        b",\"causation\":",
        b",\"schema_version\":",
        b",\"producer\":",
        b",\"derivation\":",
    ] {
        w.literal(name)?;
        skip_value(&mut w)?;
    }
    w.literal(b",\"metadata\":")?;
    let start = w.at;
    let mut marked = false;
    w.literal(b"{")?;
    if w.peek()? != b'}' {
        loop {
            let (name, _) = w.raw_string()?;
            marked |= name == PAYLOAD_KEY;
            w.literal(b":")?;
            w.raw_string()?;
            match w.peek()? {
                b',' => w.at += 1,
                _ => break,
            }
        }
    }
    w.literal(b"}")?;
    let metadata = &body[start..w.at];
    w.literal(b",\"deleted\":")?;
    skip_value(&mut w)?;
    w.literal(b"}")?;
    (w.at == body.len()).then_some(Shown {
        id,
        store,
        key,
        seq,
        position,
        value,
        timestamp,
        metadata,
        marked,
    })
}

/// The `produced` array of a `produce` reply from the stored records of the batch (the
/// bodies a commit with `wire=True, raw=True` returns): `[produced_to_wire(entry) ...]`
/// as orjson writes it. None if a record is not laid out as KilnDB writes them.
#[pyfunction]
pub fn produced_wire<'py>(
    py: Python<'py>,
    bodies: &Bound<'py, PyList>,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    guard(py, || {
        let mut out = Vec::with_capacity(bodies.len() * 96 + 2);
        out.push(b'[');
        for (i, body) in bodies.iter().enumerate() {
            let Ok(body) = body.cast_exact::<PyBytes>() else {
                return Ok(None);
            };
            let Some(f) = shown(body.as_bytes()) else {
                return Ok(None);
            };
            if i > 0 {
                out.push(b',');
            }
            write_members(
                &mut out,
                &[
                    (b"{\"sequence\":", f.seq),
                    (b",\"timestamp\":", f.timestamp),
                    (b",\"position\":", f.position),
                    (b",\"id\":", f.id),
                ],
            );
        }
        out.push(b']');
        Ok(Some(PyBytes::new(py, &out)))
    })
}

// -- the server's consume ------------------------------------------------------------

/// The `entries` array of a `consume` reply from the stored records of its facts:
/// `[fact_to_entry_wire(fact) ...]` as orjson writes it, copied from the records' JSON
/// (a stored record's text is what orjson writes of the fact). A record holding a bytes
/// payload, or not laid out as KilnDB writes them, is given to `fallback(body)`, which
/// returns its entry's JSON.
#[pyfunction]
pub fn entries_wire<'py>(
    py: Python<'py>,
    bodies: &Bound<'py, PyList>,
    fallback: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    guard(py, || {
        let mut out = Vec::new();
        out.push(b'[');
        for (i, body) in bodies.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let shown = body
                .cast_exact::<PyBytes>()
                .ok()
                .and_then(|b| shown(b.as_bytes()).filter(|f| !f.marked));
            let Some(f) = shown else {
                let entry = fallback.call1((body,))?;
                out.extend_from_slice(entry.cast::<PyBytes>()?.as_bytes());
                continue;
            };
            write_members(
                &mut out,
                &[
                    (b"{\"space\":", f.store),
                    (b",\"segment\":", f.key),
                    (b",\"sequence\":", f.seq),
                    (b",\"timestamp\":", f.timestamp),
                    (b",\"position\":", f.position),
                    (b",\"id\":", f.id),
                    (b",\"metadata\":", f.metadata),
                    (b",\"payload\":", f.value),
                ],
            );
        }
        out.push(b']');
        Ok(PyBytes::new(py, &out))
    })
}

// -- the client's consume ------------------------------------------------------------

/// `[entry_from_wire(wire) for wire in entries]`; `b64decode` is `base64.b64decode`,
/// for the entries that carry `payload_base64`.
#[pyfunction]
pub fn entries_from_wire<'py>(
    py: Python<'py>,
    entries: &Bound<'py, PyList>,
    entry_type: &Bound<'py, PyType>,
    b64decode: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyList>> {
    guard(py, || {
        let _pause = crate::pyfact::GcPause::new(py);
        let names = entry_names(py);
        let n = wire_names(py);
        let out = PyList::empty(py);
        for wire in entries.iter() {
            let wire = wire.cast_into::<PyDict>()?;
            let payload = match wire.get_item(n[8].bind(py))? {
                Some(encoded) => b64decode.call1((encoded,))?,
                None => field(&wire, &n[4])?,
            };
            let values = [
                field(&wire, &n[0])?,
                field(&wire, &n[1])?,
                field(&wire, &n[2])?,
                field(&wire, &n[3])?,
                payload,
                field(&wire, &n[5])?,
                field(&wire, &n[6])?,
                field(&wire, &n[7])?,
            ];
            out.append(crate::pyfact::fact_with(py, entry_type, names, values)?)?;
        }
        Ok(out)
    })
}

/// The members of an entry as the server writes them, in order (a JSON payload).
const ENTRY_WIRE: [&[u8]; 8] = [
    b"space",
    b"segment",
    b"sequence",
    b"timestamp",
    b"position",
    b"id",
    b"metadata",
    b"payload",
];

/// Is `span` an entry object with exactly the members of [`ENTRY_WIRE`], in order?
fn plain_entry(span: &[u8]) -> Option<()> {
    let mut w = Walk { buf: span, at: 0 };
    w.literal(b"{")?;
    for (i, name) in ENTRY_WIRE.iter().enumerate() {
        if i > 0 {
            w.literal(b",")?;
        }
        let (key, escaped) = w.raw_string()?;
        if escaped || key != *name {
            return None;
        }
        w.literal(b":")?;
        skip_value(&mut w)?;
    }
    w.literal(b"}")?;
    (w.at == span.len()).then_some(())
}

/// The entries of a successful `consume` reply's body, `{"ok":true,"entries":[…]…}`,
/// each parsed straight into an `entry_type` instance (no dict per entry): what
/// `[entry_from_wire(w) for w in orjson.loads(body)["entries"]]` gives. None for any
/// other reply — an error, an entry with a bytes payload, an entry laid out otherwise —
/// which the caller then decodes the general way.
#[pyfunction]
pub fn consume_entries<'py>(
    py: Python<'py>,
    body: &[u8],
    entry_type: &Bound<'py, PyType>,
) -> PyResult<Option<Bound<'py, PyList>>> {
    guard(py, || {
        let mut w = Walk { buf: body, at: 0 };
        if w.literal(b"{\"ok\":true,\"entries\":[").is_none() {
            return Ok(None);
        }
        let mut spans = Vec::new();
        if w.peek() == Some(b']') {
            w.at += 1;
        } else {
            loop {
                let start = w.at;
                if skip_value(&mut w).is_none() {
                    return Ok(None);
                }
                let span = &body[start..w.at];
                if plain_entry(span).is_none() {
                    return Ok(None);
                }
                spans.push(span);
                match w.peek() {
                    Some(b',') => w.at += 1,
                    Some(b']') => {
                        w.at += 1;
                        break;
                    }
                    _ => return Ok(None),
                }
            }
        }
        // The rest of the reply (a request id) must be well-formed too.
        if !matches!(w.peek(), Some(b'}' | b',')) {
            return Ok(None);
        }
        let _pause = crate::pyfact::GcPause::new(py);
        let out = PyList::empty(py);
        for span in spans {
            out.append(crate::py_json::loads_instance(py, span, entry_type)?)?;
        }
        Ok(Some(out))
    })
}

/// The members of a JSON object, each `(opening text, value JSON)`, and its closing brace.
fn write_members(out: &mut Vec<u8>, members: &[(&[u8], &[u8])]) {
    for (name, value) in members {
        out.extend_from_slice(name);
        out.extend_from_slice(value);
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_as_python_writes_it() {
        let cases: [(&[u8], &str); 5] = [
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"\xff\xfe\x00raw", "//4AcmF3"),
        ];
        for (data, text) in cases {
            let mut out = Vec::new();
            b64_encode(data, &mut out);
            assert_eq!(out, text.as_bytes());
            assert!(canonical_base64(text.as_bytes()));
        }
    }

    #[test]
    fn only_canonical_base64_is_taken() {
        for text in ["Zh==", "Zm9=", "Zg=", "Zg", "Z===", "Zm9v!", "Zm 9", "=Zg="] {
            assert!(!canonical_base64(text.as_bytes()), "{text}");
        }
    }

    #[test]
    fn skip_value_passes_one_value() {
        for (text, end) in [
            (&br#"{"a":[1,{"b":"}\"]"}],"c":null},"x""#[..], 31),
            (br#"[]]"#, 2),
            (br#""a\"b",1"#, 6),
            (br#"-1.5e3,"#, 6),
            (br#"true}"#, 4),
        ] {
            let mut w = Walk { buf: text, at: 0 };
            assert!(skip_value(&mut w).is_some(), "{text:?}");
            assert_eq!(w.at, end, "{}", String::from_utf8_lossy(text));
        }
        for text in [&br#"{"a":1"#[..], br#""abc"#, br#""#, br#"]"#] {
            let mut w = Walk { buf: text, at: 0 };
            assert!(skip_value(&mut w).is_none(), "{text:?}");
        }
    }

    #[test]
    fn shown_reads_a_record() {
        let body = br#"{"id":"a","store":"s","key":"k","seq":2,"position":7,"value":{"kiln.payload":1},"value_hash":"00","transaction_time":1.5,"valid_time":null,"causation":null,"schema_version":1,"producer":null,"derivation":{"x":[1]},"metadata":{"a":"b"},"deleted":false}"#;
        let f = shown(body).expect("a record");
        assert_eq!(f.id, b"\"a\"");
        assert_eq!(f.seq, b"2");
        assert_eq!(f.position, b"7");
        assert_eq!(f.value, br#"{"kiln.payload":1}"#);
        assert_eq!(f.timestamp, b"1.5");
        assert_eq!(f.metadata, br#"{"a":"b"}"#);
        assert!(!f.marked);
        let marked = br#"{"id":"a","store":"s","key":"k","seq":2,"position":7,"value":"Zg==","value_hash":"00","transaction_time":1.5,"valid_time":null,"causation":null,"schema_version":1,"producer":null,"derivation":null,"metadata":{"kiln.payload":"base64"},"deleted":false}"#;
        assert!(shown(marked).expect("a record").marked);
        assert!(shown(&marked[..marked.len() - 1]).is_none());
        assert!(shown(br#"{"batch":2,"first":1}"#).is_none());
    }
}
