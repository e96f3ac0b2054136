"""What every benchmark script shares: rewriting its own section of BENCHMARKS.md."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
from pathlib import Path
from typing import Any

from twinsight.fsutil import write_text_atomic

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def update_section(text: str, path: Path = BENCHMARKS) -> Path:
    """Replace the section whose heading is ``text``'s first line (or append it), atomically.

    The rest of the file is left as it is; a section runs up to the next ``## `` heading.
    """
    heading = text.splitlines()[0]
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    section = text.rstrip("\n") + "\n\n"
    if pattern.search(old):
        new = pattern.sub(lambda _: section, old, count=1)
    else:
        new = old.rstrip("\n") + "\n\n" + section
    return write_text_atomic(path, new.rstrip("\n") + "\n")


def machine(**extra: Any) -> dict[str, Any]:
    """The date, the machine, its CPUs and load now, then ``extra`` (library versions...)."""
    return {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "cpus": os.cpu_count(),
        "load": round(os.getloadavg()[0], 2),
        **extra,
    }


def publish(text: str, figures: dict[str, Any], *, write: bool = True) -> None:
    """Print the section, update BENCHMARKS.md with it (when ``write``), then the figures as
    one JSON object: every benchmark's last line."""
    print(text)
    if write:
        update_section(text)
    print(json.dumps(figures))
