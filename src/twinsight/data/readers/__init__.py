"""Open any supported source as a :class:`~twinsight.data.collection.Collection`.

:func:`open_collection` asks each registered reader, highest priority first,
whether it takes ``source`` (see :mod:`.registry`), and the first that does
opens it. The built-in readers, one file per format, in the order tried:

- ``builtin`` (:mod:`.builtin`): a built-in name (``digits``, ``mnist5k``,
  ``protostars``, ``mnist``, ``fashion-mnist``, ``cifar10``) that is not an
  existing path, see :mod:`twinsight.data.builtins`;
- ``table`` (:mod:`.table`): a metadata table (``.csv``, ``.parquet``) with a
  ``path`` column;
- ``packed`` (:mod:`.packed`): a packed HDF5 file written by ``twinsight pack``
  (the fast path);
- ``seed-hdf5`` (:mod:`.seed_hdf5`): the seed-000 layout, a folder of
  per-system ``.h5`` files with datasets ``intensity_projection_1`` ...
  ``intensity_projection_K`` and scalar parameter datasets (a single such file
  works too);
- ``fits`` (:mod:`.fits`): a FITS file (one observation; ``TRUE_<name>``
  header cards become parameter columns);
- ``images`` (:mod:`.folder`): a single image file, or a folder of images
  without sub-folders (unlabelled);
- ``class-folder`` (:mod:`.folder`): a folder with one sub-folder per class
  (PNG, JPEG, TIFF, BMP, GIF, WebP, FITS), like torchvision's ImageFolder.

A new format is one new file whose opener is decorated with
:func:`register_reader`; a reader registered from outside the package works
the same way. ``open_collection(source, reader="name")`` forces a reader.

Opening reads metadata only (image headers, HDF5 attributes and scalars);
images are read on demand, in batches. Every bad input raises
:class:`~twinsight.errors.TwinsightError` naming the file, row or column.

Policies (documented in the README, "Data: what twinsight reads"):

- values: 8-bit images are divided by 255, 16-bit images by 65535, float
  images (TIFF mode ``F``, FITS, HDF5) are kept as they are;
- channels: grayscale stays 1 channel, RGB/RGBA/palette become 3; a collection
  mixing 1- and 3-channel images is 3-channel (gray repeated); ``channels``
  forces 1 (channel mean) or 3;
- sizes: all images of a collection must share one size, otherwise opening
  fails and names two files of different sizes; with ``image_size`` every
  image is resized (bilinear, antialiased) to that size when loaded.
"""

from __future__ import annotations

from twinsight.data.packed import pack_collection

# Importing a format file registers its reader(s); each imports the registry itself.
from twinsight.data.readers import builtin, fits, folder, packed, seed_hdf5, table
from twinsight.data.readers.common import (
    FITS_EXTENSIONS,
    HDF5_EXTENSIONS,
    PIL_EXTENSIONS,
    TABLE_EXTENSIONS,
    AdaptedLoader,
    ImageSize,
    adapt_collection,
)
from twinsight.data.readers.fits import header_parameters, read_fits, truth_name
from twinsight.data.readers.folder import read_class_folder
from twinsight.data.readers.imagefiles import (
    ImageFileLoader,
    ImageHeader,
    probe_image,
    read_image_file,
    read_image_files,
)
from twinsight.data.readers.registry import (
    DEFAULT_PRIORITY,
    ReaderSpec,
    Source,
    describe_readers,
    find_reader,
    get_reader,
    list_readers,
    open_collection,
    register_reader,
    unregister_reader,
)
from twinsight.data.readers.seed_hdf5 import PARALLEL_SCAN_MIN_FILES, SeedLoader, read_seed_hdf5
from twinsight.data.readers.table import read_table
from twinsight.data.schema import PROJECTION_ATTRIBUTES, SIMULATOR_PARAMETERS
from twinsight.data.summary import summarize_collection

__all__ = [
    "DEFAULT_PRIORITY",
    "FITS_EXTENSIONS",
    "HDF5_EXTENSIONS",
    "PARALLEL_SCAN_MIN_FILES",
    "PIL_EXTENSIONS",
    "PROJECTION_ATTRIBUTES",
    "SIMULATOR_PARAMETERS",
    "TABLE_EXTENSIONS",
    "AdaptedLoader",
    "ImageFileLoader",
    "ImageHeader",
    "ImageSize",
    "ReaderSpec",
    "SeedLoader",
    "Source",
    "adapt_collection",
    "builtin",
    "describe_readers",
    "find_reader",
    "fits",
    "folder",
    "get_reader",
    "header_parameters",
    "list_readers",
    "open_collection",
    "pack_collection",
    "packed",
    "probe_image",
    "read_class_folder",
    "read_fits",
    "read_image_file",
    "read_image_files",
    "read_seed_hdf5",
    "read_table",
    "register_reader",
    "seed_hdf5",
    "summarize_collection",
    "table",
    "truth_name",
    "unregister_reader",
]
