//! JSON output for records, byte for byte as orjson writes it.
//!
//! `dumps` handles the plain JSON types (None, bool, int, float, str, list, tuple, dict
//! with str keys, `orjson.Fragment`) and answers None for anything else or anything it
//! would refuse, so that the caller hands the value to the Python path, which keeps
//! orjson's exact behaviour and error messages.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use sha2::{Digest, Sha256};

const MAX_DEPTH: usize = 254;

static ORJSON_FRAGMENT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ORJSON_DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ORJSON_LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn orjson_attr<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    name: &str,
) -> PyResult<&'py Bound<'py, PyAny>> {
    cell.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import("orjson")?.getattr(name)?.unbind())
    })
    .map(|f| f.bind(py))
}

/// `orjson.dumps(obj)` (insertion order), for values the native writer leaves alone.
pub fn orjson_dumps(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    orjson_attr(py, &ORJSON_DUMPS, "dumps")?
        .call1((obj,))?
        .extract::<Vec<u8>>()
}

/// `json` decoded (a value's private copy where a native copy cannot be made).
pub fn decoded(py: Python<'_>, json: &[u8]) -> PyResult<Py<PyAny>> {
    Ok(orjson_attr(py, &ORJSON_LOADS, "loads")?
        .call1((PyBytes::new(py, json),))?
        .unbind())
}

pub fn sha256_hex(data: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(data);
    let mut out = String::with_capacity(64);
    for byte in digest {
        out.push(HEX[(byte >> 4) as usize] as char);
        out.push(HEX[(byte & 15) as usize] as char);
    }
    out
}

/// Write `text` as a JSON string: `"` and `\` escaped, control characters as `\b \t \n
/// \f \r` or `\u00XX`; everything else (non-ASCII included) as UTF-8.
pub fn write_str(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 15) as usize]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

pub fn string_json(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 2);
    write_str(&mut out, text);
    out
}

/// Write a finite float as orjson does: the shortest representation that reads back
/// the same, `1.0` for integral values, `1e+16` / `1e-7` in exponent form.
pub fn write_f64(out: &mut Vec<u8>, value: f64) {
    let mut buffer = ryu::Buffer::new();
    let text = buffer.format_finite(value).as_bytes();
    match memchr::memchr(b'e', text) {
        Some(at) if text.get(at + 1) != Some(&b'-') => {
            out.extend_from_slice(&text[..=at]);
            out.push(b'+');
            out.extend_from_slice(&text[at + 1..]);
        }
        _ => out.extend_from_slice(text),
    }
}

/// Serialise `obj` natively; None if it holds a type or value left to orjson.
pub fn dumps(py: Python<'_>, obj: &Bound<'_, PyAny>, sort_keys: bool) -> PyResult<Option<Vec<u8>>> {
    let mut out = Vec::with_capacity(64);
    Ok(write_value(py, obj, sort_keys, &mut out, 0)?.then_some(out))
}

fn write_value(
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
    sort_keys: bool,
    out: &mut Vec<u8>,
    depth: usize,
) -> PyResult<bool> {
    if depth > MAX_DEPTH {
        return Ok(false);
    }
    if obj.is_none() {
        out.extend_from_slice(b"null");
    } else if let Ok(s) = obj.cast_exact::<PyString>() {
        match s.to_str() {
            Ok(text) => write_str(out, text),
            Err(_) => return Ok(false), // surrogates: orjson refuses them
        }
    } else if let Ok(b) = obj.cast_exact::<PyBool>() {
        out.extend_from_slice(if b.is_true() { b"true" } else { b"false" });
    } else if let Ok(i) = obj.cast_exact::<PyInt>() {
        if let Ok(v) = i.extract::<i64>() {
            out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        } else if let Ok(v) = i.extract::<u64>() {
            out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        } else {
            return Ok(false);
        }
    } else if let Ok(f) = obj.cast_exact::<PyFloat>() {
        let v = f.value();
        if !v.is_finite() {
            return Ok(false);
        }
        write_f64(out, v);
    } else if let Ok(d) = obj.cast_exact::<PyDict>() {
        out.push(b'{');
        if sort_keys && d.len() > 1 {
            let mut items: Vec<(String, Bound<'_, PyAny>)> = Vec::with_capacity(d.len());
            for (k, v) in d.iter() {
                let Ok(key) = k.cast_exact::<PyString>() else {
                    return Ok(false);
                };
                let Ok(text) = key.to_str() else {
                    return Ok(false);
                };
                items.push((text.to_owned(), v));
            }
            items.sort_by(|a, b| a.0.cmp(&b.0));
            for (n, (k, v)) in items.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                write_str(out, k);
                out.push(b':');
                if !write_value(py, v, sort_keys, out, depth + 1)? {
                    return Ok(false);
                }
            }
        } else {
            for (n, (k, v)) in d.iter().enumerate() {
                let Ok(key) = k.cast_exact::<PyString>() else {
                    return Ok(false);
                };
                let Ok(text) = key.to_str() else {
                    return Ok(false);
                };
                if n > 0 {
                    out.push(b',');
                }
                write_str(out, text);
                out.push(b':');
                if !write_value(py, &v, sort_keys, out, depth + 1)? {
                    return Ok(false);
                }
            }
        }
        out.push(b'}');
    } else if let Ok(l) = obj.cast_exact::<PyList>() {
        out.push(b'[');
        for (n, item) in l.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            if !write_value(py, &item, sort_keys, out, depth + 1)? {
                return Ok(false);
            }
        }
        out.push(b']');
    } else if let Ok(t) = obj.cast_exact::<PyTuple>() {
        out.push(b'[');
        for (n, item) in t.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            if !write_value(py, &item, sort_keys, out, depth + 1)? {
                return Ok(false);
            }
        }
        out.push(b']');
    } else if obj
        .get_type()
        .is(orjson_attr(py, &ORJSON_FRAGMENT, "Fragment")?)
    {
        let contents = obj.getattr(pyo3::intern!(py, "contents"))?;
        if let Ok(b) = contents.cast::<PyBytes>() {
            out.extend_from_slice(b.as_bytes());
        } else if let Ok(s) = contents.cast::<PyString>() {
            out.extend_from_slice(s.to_str()?.as_bytes());
        } else {
            return Ok(false);
        }
    } else {
        return Ok(false);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_as_orjson_writes_them() {
        let cases = [
            (1733300000.123456, "1733300000.123456"),
            (1e16, "1e+16"),
            (1e-7, "1e-7"),
            (123456789012345680.0, "1.2345678901234568e+17"),
            (1.0, "1.0"),
            (-0.0, "-0.0"),
            (1e15, "1000000000000000.0"),
            (5e-324, "5e-324"),
        ];
        for (value, text) in cases {
            let mut out = Vec::new();
            write_f64(&mut out, value);
            assert_eq!(String::from_utf8(out).unwrap(), text);
        }
    }

    #[test]
    fn strings_escaped_as_orjson_does() {
        let out = string_json("\u{1}\u{7f}\u{2028}\"\\\t\n\r\u{8}\u{c}/é\u{1f}");
        assert_eq!(
            out,
            "\"\\u0001\u{7f}\u{2028}\\\"\\\\\\t\\n\\r\\b\\f/é\\u001f\"".as_bytes()
        );
    }

    #[test]
    fn sha256_of_null() {
        assert_eq!(
            sha256_hex(b"null"),
            "74234e98afe7498fb5daf1f36ac2d78acc339464f950703b8c019892f982b90b"
        );
    }
}
