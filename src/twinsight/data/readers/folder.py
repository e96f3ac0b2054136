"""Folders of image files and single image files (PNG, JPEG, TIFF, BMP, GIF, WebP, FITS).

Two readers:

- ``class-folder``: a folder with one sub-folder per class, like
  torchvision's ImageFolder; the label is the sub-folder's name, images are
  found at any depth below it, the key is the path relative to the root;
- ``images``: a folder of image files without sub-folders (unlabelled; key =
  file name), or one image file.

Hidden files and folders (names starting with ``.``) are skipped.
"""

from __future__ import annotations

from pathlib import Path

from twinsight.data.collection import Collection
from twinsight.data.readers.common import (
    FITS_EXTENSIONS,
    PIL_EXTENSIONS,
    ImageSize,
    check_image_size,
    is_image_name,
)
from twinsight.data.readers.imagefiles import read_image_files
from twinsight.data.readers.registry import Source, register_reader
from twinsight.errors import TwinsightError


def _is_class_folder(source: Source) -> bool:
    return source.is_dir and bool(source.subdirs)


def _is_images(source: Source) -> bool:
    if source.is_file:
        return source.has_suffix(PIL_EXTENSIONS)
    return source.is_dir and not source.subdirs and any(_image_files(source))


def _image_files(source: Source) -> list[Path]:
    return [p for p in source.files if is_image_name(p.name)]


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


@register_reader("class-folder", sniff=_is_class_folder, priority=40)
def read_class_folder(
    root: str | Path,
    *,
    image_size: ImageSize = None,
    channels: int | None = None,
    hdu: int | str | None = None,
) -> Collection:
    """A folder with one sub-folder per class (ImageFolder style); label = sub-folder name."""
    root = Path(root)
    size = check_image_size(image_size)
    classes = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    paths: list[Path] = []
    labels: list[str] = []
    for folder in classes:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and is_image_name(path.name) and not _hidden(path, root):
                paths.append(path)
                labels.append(folder.name)
    if not paths:
        raise TwinsightError(
            f"folder '{root}' has sub-folders ({', '.join(p.name for p in classes[:5])}) but no "
            f"images in them; expected files ending in "
            f"{', '.join(PIL_EXTENSIONS + FITS_EXTENSIONS)}"
        )
    keys = [p.relative_to(root).as_posix() for p in paths]
    collection = read_image_files(
        paths, keys, labels, name=str(root), image_size=size, channels=channels, hdu=hdu
    )
    collection.meta["reader"] = "class-folder"
    return collection


@register_reader("images", sniff=_is_images, priority=50)
def open_images(
    source: Source,
    *,
    image_size: ImageSize = None,
    channels: int | None = None,
    hdu: int | str | None = None,
) -> Collection:
    """A folder of image files without sub-folders (unlabelled), or one image file."""
    size = check_image_size(image_size)
    if source.is_dir:
        images = _image_files(source)
        keys = [p.name for p in images]
    else:
        images, keys = [source.path], [source.path.name]
    return read_image_files(
        images, keys, None, name=str(source.path), image_size=size, channels=channels, hdu=hdu
    )
