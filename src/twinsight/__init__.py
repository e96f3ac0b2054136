"""twinsight: learn image similarity with Siamese networks and put it to work.

The public Python API, importable from here (loaded on first use, so that
``import twinsight`` stays fast)::

    import twinsight

    sims = twinsight.open_collection("sims.h5")
    bundle = twinsight.train(sims, "runs/sims", targets="params")
    index = twinsight.build_index(bundle, sims, model_path="runs/sims")
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("twinsight")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

from twinsight.data.collection import Collection  # noqa: E402
from twinsight.errors import TwinsightError  # noqa: E402

#: Public name -> module that defines it.
_API = {
    "open_collection": "twinsight.data.readers",
    "ParameterNormalizer": "twinsight.data.params",
    "simulate_collection": "twinsight.simulate",
    "write_simulation": "twinsight.simulate",
    "observe": "twinsight.simulate",
    "create_encoder": "twinsight.models.encoders",
    "list_encoders": "twinsight.models.encoders",
    "create_loss": "twinsight.losses",
    "list_losses": "twinsight.losses",
    "ModelBundle": "twinsight.models.bundle",
    "embed_collection": "twinsight.embedding",
    "train": "twinsight.api",
    "TrainConfig": "twinsight.config",
    "SimilarityIndex": "twinsight.index",
    "build_index": "twinsight.index",
    "estimate_parameters": "twinsight.inference",
    "run_demo": "twinsight.demo",
    "build_report": "twinsight.report",
}

__all__ = ["Collection", "TwinsightError", "__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'twinsight' has no attribute '{name}'")
