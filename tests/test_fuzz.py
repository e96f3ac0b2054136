"""Property test: mutated bytes of every format give a clean error or a result, never a traceback.

Valid tiny files (PNG, FITS, packed HDF5, a model folder's safetensors, an index folder's
files) are made once; hypothesis flips, inserts and truncates bytes, and every outcome
must be a :class:`TwinsightError` (the CLI's one line, exit 2) or a returned value.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from astropy.io import fits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from twinsight.data.packed import read_packed, write_packed
from twinsight.data.readers import open_collection
from twinsight.data.readers.imagefiles import probe_image, read_image_file
from twinsight.errors import TwinsightError
from twinsight.index import SimilarityIndex
from twinsight.models.bundle import WEIGHTS_FILE, ModelBundle
from twinsight.models.encoders import create_encoder

torch.set_num_threads(1)
FUZZ = settings(
    max_examples=int(os.environ.get("TWINSIGHT_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SCRATCH = Path(tempfile.mkdtemp(prefix="twinsight-fuzz-"))


@st.composite
def mutations(draw, data: bytes) -> bytes:
    """``data`` with a few bytes changed, some inserted or removed, maybe cut short."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "flip", "insert", "delete"]))
        pos = draw(st.integers(0, max(0, len(out) - 1)))
        if kind == "flip" and out:
            out[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif out:
            del out[pos : pos + draw(st.integers(1, 16))]
    if draw(st.booleans()):
        out = out[: draw(st.integers(0, len(out)))]
    return bytes(out)


def _clean(call) -> None:
    """Run ``call``: a result or a TwinsightError pass, anything else fails the property."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            call()
        except TwinsightError as exc:
            assert "\n" not in str(exc).strip(), str(exc)


@functools.cache
def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.arange(64).reshape(8, 8) * 4).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@functools.cache
def _fits() -> bytes:
    buf = io.BytesIO()
    hdu = fits.PrimaryHDU(np.arange(64, dtype=np.float32).reshape(8, 8))
    hdu.header["HIERARCH TRUE_MASS"] = 0.7
    hdu.writeto(buf)
    return buf.getvalue()


@functools.cache
def _packed() -> bytes:
    path = SCRATCH / "valid.h5"
    items = pd.DataFrame({"key": [f"k{i}" for i in range(6)], "mass": np.arange(6.0)})
    images = np.random.default_rng(0).random((6, 4, 4)).astype(np.float32)
    write_packed(path, items, [images], (1, 4, 4), param_columns=["mass"], overwrite=True)
    return path.read_bytes()


@functools.cache
def _model() -> Path:
    torch.manual_seed(0)
    enc = create_encoder("small-cnn", embedding_dim=4, in_channels=1, input_size=(8, 8))
    return ModelBundle.from_encoder(enc).save(SCRATCH / "model", overwrite=True)


@functools.cache
def _index() -> Path:
    vectors = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    items = pd.DataFrame({"key": [f"k{i}" for i in range(6)], "system": list("aabbcc")})
    index = SimilarityIndex.build(vectors, items, model_fingerprint="abc")
    return index.save(SCRATCH / "index", overwrite=True)


def _write(name: str, data: bytes) -> Path:
    path = SCRATCH / name
    path.write_bytes(data)
    return path


@FUZZ
@given(st.data())
def test_mutated_png(data):
    path = _write("q.png", data.draw(mutations(_png())))
    _clean(lambda: (probe_image(path), read_image_file(path)))


@FUZZ
@given(st.data())
def test_mutated_fits(data):
    path = _write("q.fits", data.draw(mutations(_fits())))
    _clean(lambda: open_collection(str(path)).images())


@FUZZ
@given(st.data())
def test_mutated_packed_hdf5(data):
    path = _write("p.h5", data.draw(mutations(_packed())))
    _clean(lambda: read_packed(path).images())


@FUZZ
@given(st.data())
def test_mutated_safetensors_in_a_model_folder(data):
    folder = SCRATCH / "fuzzed-model"
    if not folder.exists():
        shutil.copytree(_model(), folder)
    valid = (_model() / WEIGHTS_FILE).read_bytes()
    (folder / WEIGHTS_FILE).write_bytes(data.draw(mutations(valid)))
    _clean(lambda: ModelBundle.load(folder).embed(np.zeros((1, 1, 8, 8), np.float32)))


@FUZZ
@given(st.data(), st.sampled_from(["index.json", "items.parquet", "index.faiss"]))
def test_mutated_index_files(data, name):
    folder = SCRATCH / "fuzzed-index"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(_index(), folder)
    (folder / name).write_bytes(data.draw(mutations((_index() / name).read_bytes())))
    query = np.eye(1, 4, dtype=np.float32)
    _clean(lambda: SimilarityIndex.load(folder).search(query, 3))


@pytest.fixture(scope="module", autouse=True)
def _scratch_removed():
    yield
    shutil.rmtree(SCRATCH, ignore_errors=True)
