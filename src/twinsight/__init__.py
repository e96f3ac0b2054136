"""twinsight: learn image similarity with Siamese networks and put it to work.

The public Python API is re-exported here; see the README for a tour.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("twinsight")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

from twinsight.data.collection import Collection  # noqa: E402
from twinsight.errors import TwinsightError  # noqa: E402

__all__ = ["Collection", "TwinsightError", "__version__"]
