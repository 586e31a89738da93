//! Writing the log: appends to the active data file, file syncs and group commit.
//!
//! Every system call that changes a data file goes through [`call`], with the GIL
//! released. A test can install an I/O hook ([`set_io_hook`]): the calls then go to the
//! hook's Python methods instead (`pwrite`, `fdatasync`, `fsync`, `posix_fallocate`,
//! `ftruncate`, with the signatures of the `os` functions of those names), which is how
//! the test suites inject full disks, failing fsyncs and slow disks, and stamp the order
//! of writes and syncs. An `OSError` the hook raises is handled exactly like the same
//! errno from the kernel; any other exception (a `KeyboardInterrupt`) propagates.
//!
//! Group commit
//! ------------
//! A writer appends its batch under the log lock, notes the position it wrote up to
//! ([`GroupCommit::note_written`]), releases the lock and calls
//! [`GroupCommit::wait_durable`]. The first waiter that finds no sync in flight becomes
//! the *leader*: it takes the active file and the last written position, fdatasyncs
//! with every lock released and publishes the new durable position. Writers arriving
//! meanwhile wait for it; one of those whose record came too late leads the next round,
//! covering everyone who queued since. N concurrent writers cost about N / (writers per
//! fsync) fsyncs.
//!
//! The group committer keeps its own duplicate of the active file's descriptor, so a
//! rotation that closes the old file cannot pull it from under a sync in flight (the
//! rotation syncs the file it seals itself and marks its end durable).
//!
//! A failed fsync poisons the log: the kernel may already have dropped the dirty pages,
//! so retrying could acknowledge data that is not on disk. Every waiter and every later
//! write gets `StorageError` until the database is reopened and recovered from disk.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, RwLock};
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::{corrupt_record, guard, invalid_argument, kiln_error, storage_error};
use crate::py_frame::{borrowed_file, pread_exact};

/// The active data file grows in steps of this many bytes: overwriting allocated blocks
/// lets `fdatasync` skip the file-size update.
pub const PREALLOCATE_STEP: u64 = 4 * 1024 * 1024;

static HOOK: RwLock<Option<Py<PyAny>>> = RwLock::new(None);

/// Route the core's file-changing system calls to `hook`'s methods (None: the kernel).
#[pyfunction]
#[pyo3(signature = (hook))]
pub fn set_io_hook(hook: Option<Bound<'_, PyAny>>) {
    *HOOK.write() = hook.map(Bound::unbind);
}

/// Why a call failed: the system (or an `OSError` from the hook) or another exception.
enum Failure {
    Os(std::io::Error),
    Python(PyErr),
}

impl Failure {
    /// As the `kilndb.errors` class the Python API raises for `action` on `path`.
    fn into_pyerr(self, py: Python<'_>, action: &str, path: &str) -> PyErr {
        match self {
            Failure::Os(err) => storage_error(py, action, path, &err),
            Failure::Python(err) => err,
        }
    }
}

#[derive(Clone, Copy)]
enum Call<'a> {
    Pwrite(&'a [u8], u64),
    Fdatasync,
    Fsync,
    Fallocate(u64, u64),
    Ftruncate(u64),
}

/// One system call on `fd`: the hook's method with the GIL, else the kernel without it.
fn call(py: Python<'_>, fd: i32, what: Call<'_>) -> Result<usize, Failure> {
    let hook = HOOK.read().as_ref().map(|hook| hook.clone_ref(py));
    match hook {
        Some(hook) => call_hook(py, hook.bind(py), fd, what),
        None => py.detach(|| call_kernel(fd, what)).map_err(Failure::Os),
    }
}

fn call_kernel(fd: i32, what: Call<'_>) -> std::io::Result<usize> {
    if fd < 0 {
        return Err(std::io::Error::from_raw_os_error(libc::EBADF));
    }
    let file = borrowed_file(fd);
    match what {
        Call::Pwrite(data, offset) => file.write_at(data, offset),
        Call::Fdatasync => file.sync_data().map(|()| 0),
        Call::Fsync => file.sync_all().map(|()| 0),
        Call::Ftruncate(length) => file.set_len(length).map(|()| 0),
        Call::Fallocate(offset, length) => {
            // SAFETY: a plain system call on a descriptor the caller keeps open.
            let code =
                unsafe { libc::posix_fallocate(fd, offset as libc::off_t, length as libc::off_t) };
            if code == 0 {
                Ok(0)
            } else {
                Err(std::io::Error::from_raw_os_error(code))
            }
        }
    }
}

fn call_hook(
    py: Python<'_>,
    hook: &Bound<'_, PyAny>,
    fd: i32,
    what: Call<'_>,
) -> Result<usize, Failure> {
    let result = match what {
        Call::Pwrite(data, offset) => {
            hook.call_method1("pwrite", (fd, PyBytes::new(py, data), offset))
        }
        Call::Fdatasync => hook.call_method1("fdatasync", (fd,)),
        Call::Fsync => hook.call_method1("fsync", (fd,)),
        Call::Fallocate(offset, length) => {
            hook.call_method1("posix_fallocate", (fd, offset, length))
        }
        Call::Ftruncate(length) => hook.call_method1("ftruncate", (fd, length)),
    };
    match result {
        Ok(value) => match what {
            Call::Pwrite(..) => value.extract::<usize>().map_err(Failure::Python),
            _ => Ok(0),
        },
        Err(err) if err.is_instance_of::<PyOSError>(py) => {
            let errno = err
                .value(py)
                .getattr("errno")
                .and_then(|errno| errno.extract::<i32>())
                .unwrap_or(libc::EIO);
            Err(Failure::Os(std::io::Error::from_raw_os_error(errno)))
        }
        Err(err) => Err(Failure::Python(err)),
    }
}

/// Write all of `data` at `offset`, retrying short writes and interruptions.
fn pwrite_all(py: Python<'_>, fd: i32, data: &[u8], offset: u64) -> Result<(), Failure> {
    let mut written = 0;
    while written < data.len() {
        match call(
            py,
            fd,
            Call::Pwrite(&data[written..], offset + written as u64),
        ) {
            Ok(0) => {
                return Err(Failure::Os(std::io::Error::from(
                    std::io::ErrorKind::WriteZero,
                )))
            }
            Ok(n) => written += n,
            Err(Failure::Os(err)) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Append `data` at `offset` (the end of the data) of the active data file open as
/// `fd`, first preallocating it in [`PREALLOCATE_STEP`]s past `allocated` (its physical
/// length) when needed; return the new physical length.
///
/// A write that fails half way is cut off again by truncating the file at `offset`, so
/// that no frame of it is left where recovery could find it. Raises `DiskFullError` or
/// `StorageError`; the file is then at most `offset` long past any failed write.
#[pyfunction]
pub fn append(
    py: Python<'_>,
    fd: i32,
    path: &str,
    data: &[u8],
    offset: u64,
    allocated: u64,
) -> PyResult<u64> {
    guard(py, || {
        let needed = offset + data.len() as u64;
        let mut allocated = allocated;
        if needed > allocated {
            let target = needed + PREALLOCATE_STEP - needed % PREALLOCATE_STEP;
            allocated = match call(py, fd, Call::Fallocate(allocated, target - allocated)) {
                Ok(_) => target,
                // This filesystem cannot preallocate: plain appends grow the file.
                Err(Failure::Os(err))
                    if matches!(
                        err.raw_os_error(),
                        Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS)
                    ) =>
                {
                    needed
                }
                Err(failure) => return Err(failure.into_pyerr(py, "allocate space in", path)),
            };
        }
        if let Err(failure) = pwrite_all(py, fd, data, offset) {
            // Truncating is the one write that needs no space; best effort, the write has
            // failed anyway.
            let _ = call(py, fd, Call::Ftruncate(offset));
            return Err(failure.into_pyerr(py, "write to", path));
        }
        Ok(allocated.max(needed))
    })
}

/// Bytes read, and written, at a time by [`copy_frames`].
const COPY_CHUNK: u64 = 1 << 20;

/// Copy the frames at `offsets` (of `sizes` bytes) of the file open as `source_fd` to
/// the end (`end`, physical length `allocated`) of the file open as `target_fd`, in file
/// order, checking each frame's length field and CRC on the way (compaction). Returns
/// each frame's new offset, the target's new end and its physical length. Raises
/// `CorruptRecordError(source_path, offset)` for a damaged frame, `DiskFullError` or
/// `StorageError` for a failed write (whose bytes are cut off again).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn copy_frames(
    py: Python<'_>,
    source_fd: i32,
    source_path: &str,
    offsets: Vec<u64>,
    sizes: Vec<u64>,
    target_fd: i32,
    target_path: &str,
    end: u64,
    allocated: u64,
) -> PyResult<(Vec<u64>, u64, u64)> {
    guard(py, || {
        if offsets.len() != sizes.len() {
            return Err(invalid_argument(py, "offsets and sizes differ in length"));
        }
        let (mut end, mut allocated) = (end, allocated);
        let mut moved = Vec::with_capacity(offsets.len());
        let mut out: Vec<u8> = Vec::with_capacity(COPY_CHUNK as usize * 2);
        let mut i = 0;
        while i < offsets.len() {
            // A run of frames back to back in the source, up to a chunk.
            let (start, mut len, mut j) = (offsets[i], sizes[i], i + 1);
            while j < offsets.len() && offsets[j] == start + len && len < COPY_CHUNK {
                len += sizes[j];
                j += 1;
            }
            let bytes = py
                .detach(|| pread_exact(&borrowed_file(source_fd), start, len as usize))
                .map_err(|err| storage_error(py, "read", source_path, &err))?;
            let mut at = 0usize;
            for k in i..j {
                let size = sizes[k] as usize;
                bytes
                    .get(at..)
                    .and_then(|rest| crate::read::checked_body(rest, size))
                    .ok_or_else(|| corrupt_record(py, source_path, offsets[k]))?;
                moved.push(end + out.len() as u64);
                out.extend_from_slice(&bytes[at..at + size]);
                at += size;
            }
            if out.len() as u64 >= COPY_CHUNK {
                allocated = append(py, target_fd, target_path, &out, end, allocated)?;
                end += out.len() as u64;
                out.clear();
            }
            i = j;
        }
        if !out.is_empty() {
            allocated = append(py, target_fd, target_path, &out, end, allocated)?;
            end += out.len() as u64;
        }
        Ok((moved, end, allocated))
    })
}

/// `fdatasync` (or with `metadata`, `fsync`) the file open as `fd`; raises
/// `StorageError` naming `path`.
#[pyfunction]
#[pyo3(signature = (fd, path, metadata = false))]
pub fn sync_file(py: Python<'_>, fd: i32, path: &str, metadata: bool) -> PyResult<()> {
    guard(py, || {
        let what = if metadata {
            Call::Fsync
        } else {
            Call::Fdatasync
        };
        call(py, fd, what)
            .map(|_| ())
            .map_err(|failure| failure.into_pyerr(py, "fsync", path))
    })
}

/// Cut the file open as `fd` to `length` bytes; raises `StorageError` naming `path`.
#[pyfunction]
pub fn truncate_file(py: Python<'_>, fd: i32, path: &str, length: u64) -> PyResult<()> {
    guard(py, || {
        call(py, fd, Call::Ftruncate(length))
            .map(|_| ())
            .map_err(|failure| failure.into_pyerr(py, "truncate", path))
    })
}

struct State {
    /// Highest position known to be on stable storage.
    durable: u64,
    /// Highest position written to the active file.
    written: u64,
    /// A duplicate of the active file's descriptor.
    file: Option<Arc<OwnedFd>>,
    syncing: bool,
    /// Why the log is poisoned.
    failure: Option<String>,
    /// Why no more syncs may start (the log was closed).
    closed: Option<String>,
    fsyncs: u64,
}

/// Group commit over the active data file (see the module's documentation).
#[pyclass(module = "kilndb._core", frozen)]
pub struct GroupCommit {
    state: Mutex<State>,
    done: Condvar,
}

/// Lets the next waiter lead if a leader's round ends in any way but its own finish.
struct Round<'a> {
    commit: &'a GroupCommit,
    finished: bool,
}

impl Drop for Round<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.commit.state.lock().syncing = false;
            self.commit.done.notify_all();
        }
    }
}

enum Turn {
    Durable,
    Lead(Arc<OwnedFd>, u64),
}

impl GroupCommit {
    fn failure_error(py: Python<'_>, message: &str) -> PyErr {
        kiln_error(py, "StorageError", (message.to_owned(),))
    }

    /// Wait until `position` is durable or no sync is in flight (then lead one); with
    /// `position` None, wait for a free turn to lead.
    fn take_turn(&self, py: Python<'_>, position: Option<u64>) -> PyResult<Turn> {
        let outcome = py.detach(|| {
            let mut state = self.state.lock();
            loop {
                if let Some(failure) = &state.failure {
                    return Err(Err(failure.clone()));
                }
                if position.is_some_and(|position| state.durable >= position) {
                    return Ok(Turn::Durable);
                }
                if !state.syncing {
                    break;
                }
                self.done.wait(&mut state);
            }
            let file = match (&state.closed, &state.file) {
                (Some(closed), _) => return Err(Ok(closed.clone())),
                (None, None) => return Err(Ok("the log has no active file".to_owned())),
                (None, Some(file)) => file.clone(),
            };
            state.syncing = true;
            Ok(Turn::Lead(file, state.written))
        });
        outcome.map_err(|failure| match failure {
            Err(message) => Self::failure_error(py, &message),
            Ok(closed) => kiln_error(py, "ClosedError", (closed,)),
        })
    }

    /// One sync of the active file as the group's leader, publishing what it covered.
    fn lead(&self, py: Python<'_>, file: Arc<OwnedFd>, upto: u64) -> PyResult<()> {
        let mut round = Round {
            commit: self,
            finished: false,
        };
        let result = call(py, file.as_raw_fd(), Call::Fdatasync);
        drop(file);
        let mut state = self.state.lock();
        state.syncing = false;
        let outcome = match result {
            Ok(_) => {
                state.fsyncs += 1;
                state.durable = state.durable.max(upto);
                Ok(())
            }
            Err(Failure::Os(err)) => {
                let message = format!("fsync failed; the database must be reopened: {err}");
                state.failure.get_or_insert(message.clone());
                Err(Self::failure_error(py, &message))
            }
            Err(Failure::Python(err)) => Err(err),
        };
        round.finished = true;
        drop(state);
        self.done.notify_all();
        outcome
    }
}

#[pymethods]
impl GroupCommit {
    #[new]
    fn new(durable: u64) -> Self {
        GroupCommit {
            state: Mutex::new(State {
                durable,
                written: durable,
                file: None,
                syncing: false,
                failure: None,
                closed: None,
                fsyncs: 0,
            }),
            done: Condvar::new(),
        }
    }

    /// Sync the file open as `fd` from now on (a new active file); keeps a duplicate of
    /// the descriptor, so the caller may close its own whenever it likes.
    fn set_file(&self, py: Python<'_>, fd: i32, path: &str) -> PyResult<()> {
        if fd < 0 {
            let err = std::io::Error::from_raw_os_error(libc::EBADF);
            return Err(storage_error(py, "open", path, &err));
        }
        let duplicate = borrowed_file(fd)
            .try_clone()
            .map_err(|err| storage_error(py, "open", path, &err))?;
        let owned = OwnedFd::from(duplicate);
        self.state.lock().file = Some(Arc::new(owned));
        Ok(())
    }

    /// Record that the active file holds everything up to `position` (hold the log lock).
    fn note_written(&self, position: u64) {
        let mut state = self.state.lock();
        state.written = state.written.max(position);
    }

    /// Return once `position` is durable, syncing as the group's leader if needed.
    fn wait_durable(&self, py: Python<'_>, position: u64) -> PyResult<()> {
        // A log closed meanwhile synced what was written before it: a write it covered
        // is durable and returns normally (take_turn checks that first).
        guard(py, || match self.take_turn(py, Some(position))? {
            Turn::Durable => Ok(()),
            Turn::Lead(file, upto) => self.lead(py, file, upto),
        })
    }

    /// Sync whatever has been written (interval mode, `Database.sync`).
    fn sync_now(&self, py: Python<'_>) -> PyResult<()> {
        guard(py, || match self.take_turn(py, None)? {
            Turn::Durable => Ok(()),
            Turn::Lead(file, upto) => self.lead(py, file, upto),
        })
    }

    /// Record durability achieved by other means (a file seal).
    fn mark_durable(&self, position: u64) {
        let mut state = self.state.lock();
        if position > state.durable {
            state.durable = position;
            drop(state);
            self.done.notify_all();
        }
    }

    /// Fail every waiter and every later write (an fsync failed elsewhere).
    fn poison(&self, message: &str) {
        self.state
            .lock()
            .failure
            .get_or_insert_with(|| message.to_owned());
        self.done.notify_all();
    }

    /// Start no more syncs: a leader from now on raises `ClosedError(message)` (a
    /// waiter whose write the closing sync covered returns normally).
    fn close(&self, message: &str) {
        let mut state = self.state.lock();
        state.closed = Some(message.to_owned());
        state.file = None;
        drop(state);
        self.done.notify_all();
    }

    /// The `StorageError` that poisoned the log, or None.
    #[getter]
    fn failure(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        let message = self.state.lock().failure.clone()?;
        Some(Self::failure_error(py, &message).into_value(py).into_any())
    }

    /// Highest position known to be on stable storage.
    #[getter]
    fn durable(&self) -> u64 {
        self.state.lock().durable
    }

    /// Syncs made by this group committer.
    #[getter]
    fn fsyncs(&self) -> u64 {
        self.state.lock().fsyncs
    }
}

/// A file for tests of this module: not part of the API.
#[cfg(test)]
fn scratch(name: &str) -> (std::fs::File, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("kilndb-disk-{}-{name}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    (file, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_calls_write_sync_allocate_and_truncate() {
        let (file, path) = scratch("calls");
        let fd = file.as_raw_fd();
        assert_eq!(call_kernel(fd, Call::Fallocate(0, 8192)).unwrap(), 0);
        assert_eq!(file.metadata().unwrap().len(), 8192);
        assert_eq!(call_kernel(fd, Call::Pwrite(b"hello", 10)).unwrap(), 5);
        call_kernel(fd, Call::Fdatasync).unwrap();
        call_kernel(fd, Call::Fsync).unwrap();
        call_kernel(fd, Call::Ftruncate(15)).unwrap();
        let mut read = [0u8; 15];
        file.read_at(&mut read, 0).unwrap();
        assert_eq!(&read[10..], b"hello");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_bad_descriptor_is_an_os_error_not_a_panic() {
        let err = call_kernel(-1, Call::Fdatasync).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        let err = call_kernel(-1, Call::Fallocate(0, 10)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    }
}
