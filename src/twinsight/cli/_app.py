"""The Typer application object and the console helpers every command module shares."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console

from twinsight.io import dumps

app = typer.Typer(
    name="twinsight",
    help="Learn image similarity with Siamese networks: search, verify, best-match parameters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def print_json(data: Any) -> None:
    """Print machine-readable JSON on stdout (nothing else goes to stdout with --json)."""
    typer.echo(dumps(data, lenient=True))
