"""CLI command: serve (the web page and JSON API for one index, on uvicorn)."""

from __future__ import annotations

import typer

from twinsight.cli._app import app, err_console

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def open_warning(host: str, token: str | None) -> str | None:
    """The warning printed when the page is reachable from other machines without a token."""
    if token or host in LOCAL_HOSTS:
        return None
    return (
        f"warning: serving on {host} without --token: anyone who can reach this machine "
        "can use the page and the API"
    )


@app.command("serve")
def serve_cmd(
    index_dir: str = typer.Argument(..., metavar="IDX", help="Index folder."),
    model: str | None = typer.Option(None, help="Model folder (default: the index's own)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (localhost by default)."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on."),
    max_upload_mb: float = typer.Option(20, min=0.001, help="Largest request body, in MiB."),
    token: str | None = typer.Option(
        None, envvar="TWINSIGHT_TOKEN", help="Require this token on every /api request."
    ),
    max_concurrent: int = typer.Option(4, min=1, help="Model jobs running at once."),
    max_queued: int = typer.Option(16, min=0, help="Jobs waiting beyond those (then 503)."),
    timeout: float = typer.Option(60.0, min=0.1, help="Seconds a request may take (then 504)."),
) -> None:
    """Serve a web page and a JSON API for search, matching and comparing (uvicorn)."""
    import uvicorn

    from twinsight.serve import create_app

    warning = open_warning(host, token)
    if warning:
        err_console.print(f"[yellow]{warning}[/]")
    web = create_app(
        index_dir, model, max_upload_mb=max_upload_mb, token=token,
        max_concurrent=max_concurrent, max_queued=max_queued, timeout_s=timeout,
    )  # fmt: skip
    where = f"[{host}]" if ":" in host else host
    err_console.print(f"twinsight: http://{where}:{port}/  (Ctrl-C to stop)")
    uvicorn.run(web, host=host, port=port, log_level="warning")
