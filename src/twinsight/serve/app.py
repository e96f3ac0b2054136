"""The FastAPI app of ``twinsight serve``: HTTP in front of the façade, nothing more.

Every answer of the JSON API is the result's ``to_dict()``, i.e. the CLI's ``--json``
of the same command (with the query named after the uploaded file or the key, and
non-finite numbers as ``null``). Errors are one line, ``{"error": "..."}``, with a 4xx
status; a stack trace never reaches the client, nor the server's temporary file names.

An uploaded FITS file with a celestial WCS is an observation: ``/api/search`` and
``/api/match`` bring it onto the library's grid through the intake
(:func:`twinsight.intake.read_observation`) as ``twinsight match`` does, with the same
optional fields (``distance`` pc, ``pixel_scale`` AU/px, ``beam``, ``noise``); ``/api/match``
also takes ``instrument`` (``beam=2,snr=30``) to calibrate for.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from twinsight import __version__, api
from twinsight.errors import TwinsightError
from twinsight.serve.limits import BodyLimit, Busy, JobPool, TokenGuard, TooSlow
from twinsight.serve.service import Service, UnknownKey, jsonable, to_png
from twinsight.serve.uploads import Upload, UploadTooLarge, named_errors, stored

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
MAX_K = 10_000
ImageFile = Annotated[UploadFile | None, File(description="PNG, JPEG, TIFF or FITS image")]
Key = Annotated[str | None, Form(max_length=1000, description="key of an indexed item")]
Distance = Annotated[float | None, Form(description="distance of the observed source, pc")]
PixelScale = Annotated[float | None, Form(description="pixel scale of the upload, AU per pixel")]
BeamText = Annotated[str | None, Form(max_length=100, description="beam FWHM, e.g. 0.1arcsec")]
Noise = Annotated[float | None, Form(description="noise sigma of the upload, in its units")]
InstrumentText = Annotated[
    str | None, Form(max_length=200, description="instrument to calibrate for, e.g. beam=2,snr=30")
]


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one shape of every error: ``{"error": "one line"}``."""
    line = " ".join(str(message).split())
    return JSONResponse({"error": line}, status_code=status, headers=headers)


def create_app(
    index: Any,
    model: Any = None,
    *,
    max_upload_mb: float = 20,
    token: str | None = None,
    max_concurrent: int = 4,
    max_queued: int = 16,
    timeout_s: float = 60.0,
    max_pixels: int = 40_000_000,
) -> FastAPI:
    """The web app for one index (a SimilarityIndex or its folder) and its model.

    ``model`` defaults to the one the index records. Uploads are limited to
    ``max_upload_mb`` MiB per request and ``max_pixels`` pixels per image; at most
    ``max_concurrent`` model jobs run at once and ``max_queued`` wait (then 503); a job
    running past ``timeout_s`` is answered 504. With ``token`` set, every ``/api``
    request needs it.
    """
    service = Service(index, model)
    pool = JobPool(max_concurrent, max_queued, timeout_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        pool.shutdown()

    app = FastAPI(
        lifespan=lifespan,
        docs_url=None,  # FastAPI's Swagger and ReDoc pages load from a CDN: the schema is enough
        redoc_url=None,
        title="twinsight",
        version=__version__,
        description="Reverse image search, best-match parameters and verification.",
    )
    app.state.service, app.state.pool, app.state.max_pixels = service, pool, max_pixels
    _add_error_handlers(app)
    _add_routes(app, service, pool, max_pixels)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(BodyLimit, max_bytes=int(max_upload_mb * 2**20))
    app.add_middleware(TokenGuard, token=token)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UnknownKey)
    async def _unknown(_: Request, exc: UnknownKey) -> JSONResponse:
        return error(404, str(exc))

    @app.exception_handler(UploadTooLarge)
    async def _too_large(_: Request, exc: UploadTooLarge) -> JSONResponse:
        return error(413, str(exc))

    @app.exception_handler(TwinsightError)
    async def _user_error(_: Request, exc: TwinsightError) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(Busy)
    async def _busy(_: Request, exc: Busy) -> JSONResponse:
        return error(503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(TooSlow)
    async def _slow(_: Request, exc: TooSlow) -> JSONResponse:
        return error(504, str(exc))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, validation_message(exc))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("error while answering %s %s", request.method, request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); see the server's log")


def validation_message(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one line: ``k: Input should be ... ; top: ...``."""
    parts = []
    for e in exc.errors()[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else e.get("msg", "invalid"))
    return "; ".join(parts) or "invalid request"


async def _read(upload: UploadFile | None) -> Upload | None:
    if upload is None:
        return None
    return Upload(upload.filename or "upload", await upload.read())


def _one_source(upload: Upload | None, key: str | None, what: str) -> None:
    if (upload is None) == (key is None or key == ""):
        raise TwinsightError(f"give either an uploaded {what} or a key, not both or neither")


def _query(service: Service, paths: dict[str, Path], field: str, key: str | None) -> Any:
    """The query for the façade: the stored upload's path, or the indexed item's image."""
    return str(paths[field]) if field in paths else service.item_image(key or "")


def intake_options(
    distance: float | None, pixel_scale: float | None, beam: str | None, noise: float | None
) -> dict[str, Any]:
    """The intake's optional fields as façade keywords (an empty field is not given)."""
    return {"distance": distance, "pixel_scale": pixel_scale, "beam": beam or None,
            "noise": noise}  # fmt: skip


# -- the jobs the worker threads run (façade calls inside a temporary folder) -------------------
def search_job(
    service: Service,
    upload: Upload | None,
    key: str | None,
    k: int,
    max_pixels: int,
    intake: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``twinsight search --json`` for one uploaded image or indexed item (an observation
    brought onto the library's grid with the ``intake`` options first)."""
    uploads = {"image": upload} if upload else {}
    with stored(uploads, max_pixels) as paths, named_errors(paths, uploads):
        result = api.search(
            service.index,
            _query(service, paths, "image", key),
            k,
            model=service.bundle,
            **(intake or {}),
        )
    result.query_names = [upload.display_name if upload else str(key)]
    return result.to_dict()


def match_job(
    service: Service,
    upload: Upload | None,
    key: str | None,
    options: dict[str, Any],
    max_pixels: int,
) -> dict[str, Any]:
    """``twinsight match --json`` for one uploaded image or indexed item: with it what the
    estimate was calibrated for, what the intake read from the file, its typicality and
    warnings (:meth:`~twinsight.inference.ParameterEstimate.to_dict`)."""
    uploads = {"image": upload} if upload else {}
    with stored(uploads, max_pixels) as paths, named_errors(paths, uploads):
        estimate = api.match(
            service.index, _query(service, paths, "image", key), model=service.bundle, **options
        )
    if isinstance(estimate, list):
        raise TwinsightError(f"match takes one image; the upload holds {len(estimate)}")
    estimate.query = upload.display_name if upload else str(key)
    if upload and estimate.observation is not None:
        estimate.observation["source"] = upload.display_name  # never the temporary file
    return estimate.to_dict()


def compare_job(
    service: Service, sides: dict[str, tuple[Upload | None, str | None]], max_pixels: int
) -> dict[str, Any]:
    """``twinsight compare --json`` for two images, each uploaded or an indexed item."""
    uploads = {name: up for name, (up, _) in sides.items() if up is not None}
    with stored(uploads, max_pixels) as paths, named_errors(paths, uploads):
        a, b = (_query(service, paths, name, key) for name, (_, key) in sides.items())
        result = api.compare(service.bundle, a, b)
    return result.to_dict()


def preview_job(service: Service, upload: Upload, max_pixels: int) -> bytes:
    """A PNG of an uploaded image as the readers see it (a browser cannot show FITS or TIFF)."""
    with stored({"image": upload}, max_pixels) as paths:
        images = api.open_collection(str(paths["image"])).images()
    if len(images) == 0:
        raise TwinsightError(f"'{upload.display_name}' holds no image")
    return to_png(images[0], max_px=256)


# -- routes --------------------------------------------------------------------------------------
def _add_routes(app: FastAPI, service: Service, pool: JobPool, max_pixels: int) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/health")
    async def health() -> JSONResponse:
        """The index and model served, and their sizes."""
        return JSONResponse(jsonable(service.describe() | {"version": __version__}))

    @app.get("/api/items/{key:path}")
    async def item(key: str) -> JSONResponse:
        """One row of the index's items table (404 for a key it does not hold)."""
        return JSONResponse(service.item(key))

    @app.get("/api/thumbnail/{key:path}", response_class=Response)
    async def thumbnail(key: str) -> Response:
        """A PNG of the indexed image of ``key``, from the index's source collection."""
        png = await run_in_threadpool(service.thumbnail, key)
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.post("/api/preview", response_class=Response)
    async def preview(image: Annotated[UploadFile, File()]) -> Response:
        """A PNG of an uploaded image (min-max stretched), for the page to show the query."""
        upload = await _read(image)
        png = await pool.run(preview_job, service, upload, max_pixels)
        return Response(png, media_type="image/png")

    @app.post("/api/search")
    async def search(
        image: ImageFile = None,
        key: Key = None,
        k: Annotated[int, Form(ge=1, le=MAX_K)] = 10,
        distance: Distance = None,
        pixel_scale: PixelScale = None,
        beam: BeamText = None,
        noise: Noise = None,
    ) -> JSONResponse:
        """The k most similar indexed items of an uploaded image, or of an indexed item.

        An observation (FITS with a celestial WCS) is brought onto the library's grid first.
        """
        upload = await _read(image)
        _one_source(upload, key, "image")
        intake = intake_options(distance, pixel_scale, beam, noise)
        result = await pool.run(search_job, service, upload, key, k, max_pixels, intake)
        return JSONResponse(jsonable(result))

    @app.post("/api/match")
    async def match(
        image: ImageFile = None,
        key: Key = None,
        top: Annotated[int | None, Form(ge=1, le=MAX_K)] = None,
        threshold: Annotated[float | None, Form(ge=-1, le=1)] = None,
        weighting: Annotated[Literal["uniform", "softmax"] | None, Form()] = None,
        temperature: Annotated[float | None, Form(gt=0, le=1e6)] = None,
        exclude_system: Annotated[list[str] | None, Form()] = None,
        param: Annotated[list[str] | None, Form()] = None,
        distance: Distance = None,
        pixel_scale: PixelScale = None,
        beam: BeamText = None,
        noise: Noise = None,
        instrument: InstrumentText = None,
    ) -> JSONResponse:
        """Best-match parameter estimate of an uploaded observation, or of an indexed item.

        An observation goes through the intake, and its intervals are calibrated for the
        instrument it was seen through (or ``instrument``); the answer says which
        (``calibrated_for``), what was read from the file (``observation``), how typical it
        is (``typicality``) and any ``warnings``.
        """
        upload = await _read(image)
        _one_source(upload, key, "image")
        options = intake_options(distance, pixel_scale, beam, noise) | {
            "instrument": instrument or None,
            "top": top,
            "threshold": threshold,
            "weighting": weighting,
            "temperature": temperature,
            "exclude_systems": exclude_system or None,
            "params": param or None,
        }
        result = await pool.run(match_job, service, upload, key, options, max_pixels)
        return JSONResponse(jsonable(result))

    @app.post("/api/compare")
    async def compare(
        image_a: ImageFile = None,
        image_b: ImageFile = None,
        key_a: Key = None,
        key_b: Key = None,
    ) -> JSONResponse:
        """Similarity of two images, its calibrated probability and the decision."""
        sides = {"image_a": (await _read(image_a), key_a), "image_b": (await _read(image_b), key_b)}
        for name, (up, key) in sides.items():
            _one_source(up, key, name)
        result = await pool.run(compare_job, service, sides, max_pixels)
        return JSONResponse(jsonable(result))
