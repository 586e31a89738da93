"""Consistent copies of a database's files: what ``kiln backup`` and ``kiln restore`` do.

Theory of operation
-------------------
A data file is append-only and CRC-framed: bytes below the length the log has written
never change, and a sealed file is only ever *replaced* (by compaction, through a rename),
never rewritten in place. A consistent copy of a database at position ``P`` is therefore
every sealed data file as it is plus the active file up to the byte offset where ``P``'s
record ends, with the hints of the sealed files and ``META``. :func:`backup_database`
takes ``P``, the active file's written length, the list of data files and a copy of
``META`` under the log's lock — a moment, writers wait for nothing else — then copies the
bytes without it, at disk speed (``copy_file_range``), while writes go on. Compaction and
hint writing are held off until the copy is done (they wait on the log's maintenance
lock), so every hint copied describes the very file copied beside it; the copy reads
through the data files' open descriptors, which a file's replacement would not disturb
either.

Layout of a backup (``PATH``), itself a data directory::

    PATH/
      kiln-backup.json     the manifest, written last: the backup is complete
      <database>/          a database directory as the engine writes it
        META
        00000001.log       sealed files copied whole, the active one up to P
        00000001.hint      hints of sealed files that had one

So ``kiln --data PATH --database NAME check`` checks it and ``kiln --data PATH`` reads
it. A backup is written into ``PATH.partial`` and renamed to ``PATH`` once complete, so
an interrupted backup never leaves a ``PATH`` that looks whole; the next backup into
``PATH`` deletes the leftover. :func:`install_database` restores: it copies a backup's
database into ``DATA/NAME~restoring``, checks the copy (:func:`check_database`) and
swaps it with ``DATA/NAME`` in one atomic rename (``renameat2(RENAME_EXCHANGE)`` where
the kernel has it), so that ``DATA/NAME`` is at every moment the old database or the
restored one. ``~`` is not allowed in a database name: a leftover of an interrupted
restore is never taken for a database, and the next restore deletes it.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import errno
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from kilndb import __version__
from kilndb.errors import NotFoundError, StorageError
from kilndb.storage.check import CheckReport, check_database
from kilndb.storage.datafile import DATA_SUFFIX, HINT_SUFFIX, fsync_directory, hint_path
from kilndb.storage.hint import read_hint
from kilndb.storage.lockfile import DatabaseLock
from kilndb.storage.meta import write_meta

if TYPE_CHECKING:
    from kilndb.engine import Database
    from kilndb.storage.datafile import DataFile
    from kilndb.storage.log import Log

__all__ = [
    "MANIFEST",
    "BackupReport",
    "Progress",
    "backup_database",
    "finish_backup",
    "install_database",
    "partial_path",
    "read_manifest",
]

#: The manifest at the top of a backup; its presence says the backup is complete.
MANIFEST = "kiln-backup.json"
#: Version of the manifest's layout.
MANIFEST_FORMAT = 1
#: Bytes copied per system call (and per progress report).
CHUNK = 8 * 1024 * 1024
#: A backup's database directory being restored, and a replaced one being removed.
RESTORING = "~restoring"

#: Called with the number of bytes just copied.
Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class BackupReport:
    """What a backup (or restore) of one database copied."""

    database: str
    #: The copy holds every fact up to this position and none after it.
    position: int
    #: Facts the copy retains.
    facts: int
    bytes: int
    files: int
    seconds: float

    @property
    def mb_per_second(self) -> float:
        """Throughput in MB/s (10^6 bytes)."""
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mb_per_second": round(self.mb_per_second, 3)}


def partial_path(path: Path) -> Path:
    """Where a backup into ``path`` is written before it is renamed into place."""
    return path.with_name(path.name + ".partial")


# -- backup ----------------------------------------------------------------------------


def backup_database(db: Database, target: Path, progress: Progress | None = None) -> BackupReport:
    """Copy the open database ``db`` into the database directory ``target`` (which must
    not exist), consistent at one position, while writes go on.

    Returns what was copied; the copy holds exactly the retained facts up to
    :attr:`BackupReport.position`. Compaction of ``db`` waits until the copy is done.
    Raises StorageError if a file cannot be read or written, ClosedError if ``db`` is
    closed.
    """
    started = time.monotonic()
    log: Log = db._log  # the engine's log: a backup reads its files directly
    with log.maintenance_held():  # no compaction, no hint written, until the copy is done
        with log.lock:
            log.check_open()
            position = log.written
            facts = log.keydir.facts
            meta = copy.deepcopy(log.meta)
            # Held until copied: a descriptor stays valid whatever happens to its path.
            files = [(f, f.size) for _, f in sorted(log.files.items())]
        log.sync()  # the copy holds nothing a crash of the source could take back
        target.mkdir(parents=True)
        copied = 0
        for datafile, size in files:
            copied += _copy_fd(
                datafile.fd, datafile.name, target / datafile.path.name, size, progress
            )
            if datafile is not files[-1][0]:
                copied += _copy_hint(log.directory, datafile, target, size)
    meta.pop("discarding", None)
    write_meta(target, meta)
    fsync_directory(target)
    count = sum(1 for _ in target.iterdir())
    return BackupReport(db.name, position, facts, copied, count, time.monotonic() - started)


def _copy_hint(directory: Path, datafile: DataFile, target: Path, size: int) -> int:
    """Copy the hint of a sealed file if it describes exactly the bytes copied."""
    source = hint_path(directory, datafile.file_id)
    if read_hint(source, datafile.file_id, size) is None:
        return 0  # none yet, or stale: the restored database scans the file
    with source.open("rb") as handle:
        return _copy_fd(handle.fileno(), str(source), target / source.name, None, None)


def _copy_fd(
    fd: int, name: str, destination: Path, size: int | None, progress: Progress | None
) -> int:
    """Copy ``size`` bytes (all, when None) from offset 0 of ``fd`` into a new file and
    fsync it; return the bytes copied."""
    if size is None:
        size = os.fstat(fd).st_size
    out = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        offset = 0
        while offset < size:
            count = min(CHUNK, size - offset)
            done = _copy_range(fd, out, count, offset)
            if done == 0:
                raise StorageError(f"{name} ended at {offset} bytes, {size} expected")
            offset += done
            if progress is not None:
                progress(done)
        os.fsync(out)
    except OSError as exc:
        raise StorageError(f"could not copy {name} to {destination}: {exc.strerror}") from exc
    finally:
        os.close(out)
    return size


def _copy_range(source: int, out: int, count: int, offset: int) -> int:
    try:
        return os.copy_file_range(source, out, count, offset)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    data = os.pread(source, count, offset)  # no copy_file_range between these files
    os.write(out, data)
    return len(data)


def finish_backup(staging: Path, path: Path, reports: list[BackupReport], replace: bool) -> None:
    """Write the manifest of ``reports`` into ``staging`` and rename it to ``path``.

    ``path`` may exist only if it is empty or ``replace`` is set (then it is replaced);
    raises FileExistsError otherwise.
    """
    manifest = {
        "format": MANIFEST_FORMAT,
        "kilndb": __version__,
        "created_at": time.time(),
        "databases": {r.database: {"position": r.position, "facts": r.facts} for r in reports},
    }
    data = orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    (staging / MANIFEST).write_bytes(data)
    with (staging / MANIFEST).open("rb") as handle:
        os.fsync(handle.fileno())
    fsync_directory(staging)
    _put_in_place(staging, path, replace)


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the backup at ``path``; NotFoundError if it is not a complete one."""
    try:
        manifest: dict[str, Any] = orjson.loads((path / MANIFEST).read_bytes())
    except FileNotFoundError:
        raise NotFoundError(
            f"{path} is not a complete KilnDB backup (it has no {MANIFEST})"
        ) from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise StorageError(f"cannot read {path / MANIFEST}: {exc}") from exc
    if manifest.get("format") != MANIFEST_FORMAT or not isinstance(manifest.get("databases"), dict):
        raise StorageError(f"{path / MANIFEST} is not a KilnDB backup manifest this version reads")
    return manifest


# -- restore ---------------------------------------------------------------------------


def install_database(
    source: Path,
    data: Path,
    name: str,
    replace: bool,
    progress: Progress | None = None,
) -> tuple[CheckReport, BackupReport | None]:
    """Restore the database directory ``source`` (of a backup) as ``data/name``.

    The copy is checked before it replaces anything: a copy with problems is deleted and
    its check report returned with no BackupReport. Raises FileExistsError if ``data/name``
    exists and ``replace`` is not set, DatabaseLockedError if a process has it open.
    The caller holds off servers from ``data`` (its ``kiln-server.lock``).
    """
    started = time.monotonic()
    data.mkdir(parents=True, exist_ok=True)
    target = data / name
    staging = data / (name + RESTORING)
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted restore
    if _occupied(target) and not replace:
        raise FileExistsError(errno.EEXIST, f"database {name!r} already exists in {data}")
    staging.mkdir()
    copied = files = 0
    for entry in sorted(source.iterdir()):
        if entry.name == "META" or entry.suffix in (DATA_SUFFIX, HINT_SUFFIX):
            with entry.open("rb") as handle:
                copied += _copy_fd(
                    handle.fileno(), str(entry), staging / entry.name, None, progress
                )
            files += 1
    fsync_directory(staging)
    report = check_database(staging)
    if not report.ok:
        shutil.rmtree(staging, ignore_errors=True)
        return report, None
    (staging / "LOCK").unlink(missing_ok=True)
    position, facts = _extent(data, staging.name)
    lock = DatabaseLock(target) if target.is_dir() else None  # refuses one open elsewhere
    try:
        _put_in_place(staging, target, replace=True)
    finally:
        if lock is not None:
            lock.release()
    shutil.rmtree(staging, ignore_errors=True)  # the database replaced, if any
    fsync_directory(data)
    return report, BackupReport(name, position, facts, copied, files, time.monotonic() - started)


def _extent(data: Path, directory_name: str) -> tuple[int, int]:
    """Last position and retained facts of a database directory (read by opening it)."""
    from kilndb.config import DatabaseConfig
    from kilndb.storage.log import Log

    log = Log(data / directory_name, DatabaseConfig(auto_compact=False))
    try:
        return log.written, log.keydir.facts
    finally:
        log.close()


def _occupied(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def _put_in_place(staging: Path, path: Path, replace: bool) -> None:
    """Rename ``staging`` to ``path``. An existing empty ``path`` is replaced; a
    non-empty one only with ``replace``: exchanged atomically, and ``staging`` then
    holds the old contents (the caller removes them)."""
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        if path.exists():
            path.rmdir()
        os.rename(staging, path)
    elif not replace:
        raise FileExistsError(errno.ENOTEMPTY, f"{path} exists and is not empty")
    elif not _exchange(staging, path):
        aside = path.with_name(path.name + "~replaced")
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(path, aside)
        os.rename(staging, path)
        os.rename(aside, staging)
    fsync_directory(path.parent)
    if staging.exists() and staging != path:
        shutil.rmtree(staging, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); False where unsupported."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))
