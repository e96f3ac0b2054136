"""Every Python block of the README runs, as a new user would paste it, using only the façade."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_block_uses_only_the_facade(code):
    imports = re.findall(r"^\s*(?:from|import)\s+(\S+)", code, re.M)
    assert imports and all(name == "twinsight" for name in imports), imports
    assert not re.search(r"^\s*from twinsight", code, re.M)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_block_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md python block in {tmp_path}", "exec"), {"__name__": "readme"})
