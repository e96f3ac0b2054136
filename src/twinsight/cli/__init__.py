"""The ``twinsight`` command line: thin wrappers that parse, call the API and print.

Each command group lives in its own module and registers itself on the shared
Typer ``app``; :func:`main` turns user errors into one line and exit code 2.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import warnings
from collections.abc import Iterator

import typer
from rich.text import Text

from twinsight import __version__
from twinsight.cli._app import app, err_console
from twinsight.errors import TwinsightError

_CHATTY_LOGGERS = (
    "PML",
    "lightning.pytorch",
    "lightning.fabric",
    "faiss",
    # `index --devices N` imports Lightning late (which resets the two above): its
    # process-group notes are quieted through their own loggers
    "lightning.fabric.utilities.distributed",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.utilities.rank_zero",
)
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
    max_pixels: int | None = typer.Option(
        None,
        "--max-pixels",
        min=1,
        help="Largest image (in pixels) read without refusing it as a decompression bomb "
        "(default: Pillow's, about 89 million).",
    ),
) -> None:
    """Learn image similarity with Siamese networks: search, verify, best-match parameters."""
    from rich.logging import RichHandler

    if max_pixels is not None:
        from twinsight.data.readers.imagefiles import set_max_pixels

        set_max_pixels(max_pixels)

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
from twinsight.cli import serve as _serve  # noqa: E402,F401
# isort: on


def _process_settings() -> None:
    """Settings that belong to the whole process, so only the command line makes them.

    matplotlib's Agg backend: twinsight's own figures need no backend (they use the
    object API), but a library that draws through pyplot during a command must not
    try to open a window on a machine without a display. FAISS's global settings are
    not set here: :mod:`twinsight.index` scopes them per search under a lock, because
    the right value depends on the number of queries of each call.

    glibc's malloc keeps freed blocks for reuse (:mod:`twinsight.allocator`): a CPU
    training step then does not fault its activations back in from the kernel each time.
    """
    import matplotlib

    from twinsight.allocator import reuse_freed_memory

    matplotlib.use("Agg")
    reuse_freed_memory()


class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised so that every ``finally`` and temporary cleanup runs.

    Not KeyboardInterrupt: click turns that into exit 1 ("Aborted!"), and Lightning
    catches it, shuts down and exits 1 itself; this one unwinds to :func:`main`.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def _signals_unwind() -> Iterator[None]:
    """While inside, SIGINT and SIGTERM unwind the stack (temp files removed)."""
    wanted = (signal.SIGINT, signal.SIGTERM)
    try:
        previous = {s: signal.signal(s, _raise_interrupted) for s in wanted}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _error(message: str) -> None:
    err_console.print(Text.assemble(("error: ", "bold red"), message), highlight=False)


_KEPT = (
    "unfinished outputs were removed and earlier ones are unchanged (a training keeps "
    "RUN.partial: continue it with --resume); run the same command again to finish"
)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script; exits 2 on a user error, without a traceback.

    Typer's standalone mode handles usage errors (exit 2), ``--help`` and
    ``Exit``; a :class:`TwinsightError` raised by the library becomes one line. So does
    a write the machine refused (a full disk, a read-only file system: exit 2). SIGINT
    and SIGTERM exit with 130 and 143 after one line saying what was kept.
    """
    _process_settings()
    try:
        with _signals_unwind():
            app(args=argv, prog_name="twinsight")
    except TwinsightError as exc:
        _error(str(exc))
        sys.exit(2)
    except OSError as exc:
        from twinsight.fsutil import disk_error

        refused = disk_error(exc)
        if refused is None:
            raise
        _error(str(refused))
        sys.exit(2)
    except Interrupted as exc:
        name = signal.Signals(exc.signum).name
        _error(f"interrupted ({name}); {_KEPT}")
        sys.exit(128 + exc.signum)
