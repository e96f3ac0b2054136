"""Safe writes: nothing already written is lost, nothing is left half-written.

Every file or folder twinsight produces is first written under a temporary
name beside its destination and renamed into place only when complete, so an
interrupted run leaves either the old output or none, never a partial one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from twinsight.errors import TwinsightError


def check_output_path(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse to write over an existing path unless ``overwrite`` is set."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise TwinsightError(
            f"output path '{path}' already exists; choose another path or pass --overwrite"
        )
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    return path


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


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` atomically."""
    path = check_output_path(path, overwrite)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    _chmod_default(tmp, 0o666)
    try:
        yield tmp
        if path.is_dir():
            _remove(path)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it takes the place of ``path``."""
    path = check_output_path(path, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    _chmod_default(tmp, 0o777)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    """Write a small text file atomically (used for JSON/YAML/CSV side files)."""
    with atomic_file(path, overwrite=overwrite) as tmp:
        tmp.write_text(text)
    return Path(path)
