"""twinsight tune: a tiny Optuna study on digits, pruning, failures, bad input, shared storage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

import twinsight
from twinsight.config import TrainConfig, load_config
from twinsight.tuning import baseline_point

ROOT = Path(__file__).resolve().parents[1]

#: A small, fast space: tiny encoders, a short lr range.
TINY_SPACE = {
    "encoder.options.channels": {"choices": [[8, 16]]},
    "encoder.embedding_dim": {"choices": [16, 32]},
    "optim.lr": {"low": 1e-3, "high": 1e-2, "log": True},
    "trainer.batch_size": {"choices": [64]},
    "loss.name": {"choices": ["multi-similarity", "contrastive"]},
}
TINY_BASE = {"encoder": {"embedding_dim": 16, "options": {"channels": [8, 16]}}, "trainer": {
    "batch_size": 64, "early_stopping": 0}}  # fmt: skip


@pytest.fixture(scope="module")
def digits():
    return twinsight.open_collection("digits")


@pytest.fixture
def space_file(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(TINY_SPACE))
    return path


@pytest.fixture
def base_file(tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(TINY_BASE))
    return path


def _study(out: Path, name: str = "twinsight") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def test_tiny_study_writes_best_yaml_csv_figures(run_cli, tmp_path, space_file):
    """Two 1-epoch trials: best.yaml (taken as is by train --config, with the base config's
    2 epochs rather than the trials' budget of 1), trials.csv, figures."""
    out = tmp_path / "study"
    base_file = tmp_path / "base.yaml"
    base = {**TINY_BASE, "trainer": {**TINY_BASE["trainer"], "epochs": 2}}
    base_file.write_text(yaml.safe_dump(base))
    res = run_cli(
        "tune", "digits", "--out", out, "--trials", "2", "--epochs", "1", "--space", space_file,
        "--config", base_file, "--pruner", "none", "--seed", "3", "--json",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    import json

    summary = json.loads(res.stdout)
    assert summary["trials"] == {"total": 2, "complete": 2, "pruned": 0, "failed": 0}
    assert summary["best"]["value"] > 0.3
    for name in ("best.yaml", "trials.csv", "optimization_history.png", "study.db"):
        assert (out / name).is_file(), name
    assert (out / "intermediate_values.png").is_file()
    assert "params_optim.lr" in (out / "trials.csv").read_text().splitlines()[0]
    best = load_config(out / "best.yaml")
    assert best.trainer.epochs == 2 and best.encoder.options["channels"] == [8, 16]
    assert "1 epochs per trial" in (out / "best.yaml").read_text().splitlines()[0]
    trial_runs = sorted((out / "trials").iterdir())
    assert load_config(trial_runs[0] / "config.yaml").trainer.epochs == 1
    run = run_cli("train", "digits", "--config", out / "best.yaml", "--out", tmp_path / "run")
    assert run.exit_code == 0, run.stderr
    assert (tmp_path / "run" / "model").is_dir()


def test_bad_trials_fail_with_reason_and_never_count_best(digits, tmp_path):
    """A huge lr (NaN or useless) and an unbuildable encoder never become the best trial."""
    space = {**TINY_SPACE, "optim.lr": {"low": 1e-3, "high": 1e3, "log": True},
             "encoder.options.channels": {"choices": [[8, 16], [8, 16, 32, 64, 128]]}}  # fmt: skip
    # Without the projection head lr 1e3 ruins the embedding the loss sees; behind the head
    # it leaves a random-feature network that one epoch of real training may not beat.
    base = {**TINY_BASE, "loss": {"projection": "none"}}
    result = twinsight.tune(
        digits, tmp_path / "study", base, trials=3, epochs=1, space=space, pruner="none",
        enqueue=[{"optim.lr": 1e3}, {"encoder.options.channels": "[8, 16, 32, 64, 128]"}],
        progress=False, retrain_best=True, on="train",
    )  # fmt: skip
    trials = result.study.get_trials()
    huge, unbuildable = trials[1], trials[2]
    assert huge.params["optim.lr"] == 1e3
    assert unbuildable.state == optuna.trial.TrialState.FAIL
    assert "pool" in unbuildable.user_attrs["error"]
    if huge.state == optuna.trial.TrialState.COMPLETE:
        assert huge.value < trials[0].value
    assert result.best_trial == 0 and result.n_failed >= 1
    assert result.to_dict()["trials"]["failed"] == result.n_failed
    assert (result.best_run / "model").is_dir() and result.best_run_score > 0.3


def test_pruner_stops_a_poor_trial_before_the_budget(digits, tmp_path):
    """The median pruner stops a trial with lr 1e-9 after 1 of 3 epochs."""
    space = {**TINY_SPACE, "optim.lr": {"low": 1e-9, "high": 1e-2, "log": True}}
    base = {**TINY_BASE, "optim": {"schedule": "none", "warmup_epochs": 0}}
    result = twinsight.tune(
        digits, tmp_path / "study", base, trials=2, epochs=3, space=space, pruner="median",
        enqueue=[{"optim.lr": 1e-9}], progress=False,
    )  # fmt: skip
    good, poor = result.study.get_trials()
    assert good.state == optuna.trial.TrialState.COMPLETE and len(good.intermediate_values) == 3
    assert poor.state == optuna.trial.TrialState.PRUNED
    assert len(poor.intermediate_values) < 3
    assert result.best_trial == 0 and result.n_pruned == 1


def _other_space_storage(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'other.db'}"
    study = optuna.create_study(study_name="shared", storage=url, direction="maximize")
    study.set_user_attr("signature", {"space": {"optim.lr": {"low": 0.5, "high": 0.9}}})
    return url


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown-field", "unknown key 'optim.lrr'; valid keys here: lr, weight_decay"),
        ("unknown-option", "unknown field 'encoder.options.widthh'"),
        ("empty-range", "empty range"),
        (
            "unreachable",
            "cannot open the study storage 'postgresql+psycopg2://tw:***@127.0.0.1:9/none'",
        ),
        ("exists", "exists; pass --resume"),
        ("other-space", "exists with another search space"),
    ],
)
def test_bad_input_is_one_line_exit_2(run_cli, tmp_path, case, expected):
    out = tmp_path / "study"
    space = tmp_path / "space.yaml"
    entries = {
        "unknown-field": {"optim.lrr": {"low": 1e-4, "high": 1e-2}},
        "unknown-option": {"encoder.options.widthh": {"choices": [8]}},
        "empty-range": {"optim.lr": {"low": 1e-2, "high": 1e-4, "log": True}},
    }.get(case, {"optim.lr": {"low": 1e-4, "high": 1e-2}})
    space.write_text(yaml.safe_dump(entries))
    args = ["tune", "digits", "--out", out, "--space", space, "--trials", "1"]
    if case == "unreachable":
        args += ["--storage", "postgresql+psycopg2://tw:secret@127.0.0.1:9/none"]
    if case == "exists":
        out.mkdir()
    if case == "other-space":
        args += ["--storage", _other_space_storage(tmp_path), "--study-name", "shared"]
    res = run_cli(*args)
    assert res.exit_code == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, res.stderr
    assert expected in " ".join(res.stderr.split()), res.stderr
    assert "secret" not in res.stderr
    if case == "unreachable":
        assert not out.exists()  # nothing left behind: the same command works once fixed
    if case == "other-space":
        assert "space.optim.lr.low: 0.5 -> 0.0001" in " ".join(res.stderr.split())


#: Trials each worker runs (1: both processes create their trial at the same moment).
TRIALS_EACH = 1


def _worker(out: Path, storage: str, seed: int, space: Path, base: Path) -> subprocess.Popen:
    code = "from twinsight.cli import main; main()"
    args = [sys.executable, "-c", code, "tune", "digits", "--out", str(out), "--resume",
            "--storage", storage, "--study-name", "shared", "--trials", str(TRIALS_EACH),
            "--epochs", "1", "--space", str(space), "--config", str(base), "--seed", str(seed),
            "--no-baseline", "--pruner", "none", "--json"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _two_workers_share(tmp_path: Path, storage: str, space: Path, base: Path) -> None:
    out = tmp_path / "study"
    procs = [_worker(out, storage, seed, space, base) for seed in (0, 1)]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr.decode()[-3000:]
    from twinsight.tuning import open_storage

    study = optuna.load_study(study_name="shared", storage=open_storage(storage))
    numbers = sorted(t.number for t in study.trials)
    assert numbers == list(range(2 * TRIALS_EACH))  # the sum, no number given twice
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    runs = sorted(p.name for p in (out / "trials").iterdir())
    assert runs == [f"{n:04d}" for n in numbers]
    assert (out / "best.yaml").is_file()


def test_two_processes_share_one_journal_study(tmp_path, space_file, base_file):
    """Two `twinsight tune` processes at once on one journal file: distinct trials, all kept."""
    _two_workers_share(tmp_path, f"journal://{tmp_path / 'study.log'}", space_file, base_file)


@pytest.mark.skipif(
    not os.environ.get("TWINSIGHT_TEST_POSTGRES_URL"),
    reason="TWINSIGHT_TEST_POSTGRES_URL is not set (.ci/run starts a PostgreSQL and sets it)",
)
def test_two_processes_share_one_postgres_study(tmp_path, space_file, base_file):
    """The same on a real PostgreSQL server: a fresh database per test run."""
    import uuid

    import sqlalchemy

    url = os.environ["TWINSIGHT_TEST_POSTGRES_URL"]
    name = f"tune_{uuid.uuid4().hex[:8]}"
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    _two_workers_share(tmp_path, url.rsplit("/", 1)[0] + f"/{name}", space_file, base_file)


def test_the_baseline_trial_is_the_defaults_learning_rate_included():
    space = {"optim.lr": {"low": 1e-4, "high": 1e-2, "log": True}}
    assert baseline_point(TrainConfig(), space, "labels") == {"optim.lr": 1e-3}
    assert baseline_point(TrainConfig(), space, "params") == {"optim.lr": 3e-3}
    explicit = TrainConfig.model_validate({"optim": {"lr": 5e-3}})
    assert baseline_point(explicit, space, "labels") == {"optim.lr": 5e-3}
