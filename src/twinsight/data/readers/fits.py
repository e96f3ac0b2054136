"""FITS: one observation per file; its true parameters, if any, from ``TRUE_<name>`` cards.

The image HDU is the first with 2-D data (or the one named by ``hdu``);
length-1 axes are dropped and a 3-plane cube is read as RGB. The header
cards of the primary and the chosen HDU (the chosen one wins) become
``meta["header"]``.

Truth keys (see :func:`header_parameters`): every numeric ``TRUE_<name>``
card gives a parameter column. ``twinsight observe`` writes
``HIERARCH TRUE_<name>`` with the simulator's exact names, so an
observation opens with the same seven columns and values it was made from.

The FITS decoding helpers here are also what the folder and table readers use
for ``.fits`` images.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twinsight.data.collection import Collection
from twinsight.data.readers.common import (
    FITS_EXTENSIONS,
    FixedLoader,
    ImageSize,
    check_image_size,
    first_line,
)
from twinsight.data.readers.registry import Source, register_reader
from twinsight.data.schema import (
    RESERVED_COLUMNS,
    SIMULATOR_PARAMETERS,
    TRUTH_PREFIX,
    canonical_parameter,
)
from twinsight.data.transforms import convert_channels, resize_images
from twinsight.errors import TwinsightError

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- decoding
def fits_open(path: Path) -> Any:
    """``astropy.io.fits.open`` of ``path``; an unreadable file raises naming it."""
    from astropy.io import fits

    try:
        return fits.open(path, memmap=False, lazy_load_hdus=False)
    except Exception as exc:  # noqa: BLE001 - a damaged header raises VerifyError, KeyError, ...
        raise TwinsightError(
            f"cannot read FITS file '{path}' ({first_line(exc)}); it may be truncated or not FITS"
        ) from None


def _hdu_summary(hdul: Any) -> str:
    parts = []
    for i, h in enumerate(hdul):
        shape = tuple(h.header.get(f"NAXIS{j}", 0) for j in range(h.header.get("NAXIS", 0), 0, -1))
        parts.append(f"{i}: {h.name or '?'} ({type(h).__name__}, shape {shape})")
    return "; ".join(parts)


def _is_image_hdu(h: Any) -> bool:
    from astropy.io import fits

    image_types = (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)
    return isinstance(h, image_types) and int(h.header.get("NAXIS", 0)) >= 2


def pick_hdu(hdul: Any, path: Path, hdu: int | str | None) -> Any:
    """The HDU named or numbered ``hdu``, else the first with image data."""
    if hdu is not None:
        key: int | str = int(hdu) if isinstance(hdu, str) and hdu.strip().isdigit() else hdu
        try:
            chosen = hdul[key]
        except (KeyError, IndexError):
            raise TwinsightError(
                f"FITS file '{path}' has no HDU {hdu!r}; its HDUs: {_hdu_summary(hdul)}"
            ) from None
        if not _is_image_hdu(chosen):
            raise TwinsightError(
                f"FITS file '{path}' HDU {hdu!r} holds no image data; its HDUs: "
                f"{_hdu_summary(hdul)}"
            )
        return chosen
    for h in hdul:
        if _is_image_hdu(h):
            return h
    raise TwinsightError(
        f"FITS file '{path}' has no HDU with image data (its HDUs: {_hdu_summary(hdul)}); "
        "expected a 2-D image"
    )


def _squeeze_shape(shape: tuple[int, ...], path: Path) -> tuple[int, ...]:
    squeezed = tuple(s for s in shape if s != 1)
    if len(squeezed) == 2 or (len(squeezed) == 3 and squeezed[0] == 3):
        return squeezed
    raise TwinsightError(
        f"FITS file '{path}' image has shape {shape}; expected a 2-D image (3-D cubes must have "
        "a length-1 axis, or 3 colour planes); pick another HDU with --hdu"
    )


@contextlib.contextmanager
def _damage_is_one_line(path: Path) -> Iterator[None]:
    """Any exception astropy raises on a damaged file becomes one TwinsightError line."""
    try:
        yield
    except TwinsightError:
        raise
    except Exception as exc:  # noqa: BLE001 - hostile files make astropy raise many types
        raise TwinsightError(
            f"FITS file '{path}' is damaged ({type(exc).__name__}: {first_line(exc)}); "
            "replace the file"
        ) from None


def fits_image_shape(path: Path, hdu: int | str | None) -> tuple[int, ...]:
    """The image's shape, ``(H, W)`` or ``(3, H, W)``, from the header only."""
    with _damage_is_one_line(path), fits_open(path) as hdul:
        h = pick_hdu(hdul, path, hdu)
        naxis = int(h.header["NAXIS"])
        shape = tuple(int(h.header[f"NAXIS{j}"]) for j in range(naxis, 0, -1))
    return _squeeze_shape(shape, path)


def read_fits_array(path: Path, hdu: int | str | None) -> np.ndarray:
    """The image as float32 ``[C, H, W]``, raw values (no scaling)."""
    with _damage_is_one_line(path), fits_open(path) as hdul:
        h = pick_hdu(hdul, path, hdu)
        try:
            data = np.asarray(h.data, dtype=np.float32)
        except Exception as exc:  # noqa: BLE001 - hostile files make astropy raise many types
            raise TwinsightError(
                f"cannot read the image data of FITS file '{path}' ({first_line(exc)}); "
                "it may be truncated"
            ) from None
    shape = _squeeze_shape(data.shape, path)
    data = data.reshape(shape)
    return data[None] if data.ndim == 2 else data


# ----------------------------------------------------------------------------- the header
def header_cards(header: Any) -> dict[str, Any]:
    """The header's cards as plain JSON-ready values (COMMENT and HISTORY left out)."""
    cards: dict[str, Any] = {}
    for key, value in header.items():
        if not key or key in ("COMMENT", "HISTORY", ""):
            continue
        cards[key] = value if isinstance(value, bool | int | float | str) else str(value)
    return cards


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def truth_name(keyword: str) -> str | None:
    """The parameter a ``TRUE_<name>`` keyword carries, or None when it is not one.

    The rule: the ``TRUE_`` prefix (and a ``HIERARCH`` one) is matched in any
    case and dropped; a name equal to one of the simulator's parameters in any
    case becomes that parameter's canonical spelling (``TRUE_MASS`` ->
    ``mass``, ``TRUE_ENVELOPE_MASS`` -> ``Envelope_mass``); any other name that
    is all upper case (standard 8-character keywords always are) is
    lower-cased (``TRUE_RIN`` -> ``rin``), and a mixed-case name from a
    ``HIERARCH`` card is kept as written (``HIERARCH TRUE_diskR`` -> ``diskR``).
    """
    key = keyword.strip()
    if key.upper().startswith("HIERARCH "):
        key = key[len("HIERARCH ") :].strip()
    if not key.upper().startswith(TRUTH_PREFIX):
        return None
    name = key[len(TRUTH_PREFIX) :]
    if not name:
        return None
    canonical = canonical_parameter(name)
    if canonical is not None:
        return canonical
    return name.lower() if name == name.upper() else name


def header_parameters(cards: dict[str, Any]) -> dict[str, float]:
    """The true parameters in a header: ``TRUE_<name>`` cards, numeric values only.

    Names follow :func:`truth_name`. The simulator's parameters come first, in
    its order, then others in card order; a later card for the same name wins.
    A simulator parameter without a ``TRUE_`` card may also be given by its
    bare name (``MASS``, ``HIERARCH temperature``). Names that are reserved
    columns (``key``, ``source``, ...) are skipped with a warning.
    """
    found: dict[str, float] = {}
    for keyword, value in cards.items():
        name = truth_name(keyword)
        if name is None or not _is_number(value):
            continue
        if name in RESERVED_COLUMNS:
            logger.warning("FITS card '%s' names the reserved column '%s'; ignored", keyword, name)
            continue
        found[name] = float(value)
    bare = _bare_simulator_parameters(cards)
    ordered = {p: found.get(p, bare.get(p)) for p in SIMULATOR_PARAMETERS}
    ordered = {p: v for p, v in ordered.items() if v is not None}
    ordered.update((k, v) for k, v in found.items() if k not in ordered)
    return ordered


def _bare_simulator_parameters(cards: dict[str, Any]) -> dict[str, float]:
    upper = {k.upper().removeprefix("HIERARCH "): v for k, v in cards.items()}
    return {
        name: float(upper[name.upper()])
        for name in SIMULATOR_PARAMETERS
        if _is_number(upper.get(name.upper()))
    }


def _header_of(path: Path, hdul: Any, hdu: int | str | None) -> tuple[dict[str, Any], str]:
    """The primary and chosen HDU's cards; a damaged header is one line naming the file."""
    try:
        chosen = pick_hdu(hdul, path, hdu)
        cards = header_cards(hdul[0].header)
        cards.update(header_cards(chosen.header))
        return cards, chosen.name
    except TwinsightError:
        raise
    except Exception as exc:  # noqa: BLE001 - astropy parses cards lazily, raising many types
        raise TwinsightError(
            f"FITS file '{path}' has a damaged header ({first_line(exc)}); replace the file"
        ) from None


# ----------------------------------------------------------------------------- the reader
def _sniff(source: Source) -> bool:
    return source.is_file and source.has_suffix(FITS_EXTENSIONS)


@register_reader("fits", sniff=_sniff, priority=60)
def read_fits(
    path: str | Path,
    *,
    hdu: int | str | None = None,
    image_size: ImageSize = None,
    channels: int | None = None,
) -> Collection:
    """A FITS observation (.fits, .fit, .fts, .fits.gz): one item, truth from its header."""
    path = Path(path)
    size = check_image_size(image_size)
    with _damage_is_one_line(path), fits_open(path) as hdul:
        cards, extname = _header_of(path, hdul, hdu)
    image = read_fits_array(path, hdu)[None]
    if channels is not None:
        image = convert_channels(image, channels)
    if size is not None:
        image = resize_images(image, size)
    params = header_parameters(cards)
    items = pd.DataFrame(
        {"key": [path.name], "source": [str(path)], **{k: [v] for k, v in params.items()}}
    )
    return Collection(
        items,
        FixedLoader(np.ascontiguousarray(image, dtype=np.float32)),
        image.shape[1:],
        name=str(path),
        param_columns=list(params),
        meta={"reader": "fits", "header": cards, "hdu": extname},
    )
