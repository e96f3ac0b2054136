"""Targets: parameter normalization, similarity kernels, class targets and pair lists."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from twinsight.data.params import (
    ParameterNormalizer,
    class_similarity,
    parameter_similarity,
    read_pairs,
)
from twinsight.errors import TwinsightError


@pytest.fixture
def items() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "key": ["a", "b", "c", "d"],
            "mass": [1.0, 2.0, 3.0, 4.0],
            "age": [1e3, 1e4, 1e5, 1e6],
            "flag": ["x", "y", "z", "w"],
            "const": [5.0, 5.0, 5.0, 5.0],
        }
    )


# ------------------------------------------------------------------------------- normalizer
def test_zscore_with_log10(items):
    norm = ParameterNormalizer.fit(items, ["mass", "age"], log10=["age"])
    z = norm.transform(items)
    assert z.dtype == np.float32 and z.shape == (4, 2)
    mass = np.array([1, 2, 3, 4.0])
    expected_mass = (mass - mass.mean()) / mass.std()
    logage = np.array([3, 4, 5, 6.0])
    np.testing.assert_allclose(z[:, 0], expected_mass, rtol=1e-6)
    np.testing.assert_allclose(z[:, 1], (logage - 4.5) / logage.std(), rtol=1e-6)
    np.testing.assert_allclose(norm.inverse_transform(z), items[["mass", "age"]], rtol=1e-5)


def test_minmax_maps_training_range_to_unit_interval(items):
    norm = ParameterNormalizer.fit(items, ["mass"], method="minmax")
    np.testing.assert_allclose(norm.transform(items)[:, 0], [0, 1 / 3, 2 / 3, 1], rtol=1e-6)
    new = pd.DataFrame({"mass": [7.0]})  # outside the fitted range: extrapolates
    assert norm.transform(new)[0, 0] == pytest.approx(2.0)


def test_statistics_come_from_fitting_data_only(items):
    norm = ParameterNormalizer.fit(items.iloc[:2], ["mass"])
    assert norm.offset == [1.5] and norm.scale == [0.5]
    np.testing.assert_allclose(norm.transform(items)[:, 0], [-1, 1, 3, 5])


def test_dict_roundtrip_through_json(items):
    norm = ParameterNormalizer.fit(items, ["mass", "age"], log10=["age"], method="minmax")
    again = ParameterNormalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert again == norm
    np.testing.assert_array_equal(again.transform(items), norm.transform(items))


def test_accepts_a_collection(items):
    from twinsight.data.collection import Collection

    coll = Collection.from_arrays(np.zeros((4, 2, 2)), items, name="c", param_columns=["mass"])
    norm = ParameterNormalizer.fit(coll, ["mass"])
    assert norm.transform(coll).shape == (4, 1)


def test_missing_column_lists_available(items):
    with pytest.raises(TwinsightError) as err:
        ParameterNormalizer.fit(items, ["mass", "radius"])
    assert "'radius'" in str(err.value) and "'mass'" in str(err.value) and "'age'" in str(err.value)


def test_non_numeric_column_names_row_and_value(items):
    with pytest.raises(TwinsightError, match=r"'flag', row 1 \(key 'a'\): value 'x' is not"):
        ParameterNormalizer.fit(items, ["flag"])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_names_column_and_row(items, bad):
    items.loc[2, "mass"] = bad
    with pytest.raises(TwinsightError, match=r"'mass', row 3 \(key 'c'\).*not finite"):
        ParameterNormalizer.fit(items, ["mass"])


def test_constant_column_under_zscore(items):
    with pytest.raises(TwinsightError) as err:
        ParameterNormalizer.fit(items, ["mass", "const"])
    msg = str(err.value)
    assert "'const' is constant" in msg and "drop it" in msg and "min-max" in msg


def test_constant_column_under_minmax_too(items):
    with pytest.raises(TwinsightError, match="'const' is constant"):
        ParameterNormalizer.fit(items, ["const"], method="minmax")


def test_log10_of_non_positive(items):
    items.loc[1, "mass"] = 0.0
    with pytest.raises(TwinsightError, match=r"'mass', row 2 \(key 'b'\): log10 needs positive"):
        ParameterNormalizer.fit(items, ["mass"], log10=["mass"])


def test_log10_column_must_be_a_parameter(items):
    with pytest.raises(TwinsightError, match=r"log10 column\(s\) \['age'\]"):
        ParameterNormalizer.fit(items, ["mass"], log10=["age"])


def test_unknown_method(items):
    with pytest.raises(TwinsightError, match="unknown normalization 'robust'"):
        ParameterNormalizer.fit(items, ["mass"], method="robust")


def test_transform_checks_new_data(items):
    norm = ParameterNormalizer.fit(items, ["mass", "age"], log10=["age"])
    with pytest.raises(TwinsightError, match="'age'.*do not exist"):
        norm.transform(items[["mass"]])
    bad = items.copy()
    bad.loc[3, "age"] = -1.0
    with pytest.raises(TwinsightError, match="log10 needs positive"):
        norm.transform(bad)


def test_from_dict_validation():
    with pytest.raises(TwinsightError, match=r"missing \['scale'\]"):
        ParameterNormalizer.from_dict({"columns": ["a"], "method": "zscore", "offset": [0]})
    with pytest.raises(TwinsightError, match="positive scales"):
        ParameterNormalizer.from_dict(
            {"columns": ["a"], "method": "zscore", "offset": [0.0], "scale": [0.0]}
        )
    with pytest.raises(TwinsightError, match="1 columns but 2 offsets"):
        ParameterNormalizer.from_dict(
            {"columns": ["a"], "method": "zscore", "offset": [0.0, 1.0], "scale": [1.0]}
        )


# ------------------------------------------------------------------------------ similarities
def test_cosine_similarity_seed_formula():
    za = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)
    zb = np.array([[1.0, 0.0], [-2.0, 0.0], [0.0, 3.0]], np.float32)
    sim = parameter_similarity(za, zb)
    assert sim.shape == (2, 3) and sim.dtype == np.float32
    np.testing.assert_allclose(sim[0], [1.0, 0.0, 0.5], atol=1e-7)
    np.testing.assert_allclose(sim[1], [0.5, 0.5, 0.5])  # a zero vector has cosine 0


def test_cosine_matches_direct_formula():
    rng = np.random.default_rng(1)
    za, zb = rng.normal(size=(5, 7)), rng.normal(size=(4, 7))
    sim = parameter_similarity(za, zb, kernel="cosine")
    i, j = 3, 2
    cos = za[i] @ zb[j] / np.linalg.norm(za[i]) / np.linalg.norm(zb[j])
    assert sim[i, j] == pytest.approx((cos + 1) / 2)
    assert sim.dtype == np.float64


def test_rbf_similarity_width_is_per_parameter():
    za = np.zeros((1, 4))
    zb = np.array([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    sim = parameter_similarity(za, zb, kernel="rbf", width=1.0)
    # |d|^2 = 4, P = 4, width 1 -> exp(-4 / 8)
    np.testing.assert_allclose(sim[0], [np.exp(-0.5), 1.0])
    wide = parameter_similarity(za, zb, kernel="rbf", width=2.0)
    assert wide[0, 0] == pytest.approx(np.exp(-4 / 32))


def test_similarity_bad_inputs():
    with pytest.raises(TwinsightError, match="different numbers of parameters: 2 vs 3"):
        parameter_similarity(np.zeros((1, 2)), np.zeros((1, 3)))
    with pytest.raises(TwinsightError, match="unknown similarity kernel 'l1'"):
        parameter_similarity(np.zeros((1, 2)), np.zeros((1, 2)), kernel="l1")
    with pytest.raises(TwinsightError, match="width must be a positive number"):
        parameter_similarity(np.zeros((1, 2)), np.zeros((1, 2)), kernel="rbf", width=0)


def test_class_similarity():
    sim = class_similarity(["a", "b", "a"], ["a", "c"])
    np.testing.assert_array_equal(sim, [[1, 0], [0, 0], [1, 0]])
    assert sim.dtype == np.float32


# ------------------------------------------------------------------------------------- pairs
def test_read_pairs(tmp_path):
    (tmp_path / "img").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "img" / name).write_bytes(b"x")
    (tmp_path / "pairs.csv").write_text(
        f"path_a,path_b,label\nimg/a.png,img/b.png,1\nimg/b.png,{tmp_path}/img/a.png,0\n"
    )
    pairs = read_pairs(tmp_path / "pairs.csv")
    assert list(pairs.columns) == ["path_a", "path_b", "label"]
    assert pairs["label"].tolist() == [1, 0]
    assert pairs["path_a"][0] == str(tmp_path / "img" / "a.png")


def test_read_pairs_bad_inputs(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(TwinsightError, match="does not exist"):
        read_pairs(tmp_path / "none.csv")
    (tmp_path / "p.csv").write_text("a,b,label\na.png,a.png,1\n")
    with pytest.raises(TwinsightError, match=r"lacks column\(s\) \['path_a', 'path_b'\]"):
        read_pairs(tmp_path / "p.csv")
    (tmp_path / "p.csv").write_text("path_a,path_b,label\na.png,a.png,1\na.png,a.png,2\n")
    with pytest.raises(TwinsightError, match="line 3: label '2' must be 0"):
        read_pairs(tmp_path / "p.csv")
    (tmp_path / "p.csv").write_text("path_a,path_b,label\na.png,gone.png,1\n")
    with pytest.raises(TwinsightError, match="line 2, column 'path_b': 'gone.png' does not"):
        read_pairs(tmp_path / "p.csv")
    (tmp_path / "p.csv").write_text("path_a,path_b,label\n")
    with pytest.raises(TwinsightError, match="no rows"):
        read_pairs(tmp_path / "p.csv")
