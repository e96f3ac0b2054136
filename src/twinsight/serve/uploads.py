"""Uploaded query images: type told by content, pixel count bounded, kept in a temp folder.

The web page never trusts a file's name. The first bytes say what it is (PNG, JPEG,
TIFF, FITS); its header says how many pixels it holds before anything is decoded (the
decompression-bomb guard); and it is written, under a name of our own, into a fresh
temporary folder that is removed when the request is done.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from twinsight.errors import TwinsightError

#: (magic bytes, file type, extension the readers know)
MAGIC: tuple[tuple[bytes, str, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG", ".png"),
    (b"\xff\xd8\xff", "JPEG", ".jpg"),
    (b"II*\x00", "TIFF", ".tif"),
    (b"MM\x00*", "TIFF", ".tif"),
    (b"SIMPLE  =", "FITS", ".fits"),
)
ACCEPTED = "PNG, JPEG, TIFF or FITS"


class UploadTooLarge(TwinsightError):
    """An upload whose bytes or pixels are over the server's limits (HTTP 413)."""


@dataclass(frozen=True)
class Upload:
    """One uploaded file: the name the client gave (for display only) and its bytes."""

    filename: str
    data: bytes

    @property
    def display_name(self) -> str:
        """The client's file name without any folder part (never used as a path)."""
        name = self.filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
        return name[:200] or "upload"


def sniff(data: bytes, filename: str = "upload") -> tuple[str, str]:
    """The file type and extension of ``data`` from its first bytes; a clear error otherwise."""
    for magic, kind, ext in MAGIC:
        if data.startswith(magic):
            return kind, ext
    if not data:
        raise TwinsightError(f"'{filename}' is empty; upload a {ACCEPTED} image")
    raise TwinsightError(
        f"'{filename}' is not a {ACCEPTED} image (its content does not start like one, "
        "whatever its name says)"
    )


def pixel_count(data: bytes, kind: str) -> int:
    """The number of pixels ``data`` declares, read from its header without decoding it."""
    if kind == "FITS":
        return _fits_pixels(data)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            frames = getattr(im, "n_frames", 1)
    except Image.DecompressionBombError as exc:
        raise UploadTooLarge(f"the image is too large to open safely: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise TwinsightError(f"cannot read the {kind} image: {exc}") from None
    return int(width) * int(height) * max(int(frames), 1)


def _fits_pixels(data: bytes) -> int:
    from astropy.io import fits

    try:
        with fits.open(io.BytesIO(data), lazy_load_hdus=False, memmap=False) as hdus:
            total = 0
            for hdu in hdus:
                n = 1
                naxis = int(hdu.header.get("NAXIS", 0))
                for i in range(1, naxis + 1):
                    n *= int(hdu.header.get(f"NAXIS{i}", 0))
                total += n if naxis else 0
    except Exception as exc:  # astropy raises many kinds on a broken header
        raise TwinsightError(f"cannot read the FITS file: {exc}") from None
    return total


def check_upload(upload: Upload, max_pixels: int) -> str:
    """Check an upload's type and pixel count; returns the extension to store it under."""
    kind, ext = sniff(upload.data, upload.display_name)
    n = pixel_count(upload.data, kind)
    if n > max_pixels:
        raise UploadTooLarge(
            f"'{upload.display_name}' holds {n:,} pixels, over this server's limit of "
            f"{max_pixels:,}"
        )
    return ext


@contextmanager
def stored(uploads: dict[str, Upload], max_pixels: int) -> Iterator[dict[str, Path]]:
    """Write checked uploads into a fresh temporary folder; the folder is removed afterwards.

    Each file is stored as ``<field><ext>`` (the extension from its content), so the
    client's file name never becomes a path.
    """
    exts = {name: check_upload(up, max_pixels) for name, up in uploads.items()}
    folder = Path(tempfile.mkdtemp(prefix="twinsight-upload-"))
    try:
        paths = {}
        for name, up in uploads.items():
            path = folder / f"{name}{exts[name]}"
            path.write_bytes(up.data)
            paths[name] = path
        yield paths
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def named_errors(paths: dict[str, Path], uploads: dict[str, Upload]) -> Iterator[None]:
    """Errors raised about a stored upload name it as the client did, never by its
    temporary path (which says nothing to the client and something about the server)."""
    try:
        yield
    except TwinsightError as exc:
        message = str(exc)
        for name, path in paths.items():
            message = message.replace(str(path), uploads[name].display_name)
        if message == str(exc):
            raise
        raise type(exc)(message) from None
