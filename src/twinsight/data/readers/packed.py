"""Packed HDF5 (written by ``twinsight pack``): the fast path for large collections.

The format itself (layout, writing, the streaming loader) lives in
:mod:`twinsight.data.packed`; this file only registers it as a reader. It is
tried before the seed layout, since both are HDF5 files.
"""

from __future__ import annotations

from twinsight.data.collection import Collection
from twinsight.data.packed import is_packed, read_packed
from twinsight.data.readers.common import is_hdf5_file
from twinsight.data.readers.registry import Source, register_reader


def _sniff(source: Source) -> bool:
    return source.is_file and is_hdf5_file(source.path) and is_packed(source.path)


@register_reader("packed", sniff=_sniff, priority=80)
def open_packed(source: Source) -> Collection:
    """A packed HDF5 file from `twinsight pack` (one chunked image dataset + items)."""
    return read_packed(source.path)
