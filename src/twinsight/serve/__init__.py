"""``twinsight serve``: a web page and a JSON API for search, matching and comparing.

:func:`create_app` builds the FastAPI app for one index; the page (``static/``) is
plain HTML, CSS and JavaScript served by the app (no CDN, no build step).
"""

from __future__ import annotations

from twinsight.serve.app import create_app

__all__ = ["create_app"]
