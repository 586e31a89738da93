//! Building `kilndb.Fact` objects and private copies of values from the core.
//!
//! `Fact` is a frozen dataclass that is deliberately not slotted. A fact is materialised
//! as `object.__new__(Fact)` followed by the generic attribute setter for each field (in
//! record order), straight from the parsed record or the staged write: it skips the
//! dataclass `__init__` and keeps the fields in CPython's compact per-class attribute
//! storage rather than in a dict of their own.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple, PyType};

/// A new instance of `fact_type` whose `__dict__` is `fields` (handed over, uncopied).
pub fn new_fact<'py>(
    py: Python<'py>,
    fact_type: &Bound<'py, PyType>,
    fields: Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyAny>> {
    let fact = bare_instance(py, fact_type)?;
    // SAFETY: `fact` is a live instance of a plain Python class (bare_instance checked
    // it); PyObject_GenericSetDict stores `fields`, a dict, as its `__dict__`, taking its
    // own reference, or fails with an exception set.
    if unsafe {
        pyo3::ffi::PyObject_GenericSetDict(fact.as_ptr(), fields.as_ptr(), std::ptr::null_mut())
    } != 0
    {
        return Err(PyErr::fetch(py));
    }
    Ok(fact)
}

/// A new instance of the ordinary class `cls`, as `object.__new__(cls)` makes it
/// (its attribute storage ready for `object.__setattr__`), without calling `__init__`.
/// TypeError unless `cls` is a Python class that `object.__new__` makes.
pub fn bare_instance<'py>(
    py: Python<'py>,
    cls: &Bound<'py, PyType>,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: PyType_GetSlot reads the tp_new slot of `object` and of `cls` (both live
    // types; static types are readable from Python 3.10 on). object_new is then called
    // only for a heap type that inherits it — the classes `object.__new__(cls)` accepts
    // — with an empty argument tuple. It returns a new reference or NULL with an
    // exception set.
    unsafe {
        let object_new = pyo3::ffi::PyType_GetSlot(
            std::ptr::addr_of_mut!(pyo3::ffi::PyBaseObject_Type),
            pyo3::ffi::Py_tp_new,
        );
        let cls_new = pyo3::ffi::PyType_GetSlot(cls.as_type_ptr(), pyo3::ffi::Py_tp_new);
        let heap =
            pyo3::ffi::PyType_GetFlags(cls.as_type_ptr()) & pyo3::ffi::Py_TPFLAGS_HEAPTYPE != 0;
        if object_new.is_null() || cls_new != object_new || !heap {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "facts are built only for a plain Python class",
            ));
        }
        let new: pyo3::ffi::newfunc = std::mem::transmute(object_new);
        let args = PyTuple::empty(py);
        let raw = new(cls.as_type_ptr(), args.as_ptr(), std::ptr::null_mut());
        Bound::from_owned_ptr_or_err(py, raw)
    }
}

/// A new instance of `cls` with each of `names` set to its value, as the dataclass's
/// own `__init__` would store them (without running it).
pub fn fact_with<'py, const N: usize>(
    py: Python<'py>,
    cls: &Bound<'py, PyType>,
    names: &[Py<PyString>],
    values: [Bound<'py, PyAny>; N],
) -> PyResult<Bound<'py, PyAny>> {
    let fact = bare_instance(py, cls)?;
    for (name, value) in names.iter().zip(values) {
        // SAFETY: `fact` is a live instance of an ordinary class, `name` a str; the
        // generic setter is `object.__setattr__` (it bypasses the frozen `__setattr__`).
        if unsafe {
            pyo3::ffi::PyObject_GenericSetAttr(fact.as_ptr(), name.as_ptr(), value.as_ptr())
        } != 0
        {
            return Err(PyErr::fetch(py));
        }
    }
    Ok(fact)
}

/// `[fact_from_dict(d) for d in dicts]`: each dict (a fact's every field, as a server
/// sends it) becomes the `__dict__` of a new `fact_type` instance, handed over uncopied.
#[pyfunction]
pub fn facts_from_dicts<'py>(
    py: Python<'py>,
    dicts: &Bound<'py, PyList>,
    fact_type: &Bound<'py, PyType>,
) -> PyResult<Bound<'py, PyList>> {
    crate::errors::guard(py, || {
        let _pause = GcPause::new(py);
        let out = PyList::empty(py);
        for item in dicts.iter() {
            let fields = item.cast_into_exact::<PyDict>().map_err(|_| {
                pyo3::exceptions::PyTypeError::new_err("a fact must be given as a dict")
            })?;
            out.append(new_fact(py, fact_type, fields)?)?;
        }
        Ok(out)
    })
}

/// The value a reader sees of `value` (which serialised natively): immutable scalars
/// as they are, containers copied as decoding their canonical JSON would give them
/// (tuples become lists, dict keys sorted). None if the value holds something only a
/// decode can reproduce (an `orjson.Fragment`).
pub fn private_copy<'py>(
    py: Python<'py>,
    value: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    if value.is_none()
        || value.is_exact_instance_of::<PyString>()
        || value.is_exact_instance_of::<PyInt>()
        || value.is_exact_instance_of::<PyFloat>()
        || value.is_exact_instance_of::<PyBool>()
    {
        return Ok(Some(value.clone()));
    }
    if let Ok(dict) = value.cast_exact::<PyDict>() {
        let mut items: Vec<(String, Bound<'py, PyAny>, Bound<'py, PyAny>)> =
            Vec::with_capacity(dict.len());
        for (k, v) in dict.iter() {
            let Ok(key) = k.cast_exact::<PyString>() else {
                return Ok(None);
            };
            items.push((key.to_str()?.to_owned(), k, v));
        }
        items.sort_by(|a, b| a.0.cmp(&b.0));
        let copy = PyDict::new(py);
        for (_, k, v) in items {
            let Some(inner) = private_copy(py, &v)? else {
                return Ok(None);
            };
            copy.set_item(k, inner)?;
        }
        return Ok(Some(copy.into_any()));
    }
    let items: Vec<Bound<'py, PyAny>> = if let Ok(list) = value.cast_exact::<PyList>() {
        list.iter().collect()
    } else if let Ok(tuple) = value.cast_exact::<PyTuple>() {
        tuple.iter().collect()
    } else {
        return Ok(None);
    };
    let copy = PyList::empty(py);
    for item in items {
        let Some(inner) = private_copy(py, &item)? else {
            return Ok(None);
        };
        copy.append(inner)?;
    }
    Ok(Some(copy.into_any()))
}

/// The cyclic garbage collector held off while a batch of facts is built.
///
/// Facts and their dicts are container objects, so building thousands of them would run
/// the collector every 700 allocations, each time walking every object young enough —
/// a third of the time of a large read. None of them can be part of a reference cycle,
/// so collecting waits until the batch is built (when the next allocation runs it once),
/// and the collector's previous state is restored, whatever it was.
pub struct GcPause {
    was_enabled: bool,
    /// Not `Send`: it must be dropped on the thread (and under the GIL) that made it.
    _here: std::marker::PhantomData<*const ()>,
}

impl GcPause {
    pub fn new(_py: Python<'_>) -> Self {
        // SAFETY: called with the GIL held (the `Python` token proves it);
        // PyGC_Disable only flips the collector's switch and returns its old state.
        let was_enabled = unsafe { pyo3::ffi::PyGC_Disable() } != 0;
        GcPause {
            was_enabled,
            _here: std::marker::PhantomData,
        }
    }
}

impl Drop for GcPause {
    fn drop(&mut self) {
        if self.was_enabled {
            // SAFETY: the pause lives inside a function that holds the GIL throughout
            // (it is created from a `Python` token and never sent across `detach`).
            unsafe {
                pyo3::ffi::PyGC_Enable();
            }
        }
    }
}
