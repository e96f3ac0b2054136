"""Safe writes: one writer per output, nothing already written is lost, nothing half-written.

Every file or folder twinsight produces is first written under a temporary
name beside its destination (``.NAME.PID.XXXX.part``, on the destination's own
file system, never in /tmp), flushed to disk, and renamed into place only when
complete, so an interrupted run leaves either the old output or none, never a
partial one. Temporary names carry the writer's PID, so the next command writing
there removes the leftovers of a dead process (with a log line).

:func:`output_lock` makes one process the only writer of an output: a lock file
``.NAME.lock`` beside it, held with ``flock`` and holding the owner's PID and
start time, so that a second process is refused with a line that names them. A
lock whose process died is released by the kernel and taken over, with a note.

:func:`disk_errors` turns the machine's refusals (a full disk, a quota, a
read-only file system, a permission) into one :class:`TwinsightError` line that
names the path and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from twinsight.errors import TwinsightError

log = logging.getLogger(__name__)


class WriteRefusedError(TwinsightError):
    """The machine refused a write (full disk, quota, read-only, permission): not bad input.

    Kept apart so that a training stopped by it keeps its checkpoints for ``--resume``.
    """


#: errno -> what to do about it, for the errors the machine gives when a write is refused.
_DISK_ADVICE = {
    errno.ENOSPC: "the disk is full; free some space or write to another --out",
    errno.EDQUOT: "the disk quota is exceeded; free some space or write to another --out",
    errno.EROFS: "the file system is read-only; write to another --out",
    errno.EACCES: "permission denied; write to another --out or fix the folder's permissions",
    errno.EPERM: "operation not permitted; write to another --out or fix the permissions",
}
_PART = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]*\.part$")
_OLD = re.compile(r"^\.(?P<name>.+)\.old-(?P<pid>\d+)$")
_TMP = re.compile(r"^(?P<name>.+)\.tmp-(?P<pid>\d+)$")
_held: dict[Path, int] = {}  # lock paths this process holds -> nesting depth


def disk_error(
    exc: BaseException, path: str | os.PathLike | None = None
) -> WriteRefusedError | None:
    """The one-line error for a write the machine refused; None for other OSErrors."""
    code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    if code not in _DISK_ADVICE:
        text = str(exc).lower()
        code = errno.ENOSPC if "no space left" in text or "disk full" in text else None
        if code is None:
            return None
    where = path or getattr(exc, "filename", None) or "the output"
    return WriteRefusedError(f"cannot write '{where}': {_DISK_ADVICE[code]}")


@contextlib.contextmanager
def disk_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn ENOSPC / EDQUOT / EROFS / EACCES raised inside into one TwinsightError line."""
    try:
        yield
    except (OSError, RuntimeError) as exc:  # C++ writers (FAISS) raise RuntimeError
        error = disk_error(exc, path)
        if error is None:
            raise
        raise error from None


def check_output_path(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse to write over an existing path unless ``overwrite`` is set."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise TwinsightError(
            f"output path '{path}' already exists; choose another path or pass --overwrite"
        )
    if not path.parent.exists():
        with disk_errors(path.parent):
            path.parent.mkdir(parents=True, exist_ok=True)
    return path


def pid_alive(pid: int) -> bool:
    """True when a process with this PID exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(path: str | os.PathLike) -> None:
    """Remove temporary leftovers of ``path`` written by processes that are dead.

    Covers ``.NAME.PID.XXXX.part`` (atomic writes), ``.NAME.old-PID`` (replaced
    outputs) and ``NAME.tmp-PID`` (checkpoints); each removal is logged.
    """
    path = Path(path)
    parent = path.parent
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for entry in entries:
        for pattern in (_PART, _OLD, _TMP):
            m = pattern.match(entry.name)
            if m and m["name"] == path.name and not pid_alive(int(m["pid"])):
                log.info("removed %s, left by process %s that is gone", entry.path, m["pid"])
                _remove(Path(entry.path))


def _lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def _owner(lock: Path) -> tuple[int, str]:
    """The PID and start time written in a lock file (0, '?' when unreadable)."""
    try:
        pid, _, started = lock.read_text().partition("\n")
        return int(pid), started.strip() or "?"
    except (OSError, ValueError):
        return 0, "?"


def _try_lock(lock: Path) -> int | None:
    """An fd holding ``flock`` on the lock file at ``lock`` now, or None when another holds it."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:  # the file may have been removed by its last owner meanwhile: lock the new one
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Be the only writer of ``path`` while inside; refuse when another process writes it.

    Re-entrant within a process. The lock file ``.NAME.lock`` beside ``path`` records this
    process's PID and start time, and is removed on exit.
    """
    path = Path(path)
    lock = _lock_path(path).absolute()
    if lock in _held:
        _held[lock] += 1
        try:
            yield lock
        finally:
            _held[lock] -= 1
        return
    check_output_path(path, overwrite=True)  # the parent folder
    with disk_errors(lock):
        fd = _try_lock(lock)
    if fd is None:
        pid, started = _owner(lock)
        raise TwinsightError(
            f"'{path}' is being written by another twinsight process (PID {pid}, started "
            f"{started}); wait for it to finish, or choose another --out"
        )
    old_pid, old_start = _owner(lock)
    if old_pid and old_pid != os.getpid():
        log.info(
            "took over the lock of '%s' from process %d (started %s), which is gone",
            path, old_pid, old_start,
        )  # fmt: skip
    try:
        with disk_errors(lock):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n".encode())
        _held[lock] = 1
        clean_stale(path)
        yield lock
    finally:
        _held.pop(lock, None)
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _chmod_default(path: Path, mode: int) -> None:
    """Give a temp file/folder the permissions a plain open()/mkdir() would have."""
    os.chmod(path, mode & ~_umask())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a written file (or a folder's entries) to disk before it is renamed into place."""
    path = Path(path)
    if path.is_dir():
        for child in path.rglob("*"):
            if child.is_file() and not child.is_symlink():
                _fsync_one(child, os.O_RDONLY)
    if path.exists():
        _fsync_one(path, os.O_RDONLY)


def _fsync_one(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):  # folders on some file systems
            raise
    finally:
        os.close(fd)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it replaces ``path``.

    Only one process at a time writes ``path`` (:func:`output_lock`); a full disk or
    another refused write becomes one TwinsightError line, and the temporary file is
    removed whatever happens.
    """
    path = Path(path)
    with output_lock(path), disk_errors(path):
        path = check_output_path(path, overwrite)
        fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".part", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        _chmod_default(tmp, 0o666)
        try:
            yield tmp
            fsync_path(tmp)
            if path.is_dir():
                _remove(path)
            os.replace(tmp, path)
        except BaseException:
            _remove(tmp)
            raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` to fill; on success it takes its place."""
    path = Path(path)
    with output_lock(path), disk_errors(path):
        path = check_output_path(path, overwrite)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".part", dir=path.parent))
        _chmod_default(tmp, 0o777)
        try:
            yield tmp
            fsync_path(tmp)
            replace_dir(tmp, path)
        except BaseException:
            _remove(tmp)
            raise


def replace_dir(src: Path, dst: Path) -> None:
    """Rename the folder ``src`` to ``dst``, replacing an existing ``dst`` only at the end."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        _remove(old)
    else:
        os.replace(src, dst)


def write_text_atomic(path: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    """Write a small text file atomically (used for JSON/YAML/CSV side files)."""
    with atomic_file(path, overwrite=overwrite) as tmp:
        tmp.write_text(text)
    return Path(path)
