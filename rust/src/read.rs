//! Reading facts by where the keydir says they are: one call for a whole history.
//!
//! Frames that sit back to back in a file are read with one `pread` per run (up to
//! 1 MiB), all with the GIL released; each frame is checked (its length field and CRC)
//! before it is decoded, and damage raises `CorruptRecordError(path, offset)`.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyType};

use crate::errors::{corrupt_record, guard, storage_error};
use crate::frame;
use crate::py_frame::{borrowed_file, pread_exact};

const READ_RUN: u64 = 1 << 20;

struct Run {
    file: usize,
    start: u64,
    len: u64,
    /// Indexes into the reads this run covers.
    first: usize,
    count: usize,
}

/// The records at `reads` (`(file index, offset, frame size)`, files given as
/// `(fd, path)`), in order: their bodies, or facts of `fact_type` when it is given.
#[pyfunction]
#[pyo3(signature = (files, reads, fact_type = None))]
pub fn read_records<'py>(
    py: Python<'py>,
    files: Vec<(i32, String)>,
    reads: Vec<(usize, u64, u64)>,
    fact_type: Option<Bound<'py, PyType>>,
) -> PyResult<Bound<'py, PyList>> {
    guard(py, || read(py, &files, &reads, fact_type.as_ref()))
}

/// The fact whose frame of `size` bytes is at `offset` of the data file open as `fd`
/// (`path` names it in errors): [`read_records`] of one record, without the lists.
#[pyfunction]
pub fn read_fact<'py>(
    py: Python<'py>,
    fd: i32,
    path: &str,
    offset: u64,
    size: u64,
    fact_type: &Bound<'py, PyType>,
) -> PyResult<Bound<'py, PyAny>> {
    guard(py, || {
        let size = size as usize;
        let bytes = py
            .detach(|| pread_exact(&borrowed_file(fd), offset, size))
            .map_err(|err| storage_error(py, "read", path, &err))?;
        let body = checked_body(&bytes, size).ok_or_else(|| corrupt_record(py, path, offset))?;
        crate::py_json::loads_instance(py, body, fact_type)
    })
}

/// The body of the frame `bytes` if it is whole: `size` bytes, its length field and CRC
/// agreeing.
pub(crate) fn checked_body(bytes: &[u8], size: usize) -> Option<&[u8]> {
    let frame = bytes.get(..size)?;
    (size > frame::OVERHEAD
        && frame::read_u32(frame, 0) as usize == size - frame::OVERHEAD
        && frame::crc32(&frame[4..size - 4]) == frame::read_u32(frame, size - 4))
    .then(|| &frame[4..size - 4])
}

/// [`read_records`] for a plan made by `KeyDir.plan`: 16 bytes a fact, little-endian
/// u32 file index, u64 offset, u32 frame size.
#[pyfunction]
#[pyo3(signature = (files, plan, fact_type = None))]
pub fn read_planned<'py>(
    py: Python<'py>,
    files: Vec<(i32, String)>,
    plan: &[u8],
    fact_type: Option<Bound<'py, PyType>>,
) -> PyResult<Bound<'py, PyList>> {
    guard(py, || {
        if plan.len() % 16 != 0 {
            return Err(crate::errors::invalid_argument(
                py,
                "a read plan is 16 bytes a fact",
            ));
        }
        let reads: Vec<(usize, u64, u64)> = plan
            .chunks_exact(16)
            .map(|entry| {
                let mut word4 = [0u8; 4];
                let mut word8 = [0u8; 8];
                word4.copy_from_slice(&entry[..4]);
                let index = u32::from_le_bytes(word4) as usize;
                word8.copy_from_slice(&entry[4..12]);
                let offset = u64::from_le_bytes(word8);
                word4.copy_from_slice(&entry[12..]);
                (index, offset, u64::from(u32::from_le_bytes(word4)))
            })
            .collect();
        read(py, &files, &reads, fact_type.as_ref())
    })
}

fn read<'py>(
    py: Python<'py>,
    files: &[(i32, String)],
    reads: &[(usize, u64, u64)],
    fact_type: Option<&Bound<'py, PyType>>,
) -> PyResult<Bound<'py, PyList>> {
    {
        let mut runs: Vec<Run> = Vec::new();
        for (index, &(file, offset, size)) in reads.iter().enumerate() {
            if file >= files.len() {
                return Err(crate::errors::invalid_argument(py, "read names no file"));
            }
            if let Some(run) = runs.last_mut() {
                if run.file == file && run.start + run.len == offset && run.len < READ_RUN {
                    run.len += size;
                    run.count += 1;
                    continue;
                }
            }
            runs.push(Run {
                file,
                start: offset,
                len: size,
                first: index,
                count: 1,
            });
        }
        let fds: Vec<i32> = files.iter().map(|(fd, _)| *fd).collect();
        let spans: Vec<(usize, u64, u64)> = runs.iter().map(|r| (r.file, r.start, r.len)).collect();
        let data = py.detach(|| {
            spans
                .iter()
                .map(|&(file, start, len)| {
                    pread_exact(&borrowed_file(fds[file]), start, len as usize)
                        .map_err(|err| (file, err))
                })
                .collect::<Result<Vec<Vec<u8>>, _>>()
        });
        let data = data.map_err(|(file, err)| storage_error(py, "read", &files[file].1, &err))?;
        let _pause = crate::pyfact::GcPause::new(py);
        let out = PyList::empty(py);
        for (run, bytes) in runs.iter().zip(&data) {
            let mut at = 0usize;
            for &(_, offset, size) in &reads[run.first..run.first + run.count] {
                let size = size as usize;
                let body = bytes
                    .get(at..)
                    .and_then(|rest| checked_body(rest, size))
                    .ok_or_else(|| corrupt_record(py, &files[run.file].1, offset))?;
                at += size;
                match fact_type {
                    Some(cls) => out.append(crate::py_json::loads_instance(py, body, cls)?)?,
                    None => out.append(PyBytes::new(py, body))?,
                }
            }
        }
        Ok(out)
    }
}
