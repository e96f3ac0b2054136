"""Built-in collections opened by name (``digits``, ``mnist5k``, ``protostars``, ...).

The collections themselves live in :mod:`twinsight.data.builtins`; this file
registers them as a reader. A name is taken only when no file or folder of
that name exists, so a local ``digits/`` folder always wins.
"""

from __future__ import annotations

from twinsight.data.builtins import BUILTIN_NAMES, is_builtin, load_builtin
from twinsight.data.collection import Collection
from twinsight.data.readers.registry import Source, register_reader


def _sniff(source: Source) -> bool:
    return not source.exists and is_builtin(source.text)


@register_reader(
    "builtin",
    sniff=_sniff,
    priority=100,
    description=f"a built-in name: {', '.join(BUILTIN_NAMES)}",
)
def open_builtin(source: Source) -> Collection:
    """A built-in collection, by name."""
    return load_builtin(source.text)
