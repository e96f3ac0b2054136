"""Test helpers: read back what a rendered report shows.

Moved out of :mod:`twinsight.report` (the library renders reports; only tests
parse them): every ``data-field``/``data-value`` cell and every embedded PNG.
"""

from __future__ import annotations

import base64
import html
import json
import re
from typing import Any

_VALUE_CELL = re.compile(
    r"<(?:td|b)[^>]*?data-field=\"([^\"]+)\" data-value=\"([^\"]*)\"[^>]*>([^<]*)</(?:td|b)>"
)
_IMG = re.compile(r"<img src=\"data:image/png;base64,([A-Za-z0-9+/=]+)\"")


def report_values(text: str) -> dict[str, tuple[Any, str]]:
    """Every number a report shows: ``{field: (JSON value, text shown)}``."""
    return {
        field: (json.loads(html.unescape(value)), html.unescape(shown))
        for field, value, shown in _VALUE_CELL.findall(text)
    }


def report_images(text: str) -> list[bytes]:
    """The decoded bytes of every embedded ``data:image/png`` figure of a report."""
    return [base64.b64decode(data) for data in _IMG.findall(text)]
