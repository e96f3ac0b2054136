"""The layer order of DESIGN.md: no module imports one on a higher floor.

data < models < losses < training < index < inference < evaluate < plots < report/demo
< api < cli. Imports inside functions count too (a lazy import is still a dependency).
Checked here: the modules from data up to evaluate (the calculations); modules outside
the chain (errors, validation, io, config, simulate, ...) are not checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import twinsight

FLOORS = [
    ("twinsight.data",),
    ("twinsight.models",),
    ("twinsight.losses",),
    ("twinsight.training",),
    ("twinsight.index",),
    ("twinsight.inference",),
    ("twinsight.evaluate",),
    ("twinsight.plots",),
    ("twinsight.report", "twinsight.demo"),
    ("twinsight.api",),
    ("twinsight.cli",),
]
SRC = Path(twinsight.__file__).parent
CHECKED_UP_TO = 6  # twinsight.evaluate


def floor(module: str) -> int | None:
    for level, prefixes in enumerate(FLOORS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    return None


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts)
        if (level := floor(name)) is not None and level <= CHECKED_UP_TO:
            out.append((name, path))
    return out


def imported(path: Path, module: str) -> set[str]:
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return {n for n in names if n.startswith("twinsight")}


@pytest.mark.parametrize(("module", "path"), modules(), ids=lambda v: str(v))
def test_no_import_from_a_higher_floor(module, path):
    own = floor(module)
    higher = sorted(n for n in imported(path, module) if (f := floor(n)) is not None and f > own)
    assert not higher, f"{module} (floor {own}) imports higher floors: {higher}"
