"""The web app of ``twinsight serve``: the JSON API equals the CLI's --json, its limits hold,
schemathesis finds no 500 in it, and a real browser (Debian's chromium) drives the page."""

from __future__ import annotations

import asyncio
import io
import json
import math
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
from astropy.io import fits
from PIL import Image

import twinsight
from twinsight.data.packed import write_packed
from twinsight.models.bundle import ModelBundle
from twinsight.models.encoders import create_encoder

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from twinsight.serve import create_app  # noqa: E402

SIZE = 16
LIBRARY_FIELD_AU = 1000.0
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = Path(tempfile.gettempdir()) / "twinsight-serve.png"  # docs/figures/serve.png


def _blob(mass: float, age: float, rng, size: int = SIZE) -> np.ndarray:
    y, x = np.mgrid[:size, :size] - size / 2
    img = np.exp(-(x**2 + y**2) / (2 * (1 + 3 * mass) ** 2)) * (1 + age / 10)
    return (img + rng.normal(scale=0.02, size=img.shape)).astype(np.float32)


def _png(array: np.ndarray, path: Path) -> Path:
    scaled = 255 * (array - array.min()) / np.ptp(array)
    Image.fromarray(scaled.astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny simulated set with parameters, a random small-cnn model, its index, queries."""
    root = tmp_path_factory.mktemp("serve")
    rng = np.random.default_rng(0)
    rows, images = [], []
    for s in range(12):
        mass, age = rng.uniform(0.1, 2.0), 10 ** rng.uniform(4, 6)
        for p in range(4):
            rows.append({"key": f"sys{s:03d}_p{p}", "system": f"sys{s:03d}", "projection": p,
                         "mass": mass, "age": age})  # fmt: skip
            images.append(_blob(mass, np.log10(age), rng))
    data = write_packed(
        root / "sims.h5", pd.DataFrame(rows), [np.stack(images)], (1, SIZE, SIZE),
        param_columns=["mass", "age"],
    )  # fmt: skip
    torch.manual_seed(0)
    enc = create_encoder("small-cnn", embedding_dim=16, in_channels=1, input_size=(SIZE, SIZE))
    # The model records its library's pixel scale, as a trained one does: the façade asks for
    # it before it looks at the query (see test_a_library_without_a_pixel_scale_...).
    training = {"pixel_scale_au": LIBRARY_FIELD_AU / SIZE}
    ModelBundle.from_encoder(enc, training=training).save(root / "run")
    twinsight.build_index(root / "run", data).save(root / "idx")
    ModelBundle.from_encoder(enc).save(root / "run-bare")
    obs = root / "obs.fits"
    hdu = fits.PrimaryHDU(_blob(0.7, 5.0, rng))
    hdu.header["HIERARCH TRUE_MASS"] = 0.7
    hdu.writeto(obs)
    text = root / "notes.png"
    text.write_text("these are my notes, not an image\n")
    return {
        "root": root,
        "idx": str(root / "idx"),
        "run": str(root / "run"),
        "run_bare": str(root / "run-bare"),
        "data": data,
        "fits": obs,
        "png": _png(_blob(0.7, 5.0, rng, size=24), root / "query.png"),
        "png2": _png(_blob(1.5, 4.2, rng), root / "other.png"),
        "text": text,
    }


@pytest.fixture(scope="module")
def client(world):
    with TestClient(create_app(world["idx"], max_upload_mb=1, max_pixels=1_000_000)) as c:
        yield c


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    """A small simulated set, a model trained on it by this version (so it keeps its
    validation systems, ``model/validation.h5``, for instrument calibration), its index, and
    an archive-like observation: a FITS file with a celestial WCS, beam and noise keys."""
    root = tmp_path_factory.mktemp("sky")
    data = root / "sims.h5"
    twinsight.simulate(data, n_systems=24, n_projections=3, size=32, seed=0, val_fraction=0.25)
    twinsight.train(data, out=root / "run", epochs=1, batch_size=32, embedding_dim=16,
                    progress=False)  # fmt: skip
    twinsight.build_index(root / "run", data).save(root / "idx")
    twinsight.observe(root / "sky.fits", seed=3, size=64, snr=30, beam_fwhm=2)
    return {"root": root, "idx": str(root / "idx"), "fits": root / "sky.fits"}


@pytest.fixture(scope="module")
def sky_client(sky):
    with TestClient(create_app(sky["idx"], max_upload_mb=1)) as c:
        yield c


def _files(path: Path, field: str = "image") -> dict:
    return {field: (path.name, path.read_bytes(), "application/octet-stream")}


def _cli_json(run_cli, monkeypatch, cwd: Path, *args: str) -> dict:
    """The CLI's --json for ARGS, run in ``cwd`` so that queries are named by file name."""
    monkeypatch.chdir(cwd)
    r = run_cli(*args, "--json")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def _same(a, b) -> bool:
    """JSON values equal, NaN (the CLI) matching null (HTTP), floats to 1e-6."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return b is None or (isinstance(b, float) and math.isnan(b))
    if isinstance(a, float) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
    return a == b


# -- the JSON API equals the CLI's --json ---------------------------------------------------------
def test_search_equals_cli(client, world, run_cli, monkeypatch):
    got = client.post("/api/search", files=_files(world["png"]), data={"k": "5"})
    assert got.status_code == 200, got.text
    cli = _cli_json(run_cli, monkeypatch, world["root"], "search", world["idx"], "query.png",
                    "-k", "5")  # fmt: skip
    assert _same(cli, got.json())
    assert got.json()["results"][0]["query"] == "query.png"


def test_match_equals_cli(client, world, run_cli, monkeypatch):
    got = client.post("/api/match", files=_files(world["fits"]), data={"top": "10"})
    assert got.status_code == 200, got.text
    cli = _cli_json(run_cli, monkeypatch, world["root"], "match", world["idx"], "obs.fits",
                    "--top", "10")  # fmt: skip
    assert _same(cli, got.json())
    hist = got.json()["parameters"]["mass"]["histogram"]
    assert len(hist["edges"]) == len(hist["matches"]) + 1 == len(hist["prior"]) + 1


def test_match_of_an_observation_goes_through_the_intake(sky_client, sky, run_cli, monkeypatch):
    """A WCS FITS upload is brought onto the library's grid with the given distance, and the
    answer says what it was calibrated for, what was read, its typicality and warnings."""
    got = sky_client.post("/api/match", files=_files(sky["fits"]), data={"distance": "140"})
    assert got.status_code == 200, got.text
    answer = got.json()
    observation = answer["observation"]
    assert observation["instrument"]["provenance"]["pixel_scale"] == "read"
    assert observation["original"]["distance_from"] == "given"
    assert observation["source"] == "sky.fits"  # the client's name, not the temporary file
    assert answer["calibrated_for"]["key"] == observation["instrument"]["key"]
    assert 0 < answer["typicality"]["p_value"] <= 1 and isinstance(answer["warnings"], list)
    cli = _cli_json(run_cli, monkeypatch, sky["root"], "match", sky["idx"], "sky.fits",
                    "--distance", "140")  # fmt: skip
    assert _same(cli, answer)
    chosen = sky_client.post(
        "/api/match",
        files=_files(sky["fits"]),
        data={"distance": "140", "instrument": "beam=2,snr=30"},
    ).json()
    assert chosen["calibrated_for"]["key"] == "beam2.0x2.0pa0-snr30"
    found = sky_client.post("/api/search", files=_files(sky["fits"]), data={"distance": "140"})
    assert found.status_code == 200, found.text


def test_bad_observation_options_are_one_line(sky_client, sky):
    r = sky_client.post("/api/match", files=_files(sky["fits"]), data={"distance": "-1"})
    assert r.status_code == 400, r.text
    assert r.json() == {"error": "observation 'sky.fits': --distance must be a positive, finite "
                        "number (pc), got -1.0"}  # fmt: skip
    r = sky_client.post("/api/match", files=_files(sky["fits"]), data={"instrument": "beam=x"})
    assert r.status_code == 400 and "beam='x' is not a number" in r.json()["error"]
    r = sky_client.post("/api/search", files=_files(sky["fits"]), data={"distance": "far"})
    assert r.status_code == 422 and r.json()["error"].startswith("distance: ")
    assert "twinsight-upload" not in r.text and "Traceback" not in r.text


def test_a_library_without_a_pixel_scale_still_searches_and_compares_pngs(world, tmp_path):
    bare = twinsight.build_index(world["run_bare"], world["data"])
    assert twinsight.search(bare, str(world["png"]), 3).to_dict()["results"]
    assert twinsight.compare(world["run_bare"], str(world["png"]), str(world["png2"]))


def test_compare_equals_cli(client, world, run_cli, monkeypatch):
    files = _files(world["png"], "image_a") | _files(world["png2"], "image_b")
    got = client.post("/api/compare", files=files)
    assert got.status_code == 200, got.text
    cli = _cli_json(run_cli, monkeypatch, world["root"], "compare", world["run"], "query.png",
                    "other.png")  # fmt: skip
    assert _same(cli, got.json())


def test_search_by_key_is_the_items_own_image(client, world):
    got = client.post("/api/search", data={"key": "sys003_p1", "k": "3"}).json()
    first = got["results"][0]
    assert first["query"] == "sys003_p1"
    assert first["matches"][0]["key"] == "sys003_p1"
    assert first["matches"][0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    facade = twinsight.search(world["idx"], twinsight.open_collection(
        str(world["root"] / "sims.h5")).images(np.array([13])), 3)  # fmt: skip
    assert [m["key"] for m in facade.to_dict()["results"][0]["matches"]] == [
        m["key"] for m in first["matches"]
    ]


def test_items_health_thumbnail_and_unknown_keys(client):
    assert client.get("/api/health").json()["param_columns"] == ["mass", "age"]
    item = client.get("/api/items/sys002_p3").json()
    assert item["system"] == "sys002" and item["projection"] == 3
    thumb = client.get("/api/thumbnail/sys002_p3")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(thumb.content)).size == (SIZE, SIZE)
    for url in ("/api/items/nope", "/api/thumbnail/../../etc/passwd", "/api/items/..%2Fsims.h5"):
        r = client.get(url)
        assert r.status_code == 404 and set(r.json()) == {"error"}
    assert "no item with key 'nope'" in client.get("/api/items/nope").json()["error"]
    r = client.post("/api/search", data={"key": "../sims.h5"})
    assert r.status_code == 404


def test_preview_shows_a_fits_upload(client, world):
    r = client.post("/api/preview", files=_files(world["fits"]))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (SIZE, SIZE)
    assert client.post("/api/preview", files=_files(world["text"])).status_code == 400


def test_jpeg_and_tiff_are_told_by_content_whatever_their_names(client, world, tmp_path):
    img = Image.open(world["png"])
    for fmt, name in (("JPEG", "photo.fits"), ("TIFF", "../../scan.txt")):
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        r = client.post("/api/search", files={"image": (name, buf.getvalue(), "")},
                        data={"k": "2"})  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["query"] == name.rsplit("/", 1)[-1]


# -- errors and limits ----------------------------------------------------------------------------
def test_text_file_renamed_png_is_a_clear_400(client, world):
    r = client.post("/api/search", files=_files(world["text"]))
    assert r.status_code == 400
    assert r.json() == {
        "error": "'notes.png' is not a PNG, JPEG, TIFF or FITS image (its content does not "
        "start like one, whatever its name says)"
    }


def test_bad_options_are_one_line(client, world):
    r = client.post("/api/search", files=_files(world["png"]), data={"k": "0"})
    assert r.status_code == 422 and r.json()["error"].startswith("k: ")
    r = client.post("/api/search", data={"k": "3"})
    assert r.status_code == 400 and "either" in r.json()["error"]
    r = client.post("/api/match", files=_files(world["fits"]), data={"param": "nope"})
    assert r.status_code == 400 and "nope" in r.json()["error"]
    assert "Traceback" not in r.text


def test_upload_over_the_limit_is_413(client):
    big = b"\x89PNG\r\n\x1a\n" + bytes(2 * 2**20)
    r = client.post("/api/search", files={"image": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "1 MiB" in r.json()["error"]


def test_chunked_upload_over_the_limit_is_413(client):
    def chunks():
        for _ in range(20):
            yield bytes(2**17)

    r = client.post("/api/search", content=chunks(),
                    headers={"content-type": "multipart/form-data; boundary=x"})  # fmt: skip
    assert r.status_code == 413


def test_oversized_pixel_count_is_refused(client, world, tmp_path):
    # 2000 x 2000 = 4 MP (over the app's 1 MP) in a tiny, highly compressible PNG
    path = tmp_path / "wide.png"
    Image.new("L", (2000, 2000)).save(path)
    assert path.stat().st_size < 2**20
    r = client.post("/api/search", files=_files(path))
    assert r.status_code == 413 and "4,000,000 pixels" in r.json()["error"]
    # a decompression bomb: far over PIL's own guard, which stays on
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)
    r = client.post("/api/search", files=_files(bomb))
    assert r.status_code == 413 and Image.MAX_IMAGE_PIXELS is not None
    hdu = fits.PrimaryHDU(np.zeros((1001, 1000), dtype=np.uint8))
    buf = io.BytesIO()
    hdu.writeto(buf)
    r = client.post("/api/match", files={"image": ("big.fits", buf.getvalue(), "")})
    assert r.status_code == 413 and "1,001,000 pixels" in r.json()["error"]


def test_token_is_required_when_set(world):
    with TestClient(create_app(world["idx"], token="s3cret")) as c:
        r = c.get("/api/health")
        assert r.status_code == 401 and "token" in r.json()["error"]
        assert c.get("/api/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/api/thumbnail/sys000_p0?token=s3cret").status_code == 200
        assert c.post("/api/search", data={"key": "sys000_p0"}).status_code == 401
        assert c.get("/").status_code == 200  # the page itself holds nothing secret
        assert c.get("/openapi.json").status_code == 200
        assert c.get("/docs").status_code == 404  # Swagger would load from a CDN


def test_concurrency_limit_answers_503_with_retry_after(world, monkeypatch):
    slow = twinsight.api.search

    def search(*args, **kwargs):
        time.sleep(0.8)
        return slow(*args, **kwargs)

    monkeypatch.setattr(twinsight.api, "search", search)
    app = create_app(world["idx"], max_concurrent=1, max_queued=1)

    async def burst():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            calls = [c.post("/api/search", data={"key": "sys000_p0"}) for _ in range(4)]
            return await asyncio.gather(*calls)

    answers = asyncio.run(burst())
    codes = sorted(r.status_code for r in answers)
    assert codes == [200, 200, 503, 503]
    busy = next(r for r in answers if r.status_code == 503)
    assert int(busy.headers["Retry-After"]) >= 1 and "busy" in busy.json()["error"]
    assert app.state.pool.admitted == 0


def test_timeout_answers_504(world, monkeypatch):
    monkeypatch.setattr(twinsight.api, "search", lambda *a, **k: time.sleep(1.0))
    with TestClient(create_app(world["idx"], timeout_s=0.2)) as c:
        r = c.post("/api/search", data={"key": "sys000_p0"})
    assert r.status_code == 504 and "longer than 0.2 s" in r.json()["error"]


def test_uploads_leave_nothing_behind(world, tmp_path, monkeypatch):
    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    with TestClient(create_app(world["idx"], max_upload_mb=1)) as c:
        assert c.post("/api/search", files=_files(world["fits"])).status_code == 200
        assert c.post("/api/match", files=_files(world["png"])).status_code == 200
        assert c.post("/api/search", files=_files(world["text"])).status_code == 400
        big = {"image": ("b.png", b"\x89PNG\r\n\x1a\n" + bytes(3 * 2**20), "")}
        assert c.post("/api/search", files=big).status_code == 413
    assert list(spool.iterdir()) == []


# -- fuzzing: schemathesis against /openapi.json -----------------------------------------------
def test_schemathesis_finds_no_500(world):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    app = create_app(world["idx"], max_upload_mb=1, max_pixels=1_000_000)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures = []
    for operation in schema.get_all_operations():
        op = operation.ok()

        @settings(max_examples=15, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=op.as_strategy())
        def check(case):
            response = case.call()
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.path}: {response.text}")
            if response.status_code >= 400:
                assert set(json.loads(response.text)) == {"error"}, response.text

        check()
    assert not failures, failures[:3]


# -- the command ---------------------------------------------------------------------------------
def test_serve_command_warns_when_open(run_cli, world, monkeypatch):
    import uvicorn

    from twinsight.cli.serve import open_warning

    assert open_warning("127.0.0.1", None) is None and open_warning("0.0.0.0", "t") is None
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(kw, app=app))
    r = run_cli("serve", world["idx"], "--host", "0.0.0.0", "--port", "8123")
    assert r.exit_code == 0, r.stderr
    assert "without --token" in r.stderr and served["host"] == "0.0.0.0"
    assert served["port"] == 8123
    r = run_cli("serve", world["root"] / "nope")
    assert r.exit_code == 2 and "error:" in r.stderr


def test_page_is_self_contained(client):
    import re

    from twinsight.serve.app import STATIC

    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    for path in STATIC.iterdir():
        text = path.read_text()
        urls = set(re.findall(r"https?://[^\s\"'`)]+", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, (path.name, urls)  # no CDN, nothing fetched from elsewhere
        assert client.get(f"/static/{path.name}").status_code == 200


# -- a real browser: Debian's chromium, offline ---------------------------------------------------
OFFLINE_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--no-pings",
    "--metrics-recording-only",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


@contextmanager
def _served(index: str) -> Iterator[str]:
    """The app of ``index`` on uvicorn, on 127.0.0.1 and a free port, in a thread."""
    import socket
    import threading

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(index), host="127.0.0.1", port=port,
                            log_level="warning")  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def live(world):
    with _served(world["idx"]) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium); .ci/run installs it")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=OFFLINE_FLAGS)
        yield b
        b.close()


def _local_page(browser, live: str):
    """A page that may fetch only from ``live``; the list it returns collects the rest."""
    page = browser.new_page(viewport={"width": 1200, "height": 1500})
    outside: list[str] = []

    def only_local(route):
        if route.request.url.startswith(live):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    page.route("**/*", only_local)
    return page, outside


def test_browser_search_match_compare_and_errors(browser, live, world):
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)  # a shared, busy CI machine
    page, outside = _local_page(browser, live)
    page.goto(f"{live}/?k=8")
    expect(page.locator("body[data-ready=true]")).to_have_count(1)
    expect(page.locator("#index-info")).to_contain_text("48 indexed images")

    # a FITS observation: the grid and, per parameter, a histogram against the prior
    page.set_input_files("#query-file", str(world["fits"]))
    expect(page.locator("#results li")).to_have_count(8)
    expect(page.locator("#histograms figure")).to_have_count(2)
    expect(page.locator("#histograms svg rect.matches").first).to_be_visible()
    expect(page.locator("#estimate-table tbody tr")).to_have_count(2)
    expect(page.locator("#estimate-table")).to_contain_text("0.7")  # the truth from the header
    # a FITS file without a WCS is a library-grid image: no intake, clean calibration
    expect(page.locator("#calibrated-for [data-field=instrument]")).to_have_text(
        "clean simulations"
    )
    first = page.locator("#results li button").first
    assert first.locator("img").get_attribute("alt").startswith("Indexed item ")
    expect(first.locator("img")).to_have_js_property("complete", True)
    assert first.locator("img").evaluate("i => i.naturalWidth") == SIZE
    page.wait_for_function("document.getElementById('query-image').naturalWidth > 0")
    assert page.locator("#query-image").evaluate("i => i.naturalWidth") == SIZE  # FITS preview
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # click a result: its neighbours, itself first; the URL can be shared
    key = page.locator("#results li button").nth(2).get_attribute("data-key")
    page.locator("#results li button").nth(2).click()
    expect(page.locator("#results li button").first).to_have_attribute("data-key", key)
    expect(page.locator("#query-name")).to_contain_text(key)
    assert f"key={key}" in page.url and "k=8" in page.url
    shared, _ = _local_page(browser, live)
    shared.goto(page.url)
    expect(shared.locator("#results li button").first).to_have_attribute("data-key", key)
    shared.close()

    # keyboard: arrow keys move between results, Enter searches by one
    page.locator("#results li button").first.focus()
    page.keyboard.press("ArrowRight")
    second = page.locator("#results li button").nth(1).get_attribute("data-key")
    page.keyboard.press("Enter")
    expect(page.locator("#results li button").first).to_have_attribute("data-key", second)

    # compare two images
    page.set_input_files("#compare-a", str(world["png"]))
    page.set_input_files("#compare-b", str(world["png2"]))
    page.click("#compare-form button")
    expect(page.locator("#comparison [data-field=similarity]")).to_have_text(
        f"{twinsight.compare(world['run'], world['png'], world['png2']).similarity:.4f}"
    )

    # a text file renamed .png: one clear line
    page.set_input_files("#query-file", str(world["text"]))
    expect(page.locator("#error")).to_have_text(
        "Error: 'notes.png' is not a PNG, JPEG, TIFF or FITS image (its content does not start "
        "like one, whatever its name says)"
    )
    assert "Traceback" not in page.content()
    assert outside == []
    page.close()


def test_browser_observation_shows_its_instrument(browser, sky, sky_client):
    """The page sends the distance and instrument typed on the match form and shows what the
    estimate was calibrated for, what was read from the file, the p-value and warnings."""
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)
    want = sky_client.post("/api/match", files=_files(sky["fits"]), data={"distance": "140"}).json()
    with _served(sky["idx"]) as live:
        page, outside = _local_page(browser, live)
        page.goto(f"{live}/?k=4")
        expect(page.locator("body[data-ready=true]")).to_have_count(1)
        page.fill("#distance", "140")
        page.set_input_files("#query-file", str(sky["fits"]))
        facts = page.locator("#calibrated-for")
        expect(facts.locator("[data-field=instrument]")).to_contain_text(
            want["calibrated_for"]["key"]
        )
        expect(facts.locator("[data-field=observation]")).to_contain_text("AU/px (read)")
        expect(facts.locator("[data-field=observation]")).to_contain_text("140 pc (given)")
        p_value = want["typicality"]["p_value"]
        expect(facts.locator("[data-field=p-value]")).to_contain_text(
            f"p = {page.evaluate('p => fmt(p)', p_value)}"
        )
        expect(page.locator("#results li")).to_have_count(4)
        assert "distance=140" in page.url

        expect(page.locator("#warnings")).to_be_hidden()
        page.fill("#instrument", "beam=6,snr=30")  # wider than the model was trained through
        page.click("#rerun")
        expect(facts.locator("[data-field=instrument]")).to_contain_text("beam6.0x6.0pa0-snr30")
        expect(page.locator("#warnings")).to_contain_text("outside the trained range")
        page.fill("#instrument", "beam=x")
        page.click("#rerun")
        expect(page.locator("#error")).to_contain_text("beam='x' is not a number")
        assert outside == []
        page.close()
