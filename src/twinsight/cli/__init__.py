"""The ``twinsight`` command line: thin wrappers that parse, call the API and print.

Each command group lives in its own module and registers itself on the shared
Typer ``app``; :func:`main` turns user errors into one line and exit code 2.
"""

from __future__ import annotations

import logging
import sys
import warnings

import typer
from rich.text import Text

from twinsight import __version__
from twinsight.cli._app import app, err_console
from twinsight.errors import TwinsightError

_CHATTY_LOGGERS = ("PML", "lightning.pytorch", "lightning.fabric", "faiss")
_TRAINING_COMMANDS = ("train", "tune", "demo")


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"twinsight {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Show the version."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more detail."),
) -> None:
    """Learn image similarity with Siamese networks: search, verify, best-match parameters."""
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
        force=True,
    )
    # Third-party chatter (per-epoch k-NN notes, cloud-logging tips) only with --verbose.
    # Lightning resets its logger's level when first imported, so import it before quieting.
    if ctx.invoked_subcommand in _TRAINING_COMMANDS:
        import lightning.pytorch  # noqa: F401
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:  # a deprecation inside Lightning itself, not something users can act on
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)


# Command modules register their commands on `app` when imported.
# Registration order is the order of `twinsight --help`: the pipeline's order.
# isort: off
from twinsight.cli import simulate as _simulate  # noqa: E402,F401
from twinsight.cli import data as _data  # noqa: E402,F401
from twinsight.cli import train as _train  # noqa: E402,F401
from twinsight.cli import tune as _tune  # noqa: E402,F401
from twinsight.cli import search as _search  # noqa: E402,F401
from twinsight.cli import demo as _demo  # noqa: E402,F401
# isort: on


def _process_settings() -> None:
    """Settings that belong to the whole process, so only the command line makes them.

    matplotlib's Agg backend: twinsight's own figures need no backend (they use the
    object API), but a library that draws through pyplot during a command must not
    try to open a window on a machine without a display. FAISS's global settings are
    not set here: :mod:`twinsight.index` scopes them per search under a lock, because
    the right value depends on the number of queries of each call.
    """
    import matplotlib

    matplotlib.use("Agg")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script; exits 2 on a user error, without a traceback.

    Typer's standalone mode handles usage errors (exit 2), ``--help`` and
    ``Exit``; a :class:`TwinsightError` raised by the library becomes one line.
    """
    _process_settings()
    try:
        app(args=argv, prog_name="twinsight")
    except TwinsightError as exc:
        err_console.print(Text.assemble(("error: ", "bold red"), str(exc)), highlight=False)
        sys.exit(2)
