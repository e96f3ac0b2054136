"""No hidden or global state: backends, devices and working folders are the caller's.

Importing twinsight leaves matplotlib's backend alone (only the CLI picks Agg),
figures are made without pyplot, the embedding device is resolved per call, and an
index finds its model from any working folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from twinsight.embedding import embed_collection, embed_images, resolve_device
from twinsight.errors import TwinsightError

torch.set_num_threads(1)

SRC = Path(__file__).resolve().parents[1] / "src"


def _python(code: str, tmp_path: Path, backend: str = "svg") -> dict:
    """Run ``code`` in a fresh interpreter with MPLBACKEND=backend; it prints one JSON line."""
    env = os.environ | {"MPLBACKEND": backend, "PYTHONPATH": str(SRC)}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_and_plotting_leaves_the_backend_alone(tmp_path):
    result = _python(
        """
        import json, sys
        import matplotlib
        before = matplotlib.get_backend()
        import numpy as np
        import twinsight, twinsight.plots as plots

        def draw():
            plots.plot_training_curves(
                [{"epoch": 0, "train_loss": 1.0, "val_p_at_1": 0.5},
                 {"epoch": 1, "train_loss": 0.5, "val_p_at_1": 0.7}], "curves.png")
            rng = np.random.default_rng(0)
            plots.plot_ranked_pairs(rng.random((6, 1, 8, 8)), rng.random((6, 1, 8, 8)),
                                    rng.random(6), rng.random(6), "pairs.png", n=2)
            plots.plot_coverage_calibration(
                {"levels": [0.5, 0.9], "observed": {"mass": [0.4, 0.8]}}, "coverage.svg")

        draw()
        pyplot_used = "matplotlib.pyplot" in sys.modules
        for name in twinsight.__all__:  # every public API module
            getattr(twinsight, name)
        draw()
        # a dependency (torchmetrics) imports pyplot; twinsight's figures never enter it
        plt = sys.modules.get("matplotlib.pyplot")
        figures = plt.get_fignums() if plt else []
        print(json.dumps({
            "before": before,
            "after": matplotlib.get_backend(),
            "pyplot": pyplot_used,
            "figures": figures,
        }))
        """,
        tmp_path,
    )
    assert result["before"] == "svg" and result["after"] == "svg"
    assert not result["pyplot"] and result["figures"] == []  # no pyplot global state
    for name in ("curves.png", "pairs.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (tmp_path / "coverage.svg").read_bytes()[:500]


def test_the_command_line_picks_agg(tmp_path):
    result = _python(
        """
        import json, matplotlib
        from twinsight.cli import main
        try:
            main(["--version"])
        except SystemExit:
            pass
        print(json.dumps({"backend": matplotlib.get_backend()}))
        """,
        tmp_path,
    )
    assert result["backend"].lower() == "agg"


_GLIBC = sys.platform.startswith("linux") and __import__("platform").libc_ver()[0] == "glibc"

# Where glibc's malloc puts a 64 MB block (mallinfo2: bytes in mmap'ed blocks, bytes of heap
# the process holds) while it lives and after it is freed; `setting` is "none", "library"
# (reuse_freed_memory called) or "cli" (the command line run first).
_PLACEMENT = """
    import ctypes, json
    import numpy as np
    setting = {setting!r}
    applied = None
    if setting == "library":
        from twinsight.allocator import reuse_freed_memory
        applied = reuse_freed_memory()
    elif setting == "cli":
        from twinsight.cli import main
        try:
            main(["--version"])
        except SystemExit:
            pass

    class Info(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Info
    block = np.ones(64 << 20, dtype=np.uint8)
    live = libc.mallinfo2()
    del block
    freed = libc.mallinfo2()
    print(json.dumps({{"applied": applied, "mmapped_live": live.hblkhd,
                       "heap_freed": freed.arena}}))
"""


@pytest.mark.skipif(not _GLIBC, reason="the setting is glibc's malloc's")
def test_freed_memory_is_kept_once_asked_and_only_then(tmp_path):
    """A training step's large activations: glibc maps each from the kernel and unmaps it
    when freed (to be faulted in again at the next step); after reuse_freed_memory (the
    command line calls it) the block comes from the heap and stays there once freed.
    Importing twinsight alone leaves the allocator as it was."""
    block = 64 << 20
    plain = _python(_PLACEMENT.format(setting="none"), tmp_path)
    assert plain["mmapped_live"] >= block  # mapped for itself, returned when freed
    for setting in ("library", "cli"):
        kept = _python(_PLACEMENT.format(setting=setting), tmp_path)
        assert kept["mmapped_live"] < block, setting  # from the heap
        assert kept["heap_freed"] >= block, setting  # still held for the next step
    assert _python(_PLACEMENT.format(setting="library"), tmp_path)["applied"] is True


# -- devices ---------------------------------------------------------------------------------------


def test_device_resolution():
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(TwinsightError, match="unknown device 'tpu'.*auto, cpu, cuda"):
        resolve_device("tpu")
    with pytest.raises(TwinsightError, match="unknown device 'meta'"):
        resolve_device("meta")
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(TwinsightError, match="cuda:7"):
        resolve_device("cuda:7") if n_gpus < 8 else resolve_device("cuda:99")
    if not n_gpus:
        with pytest.raises(TwinsightError, match="no CUDA GPU is available"):
            resolve_device("cuda:0")
    mps = getattr(torch.backends, "mps", None)
    if not (mps and mps.is_available()):
        with pytest.raises(TwinsightError, match="MPS is not available"):
            resolve_device("mps")


def _encoder():
    from twinsight.models.encoders import create_encoder

    torch.manual_seed(0)
    return create_encoder("small-cnn", embedding_dim=8, input_size=(16, 16))


def _images(n=5):
    return np.random.default_rng(0).random((n, 1, 16, 16)).astype(np.float32)


def test_cpu_embeddings_are_unchanged_by_device_and_precision():
    enc = _encoder()
    prep = enc.default_preprocessing()
    reference = embed_images(enc, _images(), prep, device="cpu")
    with torch.no_grad():
        direct = enc.eval()(torch.from_numpy(prep(_images()))).numpy()
    np.testing.assert_allclose(reference, direct, atol=1e-6)
    if not torch.cuda.is_available():
        np.testing.assert_array_equal(embed_images(enc, _images(), prep), reference)
    # reduced precision is for GPUs; the CPU keeps fp32 numbers
    bf16 = embed_images(enc, _images(), prep, device="cpu", precision="bf16")
    np.testing.assert_array_equal(bf16, reference)
    with pytest.raises(TwinsightError, match="unknown precision 'fp8'.*fp32, bf16, fp16"):
        embed_images(enc, _images(), prep, precision="fp8")


def test_the_device_goes_through_bundle_and_index():
    from twinsight.data.collection import Collection
    from twinsight.index import build_index
    from twinsight.models.bundle import ModelBundle

    bundle = ModelBundle.from_encoder(_encoder())
    items = pd.DataFrame({"key": [f"k{i}" for i in range(5)]})
    collection = Collection.from_arrays(_images(), items, name="tiny")
    for bad in (
        lambda: bundle.embed(_images(), device="tpu"),
        lambda: bundle.similarity(_images(), _images(), device="tpu"),
        lambda: embed_collection(bundle, collection, device="tpu"),
        lambda: build_index(bundle, collection, device="tpu"),
    ):
        with pytest.raises(TwinsightError, match="unknown device 'tpu'"):
            bad()
    cpu = build_index(bundle, collection, device="cpu")
    np.testing.assert_allclose(cpu.vectors(), bundle.embed(_images(), device="cpu"), atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_embeddings_match_the_cpu():
    enc = _encoder()
    prep = enc.default_preprocessing()
    images = _images(64)
    cpu = embed_images(enc, images, prep, device="cpu")
    gpu = embed_images(enc, images, prep, device="cuda")
    assert next(enc.parameters()).device.type == "cuda"
    np.testing.assert_allclose(gpu, cpu, atol=5e-3)  # cuDNN may use TF32 convolutions
    for precision in ("bf16", "fp16"):
        low = embed_images(enc, images, prep, device="auto", precision=precision)
        assert low.dtype == np.float32
        assert np.min(np.sum(low * cpu, axis=1)) > 0.99  # same directions


# -- the working folder ----------------------------------------------------------------------------


def test_search_finds_the_model_from_another_folder(tmp_path, monkeypatch, run_cli):
    """An index built with a relative model path (as the demo does), searched from elsewhere."""
    from PIL import Image

    from twinsight.data.packed import write_packed
    from twinsight.data.readers import open_collection
    from twinsight.index import build_index
    from twinsight.models.bundle import ModelBundle

    work = tmp_path / "work"
    work.mkdir()
    items = pd.DataFrame({"key": [f"k{i}" for i in range(6)], "label": list("aabbcc")})
    write_packed(work / "sims.h5", items, [_images(6)], (1, 16, 16))
    ModelBundle.from_encoder(_encoder()).save(work / "run")
    Image.fromarray((255 * _images(1)[0, 0]).astype(np.uint8)).save(work / "query.png")
    monkeypatch.chdir(work)
    collection = open_collection("sims.h5")
    build_index(ModelBundle.load("run"), collection, model_path="run").save("idx")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    result = run_cli("search", "../work/idx", "../work/query.png", "-k", "2", "--json")
    assert result.exit_code == 0, result.stderr
    assert "no longer exists" not in result.stderr
