"""SimilarityIndex: embeddings of a collection in a FAISS index, with its items table.

An index is a value: build it from embeddings and an items table, save it to a
folder, load it back, search it, merge shards of it. Nothing hidden: the folder
holds ``index.faiss`` (the FAISS index, inner product on unit vectors, so the
score is the cosine similarity the model was trained on), ``items.parquet``
(one row per vector, in index order) and ``index.json`` (the model fingerprint
and path, relative to the folder, counts, dimension, index type, default search
settings, parameter columns, parameter normalizer and units).

Searching changes nothing: its settings (:class:`SearchParameters`) are passed
to FAISS with each call, and FAISS's process-wide settings are changed only for
the duration of a call, under a lock (:func:`faiss_search_settings`).

``index_type="auto"`` follows FAISS's guidelines ("Guidelines to choose an
index" in the FAISS wiki): exact ``Flat`` below 200,000 vectors (a scan of
200,000 x 128 floats takes a few ms), ``IVF{K},Flat`` with K about
4*sqrt(N) (a power of two) up to 1,000,000 vectors, and ``IVF{K}_HNSW32,Flat``
(K = 65,536, an HNSW coarse quantizer) beyond.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twinsight.errors import TwinsightError
from twinsight.fsutil import atomic_dir
from twinsight.io import dumps
from twinsight.validation import check_positive_int

log = logging.getLogger(__name__)

FORMAT = "twinsight-index"
VERSION = 1
FILES = ("index.faiss", "items.parquet", "index.json")

#: Batched queries use BLAS from this many queries on (FAISS's default, 128,000,
#: makes a batch of 100 queries run as 100 scans: 5.4x slower here, see DESIGN.md).
BLAS_THRESHOLD = 20
BLAS_DATABASE_BS = 65536
#: A refined index (``SQfp16,RFlat``: a float16 scan, then exact float32 scores) re-ranks
#: this many times k candidates: recall@10 1.000 on 1M vectors with 4 (0.9995 with 1), and
#: the re-ranking costs nothing measurable beside the scan (BENCHMARKS.md "Index scale").
REFINE_K_FACTOR = 4
#: IVF lists probed per query by default: recall@10 0.997 on 1M vectors in 0.33 ms a query
#: (16: 0.986 in 0.21 ms; Flat: 21 ms), BENCHMARKS.md "Index scale".
DEFAULT_NPROBE = 32


def _faiss():
    import faiss

    return faiss


# -- choosing and creating the FAISS index --------------------------------------------------------
def resolve_index_type(index_type: str, n: int) -> str:
    """The FAISS factory string for ``index_type`` ("Flat", "auto" or a factory string)."""
    if not index_type or not isinstance(index_type, str):
        raise TwinsightError(
            f"index type {index_type!r} is empty; use 'Flat', 'auto' or a FAISS factory string"
        )
    if index_type.lower() == "flat":
        return "Flat"
    if index_type.lower() != "auto":
        return index_type
    if n < 200_000:
        return "Flat"
    if n < 1_000_000:
        k = 2 ** int(round(math.log2(4 * math.sqrt(n))))
        return f"IVF{k},Flat"
    return "IVF65536_HNSW32,Flat"


def _new_index(factory: str, d: int):
    faiss = _faiss()
    try:
        return faiss.index_factory(int(d), factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise TwinsightError(
            f"FAISS cannot build index type '{factory}' ({first}); use 'Flat', 'auto' or a "
            "factory string such as 'HNSW32' or 'IVF1024,Flat'"
        ) from None


def _unit(embeddings: np.ndarray, what: str = "embeddings") -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise TwinsightError(f"{what}: expected a 2-D array [N, d], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise TwinsightError(f"{what}: contains NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def _fill(index, vectors: np.ndarray, factory: str) -> None:
    if not index.is_trained:
        faiss = _faiss()
        need = 1
        ivf = None
        with contextlib.suppress(RuntimeError):
            ivf = faiss.extract_index_ivf(index)
        if ivf is not None:
            need = int(ivf.nlist)
        if len(vectors) < need:
            raise TwinsightError(
                f"index type '{factory}' needs at least {need} vectors to train, got "
                f"{len(vectors)}; use --index-type Flat (or auto) for a collection this small"
            )
        index.train(vectors)
    index.add(vectors)


def _set_search_params(index, nprobe: int | None, ef_search: int | None) -> None:
    """Write the default search settings into a new FAISS index, once, at build time.

    Only so that ``index.faiss`` used on its own (plain FAISS) searches like twinsight
    does; twinsight itself passes its settings with every call (:class:`SearchParameters`)
    and never changes a built index.
    """
    faiss = _faiss()
    ps = faiss.ParameterSpace()
    if nprobe is not None:
        with contextlib.suppress(RuntimeError):
            ps.set_index_parameter(index, "nprobe", int(nprobe))
    if ef_search is not None:
        with contextlib.suppress(RuntimeError):
            ps.set_index_parameter(index, "efSearch", int(ef_search))
    if isinstance(index, faiss.IndexRefine):
        index.k_factor = float(REFINE_K_FACTOR)


# -- per-call search parameters -------------------------------------------------------------------
def _optional_positive(name: str, value: Any) -> int | None:
    return None if value is None else check_positive_int(value, name)


@dataclass(frozen=True)
class SearchParameters:
    """Settings of one search of an approximate index, FAISS-style (None: the index's default).

    ``nprobe``: IVF lists probed per query (more: slower, higher recall);
    ``ef_search``: HNSW candidate-list depth (for an HNSW index or an IVF index with
    an HNSW coarse quantizer). They are passed to FAISS with the call
    (``faiss.SearchParametersIVF`` / ``SearchParametersHNSW``), so a search never
    changes the index and concurrent searches with different settings do not meet.
    The defaults are those recorded in ``index.json`` (``nprobe`` 32 for IVF,
    ``ef_search`` 64 for HNSW); a setting that does not apply (nprobe of a Flat
    index) is ignored.
    """

    nprobe: int | None = None
    ef_search: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "nprobe", _optional_positive("nprobe", self.nprobe))
        object.__setattr__(self, "ef_search", _optional_positive("ef_search", self.ef_search))

    def over(self, defaults: SearchParameters) -> SearchParameters:
        """These settings, with the unset ones taken from ``defaults``."""
        return SearchParameters(
            nprobe=defaults.nprobe if self.nprobe is None else self.nprobe,
            ef_search=defaults.ef_search if self.ef_search is None else self.ef_search,
        )


def _hnsw_params(hnsw_index, ef_search: int | None):
    params = _faiss().SearchParametersHNSW()
    params.efSearch = int(hnsw_index.hnsw.efSearch if ef_search is None else ef_search)
    return params


def _ivf_params(ivf, settings: SearchParameters):
    faiss = _faiss()
    params = faiss.SearchParametersIVF()
    params.nprobe = int(ivf.nprobe if settings.nprobe is None else settings.nprobe)
    params.max_codes = int(ivf.max_codes)
    quantizer = faiss.downcast_index(ivf.quantizer)
    if settings.ef_search is not None and isinstance(quantizer, faiss.IndexHNSW):
        inner = _hnsw_params(quantizer, settings.ef_search)
        params.quantizer_params = inner
        params.referenced_objects = [inner]  # keep the SWIG object alive with its owner
    return params


def _refine_params(index, settings: SearchParameters):
    faiss = _faiss()
    params = faiss.IndexRefineSearchParameters()
    params.k_factor = float(REFINE_K_FACTOR)
    inner = faiss_search_parameters(faiss.downcast_index(index.base_index), settings)
    if inner is not None:
        params.base_index_params = inner
        params.referenced_objects = [inner]
    return params


def faiss_search_parameters(index: Any, settings: SearchParameters) -> Any | None:
    """The ``faiss.SearchParameters`` object for one call to ``index.search`` (None: none apply).

    Covers IVF (with a flat or HNSW coarse quantizer), HNSW and either behind a
    pre-transform (PCA, OPQ); other index types search with their built-in settings.
    """
    faiss = _faiss()
    if isinstance(index, faiss.IndexPreTransform):
        inner = faiss_search_parameters(faiss.downcast_index(index.index), settings)
        if inner is None:
            return None
        params = faiss.SearchParametersPreTransform()
        params.index_params = inner
        params.referenced_objects = [inner]
        return params
    if isinstance(index, faiss.IndexRefine):
        return _refine_params(index, settings)
    if isinstance(index, faiss.IndexIVF):
        return _ivf_params(index, settings)
    if isinstance(index, faiss.IndexHNSW):
        return _hnsw_params(index, settings.ef_search)
    if settings != SearchParameters():
        log.debug("search settings %s do not apply to %s", settings, type(index).__name__)
    return None


# -- FAISS's process-wide settings ----------------------------------------------------------------
#: Held while FAISS's global BLAS settings may differ from their defaults, and by every
#: search that relies on them (see :func:`faiss_search_settings`).
_FAISS_SETTINGS_LOCK = threading.Lock()


@contextlib.contextmanager
def faiss_search_settings(n_queries: int) -> Iterator[None]:
    """FAISS settings for one search call, under a lock, restored afterwards.

    Batches of two or more queries use BLAS (threshold lowered from 128,000 to
    20, database blocks of 65,536 vectors: FAISS's default 1,024 is 20x slower on
    1M x 128); a single query keeps the non-BLAS scan (the lowered threshold
    makes it 3-5x slower) and runs on one thread, faster here than two.

    Why scoped and locked rather than set once per process: the right BLAS
    threshold depends on each call's number of queries, so no single value suits a
    process that serves single queries and batches. ``faiss.cvar`` is process-wide,
    so the lock makes twinsight's searches take turns while it may differ from the
    default: every search sees exactly the settings it chose (results never depend
    on a concurrent search). FAISS parallelises each search with OpenMP, so taking
    turns costs little. The thread count needs no lock: ``omp_set_num_threads``
    applies to the calling thread only. FAISS calls made outside twinsight during a
    batch see the lowered threshold, which changes their speed, not their results.
    """
    faiss = _faiss()
    cvar = faiss.cvar
    with _FAISS_SETTINGS_LOCK:
        saved = (cvar.distance_compute_blas_threshold, cvar.distance_compute_blas_database_bs)
        threads = faiss.omp_get_max_threads()
        try:
            if n_queries == 1:
                faiss.omp_set_num_threads(1)
            else:
                cvar.distance_compute_blas_threshold = BLAS_THRESHOLD
                cvar.distance_compute_blas_database_bs = BLAS_DATABASE_BS
            yield
        finally:
            cvar.distance_compute_blas_threshold, cvar.distance_compute_blas_database_bs = saved
            faiss.omp_set_num_threads(threads)


# -- the model path, relative to the index folder -------------------------------------------------
def _absolute(path: str | Path) -> str:
    """An absolute path (against the current folder), without resolving symlinks."""
    return os.path.normpath(Path(path).expanduser().absolute())


def _relative_model_path(model_path: str | None, index_dir: Path) -> str | None:
    """``model_path`` relative to the index folder, or absolute when no relative path exists."""
    if model_path is None:
        return None
    absolute = _absolute(model_path)
    try:
        return Path(os.path.relpath(absolute, _absolute(index_dir))).as_posix()
    except ValueError:  # another drive (Windows): no relative path
        return absolute


def _resolve_model_path(meta: dict[str, Any], index_dir: Path) -> str | None:
    """The stored model path as an absolute path: relative to the index folder first.

    Older index.json files hold a path relative to the folder the index was built
    from, or an absolute one: those are tried as given next, then the absolute
    path recorded at save time. When none exists, the index-relative candidate.
    """
    stored = meta.get("model_path")
    if not stored:
        return None
    candidates = [index_dir / stored, Path(stored), meta.get("model_path_absolute")]
    paths = [_absolute(c) for c in candidates if c]
    return next((p for p in paths if Path(p).exists()), paths[0])


def _parquet_safe(items: pd.DataFrame) -> pd.DataFrame:
    items = items.reset_index(drop=True).copy()
    for column in items.columns:
        if items[column].dtype == object:
            items[column] = items[column].astype(str)
    return items


# -- the value ------------------------------------------------------------------------------------
@dataclass
class SimilarityIndex:
    """A FAISS index over unit embeddings plus its items table and metadata (see module doc)."""

    index: Any
    items: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        items: pd.DataFrame,
        *,
        model_fingerprint: str,
        model_path: str | None = None,
        index_type: str = "Flat",
        param_columns: Sequence[str] = (),
        normalizer: dict | None = None,
        units: dict | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
        extra: dict | None = None,
    ) -> SimilarityIndex:
        """Build an index from embeddings [N, d] (normalized here) and N items-table rows.

        ``model_path`` is kept absolute here and written relative to the index folder
        by :meth:`save`, so the index finds its model from any working folder;
        ``nprobe`` / ``ef_search`` become the index's default :class:`SearchParameters`.
        """
        defaults = SearchParameters(nprobe=nprobe, ef_search=ef_search)
        vectors = _unit(embeddings)
        if len(vectors) == 0:
            raise TwinsightError(
                "cannot build an index from 0 embeddings (the collection is empty)"
            )
        if len(vectors) != len(items):
            raise TwinsightError(
                f"{len(vectors)} embeddings but {len(items)} items-table rows; they must match"
            )
        if "key" not in items.columns:
            raise TwinsightError("the items table of an index needs a 'key' column")
        missing = [c for c in param_columns if c not in items.columns]
        if missing:
            raise TwinsightError(f"parameter column(s) {missing} are not in the items table")
        factory = resolve_index_type(index_type, len(vectors))
        index = _new_index(factory, vectors.shape[1])
        _fill(index, vectors, factory)
        nprobe, ef_search = defaults.nprobe, defaults.ef_search
        if nprobe is None and factory.startswith("IVF"):
            nprobe = DEFAULT_NPROBE
        if ef_search is None and "HNSW" in factory:
            ef_search = 64
        _set_search_params(index, nprobe, ef_search)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "model_fingerprint": str(model_fingerprint),
            "model_path": None if model_path is None else _absolute(model_path),
            "count": int(len(vectors)),
            "dim": int(vectors.shape[1]),
            "index_type": factory,
            "requested_index_type": index_type,
            "metric": "inner_product",
            "nprobe": nprobe,
            "ef_search": ef_search,
            "param_columns": list(param_columns),
            "normalizer": normalizer,
            "units": dict(units or {}),
        }
        meta.update(extra or {})
        log.debug("built %s index of %d x %d", factory, len(vectors), vectors.shape[1])
        return cls(index, _parquet_safe(items), meta)

    # -- properties -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def model_path(self) -> Path | None:
        """The model this index was built with, as an absolute path (None: not recorded).

        After :meth:`load` it is resolved against the index folder (see
        :func:`_resolve_model_path`), so it does not depend on the working folder.
        """
        value = self.meta.get("model_path")
        return None if not value else Path(value)

    @property
    def search_parameters(self) -> SearchParameters:
        """The default settings of :meth:`search` (recorded in index.json at build time)."""
        meta = self.meta
        return SearchParameters(nprobe=meta.get("nprobe"), ef_search=meta.get("ef_search"))

    @property
    def model_fingerprint(self) -> str:
        return str(self.meta.get("model_fingerprint", ""))

    @property
    def param_columns(self) -> list[str]:
        return list(self.meta.get("param_columns") or [])

    def params(self, columns: Sequence[str] | None = None) -> np.ndarray:
        """Parameter values of the indexed items, float64 [N, P]."""
        columns = self.param_columns if columns is None else list(columns)
        self.check_params(columns)
        return self.items[columns].to_numpy(dtype=np.float64)

    def check_params(self, columns: Sequence[str]) -> None:
        """Raise a clear error for a parameter the index does not hold."""
        missing = [c for c in columns if c not in self.param_columns]
        if missing:
            raise TwinsightError(
                f"the index does not hold parameter(s) {missing}; it holds "
                f"{self.param_columns or 'no parameters'}"
            )

    def check_model(self, fingerprint: str, model_path: str | None = None) -> None:
        """Refuse a query model that is not the one this index was built with."""
        if str(fingerprint) != self.model_fingerprint:
            where = f" ('{model_path}')" if model_path else ""
            raise TwinsightError(
                f"the model{where} has fingerprint {fingerprint} but the index was built with "
                f"model {self.model_fingerprint} ('{self.meta.get('model_path')}'); embeddings "
                "of different models are not comparable: rebuild the index with this model "
                "or query with the index's own model"
            )

    def to_dict(self) -> dict[str, Any]:
        """The index's description (its ``index.json``): what ``index --json`` prints."""
        return dict(self.meta)

    def subset(self, keep: np.ndarray) -> SimilarityIndex:
        """A new index of the items where ``keep`` (bool [N]) is true: same model, settings.

        Exact for Flat/HNSW/IVF-Flat indexes (the stored vectors are re-indexed).
        """
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (len(self),):
            raise TwinsightError(f"subset needs a mask of {len(self)} booleans, got {keep.shape}")
        if not keep.any():
            raise TwinsightError("the subset of the index is empty")
        extra = {k: self.meta[k] for k in KEPT_META if k in self.meta}
        return _rebuilt(self.meta, self.vectors()[keep], self.items[keep], extra=extra)

    def vectors(self) -> np.ndarray:
        """All stored vectors [N, d] (exact for Flat/HNSW/IVF-Flat indexes)."""
        faiss = _faiss()
        with contextlib.suppress(RuntimeError):
            faiss.extract_index_ivf(self.index).make_direct_map()
        return self.index.reconstruct_n(0, self.index.ntotal)

    # -- search ---------------------------------------------------------------------------------
    def search(
        self,
        query_embeddings: np.ndarray,
        k: int,
        params: SearchParameters | None = None,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` cosine similarities [Q, k] and positions [Q, k] (k clamped to the size).

        ``params`` (or the ``nprobe`` / ``ef_search`` keywords, which take precedence)
        apply to this call only; unset ones fall back to :attr:`search_parameters`.
        The index itself is never changed, so searches do not affect each other.
        """
        settings = SearchParameters(nprobe=nprobe, ef_search=ef_search).over(
            (params or SearchParameters()).over(self.search_parameters)
        )
        queries = _unit(query_embeddings, "query embeddings")
        if queries.shape[1] != self.dim:
            raise TwinsightError(
                f"query embeddings have dimension {queries.shape[1]} but the index holds "
                f"dimension {self.dim}"
            )
        k = check_positive_int(k, "k")
        if k > len(self):
            log.info(
                "k = %d is larger than the index (%d items); using k = %d", k, len(self), len(self)
            )
            k = len(self)
        faiss_params = faiss_search_parameters(self.index, settings)
        # faiss.contrib.torch_utils (imported by pytorch-metric-learning) replaces every
        # index's ``search`` with one that takes no ``params``; the numpy method stays.
        search = getattr(self.index, "search_numpy", self.index.search)
        with faiss_search_settings(len(queries)):
            sims, positions = search(queries, k, params=faiss_params)
        return sims, positions.astype(np.int64)

    def search_excluding(
        self,
        query_embeddings: np.ndarray,
        k: int,
        exclude_systems: Sequence[Any],
        **kwargs: Any,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`search`, dropping per query the items of one system (None: none).

        ``exclude_systems[q]`` is a system id (or None) for query q; the search
        asks for extra neighbours so that ``k`` remain after dropping.
        """
        if "system" not in self.items.columns:
            if any(s is not None for s in exclude_systems):
                raise TwinsightError("cannot exclude systems: the index has no 'system' column")
            return self.search(query_embeddings, k, **kwargs)
        systems = self.items["system"].astype(str).to_numpy()
        excl = [None if s is None else str(s) for s in exclude_systems]
        counts = pd.Series(systems).value_counts()
        extra = max((int(counts.get(s, 0)) for s in excl if s is not None), default=0)
        k = min(int(k), len(self))
        sims, pos = self.search(query_embeddings, min(k + extra, len(self)), **kwargs)
        out_s = np.full((len(sims), k), -np.inf, dtype=np.float32)
        out_p = np.full((len(sims), k), -1, dtype=np.int64)
        for q in range(len(sims)):
            keep = pos[q] >= 0
            if excl[q] is not None:
                keep &= systems[np.clip(pos[q], 0, None)] != excl[q]
            s, p = sims[q][keep][:k], pos[q][keep][:k]
            out_s[q, : len(s)], out_p[q, : len(p)] = s, p
        return out_s, out_p

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write ``index.faiss``, ``items.parquet`` and ``index.json`` atomically to ``path``.

        index.json holds the model path relative to ``path`` (absolute where no
        relative path exists) plus the absolute one as a fallback for a moved index.
        """
        faiss = _faiss()
        meta = dict(self.meta)
        if meta.get("model_path"):
            meta["model_path_absolute"] = _absolute(meta["model_path"])
            meta["model_path"] = _relative_model_path(meta["model_path"], Path(path))
        with atomic_dir(path, overwrite=overwrite) as tmp:
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            self.items.to_parquet(tmp / "items.parquet", index=False)
            (tmp / "index.json").write_text(dumps(meta, lenient=True))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> SimilarityIndex:
        """Read an index folder; a missing, empty, truncated or foreign folder is a clear error."""
        path = Path(path)
        if not path.exists():
            raise TwinsightError(
                f"index folder '{path}' does not exist; build one with `twinsight index`"
            )
        if not path.is_dir():
            raise TwinsightError(
                f"'{path}' is a file, not an index folder (built by `twinsight index`)"
            )
        missing = [f for f in FILES if not (path / f).is_file()]
        if missing:
            raise TwinsightError(
                f"'{path}' is not a twinsight index folder: missing {missing}; it may be empty, "
                "foreign or left by an interrupted build; rebuild it with `twinsight index`"
            )
        meta = _read_meta(path / "index.json")
        index = _read_faiss(path / "index.faiss")
        try:
            items = pd.read_parquet(path / "items.parquet")
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise TwinsightError(
                f"'{path / 'items.parquet'}' is unreadable ({type(exc).__name__}); the index is "
                "damaged: rebuild it with `twinsight index`"
            ) from None
        if not (int(index.ntotal) == len(items) == int(meta.get("count", -1))):
            raise TwinsightError(
                f"index '{path}' is inconsistent: {index.ntotal} vectors, {len(items)} items rows, "
                f"index.json says {meta.get('count')}; rebuild it with `twinsight index`"
            )
        if int(index.d) != int(meta["dim"]):
            raise TwinsightError(
                f"index '{path}' is inconsistent: index.faiss holds {index.d}-dimensional "
                f"vectors, index.json field 'dim' says {meta['dim']}; rebuild it with "
                "`twinsight index`"
            )
        meta["model_path"] = _resolve_model_path(meta, path)
        meta.pop("model_path_absolute", None)
        loaded = cls(index, items, meta)
        loaded.location = path  # where per-instrument calibrations are cached
        return loaded


def _index_meta_model() -> type:
    """The pydantic model of index.json: every field a search relies on, typed."""
    from typing import Annotated, Literal

    from pydantic import BaseModel, ConfigDict, Field

    Count = Annotated[int, Field(strict=True, ge=0)]
    Positive = Annotated[int, Field(strict=True, ge=1)]

    class IndexMeta(BaseModel):
        model_config = ConfigDict(extra="allow")
        format: Literal["twinsight-index"]
        version: Annotated[int, Field(strict=True, ge=1)]
        model_fingerprint: str
        model_path: str | None = None
        count: Count
        dim: Positive
        metric: Literal["inner_product"] = "inner_product"
        nprobe: Positive | None = None
        ef_search: Positive | None = None
        param_columns: list[str] = []
        normalizer: dict[str, Any] | None = None
        units: dict[str, Any] = {}

    return IndexMeta


def validation_message(exc: Any) -> str:
    """The first problem of a pydantic ValidationError, naming the field: 'a.b: msg (got x)'."""
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first.get("loc", ())) or "(top level)"
    got = repr(first.get("input"))
    got = got if len(got) <= 40 else got[:37] + "..."
    return f"field '{field}': {first.get('msg', 'invalid')} (got {got})"


def _validate_meta(path: Path, meta: dict[str, Any]) -> None:
    from pydantic import ValidationError

    try:
        _index_meta_model().model_validate(meta)
    except ValidationError as exc:
        raise TwinsightError(
            f"'{path}' is damaged: {validation_message(exc)}; rebuild the index with "
            "`twinsight index`"
        ) from None


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TwinsightError(
            f"'{path}' is not valid JSON; the index is damaged: rebuild it with `twinsight index`"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TwinsightError(
            f"'{path}' is not a twinsight index description (format should be '{FORMAT}')"
        )
    version = meta.get("version", 0)
    if isinstance(version, int) and version > VERSION:
        raise TwinsightError(
            f"'{path}' has index format version {meta.get('version')}; this twinsight reads "
            f"up to {VERSION}: upgrade twinsight"
        )
    _validate_meta(path, meta)
    return meta


def _read_faiss(path: Path):
    faiss = _faiss()
    try:
        return faiss.read_index(str(path))
    except (RuntimeError, MemoryError):  # a damaged size field makes FAISS allocate wildly
        raise TwinsightError(
            f"'{path}' is not a readable FAISS index (truncated or foreign); rebuild the index "
            "with `twinsight index`"
        ) from None


# -- merging shards -------------------------------------------------------------------------------
def merge(shards: Sequence[SimilarityIndex], *, index_type: str | None = None) -> SimilarityIndex:
    """Join shard indexes built with the same model into one (items in shard order)."""
    if not shards:
        raise TwinsightError("nothing to merge: give at least one index shard")
    first = shards[0]
    for i, shard in enumerate(shards[1:], start=2):
        if shard.model_fingerprint != first.model_fingerprint:
            raise TwinsightError(
                f"shard {i} was built with model {shard.model_fingerprint} but shard 1 with "
                f"{first.model_fingerprint}; shards of one index must share the model"
            )
        if shard.dim != first.dim or shard.param_columns != first.param_columns:
            raise TwinsightError(
                f"shard {i} has dimension {shard.dim} and parameters {shard.param_columns}, "
                f"shard 1 has {first.dim} and {first.param_columns}; they cannot be merged"
            )
    items = pd.concat([s.items for s in shards], ignore_index=True)
    dup = items["key"][items["key"].duplicated()]
    if len(dup):
        raise TwinsightError(
            f"the shards overlap: key {dup.iloc[0]!r} (and {len(dup) - 1} more) appear twice; "
            "was a shard given twice?"
        )
    vectors = np.concatenate([s.vectors() for s in shards])
    keep = {*KEPT_META, "preprocessing"}
    extra = {k: v for k, v in first.meta.items() if k in keep} | {"merged_from": len(shards)}
    return _rebuilt(first.meta, vectors, items, index_type=index_type, extra=extra)


def _rebuilt(
    meta: dict[str, Any],
    vectors: np.ndarray,
    items: pd.DataFrame,
    *,
    index_type: str | None = None,
    extra: dict[str, Any] | None = None,
) -> SimilarityIndex:
    """A new index of ``vectors`` with the model, settings and parameters of ``meta``."""
    return SimilarityIndex.build(
        vectors,
        items.reset_index(drop=True),
        model_fingerprint=str(meta.get("model_fingerprint", "")),
        model_path=meta.get("model_path"),
        index_type=index_type or meta.get("requested_index_type", "Flat"),
        param_columns=list(meta.get("param_columns") or []),
        normalizer=meta.get("normalizer"),
        units=meta.get("units"),
        nprobe=meta.get("nprobe"),
        ef_search=meta.get("ef_search"),
        extra=extra,
    )


# -- from a model and a collection ----------------------------------------------------------------
def parse_shard(shard: str | None) -> tuple[int, int] | None:
    """``"i/n"`` (1-based: 1/4 .. 4/4) -> (i, n); None stays None."""
    if shard is None:
        return None
    try:
        i, n = (int(x) for x in str(shard).split("/"))
    except ValueError:
        raise TwinsightError(f"--shard {shard!r}: expected i/n such as 1/4 (1-based)") from None
    if n < 1 or not 1 <= i <= n:
        raise TwinsightError(f"--shard {shard!r}: need 1 <= i <= n (1-based), e.g. 1/4 .. 4/4")
    return i, n


def shard_positions(n_items: int, shard: tuple[int, int] | None) -> np.ndarray:
    """The contiguous block of item positions that shard (i, n) covers."""
    positions = np.arange(n_items)
    if shard is None:
        return positions
    i, n = shard
    return np.array_split(positions, n)[i - 1]


def _source_name(name: str) -> str:
    """An absolute path when the collection came from a path (so --plot works from anywhere)."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


#: index.json fields a subset or a merge of indexes keeps.
KEPT_META = ("source", "matching", "pixel_scale_au", "library_snr")


def _embed_part(bundle: Any, part: Any, devices: int, embed: dict[str, Any]) -> np.ndarray | None:
    """The embeddings of ``part``: in this process, or across ``devices`` (None off rank 0)."""
    if devices == 1:
        from twinsight.embedding import embed_collection

        return embed_collection(bundle, part, **embed)
    from twinsight.distributed import embed_across

    return embed_across(bundle, part, devices=devices, **embed)


def build_index(
    bundle: Any,
    collection: Any,
    *,
    model_path: str | None = None,
    index_type: str = "Flat",
    batch_size: int = 256,
    shard: str | tuple[int, int] | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
    progress: bool = False,
    device: str | Any = "auto",
    precision: str = "fp32",
    devices: int = 1,
) -> SimilarityIndex | None:
    """Embed ``collection`` (or one shard of it) with ``bundle`` and index it.

    ``device`` is where the encoder runs (see :func:`twinsight.embedding.resolve_device`:
    "auto" is the GPU when there is one); ``precision`` "bf16"/"fp16"/"auto" autocasts
    there on a GPU only. ``devices`` > 1 embeds in that many processes of ``device``'s
    kind (:func:`twinsight.distributed.embed_across`): global rank 0 returns the index,
    equal to one process's, and the other ranks None.
    """
    shard_t = parse_shard(shard) if isinstance(shard, str) or shard is None else tuple(shard)
    positions = shard_positions(len(collection), shard_t)
    part = collection if shard_t is None else collection.subset(positions)
    if len(part) == 0:
        raise TwinsightError(f"shard {shard} of '{collection.name}' is empty")
    embed = dict(batch_size=batch_size, device=device, precision=precision, progress=progress)
    embeddings = _embed_part(bundle, part, check_positive_int(devices, "devices"), embed)
    if embeddings is None:  # another rank: its rows went to rank 0
        return None
    targets = getattr(bundle, "targets", None) or {}
    params = [c for c in collection.param_columns]
    return SimilarityIndex.build(
        embeddings,
        part.items,
        model_fingerprint=bundle.fingerprint,
        model_path=model_path,
        index_type=index_type,
        param_columns=params,
        normalizer=targets.get("normalizer"),
        units=dict(collection.meta.get("units") or {}),
        nprobe=nprobe,
        ef_search=ef_search,
        extra={
            "source": _source_name(collection.name),
            "shard": None if shard_t is None else list(shard_t),
            "matching": getattr(bundle, "matching", None),
            "pixel_scale_au": _pixel_scale_au(collection.meta),
            "library_snr": library_snr(collection.meta),
        },
    )


def library_snr(meta: dict[str, Any]) -> float | None:
    """The peak SNR of the library's own images (simulated sets: 1 / their noise level)."""
    simulator = meta.get("simulator")
    if not isinstance(simulator, dict):
        return None
    level = simulator.get("noise_level")
    if level is None:  # sets written before the noise level was recorded
        from twinsight.simulator.render import NOISE_LEVEL

        level = NOISE_LEVEL
    return 1.0 / float(level) if isinstance(level, int | float) and level > 0 else None


def _pixel_scale_au(meta: dict[str, Any]) -> float | None:
    """The library's AU per pixel, when its collection says (the simulator's sets do)."""
    for source in (meta, meta.get("simulator") or {}):
        value = source.get("pixel_scale_au") if isinstance(source, dict) else None
        if isinstance(value, int | float) and value > 0:
            return float(value)
    return None
