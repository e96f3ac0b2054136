"""CLI command ``twinsight train``: parse, call :func:`twinsight.api.train`, print.

The training options are generated from :class:`twinsight.config.TrainConfig`:
each flat override (:data:`twinsight.config.OVERRIDES`) becomes one option whose
help is the field's description, so an option is written once, in the config.
Options left unset keep the value of ``--config FILE`` (or the default).
"""

from __future__ import annotations

import inspect
import types
import typing
from pathlib import Path
from typing import Any

import typer

from twinsight.cli._app import app, console, print_json
from twinsight.config import OverrideField, override_fields
from twinsight.errors import TwinsightError


def _split_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _log10_option(value: str | None) -> list[str] | str | None:
    if value is None or value.strip().lower() == "auto":
        return value and "auto"
    if value.strip().lower() == "none":
        return []
    return _split_list(value)


#: Options whose CLI text is parsed before it reaches the config.
_PARSERS = {"params": _split_list, "log10": _log10_option}
_LIST_HELP = {
    "params": " (comma-separated)",
    "log10": " (a,b | auto | none)",
}


def _cli_type(annotation: Any) -> type:
    """The scalar type an option is typed as on the command line (choices stay strings)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _cli_type(args[0])
    if annotation in (int, float, bool):
        return annotation
    return str


def _choices(annotation: Any) -> list[str]:
    """The allowed values of a Literal (or Literal | None) annotation."""
    if typing.get_origin(annotation) is typing.Literal:
        return [str(a) for a in typing.get_args(annotation)]
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is typing.Literal:
            return [str(a) for a in typing.get_args(arg)]
    return []


def _option(field: OverrideField) -> inspect.Parameter:
    kind = _cli_type(field.type)
    text = field.help[:1].upper() + field.help[1:] + _LIST_HELP.get(field.name, "")
    choices = _choices(field.type)
    if choices and field.name not in _LIST_HELP:
        text += f" ({' | '.join(choices)})"
    if field.default not in (None, [], {}):
        shown = ",".join(field.default) if isinstance(field.default, list) else field.default
        text += rf". \[default: {shown}]"
    flags = [f"--{field.name.replace('_', '-')}"]
    if kind is bool:
        flags = [f"--{field.name}/--no-{field.name}"]
    option = typer.Option(None, *flags, help=text, show_default=False)
    return inspect.Parameter(
        field.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind | None
    )


def _fixed(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def _signature() -> inspect.Signature:
    head = [
        _fixed("data", str | None, typer.Argument(
            None, help="Images: a path or a built-in name (mnist5k, ...).")),
        _fixed("out", Path | None, typer.Option(None, "--out", "-o", help="Run folder to create.")),
        _fixed("config", Path | None, typer.Option(
            None, "--config", "-c", help="YAML configuration file.")),
    ]  # fmt: skip
    tail = [
        _fixed("resume", bool, typer.Option(
            False, "--resume", help="Continue an interrupted run.")),
        _fixed("overwrite", bool, typer.Option(
            False, "--overwrite", help="Replace an existing run.")),
        _fixed("print_config", bool, typer.Option(
            False, "--print-config", help="Print the effective configuration as YAML and exit.")),
        _fixed("as_json", bool, typer.Option(False, "--json", help="Print the result as JSON.")),
    ]  # fmt: skip
    return inspect.Signature([*head, *(_option(f) for f in override_fields()), *tail])


def train(**options: Any) -> None:
    """Train a Siamese similarity model on every pair of each batch."""
    from twinsight.api import resolve_config
    from twinsight.api import train as train_run
    from twinsight.config import config_to_yaml
    from twinsight.distributed import is_rank_zero

    data, out, config = options.pop("data"), options.pop("out"), options.pop("config")
    resume, overwrite = options.pop("resume"), options.pop("overwrite")
    print_config, as_json = options.pop("print_config"), options.pop("as_json")
    overrides = {k: _PARSERS.get(k, lambda v: v)(v) for k, v in options.items()}
    cfg = resolve_config(config, **overrides)
    if print_config:
        typer.echo(config_to_yaml(cfg), nl=False)
        return
    if data is None or out is None:
        raise TwinsightError(
            "train needs DATA and --out RUN (e.g. twinsight train mnist5k --out runs/mnist)"
        )
    result = train_run(data, out, cfg, resume=resume, overwrite=overwrite)
    if not is_rank_zero():  # another rank of a DDP launch: rank 0 reports the run
        return
    if as_json:
        print_json(result.to_dict())
        return
    summary = result.to_dict()
    scores = ", ".join(f"{k} {v:.4f}" for k, v in summary["validation"].items())
    console.print(
        f"[green]trained[/] {result.model} in {summary['train_seconds']:.0f} s, "
        f"{summary['epochs_run']} epochs (best {summary['best_epoch']}): {scores}"
    )


train.__signature__ = _signature()  # type: ignore[attr-defined]
app.command()(train)
