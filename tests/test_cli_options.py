"""`twinsight train`'s options are generated from the pydantic config: one option, one place."""

from __future__ import annotations

import yaml

from twinsight.config import OVERRIDES, override_fields


def test_every_training_option_comes_from_the_config(run_cli):
    res = run_cli("train", "--help")
    assert res.exit_code == 0
    text = " ".join(res.stdout.split())
    for field in override_fields():
        flag = f"--{field.name.replace('_', '-')}" if field.type is not bool else f"--{field.name}"
        assert flag in text, flag
    assert len(override_fields()) == len(OVERRIDES)


def test_help_shows_the_field_description_and_choices(run_cli):
    text = " ".join(run_cli("train", "--help").stdout.split()).replace("│ ", "")
    assert "learning-rate schedule" in text.lower()
    assert "cosine | plateau | none" in text


def test_generated_options_reach_the_config(run_cli):
    res = run_cli(
        "train", "--print-config", "--epochs", "3", "--lr", "0.01", "--params", "a,b",
        "--log10", "none", "--no-progress", "--margin", "0.4",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    cfg = yaml.safe_load(res.stdout)
    assert cfg["trainer"]["epochs"] == 3
    assert cfg["optim"]["lr"] == 0.01
    assert cfg["data"]["params"] == ["a", "b"]
    assert cfg["data"]["log10"] == []
    assert cfg["runtime"]["progress"] is False
    assert cfg["loss"]["options"] == {"margin": 0.4}


def test_a_bad_generated_option_is_one_line(run_cli):
    res = run_cli("train", "--print-config", "--schedule", "sideways")
    assert res.exit_code == 2
    assert "schedule" in res.stderr and "Traceback" not in res.stderr
