"""twinsight: learn image similarity with Siamese networks and put it to work.

The whole workflow is here, one function per step, each returning a typed result
whose ``to_dict()`` is what the CLI prints with ``--json``::

    import twinsight

    sims = twinsight.simulate("sims.h5", n_systems=200, val_fraction=0.1, test_fraction=0.1)
    run = twinsight.train(sims, "runs/sims", targets="params", epochs=5)
    index = twinsight.build_index(run, sims)
    estimate = twinsight.match(index, "observation.fits")
    print(estimate.to_dict(with_values=False)["parameters"]["mass"])

The names are loaded on first use, so that ``import twinsight`` stays fast and
leaves the process as it was (no matplotlib backend, no FAISS settings).
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
    # the workflow
    "open_collection": "twinsight.api",
    "simulate": "twinsight.api",
    "observe": "twinsight.api",
    "train": "twinsight.api",
    "load_model": "twinsight.api",
    "build_index": "twinsight.api",
    "load_index": "twinsight.api",
    "merge_indexes": "twinsight.api",
    "search": "twinsight.api",
    "compare": "twinsight.api",
    "match": "twinsight.api",
    "evaluate": "twinsight.api",
    "fid": "twinsight.api",
    "tune": "twinsight.api",
    "run_demo": "twinsight.demo",
    # the types it returns and takes
    "TrainConfig": "twinsight.config",
    "ModelBundle": "twinsight.models.bundle",
    "SimilarityIndex": "twinsight.index",
    "SearchParameters": "twinsight.index",
    "ParameterEstimate": "twinsight.inference",
    "SearchResult": "twinsight.results",
    "Comparison": "twinsight.results",
    "Evaluation": "twinsight.results",
    "FidResult": "twinsight.results",
    "TrainResult": "twinsight.results",
    "TuneResult": "twinsight.tuning",
    "DemoResult": "twinsight.demo",
    # building blocks and registries
    "ParameterNormalizer": "twinsight.data.params",
    "register_reader": "twinsight.data.readers",
    "list_readers": "twinsight.data.readers",
    "create_encoder": "twinsight.models.encoders",
    "register_encoder": "twinsight.models.encoders",
    "list_encoders": "twinsight.models.encoders",
    "create_loss": "twinsight.losses",
    "register_loss": "twinsight.losses",
    "list_losses": "twinsight.losses",
}

__all__ = ["Collection", "TwinsightError", "__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'twinsight' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
