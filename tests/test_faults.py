"""Fault injection: one writer per output, full disks, kills mid-write, hostile files, signals.

Every case ends in the promised outcome: a one-line error with exit code 2 (or the
signal's 130 / 143), or the correct result; nothing lost, nothing half-written.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from astropy.io import fits
from PIL import Image

from twinsight.data.packed import read_packed, write_packed
from twinsight.errors import TwinsightError
from twinsight.fsutil import atomic_file, output_lock
from twinsight.models.bundle import META_FILE, ModelBundle
from twinsight.models.encoders import create_encoder
from twinsight.runs import _publish, partial_dir

SIZE = 16
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
torch.set_num_threads(1)


def one_line_error(stderr: str) -> bool:
    """The CLI said one thing, an 'error:' line, and no traceback."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return "Traceback" not in stderr and any(line.startswith("error:") for line in lines)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".part" in p.name or ".lock" in p.name)


def _blobs(n: int, rng) -> np.ndarray:
    y, x = np.mgrid[:SIZE, :SIZE] - SIZE / 2
    widths = rng.uniform(1, 4, n)
    imgs = np.exp(-(x**2 + y**2)[None] / (2 * widths[:, None, None] ** 2))
    return (imgs + rng.normal(0, 0.02, imgs.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny packed set (12 systems x 4), a random model saved as a run, and its index."""
    from twinsight.cli import main

    root = tmp_path_factory.mktemp("faults")
    rng = np.random.default_rng(0)
    rows = [
        {"key": f"s{s}p{p}", "system": f"s{s}", "projection": p, "mass": 1.0 + s,
         "split": "test" if s >= 8 else "train"}
        for s in range(12) for p in range(4)
    ]  # fmt: skip
    items = pd.DataFrame(rows)
    data = write_packed(
        root / "sims.h5", items, [_blobs(len(items), rng)], (1, SIZE, SIZE), param_columns=["mass"]
    )
    torch.manual_seed(0)
    enc = create_encoder("small-cnn", embedding_dim=8, in_channels=1, input_size=(SIZE, SIZE))
    ModelBundle.from_encoder(enc).save(root / "run")
    png = root / "query.png"
    Image.fromarray((255 * _blobs(1, rng)[0].clip(0, 1)).astype(np.uint8)).save(png)
    with pytest.raises(SystemExit) as done:
        main(["index", str(root / "run"), str(data), "--out", str(root / "idx")])
    assert done.value.code == 0
    return {"root": root, "data": data, "run": root / "run", "idx": root / "idx", "png": png}


def _cli(*args: str, timeout: float = 120, **kwargs) -> subprocess.Popen:
    code = "import sys; from twinsight.cli import main; main(sys.argv[1:])"
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs,
    )  # fmt: skip


# ================================================================== one writer per output
def test_lock_refuses_a_second_writer_naming_its_pid_and_start(tmp_path):
    out = tmp_path / "out.h5"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import fcntl, os, sys, time
            fd = os.open({str(tmp_path / '.out.h5.lock')!r}, os.O_RDWR | os.O_CREAT)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, f"{{os.getpid()}}\\n2026-12-01 10:00:00 UTC\\n".encode())
            print("ready", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(TwinsightError) as err:
            with output_lock(out):
                pass
        assert f"PID {holder.pid}" in str(err.value) and "2026-12-01 10:00:00" in str(err.value)
        with pytest.raises(TwinsightError, match="another twinsight process"):
            with atomic_file(out) as tmp:
                tmp.write_text("x")
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_note(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".out.lock").write_text(f"{dead.pid}\n2026-12-01 09:00:00 UTC\n")
    caplog.set_level("INFO", logger="twinsight.fsutil")
    with output_lock(tmp_path / "out"):
        assert (tmp_path / ".out.lock").read_text().startswith(str(os.getpid()))
    assert f"from process {dead.pid}" in caplog.text
    assert not (tmp_path / ".out.lock").exists()  # released and removed


def test_publish_under_the_lock_never_replaces_a_run_without_overwrite(tmp_path):
    out, work = tmp_path / "run", partial_dir(tmp_path / "run")
    (out / "model").mkdir(parents=True)
    (work / "model").mkdir(parents=True)
    (work / "model" / "new").write_text("new")
    with pytest.raises(TwinsightError, match="appeared while this run trained"):
        _publish(work, out, overwrite=False)
    assert (work / "model" / "new").is_file() and out.is_dir()  # both kept
    _publish(work, out, overwrite=True)
    assert (out / "model" / "new").is_file() and not work.exists()


def test_two_trainings_on_one_out_exactly_one_succeeds(world, tmp_path):
    """The issue's case: two `train` to the same --out, started together."""
    out = tmp_path / "mix"
    args = ["train", world["data"], "--out", out, "--encoder", "small-cnn", "--epochs", "1",
            "--batch-size", "16", "--no-progress", "--early-stopping", "0"]  # fmt: skip
    procs = [_cli(*args), _cli(*args, "--seed", "3")]
    results = [(p.wait(timeout=240), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    loser = next(r for r in results if r[0] == 2)
    winner = next(p for p, r in zip(procs, results, strict=True) if r[0] == 0)
    assert one_line_error(loser[2]), loser[2]
    assert f"PID {winner.pid}" in loser[2] or "already exists" in loser[2], loser[2]
    for name in ("config.yaml", "checkpoints", "logs", "model", "metrics.json"):
        assert (out / name).exists(), name
    assert not partial_dir(out).exists() and leftovers(tmp_path) == []
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_checkpoint"].startswith(str(out) + os.sep)  # not RUN.partial


# ======================================================================= a full disk
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_while_packing_is_one_line_and_leaves_nothing(run_cli, world, tmp_path):
    import twinsight.data.packed as packed

    real = os.pwrite
    calls = {"n": 0}

    def pwrite(fd, data, offset):  # the disk fills after the first few writes of the file
        calls["n"] += 1
        return _enospc() if calls["n"] > 3 else real(fd, data, offset)

    out = tmp_path / "out.h5"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(packed.os, "pwrite", pwrite)
        res = run_cli("pack", world["data"], out)
    assert res.exit_code == 2 and one_line_error(res.stderr), res.stderr
    assert "disk is full" in res.stderr and str(out) in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["index", "evaluate", "search-plot", "train"])
def test_full_disk_in_each_writer_is_one_line_exit_2(
    run_cli, world, tmp_path, command, monkeypatch
):
    from matplotlib.figure import Figure

    out = tmp_path / "out"
    args = {
        "index": ["index", world["run"], world["data"], "--out", out],
        "evaluate": ["evaluate", world["run"], world["data"], "--out", out],
        "search-plot": ["search", world["idx"], world["png"], "--plot", tmp_path / "s.png"],
        "train": ["train", world["data"], "--out", out, "--encoder", "small-cnn", "--epochs",
                  "1", "--batch-size", "16", "--no-progress"],
    }[command]  # fmt: skip
    monkeypatch.setattr(Path, "write_text", _enospc)
    monkeypatch.setattr(Figure, "savefig", _enospc)
    monkeypatch.setattr(torch, "save", _enospc)
    res = run_cli(*args)
    assert res.exit_code == 2 and one_line_error(res.stderr), res.stderr
    assert "disk is full" in res.stderr
    assert not out.exists() and not (tmp_path / "s.png").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        (errno.EDQUOT, "quota is exceeded"),
        (errno.EROFS, "read-only"),
        (errno.EACCES, "permission denied"),
    ],
)
def test_quota_read_only_and_permission_are_one_line_naming_the_path(
    run_cli, world, tmp_path, monkeypatch, code, advice
):
    def refused(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(Path, "write_text", refused)
    out = tmp_path / "idx"
    res = run_cli("index", world["run"], world["data"], "--out", out)
    assert res.exit_code == 2 and one_line_error(res.stderr), res.stderr
    assert advice in res.stderr and "--out" in res.stderr and str(out) in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _root_can_mount() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs, nearly filled (root only; skipped otherwise)."""
    if not _root_can_mount():
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with open(disk / "filler", "wb") as f:  # leave two pages free
            f.write(b"\0" * (2 * 1024 * 1024 - 8 * 1024))
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)])


FULL_DISK_SCRIPT = """
import sys
from twinsight.cli import main
for args in (["pack", sys.argv[1], sys.argv[2] + "/p.h5"],
             ["simulate", sys.argv[2] + "/s.h5", "--systems", "6", "--projections", "4",
              "--size", "32"]):
    try:
        main(args)
    except SystemExit as exc:
        print("exit", exc.code, flush=True)
"""


def test_real_full_disk_pack_and_simulate_do_not_segfault(small_disk, world):
    """h5py segfaulted (exit 139) when its file filled the disk; now one line, exit 2.

    In a subprocess: a segfault, even at interpreter exit, shows as its return code.
    """
    proc = subprocess.run(
        [sys.executable, "-c", FULL_DISK_SCRIPT, str(world["data"]), str(small_disk)],
        env=ENV, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.split() == ["exit", "2", "exit", "2"], proc.stdout
    assert proc.stderr.count("disk is full") == 2 and "Traceback" not in proc.stderr
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_real_full_disk_index_evaluate_search_train(small_disk, world, run_cli):
    for args in (
        ["index", world["run"], world["data"], "--out", small_disk / "idx"],
        ["evaluate", world["run"], world["data"], "--out", small_disk / "ev"],
        ["search", world["idx"], world["png"], "--plot", small_disk / "s.png"],
        ["train", world["data"], "--out", small_disk / "run", "--encoder", "small-cnn",
         "--epochs", "1", "--batch-size", "16", "--no-progress"],
    ):  # fmt: skip
        res = run_cli(*args)
        assert res.exit_code == 2 and one_line_error(res.stderr), (args, res.stderr)
        assert "disk is full" in res.stderr or "quota" in res.stderr, res.stderr
        left = sorted(p.name for p in small_disk.iterdir())
        assert left in (["filler"], ["filler", "run.partial"]), left
        shutil.rmtree(small_disk / "run.partial", ignore_errors=True)


# ============================================================== a kill mid-checkpoint
KILL_SCRIPT = """
import os, signal, sys
import numpy as np, pandas as pd, torch
import twinsight.training.fitting as fitting
from twinsight.api import train
from twinsight.data.collection import Collection

real_save, calls = torch.save, {"n": 0}
def dying_save(obj, f, *a, **k):
    calls["n"] += 1
    if calls["n"] == 3:  # epoch 1's first checkpoint: write half of it, then die
        import io
        buf = io.BytesIO(); real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2]); f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *a, **k)
fitting.torch.save = dying_save
rng = np.random.default_rng(0)
imgs = rng.random((32, 1, 12, 12)).astype("float32")
imgs[:16, :, 2:6, 2:6] += 1
items = pd.DataFrame({"key": [f"k{i}" for i in range(32)], "label": ["a"] * 16 + ["b"] * 16})
train(Collection.from_arrays(imgs, items, name="tiny"), sys.argv[1], encoder="small-cnn",
      epochs=3, batch_size=16, progress=False, early_stopping=0)
"""


def test_kill_mid_checkpoint_keeps_last_ckpt_and_resume_works(tmp_path, caplog):
    from twinsight.api import train
    from twinsight.data.collection import Collection

    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(out)], env=ENV, capture_output=True, timeout=240
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    ckpts = partial_dir(out) / "checkpoints"
    assert any(".tmp-" in p.name for p in ckpts.iterdir())  # the half-written one, beside
    last = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0  # the previous checkpoint survived the kill
    rng = np.random.default_rng(0)
    imgs = rng.random((32, 1, 12, 12)).astype("float32")
    imgs[:16, :, 2:6, 2:6] += 1
    items = pd.DataFrame({"key": [f"k{i}" for i in range(32)], "label": ["a"] * 16 + ["b"] * 16})
    caplog.set_level("INFO")
    result = train(
        Collection.from_arrays(imgs, items, name="tiny"), out, encoder="small-cnn", epochs=3,
        batch_size=16, progress=False, early_stopping=0, resume=True,
    )  # fmt: skip
    assert result.metrics["epochs_run"] == 3 and out.is_dir()
    assert not any(".tmp-" in p.name for p in (out / "checkpoints").iterdir())
    assert "is gone" in caplog.text  # the stale temporary checkpoint was removed, logged
    logged = pd.read_csv(out / "logs" / "metrics.csv")
    assert 0 in set(logged["epoch"].dropna().astype(int))  # the epoch before the kill is kept
    assert str(partial_dir(out)) not in (out / "metrics.json").read_text()


def test_killed_before_the_first_checkpoint_gets_consistent_advice(world, tmp_path, run_cli):
    out = tmp_path / "run"
    (partial_dir(out) / "logs").mkdir(parents=True)  # what a kill during epoch 0 leaves
    resumed = run_cli("train", world["data"], "--out", out, "--resume", "--epochs", "1")
    assert resumed.exit_code == 2 and "without --resume" in resumed.stderr
    again = run_cli("train", world["data"], "--out", out, "--encoder", "small-cnn",
                    "--epochs", "1", "--batch-size", "16", "--no-progress")  # fmt: skip
    assert again.exit_code == 0, again.stderr  # the command advised works as advised
    assert out.is_dir() and not partial_dir(out).exists()


# ========================================================================= signals
def test_sigint_on_train_exits_130_and_says_how_to_continue(world, tmp_path):
    out = tmp_path / "run"
    proc = _cli("train", world["data"], "--out", out, "--encoder", "small-cnn", "--epochs", "200",
                "--batch-size", "16", "--no-progress", "--early-stopping", "0")  # fmt: skip
    last = partial_dir(out) / "checkpoints" / "last.ckpt"
    deadline = time.time() + 180
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "--resume" in err and "SIGINT" in err
    assert torch.load(last, weights_only=True)["epoch"] >= 0 and not out.exists()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_on_pack_exits_128_plus_n_and_leaves_nothing(
    run_cli, world, tmp_path, monkeypatch, signum, code
):
    import twinsight.data.packed as packed

    real = packed.write_packed

    def terminated_midway(path, items, batches, *args, **kwargs):
        def then_killed():
            yield from batches
            os.kill(os.getpid(), signum)
            yield np.zeros((0, SIZE, SIZE), np.float32)

        return real(path, items, then_killed(), *args, **kwargs)

    monkeypatch.setattr(packed, "write_packed", terminated_midway)
    out = tmp_path / "out.h5"
    res = run_cli("pack", world["data"], out)
    name = signal.Signals(signum).name
    assert res.exit_code == code and name in res.stderr and "Traceback" not in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ============================================================ leftovers of dead processes
def test_stale_part_files_of_dead_processes_are_removed_with_a_log_line(
    run_cli, world, tmp_path, caplog
):
    stale = tmp_path / ".out.h5.99999999.abcd.part"
    stale.write_bytes(b"half")
    stale_dir = tmp_path / ".out.h5.old-99999999"
    stale_dir.mkdir()
    mine = tmp_path / f".other.h5.{os.getpid()}.x.part"  # a live process's: kept
    mine.write_bytes(b"live")
    res = run_cli("pack", world["data"], tmp_path / "out.h5")
    assert res.exit_code == 0, res.stderr
    assert not stale.exists() and not stale_dir.exists() and mine.exists()
    assert "99999999" in res.stderr and "gone" in res.stderr


# ================================================================ hostile and damaged files
def _packed_with(path: Path, edit) -> Path:
    import h5py

    shutil.copy(WORLD_DATA[0], path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


WORLD_DATA: list[Path] = []


@pytest.fixture
def packed_copy(world):
    WORLD_DATA[:] = [Path(world["data"])]
    return _packed_with


def test_packed_images_fewer_rows_than_items_is_refused_at_info(run_cli, tmp_path, packed_copy):
    def shorten(f):
        data = f["images"][:10]
        del f["images"]
        f.create_dataset("images", data=data)

    path = packed_copy(tmp_path / "short.h5", shorten)
    for command in (["info", path], ["pack", path, tmp_path / "o.h5"]):
        res = run_cli(*command)
        assert res.exit_code == 2 and one_line_error(res.stderr), res.stderr
        assert "10 rows" in res.stderr and "48" in res.stderr
    assert not (tmp_path / "o.h5").exists()


@pytest.mark.parametrize("edit", ["version", "dtype", "columns"])
def test_packed_format_version_dtype_and_columns_are_checked(tmp_path, packed_copy, edit):
    def change(f):
        if edit == "version":
            f.attrs["version"] = 7
        elif edit == "dtype":
            del f["images"]
            f.create_dataset("images", data=np.full((48, SIZE, SIZE), b"x", dtype="S1"))
        else:
            f.attrs["columns"] = json.dumps(["key", "nosuch"])

    path = packed_copy(tmp_path / "bad.h5", change)
    with pytest.raises(TwinsightError, match="version 7|dtype|nosuch"):
        read_packed(path)


def test_packed_file_cut_in_half_is_one_line(run_cli, world, tmp_path):
    data = Path(world["data"]).read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    res = run_cli("info", cut)
    assert res.exit_code == 2 and one_line_error(res.stderr), res.stderr
    assert "cut.h5" in res.stderr


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width x height (1-bit): a decompression bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def test_decompression_bomb_is_one_line_naming_file_and_pixels(run_cli, world, tmp_path):
    bomb = _png_claiming(tmp_path / "bomb.png", 40000, 40000)
    for args in (["info", bomb], ["search", world["idx"], bomb]):
        res = run_cli(*args)
        assert res.exit_code == 2 and one_line_error(res.stderr), res.stderr
        assert "bomb.png" in res.stderr and "1,600,000,000 pixels" in res.stderr
        assert "--max-pixels" in res.stderr


def test_max_pixels_raises_the_limit_knowingly_and_warning_range_is_refused(
    run_cli, world, tmp_path, monkeypatch
):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after
    img = tmp_path / "q.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(img)  # 1,600 pixels
    warned = run_cli("--max-pixels", "1000", "search", world["idx"], img)  # PIL's warning range
    assert warned.exit_code == 2 and "1,600 pixels" in warned.stderr, warned.stderr
    ok = run_cli("--max-pixels", "2000", "search", world["idx"], img)
    assert ok.exit_code == 0, ok.stderr


def _fits(path: Path, data: np.ndarray) -> Path:
    fits.PrimaryHDU(data.astype(np.float32)).writeto(path)
    return path


def test_non_finite_pixels_refused_when_mostly_blank_masked_and_counted_when_few(
    run_cli, world, tmp_path, monkeypatch
):
    import twinsight.data.transforms as transforms

    monkeypatch.setattr(transforms, "_masked_before", False)  # the process's first masking
    blank = _fits(tmp_path / "nan.fits", np.full((SIZE, SIZE), np.nan))
    res = run_cli("match", world["idx"], blank)
    assert res.exit_code == 2 and one_line_error(res.stderr) and "NaN" in res.stderr, res.stderr
    image = _blobs(1, np.random.default_rng(3))[0]
    image[0, :3] = np.nan
    few = _fits(tmp_path / "few.fits", image)
    res = run_cli("search", world["idx"], few)
    assert res.exit_code == 0, res.stderr
    assert "masked 3 NaN/inf pixels" in res.stderr


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("preprocessing", "size"), [0, 0], "preprocessing.size.0"),
        (("preprocessing", "size"), "abc", "preprocessing.size"),
        (("preprocessing", "channels"), 5, "preprocessing.channels"),
        (("calibration",), {"scale": "x"}, "calibration.scale"),
    ],
)
def test_hand_edited_twinsight_json_names_the_field(world, tmp_path, path, value, field):
    model = tmp_path / "model"
    shutil.copytree(world["run"], model)
    meta = json.loads((model / META_FILE).read_text())
    target = meta
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    (model / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(TwinsightError) as err:
        ModelBundle.load(model)
    assert f"field '{field}'" in str(err.value) and "\n" not in str(err.value)


def test_index_json_dim_is_checked_against_the_faiss_index(world, tmp_path):
    from twinsight.index import SimilarityIndex

    idx = tmp_path / "idx"
    shutil.copytree(world["idx"], idx)
    meta = json.loads((idx / "index.json").read_text())
    meta["dim"] = 99
    (idx / "index.json").write_text(json.dumps(meta))
    with pytest.raises(TwinsightError, match="'dim' says 99"):
        SimilarityIndex.load(idx)
    meta["dim"] = "abc"
    (idx / "index.json").write_text(json.dumps(meta))
    with pytest.raises(TwinsightError, match="field 'dim'"):
        SimilarityIndex.load(idx)


def test_match_threshold_above_every_similarity_reports_the_real_best(run_cli, world):
    res = run_cli("match", world["idx"], world["png"], "--threshold", "2")
    assert res.exit_code == 2 and one_line_error(res.stderr), res.stderr
    assert "-inf" not in res.stderr and "best similarity among the searched matches: " in res.stderr


def test_full_disk_mid_training_keeps_the_checkpoints_for_resume(tmp_path, monkeypatch, caplog):
    import twinsight.training.fitting as fitting
    from twinsight.api import train
    from twinsight.data.collection import Collection

    real, calls = fitting.torch.save, {"n": 0}

    def filling(obj, f, *args, **kwargs):
        calls["n"] += 1
        return _enospc() if calls["n"] >= 3 else real(obj, f, *args, **kwargs)

    monkeypatch.setattr(fitting.torch, "save", filling)
    rng = np.random.default_rng(0)
    imgs = rng.random((32, 1, 12, 12)).astype("float32")
    items = pd.DataFrame({"key": [f"k{i}" for i in range(32)], "label": ["a", "b"] * 16})
    out = tmp_path / "run"
    caplog.set_level("WARNING")
    with pytest.raises(TwinsightError, match="disk is full"):
        train(Collection.from_arrays(imgs, items, name="tiny"), out, encoder="small-cnn",
              epochs=3, batch_size=16, progress=False, early_stopping=0)  # fmt: skip
    last = partial_dir(out) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0 and "--resume" in caplog.text
    assert not any(".tmp-" in p.name for p in last.parent.iterdir()) and not out.exists()
