"""JSON output: one encoder for numpy/torch values, one way to write a JSON file.

Metrics, estimates, bundle metadata and CLI ``--json`` output all hold numpy
scalars and arrays here and there; :func:`json_default` turns them into plain
JSON values (``np.float32(0.5)`` -> ``0.5``, ``np.int64(3)`` -> ``3``, an
array -> a list, a path -> its string). Anything else is refused (a
``TypeError``, as :func:`json.dumps` expects), unless ``lenient`` asks for its
``str`` instead (for output meant to be read, such as ``--json``). Safe file
writes themselves live in :mod:`twinsight.fsutil`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from twinsight.fsutil import write_text_atomic


def json_default(value: Any) -> Any:
    """The JSON value of a numpy/torch scalar or array, or a path; ``TypeError`` otherwise."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if type(value).__module__.split(".")[0] == "torch" and hasattr(value, "tolist"):
        return value.detach().cpu().tolist()  # a tensor, without importing torch here
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def lenient_default(value: Any) -> Any:
    """Like :func:`json_default`, with ``str(value)`` for anything else (display only)."""
    try:
        return json_default(value)
    except TypeError:
        return str(value)


def dumps(
    data: Any, *, indent: int | None = 2, sort_keys: bool = False, lenient: bool = False
) -> str:
    """``json.dumps`` with :func:`json_default` (or :func:`lenient_default`); NaN allowed."""
    default = lenient_default if lenient else json_default
    return json.dumps(data, indent=indent, sort_keys=sort_keys, default=default, allow_nan=True)


def write_json(
    path: str | os.PathLike, data: Any, *, overwrite: bool = True, lenient: bool = False
) -> Path:
    """Write ``data`` as indented JSON (with a final newline) atomically to ``path``."""
    return write_text_atomic(path, dumps(data, lenient=lenient) + "\n", overwrite=overwrite)
