//! Python bindings of the frame codec: `encode_frame`, `FrameDecoder` and `FrameReader`.

use std::fs::File;
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::errors::{frame_too_large, guard, protocol_error, storage_error};
use crate::frame::{self, Step, Stop, StreamDecoder, StreamError};

/// The most bytes one `pread` of a [`FrameReader`] asks for.
const READ_CHUNK: usize = 1 << 20;

#[pyfunction]
pub fn crc32(py: Python<'_>, data: &[u8]) -> PyResult<u32> {
    guard(py, || Ok(frame::crc32(data)))
}

/// Wrap `body` in a frame: length, body, CRC-32 of the body.
#[pyfunction]
pub fn encode_frame<'py>(py: Python<'py>, body: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    guard(py, || {
        PyBytes::new_with(py, body.len() + frame::OVERHEAD, |out| {
            let n = body.len();
            out[..4].copy_from_slice(&(n as u32).to_be_bytes());
            out[4..4 + n].copy_from_slice(body);
            out[4 + n..].copy_from_slice(&frame::crc32(body).to_be_bytes());
            Ok(())
        })
    })
}

/// The frames of several bodies, back to back, as one bytes object.
#[pyfunction]
pub fn encode_frames<'py>(py: Python<'py>, bodies: Vec<Vec<u8>>) -> PyResult<Bound<'py, PyBytes>> {
    guard(py, || {
        let total = bodies.iter().map(|b| b.len() + frame::OVERHEAD).sum();
        let mut out = Vec::with_capacity(total);
        for body in &bodies {
            frame::encode_into(body, &mut out);
        }
        Ok(PyBytes::new(py, &out))
    })
}

fn stream_error(py: Python<'_>, err: StreamError) -> PyErr {
    match err {
        StreamError::TooLarge { size, limit } => frame_too_large(py, size, limit),
        StreamError::Crc => protocol_error(py, "frame CRC mismatch"),
    }
}

/// Incremental frame decoder: `feed(data)` appends bytes, `next_frame()` returns the next
/// complete body or None. Raises FrameTooLargeError as soon as a header announces more
/// than `max_frame_bytes`, ProtocolError on a CRC mismatch; it then stays failed.
///
/// With `skip_oversize`, an oversize frame is raised once and then skipped — its body
/// and CRC discarded as they arrive, never buffered — and decoding goes on after it.
#[pyclass(module = "kilndb._core")]
pub struct FrameDecoder {
    inner: StreamDecoder,
    /// A refusal met after good frames in `frames()`: raised by the next call.
    deferred: Option<StreamError>,
}

impl FrameDecoder {
    fn take_deferred(&mut self, py: Python<'_>) -> PyResult<()> {
        match self.deferred.take() {
            Some(err) => Err(stream_error(py, err)),
            None => Ok(()),
        }
    }
}

#[pymethods]
impl FrameDecoder {
    #[new]
    #[pyo3(signature = (max_frame_bytes = 16 * 1024 * 1024, *, skip_oversize = false))]
    fn new(py: Python<'_>, max_frame_bytes: i64, skip_oversize: bool) -> PyResult<Self> {
        if max_frame_bytes <= 0 {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "max_frame_bytes must be positive",
            ));
        }
        guard(py, || {
            let limit = max_frame_bytes as u64;
            Ok(FrameDecoder {
                inner: if skip_oversize {
                    StreamDecoder::skipping_oversize(limit)
                } else {
                    StreamDecoder::new(limit)
                },
                deferred: None,
            })
        })
    }

    #[getter]
    fn max_frame_bytes(&self) -> u64 {
        self.inner.max_frame_bytes
    }

    #[getter]
    fn skip_oversize(&self) -> bool {
        self.inner.skip_oversize
    }

    #[getter]
    fn buffered(&self) -> usize {
        self.inner.buffered()
    }

    #[getter]
    fn skipping(&self) -> u64 {
        self.inner.skipping()
    }

    /// Append received bytes. Never blocks and never parses.
    fn feed(&mut self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        guard(py, || {
            if let Some(err) = self.inner.failed {
                return Err(stream_error(py, err));
            }
            self.inner.feed(data);
            Ok(())
        })
    }

    /// The next complete body, or None if more bytes are needed.
    fn next_frame<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        guard(py, || {
            self.take_deferred(py)?;
            match self.inner.next_range() {
                Ok(Some(range)) => Ok(Some(PyBytes::new(py, self.inner.bytes(range)))),
                Ok(None) => Ok(None),
                Err(err) => Err(stream_error(py, err)),
            }
        })
    }

    /// Every complete body buffered now, in order. If a bad frame follows good ones,
    /// the good ones are returned and the error is raised by the next call.
    fn frames<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        guard(py, || {
            self.take_deferred(py)?;
            let out = PyList::empty(py);
            loop {
                match self.inner.next_range() {
                    Ok(Some(range)) => out.append(PyBytes::new(py, self.inner.bytes(range)))?,
                    Ok(None) => return Ok(out),
                    Err(err) if out.is_empty() => return Err(stream_error(py, err)),
                    Err(err) => {
                        self.deferred = Some(err);
                        return Ok(out);
                    }
                }
            }
        })
    }
}

/// A borrowed view of a descriptor the caller owns, as a `File` that is never closed.
///
/// Sound because `ManuallyDrop` never runs `File`'s destructor, so the descriptor is
/// not closed here; a descriptor that the caller closed meanwhile only makes the read
/// fail with EBADF.
pub fn borrowed_file(fd: i32) -> ManuallyDrop<File> {
    // SAFETY: see above; `File` holds the number and nothing else, and is never dropped.
    ManuallyDrop::new(unsafe { File::from_raw_fd(fd) })
}

/// Read up to `want` bytes at `offset` (fewer only at the end of the file).
pub fn pread_exact(file: &File, offset: u64, want: usize) -> std::io::Result<Vec<u8>> {
    let mut out = vec![0u8; want];
    let mut got = 0;
    while got < want {
        match file.read_at(&mut out[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
    out.truncate(got);
    Ok(out)
}

/// Sequential reader of the frames in `[start, end)` of an open file, a read chunk of
/// frames per call, with the GIL released around each `pread`.
///
/// Reading stops at `end`, at a zero-length header (the end-of-data marker of a
/// preallocated file) or at the first frame that is short, runs past `end` or fails its
/// CRC; then `stop_offset` says where and `stop_reason` why (None for a clean end).
#[pyclass(module = "kilndb._core")]
pub struct FrameReader {
    fd: i32,
    pub(crate) path: String,
    end: u64,
    base: u64,
    pub(crate) buf: Vec<u8>,
    p: usize,
    pub(crate) finished: bool,
    #[pyo3(get)]
    pub(crate) stop_offset: u64,
    pub(crate) stop: Stop,
}

impl FrameReader {
    fn refill(&mut self, py: Python<'_>, need: usize) -> PyResult<bool> {
        self.base += self.p as u64;
        self.buf.drain(..self.p);
        self.p = 0;
        let remaining = self.end.saturating_sub(self.base) as usize;
        let want = READ_CHUNK.max(need).min(remaining);
        if want <= self.buf.len() {
            return Ok(false);
        }
        let (fd, at, count) = (
            self.fd,
            self.base + self.buf.len() as u64,
            want - self.buf.len(),
        );
        let data = py
            .detach(|| pread_exact(&borrowed_file(fd), at, count))
            .map_err(|err| storage_error(py, "read", &self.path, &err))?;
        let grew = !data.is_empty();
        self.buf.extend_from_slice(&data);
        Ok(grew && self.buf.len() >= need)
    }

    fn finish(&mut self, stop: Stop) {
        self.finished = true;
        self.stop = stop;
        self.stop_offset = if stop == Stop::Clean {
            self.end
        } else {
            self.base + self.p as u64
        };
    }

    /// Frames of the next chunk as `(offset, start, end)` into `self.buf`.
    pub(crate) fn next_ranges(&mut self, py: Python<'_>) -> PyResult<Vec<(u64, usize, usize)>> {
        let mut out = Vec::new();
        if self.finished {
            return Ok(out);
        }
        if self.buf.len() - self.p < frame::HEADER_SIZE && !self.refill(py, frame::HEADER_SIZE)? {
            let complete = true;
            if let Step::Stop(stop) = frame::step(&self.buf, self.p, self.base, self.end, complete)
            {
                self.finish(stop);
            } else {
                self.finish(Stop::Short);
            }
            return Ok(out);
        }
        loop {
            match frame::step(&self.buf, self.p, self.base, self.end, false) {
                Step::Frame {
                    body_start,
                    body_end,
                } => {
                    out.push((self.base + self.p as u64, body_start, body_end));
                    self.p = body_end + frame::CRC_SIZE;
                }
                Step::Stop(stop) => {
                    self.finish(stop);
                    return Ok(out);
                }
                Step::More { need } => {
                    if !out.is_empty() {
                        // Hand these over first; the next call reads on.
                        self.stop_offset = self.base + self.p as u64;
                        return Ok(out);
                    }
                    if !self.refill(py, need)? {
                        self.finish(Stop::Short);
                        return Ok(out);
                    }
                }
            }
        }
    }
}

#[pymethods]
impl FrameReader {
    #[new]
    #[pyo3(signature = (fd, start, end, path = String::new()))]
    pub(crate) fn new(fd: i32, start: u64, end: u64, path: String) -> Self {
        FrameReader {
            fd,
            path,
            end,
            base: start,
            buf: Vec::new(),
            p: 0,
            finished: false,
            stop_offset: start,
            stop: Stop::Clean,
        }
    }

    #[getter]
    fn stop_reason(&self) -> Option<&'static str> {
        self.stop.reason()
    }

    /// The next chunk's frames: a list of bodies, or of `(offset, body)` pairs with
    /// `with_offsets`; None once reading has stopped.
    #[pyo3(signature = (with_offsets = false))]
    fn next_batch<'py>(
        &mut self,
        py: Python<'py>,
        with_offsets: bool,
    ) -> PyResult<Option<Bound<'py, PyList>>> {
        guard(py, || {
            while !self.finished {
                let ranges = self.next_ranges(py)?;
                if ranges.is_empty() {
                    continue;
                }
                let out = PyList::empty(py);
                for (offset, start, end) in ranges {
                    let body = PyBytes::new(py, &self.buf[start..end]);
                    if with_offsets {
                        out.append(PyTuple::new(
                            py,
                            [offset.into_pyobject(py)?.into_any(), body.into_any()],
                        )?)?;
                    } else {
                        out.append(body)?;
                    }
                }
                return Ok(Some(out));
            }
            Ok(None)
        })
    }
}
