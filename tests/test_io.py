"""JSON output: numpy and torch values become plain JSON; anything else is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from twinsight.io import dumps, json_default, write_json


def test_numpy_torch_and_paths_become_plain_json():
    data = {
        "f32": np.float32(0.5),
        "i64": np.int64(3),
        "flag": np.bool_(True),
        "array": np.arange(3),
        "tensor": torch.tensor([1.5, 2.0]),
        "path": Path("runs/a"),
        "nan": float("nan"),
    }
    back = json.loads(dumps(data))
    assert back["f32"] == 0.5 and back["i64"] == 3 and isinstance(back["i64"], int)
    assert back["flag"] is True and back["array"] == [0, 1, 2] and back["tensor"] == [1.5, 2.0]
    assert back["path"] == "runs/a" and np.isnan(back["nan"])


def test_unknown_values_are_refused_unless_lenient():
    with pytest.raises(TypeError, match="object is not JSON-serializable"):
        json_default(object())
    with pytest.raises(TypeError):
        dumps({"x": {1, 2}})
    assert json.loads(dumps({"x": {1}}, lenient=True)) == {"x": "{1}"}


def test_write_json_is_indented_with_a_final_newline(tmp_path):
    path = write_json(tmp_path / "m.json", {"a": np.float64(1.0)})
    text = path.read_text()
    assert text.endswith("}\n") and '\n  "a": 1.0' in text
