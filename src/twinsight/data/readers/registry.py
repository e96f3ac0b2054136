"""The reader registry and :func:`open_collection`, the one way a source becomes a Collection.

A reader is a function ``open(source, **options) -> Collection`` registered
under a name with a ``sniff(source) -> bool`` that says whether it takes a
source (in the style of timm's model registry)::

    from twinsight.data.readers import Source, register_reader

    @register_reader("toy", sniff=lambda s: s.name.endswith(".toy"))
    def open_toy(source: Source, **options) -> Collection: ...

Readers are tried in descending ``priority``, ties in registration order; the
first whose sniff says yes opens the source. ``open_collection(..., reader=
"toy")`` skips sniffing. The built-in readers (priorities 100 down to 30) are
listed by :func:`list_readers`; a reader registered without a priority (0) is
tried after all of them, so it can only take sources that no built-in reader
claims. A reader may honour ``image_size``, ``channels`` and ``hdu`` itself
(faster: e.g. JPEGs decode at a reduced scale); whatever shape it returns is
then adapted to the requested one. Options a reader's signature does not name
are not passed (``**options`` takes them all); passing an extra option that the
chosen reader does not take is an error.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from twinsight.data.builtins import BUILTIN_NAMES
from twinsight.data.collection import Collection
from twinsight.data.readers.common import (
    FITS_EXTENSIONS,
    HDF5_EXTENSIONS,
    PIL_EXTENSIONS,
    TABLE_EXTENSIONS,
    ImageSize,
    adapt_collection,
    check_channels,
    check_image_size,
    first_line,
)
from twinsight.errors import TwinsightError
from twinsight.registry import Registry

logger = logging.getLogger(__name__)

#: The options :func:`open_collection` always has; a reader that does not take one is not
#: given it (the result is resized / converted afterwards instead).
STANDARD_OPTIONS = ("image_size", "channels", "hdu")

#: Priority of a reader registered without one: tried after every built-in reader.
DEFAULT_PRIORITY = 0

#: The package whose readers are built in (others are named in the unknown-source errors).
_BUILTIN_PACKAGE = __name__.rpartition(".")[0]


class Source(os.PathLike):
    """What a sniff function looks at: the source as given, plus cached facts about it.

    ``str(source)`` is the text as given (a built-in name stays a name);
    ``os.fspath(source)`` and ``source.path`` are the path with ``~`` expanded,
    so ``Path(source)`` and ``h5py.File(source)`` work directly.
    """

    def __init__(self, source: str | os.PathLike[str]) -> None:
        self.text = os.fspath(source) if isinstance(source, os.PathLike) else str(source)
        self.path = Path(self.text).expanduser()

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Source({self.text!r})"

    @property
    def name(self) -> str:
        """The file or folder name, lower-cased (for extension checks)."""
        return self.path.name.lower()

    def has_suffix(self, suffixes: tuple[str, ...]) -> bool:
        """True when the lower-cased name ends in one of ``suffixes``."""
        return self.name.endswith(suffixes)

    @cached_property
    def exists(self) -> bool:
        return self.path.exists()

    @cached_property
    def is_dir(self) -> bool:
        return self.path.is_dir()

    @cached_property
    def is_file(self) -> bool:
        return self.path.is_file()

    @cached_property
    def entries(self) -> list[Path]:
        """A folder's entries, sorted, without hidden ones (empty for a file)."""
        if not self.is_dir:
            return []
        return [p for p in sorted(self.path.iterdir()) if not p.name.startswith(".")]

    @cached_property
    def subdirs(self) -> list[Path]:
        """The folders among :attr:`entries`."""
        return [p for p in self.entries if p.is_dir()]

    @cached_property
    def files(self) -> list[Path]:
        """The files among :attr:`entries`."""
        return [p for p in self.entries if p.is_file()]


Sniff = Callable[[Source], bool]
Opener = Callable[..., Collection]


@dataclass(frozen=True)
class ReaderSpec:
    """One registered reader: its name, opener, sniff, priority and what it reads."""

    name: str
    open: Opener
    sniff: Sniff | None
    priority: int
    description: str
    takes: frozenset[str] | None  # option names the opener accepts; None = any (**options)

    @property
    def builtin(self) -> bool:
        return (getattr(self.open, "__module__", None) or "").startswith(_BUILTIN_PACKAGE + ".")


#: name -> reader; the only mutable state of the readers package.
_READERS: Registry[ReaderSpec] = Registry("reader")


def register_reader(
    name: str,
    *,
    sniff: Sniff | None = None,
    priority: int = DEFAULT_PRIORITY,
    description: str | None = None,
    replace: bool = False,
) -> Callable[[Opener], Opener]:
    """Decorator: register ``open(source, **options) -> Collection`` as reader ``name``.

    ``sniff(source)`` gets a :class:`Source` and says whether this reader takes
    it; without one the reader is used only when forced (``reader=name``).
    Higher ``priority`` is tried first. ``description`` (default: the first
    line of the opener's docstring) is what :func:`describe_readers` shows.
    Registering a taken name raises unless ``replace`` is set.
    """

    def decorate(opener: Opener) -> Opener:
        spec = ReaderSpec(
            name=name,
            open=opener,
            sniff=sniff,
            priority=int(priority),
            description=description or _first_doc_line(opener),
            takes=_option_names(opener),
        )
        _READERS.add(name, spec, replace=replace)
        return opener

    return decorate


def unregister_reader(name: str) -> ReaderSpec:
    """Remove reader ``name`` from the registry and return it (to re-register it later)."""
    return _READERS.remove(name)


def list_readers() -> list[str]:
    """The registered readers' names, in the order :func:`open_collection` tries them."""
    return [spec.name for spec in _ordered()]


def describe_readers() -> list[dict[str, Any]]:
    """Name, priority and description of each reader, in the order they are tried."""
    return [
        {"name": s.name, "priority": s.priority, "description": s.description} for s in _ordered()
    ]


def get_reader(name: str) -> ReaderSpec:
    """The reader registered as ``name``; an unknown name raises listing the known ones."""
    return _READERS.get(name, valid=list_readers())


def find_reader(source: Source) -> ReaderSpec | None:
    """The first reader (by priority) whose sniff takes ``source``, or None."""
    for spec in _sniffing():
        if _sniffs(spec, source):
            return spec
    return None


def open_collection(
    source: str | os.PathLike[str] | Collection,
    *,
    image_size: ImageSize = None,
    channels: int | None = None,
    hdu: int | str | None = None,
    reader: str | None = None,
    **options: Any,
) -> Collection:
    """Open ``source`` (a path or a built-in name) as a streaming Collection.

    ``image_size`` (``N`` or ``(H, W)``) resizes every image when loaded;
    ``channels`` (1 or 3) converts the channel count; ``hdu`` (name or number)
    picks the FITS extension to read; ``reader`` forces a registered reader
    instead of sniffing; other ``options`` go to the reader. An open
    Collection is returned resized / converted. See the package docstring for
    the sources the built-in readers take.
    """
    size = check_image_size(image_size)
    channels = check_channels(channels)
    if isinstance(source, Collection):
        if reader is not None or options:
            raise TwinsightError(
                f"collection '{source.name}' is already open: reader= and reader options "
                "apply only to paths and built-in names"
            )
        return adapt_collection(source, size, channels)
    src = Source(source)
    spec = get_reader(reader) if reader is not None else _pick_reader(src)
    logger.debug("opening '%s' with reader '%s'", src, spec.name)
    collection = _call(spec, src, {"image_size": size, "channels": channels, "hdu": hdu}, options)
    return adapt_collection(collection, size, channels)


# ---------------------------------------------------------------------------------- helpers
def _ordered() -> list[ReaderSpec]:
    # sorted() is stable: readers of equal priority stay in registration order.
    return sorted(_READERS.values(), key=lambda spec: -spec.priority)


def _sniffing() -> Iterator[ReaderSpec]:
    return (spec for spec in _ordered() if spec.sniff is not None)


def _sniffs(spec: ReaderSpec, source: Source) -> bool:
    assert spec.sniff is not None
    try:
        return bool(spec.sniff(source))
    except TwinsightError:
        raise
    except Exception as exc:  # a plugin's sniff must not hide which reader broke
        raise TwinsightError(
            f"reader '{spec.name}' failed to check source '{source}' ({first_line(exc)}); "
            f"fix its sniff function or force another reader with reader=..."
        ) from None


def _pick_reader(source: Source) -> ReaderSpec:
    spec = find_reader(source)
    if spec is None:
        raise TwinsightError(_unsupported_message(source))
    return spec


def _call(
    spec: ReaderSpec, source: Source, standard: dict[str, Any], extra: dict[str, Any]
) -> Collection:
    """Call the opener with the options it takes; an extra option it does not take raises."""
    refused = [k for k in extra if spec.takes is not None and k not in spec.takes]
    if refused:
        takes = sorted(spec.takes or ())
        raise TwinsightError(
            f"reader '{spec.name}' takes no option {', '.join(map(repr, refused))} "
            f"(it takes: {', '.join(takes) or 'none'}); drop it or force another reader"
        )
    given = {k: v for k, v in standard.items() if spec.takes is None or k in spec.takes}
    collection = spec.open(source, **given, **extra)
    if not isinstance(collection, Collection):
        raise TwinsightError(
            f"reader '{spec.name}' returned {type(collection).__name__} for '{source}', "
            "expected a twinsight Collection; fix the reader"
        )
    return collection


def _option_names(opener: Opener) -> frozenset[str] | None:
    try:
        params = list(inspect.signature(opener).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature: pass everything
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params[1:])


def _first_doc_line(opener: Opener) -> str:
    doc = inspect.getdoc(opener) or ""
    return doc.splitlines()[0] if doc else getattr(opener, "__name__", "reader")


# ------------------------------------------------------------------- unknown-source errors
def _unsupported_message(source: Source) -> str:
    """Today's message for a source no reader takes, plus any readers added from outside."""
    if not source.exists:
        message = (
            f"source '{source}' does not exist: expected a folder, a .csv/.parquet table, "
            f"an .h5 file, a FITS or image file, or a built-in name ({', '.join(BUILTIN_NAMES)})"
        )
    elif source.is_dir:
        message = _folder_message(source)
    else:
        message = (
            f"cannot tell what '{source.path}' is from its extension '{source.path.suffix}': "
            f"expected a table ({', '.join(TABLE_EXTENSIONS)}), HDF5 "
            f"({', '.join(HDF5_EXTENSIONS)}), FITS ({', '.join(FITS_EXTENSIONS)}) or an image "
            f"({', '.join(PIL_EXTENSIONS)})"
        )
    added = [spec.name for spec in _sniffing() if not spec.builtin]
    if added:
        message += f"; also registered: reader(s) {', '.join(added)}, which did not take it"
    return message


def _folder_message(source: Source) -> str:
    if not source.entries:
        return (
            f"folder '{source.path}' is empty: expected one sub-folder of images per class, "
            "per-system .h5 files (seed layout), or image files"
        )
    return (
        f"folder '{source.path}' holds no images, sub-folders or .h5 files "
        f"(found e.g. '{source.entries[0].name}'); expected one sub-folder of images per class, "
        "per-system .h5 files, or image files"
    )
