//! Python bindings of the JSON codec: `dumps`, `canonical_json`, `value_hash`,
//! `hash_value`, `loads` and `loads_many`, byte for byte what orjson writes and reads.
//!
//! `dumps` handles the plain JSON types itself (exact `None`, `bool`, `int`, `float`,
//! `str`, `list`, `tuple`, `dict` with `str` keys, and `orjson.Fragment`) and returns
//! None as soon as it meets anything else, so that the caller hands the value to orjson
//! and exotic types keep orjson's exact behaviour. It walks the value in orjson's order
//! and stops at the first error orjson would stop at, so an error it raises is the one
//! orjson would have raised (as `InvalidArgumentError`, with orjson's wording).
//!
//! No Python code runs during a walk except `orjson.dumps(fragment)` (and whatever a
//! garbage collection it triggers runs, which could change any container): the
//! containers being walked are held by strong references, lists are re-measured after
//! such a call, and the members of dicts being written in key order, borrowed
//! otherwise, are made strong references just before it.
//!
//! `loads` parses with [`json::parse`] and makes the Python objects as it goes, with a
//! cache of the str objects of recent keys (as orjson has), so that records of the same
//! shape share their key objects and skip making them.

use std::ptr::NonNull;

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyString, PyType};
use sha2::{Digest, Sha256};

use crate::errors::{guard, invalid_argument};
use crate::json::{self, Builder, Failed, ParseError, Scratch};

/// Containers nested deeper than this are refused (orjson's "Recursion limit reached").
const MAX_DUMPS_DEPTH: usize = 254;

const NOT_SERIALISABLE: &str = "value is not JSON-serialisable: ";
const NON_FINITE: &str = "NaN or infinity";
const INT_RANGE: &str = "Integer exceeds 64-bit range";
const KEY_NOT_STR: &str = "Dict key must be str";
const RECURSION: &str = "Recursion limit reached";
const INPUT_TYPE: &str = "Input must be bytes, bytearray, memoryview, or str";

/// What the codec takes from orjson, imported once.
struct Orjson {
    dumps: Py<PyAny>,
    fragment: Py<PyType>,
    decode_error: Py<PyType>,
    /// `OPT_PASSTHROUGH_DATETIME | OPT_PASSTHROUGH_DATACLASS | OPT_SORT_KEYS`
    canonical_option: i64,
}

static ORJSON: PyOnceLock<Orjson> = PyOnceLock::new();

fn orjson(py: Python<'_>) -> PyResult<&'static Orjson> {
    ORJSON.get_or_try_init(py, || {
        let module = py.import("orjson")?;
        let option = |name: &str| -> PyResult<i64> { module.getattr(name)?.extract() };
        let canonical = option("OPT_PASSTHROUGH_DATETIME")?
            | option("OPT_PASSTHROUGH_DATACLASS")?
            | option("OPT_SORT_KEYS")?;
        Ok(Orjson {
            dumps: module.getattr("dumps")?.unbind(),
            fragment: module.getattr("Fragment")?.cast_into::<PyType>()?.unbind(),
            decode_error: module
                .getattr("JSONDecodeError")?
                .cast_into::<PyType>()?
                .unbind(),
            canonical_option: canonical,
        })
    })
}

// ---------------------------------------------------------------------------------
// Python -> JSON
// ---------------------------------------------------------------------------------

/// Why an encoding stopped.
enum Stop {
    /// A type the codec leaves to orjson: the result is None.
    Unsupported,
    /// orjson would refuse the value, saying this.
    Refused(&'static str),
    /// A Python error (e.g. MemoryError).
    Python(PyErr),
}

/// A member of a dict written in key order. The pointers are borrowed (the dict holds
/// them) until Python code is about to run, which could change the dict: then every
/// pending member is made a strong reference first (see [`Encoder::hold_members`]).
#[derive(Clone, Copy)]
struct Member {
    key: *mut ffi::PyObject,
    value: *mut ffi::PyObject,
    utf8: *const u8,
    len: usize,
}

impl Member {
    fn key_bytes(&self) -> &[u8] {
        // SAFETY: the UTF-8 form of a str lives as long as the str, which the dict (or
        // a strong reference of ours) keeps.
        unsafe { std::slice::from_raw_parts(self.utf8, self.len) }
    }
}

/// The first 8 bytes of `text`, big-endian, zero-padded: orders most keys (ties, such
/// as `"a"` and `"a\0"`, are broken by the whole keys).
#[inline(always)]
fn sort_prefix(text: &[u8]) -> u64 {
    let n = text.len();
    let be4 = |at: usize| {
        u64::from(u32::from_be_bytes([
            text[at],
            text[at + 1],
            text[at + 2],
            text[at + 3],
        ]))
    };
    if n >= 8 {
        be4(0) << 32 | be4(4)
    } else if n >= 4 {
        be4(0) << 32 | be4(n - 4) << (8 * (8 - n))
    } else {
        let mut prefix = 0;
        for (i, &b) in text.iter().enumerate() {
            prefix |= u64::from(b) << (8 * (7 - i));
        }
        prefix
    }
}

/// The members of a dict being written in key order, at one depth.
#[derive(Default)]
struct SortFrame {
    members: Vec<Member>,
    /// `(prefix, index in members)`, sorted: small to move around.
    order: Vec<(u64, u32)>,
    /// Whether the members are strong references (to drop when done).
    held: bool,
}

struct Encoder<'py, 's> {
    py: Python<'py>,
    out: Vec<u8>,
    sort_keys: bool,
    non_finite: bool,
    fragment_type: *mut ffi::PyTypeObject,
    orjson: &'static Orjson,
    /// The encoded form of recent keys, when not in use by an outer call.
    keys: Option<&'s mut [EncodedKey]>,
    /// The dicts being written in key order, by depth (buffers reused).
    sorting: Vec<SortFrame>,
    /// How many calls to Python were made (each could have changed a list).
    callouts: u64,
}

const ENCODED_KEY_SLOTS: usize = 1024;
const ENCODED_KEY_MAX: usize = 55;

/// One cache line: a dict key (a strong reference, so that the pointer cannot be
/// reused by another object) and its JSON text, quotes included.
#[repr(C, align(64))]
struct EncodedKey {
    key: Option<NonNull<ffi::PyObject>>,
    len: u8,
    bytes: [u8; ENCODED_KEY_MAX],
}

/// What encoding keeps between calls: the JSON text of recent dict keys, found by the
/// key's address (records are made with the same key objects over and over: attribute
/// names, literals, the keys `loads` caches), and the output buffer.
struct EncodeState {
    keys: Box<[EncodedKey]>,
    out: Vec<u8>,
    /// Empty between calls.
    sorting: Vec<SortFrame>,
}

// SAFETY: the raw pointers are strong references to immutable str objects, only used
// while attached to the interpreter.
unsafe impl Send for EncodeState {}

impl EncodeState {
    fn new() -> Self {
        EncodeState {
            keys: (0..ENCODED_KEY_SLOTS)
                .map(|_| EncodedKey {
                    key: None,
                    len: 0,
                    bytes: [0; ENCODED_KEY_MAX],
                })
                .collect(),
            out: Vec::new(),
            sorting: Vec::new(),
        }
    }
}

/// Taken with `try_lock` only, while attached: a nested call (from a finalizer run by
/// the garbage collector during `orjson.dumps(fragment)`) goes without it.
static ENCODE_STATE: parking_lot::Mutex<Option<EncodeState>> = parking_lot::Mutex::new(None);

/// An output buffer larger than this is not kept for the next call.
const KEPT_BUFFER_MAX: usize = 1 << 20;

/// The UTF-8 form of an exact str, or the refusal orjson gives for lone surrogates.
///
/// # Safety
/// `obj` is a live str and the GIL is held.
#[inline]
unsafe fn utf8<'a>(obj: *mut ffi::PyObject) -> Result<&'a [u8], Stop> {
    let mut len: ffi::Py_ssize_t = 0;
    let data = unsafe { ffi::PyUnicode_AsUTF8AndSize(obj, &mut len) };
    if data.is_null() {
        unsafe { ffi::PyErr_Clear() };
        return Err(Stop::Refused(json::INVALID_UTF8));
    }
    Ok(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len as usize) })
}

impl<'py> Encoder<'py, '_> {
    /// Write `obj`, which `depth` containers enclose.
    ///
    /// # Safety
    /// `obj` is alive for the call (a borrowed reference from a held container).
    #[inline(always)]
    unsafe fn value(&mut self, obj: *mut ffi::PyObject, depth: usize) -> Result<(), Stop> {
        unsafe {
            let tp = ffi::Py_TYPE(obj);
            if tp == &raw mut ffi::PyUnicode_Type {
                json::write_str(&mut self.out, utf8(obj)?);
                Ok(())
            } else if tp == &raw mut ffi::PyLong_Type {
                self.int(obj)
            } else if obj == ffi::Py_None() {
                json::append(&mut self.out, b"null");
                Ok(())
            } else {
                self.other_value(obj, tp, depth)
            }
        }
    }

    /// [`Self::value`] for the types other than str, int and None.
    #[inline(never)]
    unsafe fn other_value(
        &mut self,
        obj: *mut ffi::PyObject,
        tp: *mut ffi::PyTypeObject,
        depth: usize,
    ) -> Result<(), Stop> {
        unsafe {
            if tp == &raw mut ffi::PyFloat_Type {
                let value = ffi::PyFloat_AsDouble(obj);
                if value.is_finite() {
                    json::write_f64(&mut self.out, value);
                } else {
                    // Refused once the walk is over, so that an error orjson would
                    // raise comes first (orjson itself writes null).
                    self.non_finite = true;
                    json::append(&mut self.out, b"null");
                }
            } else if tp == &raw mut ffi::PyDict_Type {
                self.dict(obj, depth + 1)?;
            } else if tp == &raw mut ffi::PyList_Type {
                self.list(obj, depth + 1)?;
            } else if obj == ffi::Py_True() {
                json::append(&mut self.out, b"true");
            } else if obj == ffi::Py_False() {
                json::append(&mut self.out, b"false");
            } else if tp == &raw mut ffi::PyTuple_Type {
                self.tuple(obj, depth + 1)?;
            } else if tp == self.fragment_type {
                self.fragment(obj)?;
            } else {
                return Err(Stop::Unsupported);
            }
        }
        Ok(())
    }

    /// Write a dict key, from the cache when it is there (only exact str are cached;
    /// anything else is refused as orjson refuses it).
    #[inline(always)]
    unsafe fn key(&mut self, key: *mut ffi::PyObject) -> Result<(), Stop> {
        let Some(keys) = self.keys.as_deref_mut() else {
            if unsafe { ffi::Py_TYPE(key) } != &raw mut ffi::PyUnicode_Type {
                return Err(Stop::Refused(KEY_NOT_STR));
            }
            json::write_str(&mut self.out, unsafe { utf8(key)? });
            return Ok(());
        };
        let address = key as usize;
        let slot = &mut keys[(address >> 4 ^ address >> 12) & (ENCODED_KEY_SLOTS - 1)];
        if slot.key.map(NonNull::as_ptr) == Some(key) {
            let len = self.out.len();
            self.out.reserve(ENCODED_KEY_MAX);
            // SAFETY: the whole slot fits in the reserved room; `set_len` covers only
            // the key's bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    slot.bytes.as_ptr(),
                    self.out.as_mut_ptr().add(len),
                    ENCODED_KEY_MAX,
                );
                self.out.set_len(len + usize::from(slot.len));
            }
            return Ok(());
        }
        if unsafe { ffi::Py_TYPE(key) } != &raw mut ffi::PyUnicode_Type {
            return Err(Stop::Refused(KEY_NOT_STR));
        }
        let start = self.out.len();
        json::write_str(&mut self.out, unsafe { utf8(key)? });
        let written = &self.out[start..];
        if written.len() <= ENCODED_KEY_MAX {
            // SAFETY: attached; the slot takes a new reference and drops its old one.
            unsafe {
                let new = NonNull::new_unchecked(ffi::Py_NewRef(key));
                if let Some(old) = slot.key.replace(new) {
                    ffi::Py_DecRef(old.as_ptr());
                }
            }
            slot.len = written.len() as u8;
            slot.bytes[..written.len()].copy_from_slice(written);
        }
        Ok(())
    }

    unsafe fn int(&mut self, obj: *mut ffi::PyObject) -> Result<(), Stop> {
        unsafe {
            let mut overflow = 0;
            let value = ffi::PyLong_AsLongLongAndOverflow(obj, &mut overflow);
            if overflow == 0 {
                if value == -1 && !ffi::PyErr_Occurred().is_null() {
                    return Err(Stop::Python(PyErr::fetch(self.py)));
                }
                json::write_i64(&mut self.out, value);
            } else if overflow > 0 {
                let value = ffi::PyLong_AsUnsignedLongLong(obj);
                if value == u64::MAX && !ffi::PyErr_Occurred().is_null() {
                    ffi::PyErr_Clear();
                    return Err(Stop::Refused(INT_RANGE));
                }
                json::write_u64(&mut self.out, value);
            } else {
                return Err(Stop::Refused(INT_RANGE));
            }
        }
        Ok(())
    }

    unsafe fn list(&mut self, obj: *mut ffi::PyObject, depth: usize) -> Result<(), Stop> {
        // orjson counts every list, empty or not.
        if depth > MAX_DUMPS_DEPTH {
            return Err(Stop::Refused(RECURSION));
        }
        unsafe {
            if ffi::PyList_Size(obj) == 0 {
                self.out.extend_from_slice(b"[]");
                return Ok(());
            }
            let _held = Bound::from_borrowed_ptr(self.py, obj);
            self.out.push(b'[');
            let mut len = ffi::PyList_Size(obj);
            let mut callouts = self.callouts;
            let mut i = 0;
            while i < len {
                if i > 0 {
                    self.out.push(b',');
                }
                self.value(ffi::PyList_GetItem(obj, i), depth)?;
                if self.callouts != callouts {
                    // Python ran: never read past the end, whatever it did.
                    callouts = self.callouts;
                    len = ffi::PyList_Size(obj);
                }
                i += 1;
            }
            self.out.push(b']');
        }
        Ok(())
    }

    unsafe fn tuple(&mut self, obj: *mut ffi::PyObject, depth: usize) -> Result<(), Stop> {
        unsafe {
            let len = ffi::PyTuple_Size(obj);
            // orjson writes an empty tuple without counting it.
            if len == 0 {
                self.out.extend_from_slice(b"[]");
                return Ok(());
            }
            // orjson never refuses deep tuples (and crashes on very deep ones); we refuse
            // them like deep lists.
            if depth > MAX_DUMPS_DEPTH {
                return Err(Stop::Refused(RECURSION));
            }
            let _held = Bound::from_borrowed_ptr(self.py, obj);
            self.out.push(b'[');
            for i in 0..len {
                if i > 0 {
                    self.out.push(b',');
                }
                self.value(ffi::PyTuple_GetItem(obj, i), depth)?;
            }
            self.out.push(b']');
        }
        Ok(())
    }

    unsafe fn dict(&mut self, obj: *mut ffi::PyObject, depth: usize) -> Result<(), Stop> {
        // orjson counts every dict, empty or not.
        if depth > MAX_DUMPS_DEPTH {
            return Err(Stop::Refused(RECURSION));
        }
        unsafe {
            if ffi::PyDict_Size(obj) == 0 {
                self.out.extend_from_slice(b"{}");
                return Ok(());
            }
            let _held = Bound::from_borrowed_ptr(self.py, obj);
            if self.sort_keys {
                return self.sorted_dict(obj, depth);
            }
            self.out.push(b'{');
            let mut pos: ffi::Py_ssize_t = 0;
            let mut key: *mut ffi::PyObject = std::ptr::null_mut();
            let mut value: *mut ffi::PyObject = std::ptr::null_mut();
            let mut first = true;
            while ffi::PyDict_Next(obj, &mut pos, &mut key, &mut value) != 0 {
                if !first {
                    self.out.push(b',');
                }
                first = false;
                self.key(key)?;
                self.out.push(b':');
                self.value(value, depth)?;
            }
            self.out.push(b'}');
        }
        Ok(())
    }

    /// A non-empty dict in key order. Like orjson, every key is checked before any
    /// value is written; keys are ordered by their UTF-8 bytes (code point order).
    unsafe fn sorted_dict(&mut self, obj: *mut ffi::PyObject, depth: usize) -> Result<(), Stop> {
        if self.sorting.len() <= depth {
            self.sorting.resize_with(depth + 1, SortFrame::default);
        }
        let frame = &mut self.sorting[depth];
        debug_assert!(frame.members.is_empty() && !frame.held);
        unsafe {
            let mut pos: ffi::Py_ssize_t = 0;
            let mut key: *mut ffi::PyObject = std::ptr::null_mut();
            let mut value: *mut ffi::PyObject = std::ptr::null_mut();
            while ffi::PyDict_Next(obj, &mut pos, &mut key, &mut value) != 0 {
                if ffi::Py_TYPE(key) != &raw mut ffi::PyUnicode_Type {
                    frame.members.clear();
                    frame.order.clear();
                    return Err(Stop::Refused(KEY_NOT_STR));
                }
                let text = match utf8(key) {
                    Ok(text) => text,
                    Err(stop) => {
                        frame.members.clear();
                        frame.order.clear();
                        return Err(stop);
                    }
                };
                let prefix = sort_prefix(text);
                frame.order.push((prefix, frame.members.len() as u32));
                frame.members.push(Member {
                    key,
                    value,
                    utf8: text.as_ptr(),
                    len: text.len(),
                });
            }
        }
        let members = &frame.members;
        frame.order.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| {
                members[a.1 as usize]
                    .key_bytes()
                    .cmp(members[b.1 as usize].key_bytes())
            })
        });
        self.out.push(b'{');
        let count = frame.members.len();
        let mut result = Ok(());
        for i in 0..count {
            let frame = &self.sorting[depth];
            let member = frame.members[frame.order[i].1 as usize];
            if i > 0 {
                self.out.push(b',');
            }
            // SAFETY: the members are alive (see `Member`).
            result = unsafe { self.key(member.key) };
            if result.is_err() {
                break;
            }
            self.out.push(b':');
            result = unsafe { self.value(member.value, depth) };
            if result.is_err() {
                break;
            }
        }
        self.out.push(b'}');
        self.release_members(depth);
        result
    }

    /// Done with the members at `depth`: drop them (and the references, if held).
    fn release_members(&mut self, depth: usize) {
        let Some(frame) = self.sorting.get_mut(depth) else {
            return;
        };
        if frame.held {
            for member in &frame.members {
                // SAFETY: strong references taken by `hold_members`; attached.
                unsafe {
                    ffi::Py_DecRef(member.key);
                    ffi::Py_DecRef(member.value);
                }
            }
            frame.held = false;
        }
        frame.members.clear();
        frame.order.clear();
    }

    /// Python code is about to run: make every pending member a strong reference.
    fn hold_members(&mut self) {
        for frame in &mut self.sorting {
            if !frame.held && !frame.members.is_empty() {
                for member in &frame.members {
                    // SAFETY: borrowed from a dict held up the walk; attached.
                    unsafe {
                        ffi::Py_IncRef(member.key);
                        ffi::Py_IncRef(member.value);
                    }
                }
                frame.held = true;
            }
        }
    }

    /// An `orjson.Fragment`: its contents, verbatim, as `orjson.dumps(fragment)` gives
    /// them (the only way to them through Python). orjson refuses a fragment whose
    /// contents are neither bytes nor str; it is then left to orjson.
    #[cold]
    unsafe fn fragment(&mut self, obj: *mut ffi::PyObject) -> Result<(), Stop> {
        let fragment = unsafe { Bound::from_borrowed_ptr(self.py, obj) };
        self.callouts += 1;
        self.hold_members();
        let contents = self
            .orjson
            .dumps
            .bind(self.py)
            .call1((fragment,))
            .map_err(|_| Stop::Unsupported)?;
        let contents = contents.cast::<PyBytes>().map_err(|_| Stop::Unsupported)?;
        self.out.extend_from_slice(contents.as_bytes());
        Ok(())
    }
}

fn refused(py: Python<'_>, reason: &str) -> PyErr {
    invalid_argument(py, format!("{NOT_SERIALISABLE}{reason}"))
}

/// The JSON text of `value` as orjson writes it with the passthrough options, handed
/// to `finish`; None when `value` holds a type left to orjson.
fn encode<T>(
    py: Python<'_>,
    value: &Bound<'_, PyAny>,
    sort_keys: bool,
    finish: impl FnOnce(&[u8]) -> PyResult<T>,
) -> PyResult<Option<T>> {
    let orjson = orjson(py)?;
    let mut lock = ENCODE_STATE.try_lock();
    let state = lock
        .as_mut()
        .map(|state| state.get_or_insert_with(EncodeState::new));
    let (keys, mut saved, mut saved_sorting) = match state {
        Some(EncodeState { keys, out, sorting }) => (Some(&mut keys[..]), Some(out), Some(sorting)),
        None => (None, None, None),
    };
    let mut out = saved
        .as_mut()
        .map(|out| std::mem::take(*out))
        .unwrap_or_default();
    out.reserve(512);
    let mut encoder = Encoder {
        py,
        out,
        sort_keys,
        non_finite: false,
        fragment_type: orjson.fragment.as_ptr().cast(),
        orjson,
        keys,
        sorting: saved_sorting
            .as_deref_mut()
            .map(std::mem::take)
            .unwrap_or_default(),
        callouts: 0,
    };
    // SAFETY: `value` is held by the caller for the whole walk.
    let result = match unsafe { encoder.value(value.as_ptr(), 0) } {
        Ok(()) if encoder.non_finite => Err(refused(py, NON_FINITE)),
        Ok(()) => finish(&encoder.out).map(Some),
        Err(Stop::Unsupported) => Ok(None),
        Err(Stop::Refused(reason)) => Err(refused(py, reason)),
        Err(Stop::Python(err)) => Err(err),
    };
    if let Some(saved_sorting) = saved_sorting {
        // Each dict releases its members, on every path: only the buffers are kept.
        if encoder.sorting.iter().all(|frame| frame.members.is_empty()) {
            *saved_sorting = encoder.sorting;
        }
    }
    let mut out = encoder.out;
    if let Some(saved) = saved {
        if out.capacity() <= KEPT_BUFFER_MAX {
            out.clear();
            *saved = out;
        }
    }
    result
}

/// `orjson.dumps(value, option=PASSTHROUGH_DATETIME | PASSTHROUGH_DATACLASS
/// [| SORT_KEYS])` for plain JSON values; None when `value` holds any other type.
/// Raises InvalidArgumentError where orjson raises, and for NaN and infinities.
#[pyfunction]
#[pyo3(signature = (value, sort_keys = false))]
pub fn dumps<'py>(
    py: Python<'py>,
    value: &Bound<'py, PyAny>,
    sort_keys: bool,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    guard(py, || {
        encode(py, value, sort_keys, |out| Ok(PyBytes::new(py, out)))
    })
}

/// Is there a NaN or an infinity in `value`? (`model._has_non_finite`, for the values
/// left to orjson: floats and float subclasses, inside dicts, lists and tuples and
/// their subclasses.)
fn has_non_finite(value: &Bound<'_, PyAny>) -> PyResult<bool> {
    let mut stack = vec![value.clone()];
    while let Some(item) = stack.pop() {
        if let Ok(number) = item.cast::<pyo3::types::PyFloat>() {
            if !number.value().is_finite() {
                return Ok(true);
            }
        } else if let Ok(dict) = item.cast::<PyDict>() {
            if dict.is_exact_instance_of::<PyDict>() {
                stack.extend(dict.values());
            } else {
                for member in item.call_method0("values")?.try_iter()? {
                    stack.push(member?);
                }
            }
        } else if item.cast::<PyList>().is_ok() || item.cast::<pyo3::types::PyTuple>().is_ok() {
            for member in item.try_iter()? {
                stack.push(member?);
            }
        }
    }
    Ok(false)
}

/// `model.canonical_json`: the sorted-keys text (by orjson for the values `dumps`
/// leaves to it), handed to `finish`.
fn canonical<T>(
    py: Python<'_>,
    value: &Bound<'_, PyAny>,
    finish: impl Fn(&[u8]) -> PyResult<T>,
) -> PyResult<T> {
    if let Some(done) = encode(py, value, true, &finish)? {
        return Ok(done);
    }
    let orjson = orjson(py)?;
    let data = match orjson
        .dumps
        .bind(py)
        // `dumps(value, default=None, option=...)`, positionally: orjson recognises
        // keyword names by identity with its own interned strings.
        .call1((value, py.None(), orjson.canonical_option))
    {
        Ok(data) => data,
        Err(err) if err.is_instance_of::<PyTypeError>(py) => {
            let message = err.value(py).str()?;
            let refusal = refused(py, message.to_cow()?.as_ref());
            refusal.set_cause(py, Some(err));
            return Err(refusal);
        }
        Err(err) => return Err(err),
    };
    let data = data.cast_into::<PyBytes>()?;
    // orjson writes NaN and infinities as null; only then is the walk worth it.
    if memchr::memmem::find(data.as_bytes(), b"null").is_some() && has_non_finite(value)? {
        return Err(refused(py, NON_FINITE));
    }
    finish(data.as_bytes())
}

/// Canonical JSON of `value`: sorted keys, no spaces, UTF-8; InvalidArgumentError for
/// anything that is not plain JSON.
#[pyfunction]
pub fn canonical_json<'py>(
    py: Python<'py>,
    value: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    guard(py, || {
        canonical(py, value, |data| Ok(PyBytes::new(py, data)))
    })
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(data);
    let mut out = String::with_capacity(64);
    for byte in digest {
        out.push(char::from(HEX[(byte >> 4) as usize]));
        out.push(char::from(HEX[(byte & 0xf) as usize]));
    }
    out
}

/// SHA-256 of a value's canonical JSON, in lowercase hex.
#[pyfunction]
pub fn value_hash(py: Python<'_>, canonical: &[u8]) -> PyResult<String> {
    guard(py, || Ok(sha256_hex(canonical)))
}

/// The canonical JSON of `value` and its hash, in one call.
#[pyfunction]
pub fn hash_value<'py>(
    py: Python<'py>,
    value: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyBytes>, String)> {
    guard(py, || {
        canonical(py, value, |data| {
            Ok((PyBytes::new(py, data), sha256_hex(data)))
        })
    })
}

// ---------------------------------------------------------------------------------
// JSON -> Python
// ---------------------------------------------------------------------------------

/// A reference to a Python object made by a parse, without the `'py` lifetime of
/// `Bound`, so that the parse buffers holding them can be kept between calls (always
/// emptied before the call returns, while attached to the interpreter).
///
/// Usually an owned (strong) reference. When the lowest bit of the address is set, it
/// is borrowed instead: the None/True/False singletons, and keys from the key cache,
/// which stay alive until the parse is over (see [`PyBuilder::graveyard`]). Setting a
/// dict item takes its own references anyway, so a borrowed key or value saves two
/// reference count calls (function calls under the stable ABI).
struct Obj(NonNull<ffi::PyObject>);

const BORROWED: usize = 1;

impl Obj {
    #[inline(always)]
    fn borrowed(ptr: NonNull<ffi::PyObject>) -> Obj {
        Obj(ptr.map_addr(|addr| addr | BORROWED))
    }

    #[inline(always)]
    fn is_borrowed(&self) -> bool {
        self.0.addr().get() & BORROWED != 0
    }

    #[inline(always)]
    fn as_ptr(&self) -> *mut ffi::PyObject {
        self.0.as_ptr().map_addr(|addr| addr & !BORROWED)
    }

    /// A strong reference, handed over.
    #[inline(always)]
    fn into_ptr(self) -> *mut ffi::PyObject {
        let ptr = self.as_ptr();
        if self.is_borrowed() {
            // SAFETY: a live object; attached.
            unsafe { ffi::Py_IncRef(ptr) };
        }
        std::mem::forget(self);
        ptr
    }

    #[inline(always)]
    fn into_bound(self, py: Python<'_>) -> Bound<'_, PyAny> {
        // SAFETY: a strong reference.
        unsafe { Bound::from_owned_ptr(py, self.into_ptr()) }
    }
}

impl Drop for Obj {
    #[inline(always)]
    fn drop(&mut self) {
        if !self.is_borrowed() {
            // SAFETY: only ever dropped inside a parse, attached to the interpreter.
            unsafe { ffi::Py_DecRef(self.as_ptr()) }
        }
    }
}

const KEY_CACHE_SLOTS: usize = 2048;
const KEY_CACHE_MAX_LEN: usize = 55;
/// Slots after the hashed ones hold the key last seen at the same place (the n-th key
/// of a document): documents of the same shape then find their keys without hashing.
const ORDINAL_SLOTS: usize = 64;

/// One cache line: a key of up to 55 bytes and its str.
#[repr(C, align(64))]
struct KeySlot {
    key: Option<NonNull<ffi::PyObject>>,
    len: u8,
    bytes: [u8; KEY_CACHE_MAX_LEN],
}

/// What parsing keeps between calls: the str objects of recent short object keys, so
/// that the keys of many records are made once (as orjson does; a direct-mapped table
/// indexed by a hash of the bytes), and the parse buffers.
struct ParseState {
    slots: Box<[KeySlot]>,
    scratch: Scratch<Obj>,
}

// SAFETY: the raw pointers are strong references to immutable str objects (and the
// scratch is empty between calls); only used while attached to the interpreter.
unsafe impl Send for ParseState {}

impl ParseState {
    fn new() -> Self {
        ParseState {
            slots: (0..KEY_CACHE_SLOTS + ORDINAL_SLOTS)
                .map(|_| KeySlot {
                    key: None,
                    len: 0,
                    bytes: [0; KEY_CACHE_MAX_LEN],
                })
                .collect(),
            scratch: Scratch::default(),
        }
    }
}

/// Behind a lock only taken with `try_lock` while attached to the interpreter: a
/// nested parse (a finalizer run by the garbage collector during a parse, on the same
/// thread) simply goes without it.
static PARSE_STATE: parking_lot::Mutex<Option<ParseState>> = parking_lot::Mutex::new(None);

use crate::json::{load4, load8};

/// Two words that, with the length, tell short byte strings apart (overlapping loads,
/// no calls): exact for up to 16 bytes, the ends of longer ones.
#[inline(always)]
fn key_words(bytes: &[u8]) -> (u64, u64) {
    let n = bytes.len();
    if n >= 8 {
        (load8(bytes, 0), load8(bytes, n - 8))
    } else if n >= 4 {
        (load4(bytes, 0) | load4(bytes, n - 4) << 32, 0)
    } else if n > 0 {
        let word =
            u64::from(bytes[0]) | u64::from(bytes[n / 2]) << 8 | u64::from(bytes[n - 1]) << 16;
        (word, 0)
    } else {
        (0, 0)
    }
}

#[inline(always)]
fn key_hash(bytes: &[u8]) -> usize {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let (a, b) = key_words(bytes);
    let h = (a ^ (bytes.len() as u64).rotate_left(56)).wrapping_mul(K);
    let h = (h.rotate_left(29) ^ b).wrapping_mul(K);
    (h >> 40) as usize & (KEY_CACHE_SLOTS - 1)
}

/// `a == b` for two byte strings of the same length, in words.
#[inline(always)]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    debug_assert_eq!(n, b.len());
    if n > 16 {
        let mut i = 0;
        while i + 8 < n {
            if load8(a, i) != load8(b, i) {
                return false;
            }
            i += 8;
        }
    }
    key_words(a) == key_words(b)
}

struct PyBuilder<'py, 'c> {
    py: Python<'py>,
    slots: Option<&'c mut [KeySlot]>,
    /// The Python error of the builder method that failed.
    error: Option<PyErr>,
    /// How many keys the document has had so far.
    ordinal: usize,
    /// Keys the cache let go of during the parse (see [`Obj`]).
    graveyard: Vec<NonNull<ffi::PyObject>>,
    root_ptr: *mut ffi::PyObject,
    /// An instance the document's top-level object fills as attributes (taken by the
    /// first `object()`), instead of a new dict.
    root: Option<Obj>,
}

impl PyBuilder<'_, '_> {
    #[cold]
    #[inline(never)]
    fn failed(&mut self) -> Failed {
        self.error = Some(PyErr::fetch(self.py));
        Failed
    }

    /// `ptr`, a new reference or null with an exception set, as an `Obj`.
    #[inline(always)]
    fn made(&mut self, ptr: *mut ffi::PyObject) -> Result<Obj, Failed> {
        match NonNull::new(ptr) {
            Some(ptr) => Ok(Obj(ptr)),
            None => Err(self.failed()),
        }
    }

    #[inline(always)]
    fn new_str(&mut self, value: &str) -> Result<Obj, Failed> {
        // SAFETY: a valid UTF-8 buffer; attached.
        let ptr = unsafe {
            ffi::PyUnicode_FromStringAndSize(value.as_ptr().cast(), value.len() as ffi::Py_ssize_t)
        };
        self.made(ptr)
    }

    /// Keep `key` (whose text is `bytes`) in slot `index` of the key cache.
    #[inline(never)]
    fn remember(&mut self, index: usize, key: &Obj, bytes: &[u8]) {
        let Some(slot) = self
            .slots
            .as_deref_mut()
            .and_then(|slots| slots.get_mut(index))
        else {
            return;
        };
        // SAFETY: attached; the slot takes a new reference. Its old one may be lent
        // out by this parse: it is dropped when the parse is over.
        let new = unsafe { NonNull::new_unchecked(ffi::Py_NewRef(key.as_ptr())) };
        if let Some(old) = slot.key.replace(new) {
            self.graveyard.push(old);
        }
        slot.len = bytes.len() as u8;
        slot.bytes[..bytes.len()].copy_from_slice(bytes);
    }

    /// Drop the references the cache let go of during the parse, now that nothing
    /// borrows them.
    fn bury(&mut self) {
        for old in self.graveyard.drain(..) {
            // SAFETY: a strong reference; attached.
            unsafe { ffi::Py_DecRef(old.as_ptr()) };
        }
    }

    /// `ptr` (a singleton or a cached key), borrowed.
    #[inline(always)]
    fn lend(&mut self, ptr: *mut ffi::PyObject) -> Result<Obj, Failed> {
        match NonNull::new(ptr) {
            Some(ptr) => Ok(Obj::borrowed(ptr)),
            None => Err(self.failed()),
        }
    }
}

impl Builder for PyBuilder<'_, '_> {
    type Value = Obj;

    #[inline(always)]
    fn null(&mut self) -> Result<Obj, Failed> {
        self.lend(unsafe { ffi::Py_None() })
    }

    #[inline(always)]
    fn boolean(&mut self, value: bool) -> Result<Obj, Failed> {
        self.lend(unsafe {
            if value {
                ffi::Py_True()
            } else {
                ffi::Py_False()
            }
        })
    }

    #[inline(always)]
    fn int(&mut self, value: i64) -> Result<Obj, Failed> {
        self.made(unsafe { ffi::PyLong_FromLongLong(value) })
    }

    #[inline(always)]
    fn uint(&mut self, value: u64) -> Result<Obj, Failed> {
        self.made(unsafe { ffi::PyLong_FromUnsignedLongLong(value) })
    }

    #[inline(always)]
    fn float(&mut self, value: f64) -> Result<Obj, Failed> {
        self.made(unsafe { ffi::PyFloat_FromDouble(value) })
    }

    #[inline(always)]
    fn string(&mut self, value: &str) -> Result<Obj, Failed> {
        self.new_str(value)
    }

    #[inline(always)]
    fn key(&mut self, value: &str) -> Result<Obj, Failed> {
        let bytes = value.as_bytes();
        if bytes.len() > KEY_CACHE_MAX_LEN {
            return self.new_str(value);
        }
        let Some(slots) = self.slots.as_deref_mut() else {
            return self.new_str(value);
        };
        let ordinal = KEY_CACHE_SLOTS + self.ordinal;
        self.ordinal += 1;
        if let Some(slot) = slots.get(ordinal) {
            if let Some(key) = slot.key {
                if usize::from(slot.len) == bytes.len()
                    && same_bytes(&slot.bytes[..bytes.len()], bytes)
                {
                    return self.lend(key.as_ptr());
                }
            }
        }
        let slot = &slots[key_hash(bytes)];
        let key = match slot.key {
            Some(key)
                if usize::from(slot.len) == bytes.len()
                    && same_bytes(&slot.bytes[..bytes.len()], bytes) =>
            {
                self.lend(key.as_ptr())?
            }
            _ => {
                let key = self.new_str(value)?;
                self.remember(key_hash(bytes), &key, bytes);
                key
            }
        };
        if ordinal < KEY_CACHE_SLOTS + ORDINAL_SLOTS {
            self.remember(ordinal, &key, bytes);
        }
        Ok(key)
    }

    #[inline]
    fn array(&mut self, items: &mut Vec<Obj>, start: usize) -> Result<Obj, Failed> {
        let len = items.len() - start;
        let list = self.made(unsafe { ffi::PyList_New(len as ffi::Py_ssize_t) })?;
        for (i, item) in items.drain(start..).enumerate() {
            // SAFETY: a new list of `len` slots; PyList_SetItem steals the reference.
            unsafe { ffi::PyList_SetItem(list.as_ptr(), i as ffi::Py_ssize_t, item.into_ptr()) };
        }
        Ok(list)
    }

    #[inline(always)]
    fn object(&mut self) -> Result<Obj, Failed> {
        if let Some(root) = self.root.take() {
            self.root_ptr = root.as_ptr();
            return Ok(root);
        }
        self.made(unsafe { ffi::PyDict_New() })
    }

    #[inline(always)]
    fn set(&mut self, object: &Obj, key: Obj, value: Obj) -> Result<(), Failed> {
        if object.as_ptr() == self.root_ptr {
            // SAFETY: the root is a live instance of an ordinary class and `key` a str;
            // the generic setter stores into its managed dict as `object.__setattr__`.
            if unsafe {
                ffi::PyObject_GenericSetAttr(object.as_ptr(), key.as_ptr(), value.as_ptr())
            } != 0
            {
                return Err(self.failed());
            }
            return Ok(());
        }
        // SAFETY: `object` is a dict made by `object()`, `key` a str.
        if unsafe { ffi::PyDict_SetItem(object.as_ptr(), key.as_ptr(), value.as_ptr()) } != 0 {
            return Err(self.failed());
        }
        Ok(())
    }
}

/// `orjson.JSONDecodeError(message, doc, pos)`, `pos` counted in characters of `doc`.
fn decode_error(py: Python<'_>, message: &str, doc: &str, offset: usize) -> PyErr {
    let made = orjson(py).and_then(|orjson| {
        let end = offset.min(doc.len());
        let pos = doc.get(..end).map_or(end, |prefix| prefix.chars().count());
        orjson.decode_error.bind(py).call1((message, doc, pos))
    });
    match made {
        Ok(instance) => PyErr::from_value(instance),
        Err(err) => err,
    }
}

/// Parse one document, given as bytes, bytearray, memoryview or str (as orjson takes).
fn parse_one<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    builder: &mut PyBuilder<'py, '_>,
    scratch: &mut Scratch<Obj>,
) -> PyResult<Bound<'py, PyAny>> {
    if let Ok(bytes) = data.cast::<PyBytes>() {
        return parse_bytes(py, bytes.as_bytes(), builder, scratch);
    }
    if let Ok(text) = data.cast::<PyString>() {
        return match text.to_str() {
            Ok(text) => parse_bytes(py, text.as_bytes(), builder, scratch),
            Err(_) => Err(decode_error(py, json::INVALID_UTF8, "", 0)),
        };
    }
    if let Ok(array) = data.cast::<PyByteArray>() {
        let copy = array.to_vec();
        return parse_bytes(py, &copy, builder, scratch);
    }
    if data.is_instance_of::<pyo3::types::PyMemoryView>() {
        if let Some(copy) = contiguous_bytes(data) {
            return parse_bytes(py, &copy, builder, scratch);
        }
    }
    Err(decode_error(py, INPUT_TYPE, "", 0))
}

/// The bytes of a C-contiguous buffer (as orjson reads a memoryview), or None.
fn contiguous_bytes(data: &Bound<'_, PyAny>) -> Option<Vec<u8>> {
    // SAFETY: a zeroed Py_buffer is filled by PyObject_GetBuffer and released after.
    unsafe {
        let mut view: ffi::Py_buffer = std::mem::zeroed();
        if ffi::PyObject_GetBuffer(data.as_ptr(), &mut view, ffi::PyBUF_SIMPLE) != 0 {
            ffi::PyErr_Clear();
            return None;
        }
        let copy = if view.buf.is_null() || view.len <= 0 {
            Vec::new()
        } else {
            std::slice::from_raw_parts(view.buf.cast::<u8>(), view.len as usize).to_vec()
        };
        ffi::PyBuffer_Release(&mut view);
        Some(copy)
    }
}

fn parse_bytes<'py>(
    py: Python<'py>,
    data: &[u8],
    builder: &mut PyBuilder<'py, '_>,
    scratch: &mut Scratch<Obj>,
) -> PyResult<Bound<'py, PyAny>> {
    builder.ordinal = 0;
    match json::parse(data, builder, scratch) {
        Ok(value) => Ok(value.into_bound(py)),
        Err(ParseError::Build) => Err(builder.error.take().unwrap_or_else(|| PyErr::fetch(py))),
        Err(ParseError::Syntax(err)) => {
            // orjson gives an empty doc when the input is not UTF-8.
            let doc = std::str::from_utf8(data).unwrap_or("");
            let offset = if doc.is_empty() { 0 } else { err.offset };
            Err(decode_error(py, err.message, doc, offset))
        }
    }
}

/// Run `body` with the parse state kept between calls, or a fresh one if it is busy.
fn with_parse_state<'py, T>(
    py: Python<'py>,
    body: impl FnOnce(&mut PyBuilder<'py, '_>, &mut Scratch<Obj>) -> PyResult<T>,
) -> PyResult<T> {
    let mut lock = PARSE_STATE.try_lock();
    match lock.as_mut() {
        Some(guard) => {
            let state = guard.get_or_insert_with(ParseState::new);
            let mut builder = PyBuilder {
                py,
                slots: Some(&mut state.slots),
                error: None,
                ordinal: 0,
                graveyard: Vec::new(),
                root_ptr: std::ptr::null_mut(),
                root: None,
            };
            let result = body(&mut builder, &mut state.scratch);
            builder.bury();
            result
        }
        None => {
            let mut builder = PyBuilder {
                py,
                slots: None,
                error: None,
                ordinal: 0,
                graveyard: Vec::new(),
                root_ptr: std::ptr::null_mut(),
                root: None,
            };
            body(&mut builder, &mut Scratch::default())
        }
    }
}

/// A new instance of `cls` whose attributes are the members of the JSON object `data`
/// (set as `object.__setattr__` would, so a class keeps its attributes compact).
pub(crate) fn loads_instance<'py>(
    py: Python<'py>,
    data: &[u8],
    cls: &Bound<'py, pyo3::types::PyType>,
) -> PyResult<Bound<'py, PyAny>> {
    let instance = crate::pyfact::bare_instance(py, cls)?;
    with_parse_state(py, |builder, scratch| {
        builder.root = Some(Obj(NonNull::new(instance.clone().into_ptr()).expect("live")));
        let parsed = parse_bytes(py, data, builder, scratch);
        builder.root = None;
        builder.root_ptr = std::ptr::null_mut();
        let parsed = parsed?;
        if parsed.as_ptr() != instance.as_ptr() {
            return Err(crate::errors::kiln_error(
                py,
                "KilnError",
                ("a fact record is not a JSON object",),
            ));
        }
        Ok(parsed)
    })
}

/// The Python value of the JSON document `data`, for the core's own callers.
pub(crate) fn loads_bytes<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    with_parse_state(py, |builder, scratch| {
        parse_bytes(py, data, builder, scratch)
    })
}

/// `value` as orjson writes it, for the core's own callers: None when it holds a type
/// left to orjson, and also when orjson (or KilnDB) would refuse it, so that the caller
/// hands it to the Python path and its precise error.
pub(crate) fn dumps_plain(
    py: Python<'_>,
    value: &Bound<'_, PyAny>,
    sort_keys: bool,
) -> PyResult<Option<Vec<u8>>> {
    match encode(py, value, sort_keys, |out| Ok(out.to_vec())) {
        Ok(found) => Ok(found),
        Err(err) if err.is_instance_of::<pyo3::exceptions::PyValueError>(py) => Ok(None),
        Err(err) => Err(err),
    }
}

/// `orjson.loads(data)`: the Python value of a JSON document. Raises
/// `orjson.JSONDecodeError` (a `ValueError`) for anything orjson refuses.
#[pyfunction]
pub fn loads<'py>(py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    guard(py, || {
        // A fresh tree of containers cannot hold a cycle: the collector waits for the end
        // of the document rather than walking it again and again as it grows.
        let _pause = crate::pyfact::GcPause::new(py);
        with_parse_state(py, |builder, scratch| parse_one(py, data, builder, scratch))
    })
}

/// `[orjson.loads(body) for body in bodies]`, raising at the first bad one.
#[pyfunction]
pub fn loads_many<'py>(
    py: Python<'py>,
    bodies: &Bound<'py, PyList>,
) -> PyResult<Bound<'py, PyList>> {
    guard(py, || {
        let out = PyList::empty(py);
        // The bodies are taken first: iterating could run Python code.
        let bodies: Vec<Bound<'py, PyAny>> = bodies.iter().collect();
        let _pause = crate::pyfact::GcPause::new(py);
        with_parse_state(py, |builder, scratch| {
            for body in &bodies {
                out.append(parse_one(py, body, builder, scratch)?)?;
            }
            Ok(())
        })?;
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::sort_prefix;

    #[test]
    fn sort_prefix_is_the_first_eight_bytes_padded() {
        for text in [
            &b""[..],
            b"a",
            b"ab",
            b"abc",
            b"abcd",
            b"abcde",
            b"abcdef",
            b"abcdefg",
            b"abcdefgh",
            b"abcdefghi",
            b"\xff\x00\x01",
        ] {
            let mut head = [0u8; 8];
            let n = text.len().min(8);
            head[..n].copy_from_slice(&text[..n]);
            assert_eq!(sort_prefix(text), u64::from_be_bytes(head), "{text:?}");
        }
    }
}
