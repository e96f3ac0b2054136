"""One registry type behind readers, encoders and losses (timm, pytorch-metric-learning).

A :class:`Registry` maps names to entries in registration order. It does the
checking every registry needs (a taken name, an unknown name, what is valid),
so that each kind only says what an entry is; its messages read the same for
all kinds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from twinsight.errors import TwinsightError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one ``kind`` ("reader", "encoder", "loss"), in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T, *, replace: bool = False) -> T:
        """Register ``entry`` as ``name``; a taken name is an error unless ``replace``."""
        if not isinstance(name, str) or not name.strip():
            raise TwinsightError(f"a {self.kind} needs a non-empty name, got {name!r}")
        if name in self._entries and not replace:
            raise TwinsightError(
                f"{self.kind} '{name}' is already registered; choose another name or pass "
                "replace=True"
            )
        self._entries.pop(name, None)
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> T:
        """Unregister ``name`` and return its entry (to register it again later)."""
        if name not in self._entries:
            raise TwinsightError(
                f"no {self.kind} '{name}' is registered; registered: {', '.join(self.names())}"
            )
        return self._entries.pop(name)

    def get(self, name: str, valid: list[str] | None = None) -> T:
        """The entry of ``name``; an unknown name is an error listing the valid ones."""
        if name not in self._entries:
            shown = ", ".join(valid if valid is not None else self.names())
            raise TwinsightError(f"unknown {self.kind} '{name}'; valid names: {shown}")
        return self._entries[name]

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def values(self) -> list[T]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
