"""Progress bars for long loops, drawn with rich on stderr (never on stdout)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


def track(
    iterable: Iterable[T],
    *,
    total: int | None = None,
    description: str = "working",
    enabled: bool = True,
) -> Iterator[T]:
    """Iterate with a progress bar on stderr when ``enabled`` (a no-op otherwise)."""
    if not enabled:
        yield from iterable
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with progress:
        yield from progress.track(iterable, total=total, description=description)
