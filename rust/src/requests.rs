//! The server's plain-write lane: a run of pipelined write requests recognised, and
//! their replies framed, in one call each.
//!
//! A *plain write* is the request envelope `{"op": "write", "store": str, "key": str,
//! "value": any}` with at most a `request_id` and options set to `null` besides (as
//! KilnDB's own clients send them): what the protocol's checker turns into a write
//! with every option at its default (no fence, no replicas, no database of its own).
//! Its checked params are the envelope itself: the stager reads the fields of a write by
//! name and gives absent (or null) options their defaults. Anything else — another op,
//! another field, an option with a value, a body that is not a JSON object — ends the
//! run, and the connection's general path takes it from there.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PyList, PyString};

use crate::errors::guard;
use crate::frame;

/// The envelope fields a plain write must carry (it may also carry a `request_id`).
const REQUIRED_FIELDS: [&str; 4] = ["op", "store", "key", "value"];

/// `body` parsed, if it is a plain write.
fn plain_write<'py>(py: Python<'py>, body: &[u8]) -> PyResult<Option<Bound<'py, PyDict>>> {
    // A body without the string "write" cannot be one: it is not parsed here at all
    // (the general path parses it once), whatever its size.
    if memchr::memmem::find(body, b"\"write\"").is_none() {
        return Ok(None);
    }
    let Ok(parsed) = crate::py_json::loads_bytes(py, body) else {
        return Ok(None); // the general path reports the JSON error
    };
    let Ok(envelope) = parsed.cast_into_exact::<PyDict>() else {
        return Ok(None);
    };
    for (name, field) in envelope.iter() {
        let Ok(name) = name.cast_exact::<PyString>() else {
            return Ok(None);
        };
        match name.to_str()? {
            "op" => match field.cast_exact::<PyString>() {
                Ok(op) if op.to_str()? == "write" => {}
                _ => return Ok(None),
            },
            "store" | "key" => {
                if !field.is_exact_instance_of::<PyString>() {
                    return Ok(None);
                }
            }
            "value" | "request_id" => {}
            // Options whose null is their default, for the checker and the stager alike.
            "expected_seq" | "id" | "causation" | "valid_time" | "producer" | "derivation"
            | "metadata" | "fence" | "replicas"
                if field.is_none() => {}
            _ => return Ok(None),
        }
    }
    // Every field present is a plain write's; the required ones must all be there.
    for field in REQUIRED_FIELDS {
        if !envelope.contains(field)? {
            return Ok(None);
        }
    }
    Ok(Some(envelope))
}

/// The longest run of plain writes in `bodies` from `start`: their envelopes (each its
/// own checked params) and the index just after the run.
#[pyfunction]
pub fn plain_write_run<'py>(
    py: Python<'py>,
    bodies: &Bound<'py, PyList>,
    start: usize,
) -> PyResult<(Bound<'py, PyList>, usize)> {
    guard(py, || {
        let _pause = crate::pyfact::GcPause::new(py);
        let run = PyList::empty(py);
        let mut end = start;
        while end < bodies.len() {
            let item = bodies.get_item(end)?;
            let Ok(body) = item.cast::<PyBytes>() else {
                break;
            };
            match plain_write(py, body.as_bytes())? {
                Some(envelope) => run.append(envelope)?,
                None => break,
            }
            end += 1;
        }
        Ok((run, end))
    })
}

/// What a reply echoes of a request's `request_id`: a string or an integer (booleans
/// included: `PyInt` covers them, as Python counts them), anything else is dropped.
fn echoed_id<'py>(envelope: &Bound<'py, PyDict>) -> PyResult<Option<Bound<'py, PyAny>>> {
    Ok(envelope
        .get_item("request_id")?
        .filter(|id| id.is_instance_of::<PyString>() || id.is_instance_of::<PyInt>()))
}

/// The reply frames of a run of written facts, back to back: for each envelope and the
/// stored JSON of its fact, `{"ok":true,"fact":FACT,"request_id":ID}` (the id only when
/// echoed). None if an outcome is not a fact's JSON (an error, a retried fact): the
/// caller builds those replies one by one.
#[pyfunction]
pub fn write_replies<'py>(
    py: Python<'py>,
    envelopes: &Bound<'py, PyList>,
    outcomes: &Bound<'py, PyList>,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    guard(py, || {
        if envelopes.len() != outcomes.len() {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "one outcome per envelope",
            ));
        }
        let mut out = Vec::new();
        let mut body = Vec::new();
        for (envelope, outcome) in envelopes.iter().zip(outcomes.iter()) {
            let Ok(fact) = outcome.cast_exact::<PyBytes>() else {
                return Ok(None);
            };
            let envelope = envelope.cast_into::<PyDict>()?;
            body.clear();
            body.extend_from_slice(b"{\"ok\":true,\"fact\":");
            body.extend_from_slice(fact.as_bytes());
            if let Some(id) = echoed_id(&envelope)? {
                match crate::jsonw::dumps(py, &id, false)? {
                    Some(json) => {
                        body.extend_from_slice(b",\"request_id\":");
                        body.extend_from_slice(&json);
                    }
                    None => return Ok(None), // an integer JSON cannot hold: the slow path
                }
            }
            body.push(b'}');
            frame::encode_into(&body, &mut out);
        }
        Ok(Some(PyBytes::new(py, &out)))
    })
}
