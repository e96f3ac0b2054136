"""Scalar checks: one message format naming the parameter, the expectation and the value."""

from __future__ import annotations

import numpy as np
import pytest

from twinsight.errors import TwinsightError
from twinsight.validation import check_positive_int, check_scalar


def test_positive_int_accepts_python_and_numpy_integers():
    assert check_positive_int(3, "batch_size") == 3
    value = check_positive_int(np.int64(7), "batch_size")
    assert value == 7 and type(value) is int
    assert check_positive_int(np.uint8(1), "k") == 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "batch_size must be an integer >= 1, got 0"),
        (-2, "batch_size must be an integer >= 1, got -2"),
        (np.int32(0), "batch_size must be an integer >= 1, got "),
        (True, r"batch_size must be an integer >= 1, got True \(bool\)"),
        (2.0, r"batch_size must be an integer >= 1, got 2.0 \(float\)"),
        ("4", r"batch_size must be an integer >= 1, got '4' \(str\)"),
        (None, r"batch_size must be an integer >= 1, got None \(NoneType\)"),
    ],
)
def test_positive_int_refusals_name_parameter_expectation_and_value(value, message):
    with pytest.raises(TwinsightError, match=message):
        check_positive_int(value, "batch_size")


def test_check_scalar_bounds_and_types():
    assert check_scalar(16, "image size", int, min_val=16) == 16
    with pytest.raises(TwinsightError, match="image size must be an integer >= 16, got 15"):
        check_scalar(15, "image size", int, min_val=16)
    assert check_scalar(1, "fraction", float, min_val=0, max_val=1) == 1.0
    assert type(check_scalar(np.float32(0.5), "fraction", float)) is float
    with pytest.raises(TwinsightError, match=r"fraction must be a number in \(0, 1\], got 0"):
        check_scalar(0, "fraction", float, min_val=0, max_val=1, include_boundaries="right")
    with pytest.raises(TwinsightError, match="width must be a number > 0, got nan"):
        check_scalar(float("nan"), "width", float, min_val=0, include_boundaries="neither")
    with pytest.raises(TwinsightError, match="level must be a number < 1, got 1"):
        check_scalar(1, "level", float, max_val=1, include_boundaries="left")
    assert check_scalar("cosine", "kernel", str) == "cosine"
    with pytest.raises(TwinsightError, match=r"kernel must be of type str, got 3 \(int\)"):
        check_scalar(3, "kernel", str)
    with pytest.raises(TwinsightError, match="include_boundaries must be one of"):
        check_scalar(1, "x", int, min_val=0, include_boundaries="open")
