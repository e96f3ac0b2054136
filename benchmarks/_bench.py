"""What every benchmark script shares: rewriting its own section of BENCHMARKS.md."""

from __future__ import annotations

import re
from pathlib import Path

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
