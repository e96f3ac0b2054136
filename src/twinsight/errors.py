"""The one error type users see.

Every bad input (a missing file, a wrong column, an unknown encoder name, ...)
raises :class:`TwinsightError` with a message that names the file, field or
value, says what was expected and what to do. The CLI turns it into a one-line
message and exit code 2, never a traceback.
"""

from __future__ import annotations


class TwinsightError(ValueError):
    """A user-facing error: bad input, bad configuration, or a refused operation."""
