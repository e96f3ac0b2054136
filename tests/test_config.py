"""Training configuration: validation, YAML errors, overrides, hashing."""

from __future__ import annotations

import pytest
import yaml

from twinsight.config import (
    TrainConfig,
    apply_overrides,
    config_differences,
    config_hash,
    config_to_yaml,
    hashed_part,
    load_config,
    validate_config,
)
from twinsight.errors import TwinsightError


def test_defaults_and_yaml_round_trip(tmp_path):
    cfg = apply_overrides(TrainConfig(), {"epochs": 3, "encoder": "seed-cnn", "margin": 0.4})
    assert cfg.trainer.epochs == 3
    assert cfg.encoder.name == "seed-cnn"
    assert cfg.loss.options == {"margin": 0.4}
    path = tmp_path / "c.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_config(path) == cfg


def test_misspelt_key_is_named_with_valid_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  epoch: 3\n")
    with pytest.raises(TwinsightError) as err:
        load_config(path)
    msg = str(err.value)
    assert "trainer.epoch" in msg and "c.yaml" in msg
    assert "epochs" in msg and "batch_size" in msg  # the valid keys are listed


def test_unknown_section_and_bad_value():
    with pytest.raises(TwinsightError, match="unknown key 'trainr'"):
        validate_config({"trainr": {}})
    with pytest.raises(TwinsightError, match=r"trainer.epochs.*-1"):
        validate_config({"trainer": {"epochs": -1}})
    with pytest.raises(TwinsightError, match="data.targets"):
        validate_config({"data": {"targets": "classes"}})
    with pytest.raises(TwinsightError, match="expected a mapping"):
        validate_config([1, 2])  # type: ignore[arg-type]


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trainer:\n  epochs: 3\n  batch_size: [1, 2\n")
    with pytest.raises(TwinsightError) as err:
        load_config(path)
    assert "bad.yaml" in str(err.value) and "line" in str(err.value)
    with pytest.raises(TwinsightError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_skip_none_and_reject_unknown():
    cfg = apply_overrides(TrainConfig(), {"epochs": None, "lr": 0.01, "optim.weight_decay": 0.0})
    assert cfg.trainer.epochs == TrainConfig().trainer.epochs
    assert cfg.optim.lr == 0.01 and cfg.optim.weight_decay == 0.0
    with pytest.raises(TwinsightError, match="unknown training option 'epoch'"):
        apply_overrides(TrainConfig(), {"epoch": 3})
    with pytest.raises(TwinsightError, match="batch_size"):
        apply_overrides(TrainConfig(), {"batch_size": 1})


def test_hash_ignores_runtime_and_names_differences():
    base = TrainConfig()
    moved = apply_overrides(base, {"devices": "2", "num_workers": 4, "progress": False})
    assert config_hash(moved) == config_hash(base)
    changed = apply_overrides(base, {"lr": 0.5, "epochs": 7})
    assert config_hash(changed) != config_hash(base)
    diffs = config_differences(hashed_part(base), hashed_part(changed))
    assert any(d.startswith("optim.lr:") and "0.5" in d for d in diffs)
    assert any(d.startswith("trainer.epochs:") for d in diffs)
    assert len(diffs) == 2
    assert "runtime" in yaml.safe_load(config_to_yaml(base))  # printed, but not hashed
    assert "runtime" not in hashed_part(base)
