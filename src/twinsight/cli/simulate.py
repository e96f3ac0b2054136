"""CLI commands: simulate (see the module of the API they call)."""

from __future__ import annotations

from twinsight.cli._app import app  # noqa: F401
