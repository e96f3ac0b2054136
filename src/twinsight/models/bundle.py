"""A trained model on disk: ``model.safetensors`` + ``twinsight.json``, never a pickle.

The JSON file says how to rebuild the encoder (registry name and config), how
to preprocess images, what the targets were (class labels, or parameters with
their normalization statistics and similarity kernel), how to turn a score into
a probability (calibration), the matching defaults, and how it was trained.
The safetensors file holds the weights. Loading reads both with parsers that
cannot run code, so a model folder from anywhere is safe to open.

The model's ``fingerprint`` (a hash of the weights) ties an index to the model
that built it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from twinsight.data.transforms import Preprocessing
from twinsight.embedding import embed_images
from twinsight.errors import TwinsightError
from twinsight.fsutil import atomic_dir
from twinsight.io import dumps
from twinsight.models.calibration import probability
from twinsight.models.encoders import create_encoder

FORMAT = "twinsight-model"
VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "twinsight.json"


def _twinsight_version() -> str:
    from twinsight import __version__

    return __version__


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor in name order; 16 hex chars."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _to_json(data: Any, where: str) -> str:
    try:
        return dumps(data)
    except (TypeError, ValueError) as exc:
        raise TwinsightError(f"model bundle: cannot store {where} as JSON: {exc}") from None


RUN_MODEL_SUBDIR = "model"


def resolve_bundle_dir(directory: str | Path) -> Path:
    """The bundle folder itself, or the ``model/`` bundle inside a training run folder."""
    folder = Path(directory)
    if not (folder / META_FILE).exists() and (folder / RUN_MODEL_SUBDIR / META_FILE).exists():
        return folder / RUN_MODEL_SUBDIR
    return folder


@dataclass
class ModelBundle:
    """A trained encoder and everything needed to use it (see module docstring)."""

    encoder: nn.Module
    encoder_name: str
    encoder_config: dict[str, Any]
    preprocessing: Preprocessing
    targets: dict[str, Any] = field(default_factory=lambda: {"kind": "labels"})
    calibration: dict[str, Any] | None = None
    matching: dict[str, Any] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    #: The instruments training showed the library through (InstrumentRange.to_dict()).
    instrument_range: dict[str, float] | None = None
    #: The folder the bundle was loaded from (None: built in memory); files beside the
    #: weights, such as the validation systems kept for instrument calibration, live there.
    folder: Path | None = field(default=None, compare=False, repr=False)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_encoder(cls, encoder: nn.Module, **fields: Any) -> ModelBundle:
        """Wrap an encoder from :func:`create_encoder`: its name, config and preprocessing."""
        fields.setdefault("preprocessing", encoder.default_preprocessing())
        return cls(
            encoder=encoder,
            encoder_name=encoder.name,
            encoder_config=dict(encoder.config),
            **fields,
        )

    # -- identity -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's tensors, detached, contiguous, on CPU, each with its own storage."""
        return {
            k: v.detach().to("cpu", copy=True).contiguous()
            for k, v in self.encoder.state_dict().items()
        }

    @property
    def fingerprint(self) -> str:
        """Hash of the weights (16 hex chars): the same before saving and after loading."""
        return weights_fingerprint(self.encoder.state_dict())

    @property
    def embedding_dim(self) -> int:
        return int(getattr(self.encoder, "embedding_dim", self.encoder_config["embedding_dim"]))

    def metadata(self) -> dict[str, Any]:
        """The content of twinsight.json."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "twinsight_version": _twinsight_version(),
            "fingerprint": self.fingerprint,
            "encoder": {"name": self.encoder_name, "config": self.encoder_config},
            "embedding_dim": self.embedding_dim,
            "preprocessing": self.preprocessing.to_dict(),
            "targets": self.targets,
            "calibration": self.calibration,
            "matching": self.matching,
            "training": self.training,
            "instrument_range": self.instrument_range,
        }

    # -- disk -----------------------------------------------------------------------------------
    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write ``model.safetensors`` + ``twinsight.json`` into ``directory``, atomically."""
        from safetensors.torch import save_file

        text = _to_json(self.metadata(), "the model metadata")
        with atomic_dir(directory, overwrite=overwrite) as tmp:
            save_file(self.state_dict(), str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
            (tmp / META_FILE).write_text(text)
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path, *, device: str = "cpu") -> ModelBundle:
        """Read a bundle written by :meth:`save` (JSON + safetensors only, nothing unpickled).

        ``directory`` may also be a training run folder: its ``model/`` bundle is used.
        """
        folder = resolve_bundle_dir(directory)
        meta = _read_meta(folder)
        encoder = _rebuild_encoder(folder, meta)
        state = _read_weights(folder)
        try:
            encoder.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise TwinsightError(
                f"model '{folder}': {WEIGHTS_FILE} does not fit the encoder described in "
                f"{META_FILE} ({meta['encoder']['name']}): {first}"
            ) from None
        expected = meta.get("fingerprint")
        if expected and weights_fingerprint(encoder.state_dict()) != expected:
            raise TwinsightError(
                f"model '{folder}': the weights' fingerprint does not match the one recorded in "
                f"{META_FILE} ({expected}); the folder mixes files of different models"
            )
        encoder.to(device).eval()
        return cls(
            encoder=encoder,
            encoder_name=meta["encoder"]["name"],
            encoder_config=dict(meta["encoder"]["config"]),
            preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
            targets=meta.get("targets") or {"kind": "labels"},
            calibration=meta.get("calibration"),
            matching=meta.get("matching"),
            training=meta.get("training") or {},
            instrument_range=meta.get("instrument_range"),
            folder=folder,
        )

    # -- use ------------------------------------------------------------------------------------
    def embed(
        self,
        images: np.ndarray,
        batch_size: int = 256,
        device: str | torch.device = "auto",
        precision: str = "fp32",
    ) -> np.ndarray:
        """Embeddings float32 [N, d] of images in their natural scale (preprocessing applied).

        ``device``: "auto" (the GPU if there is one), "cpu", "cuda:0", "mps", ...;
        ``precision``: "fp32", or "bf16"/"fp16" autocast on a GPU (see
        :mod:`twinsight.embedding`).
        """
        return embed_images(
            self.encoder,
            images,
            self.preprocessing,
            batch_size=batch_size,
            device=device,
            precision=precision,
        )

    def similarity(
        self,
        images_a: np.ndarray,
        images_b: np.ndarray,
        batch_size: int = 256,
        device: str | torch.device = "auto",
    ) -> np.ndarray:
        """Cosine similarity of each pair (a_i, b_i) -> float32 [N]; one image broadcasts."""
        a = self.embed(images_a, batch_size=batch_size, device=device)
        b = self.embed(images_b, batch_size=batch_size, device=device)
        if len(a) != len(b) and 1 not in (len(a), len(b)):
            raise TwinsightError(
                f"similarity needs as many images on both sides (or one on a side), "
                f"got {len(a)} and {len(b)}"
            )
        return np.sum(a * b, axis=1).astype(np.float32)

    def probability(self, scores: np.ndarray) -> np.ndarray:
        """Scores -> probabilities of 'same' with the stored calibration (sigmoid(a s + b))."""
        if not self.calibration or "scale" not in self.calibration:
            raise TwinsightError(
                "this model has no score calibration; train it with the 'bce' loss or "
                "calibrate it on labelled pairs first"
            )
        return probability(scores, self.calibration).astype(np.float32)


def _read_meta(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise TwinsightError(
            f"model '{folder}' does not exist or is not a folder; pass the folder that "
            f"'twinsight train --out' wrote (it holds {META_FILE} and {WEIGHTS_FILE})"
        )
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise TwinsightError(
            f"'{folder}' is not a twinsight model: it has no {META_FILE}; pass the folder that "
            f"'twinsight train --out' wrote"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TwinsightError(f"model '{folder}': {META_FILE} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise TwinsightError(
            f"model '{folder}': {META_FILE} has format {found!r}, expected '{FORMAT}'; "
            f"this folder was not written by twinsight"
        )
    version = meta.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise TwinsightError(
            f"model '{folder}': format version {version!r} is newer than this twinsight "
            f"understands ({VERSION}); upgrade twinsight"
        )
    for key in ("encoder", "preprocessing"):
        if not isinstance(meta.get(key), dict):
            raise TwinsightError(f"model '{folder}': {META_FILE} lacks the '{key}' section")
    if not isinstance(meta["encoder"].get("name"), str):
        raise TwinsightError(f"model '{folder}': {META_FILE} lacks encoder.name")
    _validate_meta(folder, meta)
    return meta


def _bundle_meta_model() -> type:
    """The pydantic model of twinsight.json: the fields loading and inference rely on."""
    from typing import Annotated, Literal

    from pydantic import BaseModel, ConfigDict, Field, model_validator

    Side = Annotated[int, Field(strict=True, ge=1, le=16384)]
    Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]

    class Encoder(BaseModel):
        model_config = ConfigDict(extra="allow")
        name: str
        config: dict[str, Any] = {}

    class PreprocessingMeta(BaseModel):
        model_config = ConfigDict(extra="allow")
        size: tuple[Side, Side]
        channels: Literal[1, 3]
        normalize: Literal["minmax", "standardize", "none"] = "minmax"
        mean: list[Number] = []
        std: list[Number] = []

        @model_validator(mode="after")
        def _statistics(self) -> PreprocessingMeta:
            if self.normalize == "standardize" and not (
                len(self.mean) == len(self.std) == self.channels
            ):
                raise ValueError(
                    f"standardize needs {self.channels} mean and std values, got "
                    f"{len(self.mean)} and {len(self.std)}"
                )
            return self

    class Calibration(BaseModel):
        model_config = ConfigDict(extra="allow")
        scale: Number | None = None
        bias: Number | None = None
        threshold: Number | None = None

    class BundleMeta(BaseModel):
        model_config = ConfigDict(extra="allow")
        encoder: Encoder
        preprocessing: PreprocessingMeta
        calibration: Calibration | None = None
        targets: dict[str, Any] | None = None
        matching: dict[str, Any] | None = None
        training: dict[str, Any] | None = None
        instrument_range: dict[str, Number] | None = None

    return BundleMeta


def _validate_meta(folder: Path, meta: dict[str, Any]) -> None:
    """Refuse a hand-edited or damaged twinsight.json in one line naming the field."""
    from pydantic import ValidationError

    try:
        _bundle_meta_model().model_validate(meta)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "(top level)"
        got = repr(first.get("input"))
        got = got if len(got) <= 40 else got[:37] + "..."
        raise TwinsightError(
            f"model '{folder}': {META_FILE} field '{field}': {first.get('msg', 'invalid')} "
            f"(got {got}); fix the field or train the model again"
        ) from None


def _rebuild_encoder(folder: Path, meta: dict[str, Any]) -> nn.Module:
    name = meta["encoder"]["name"]
    config = dict(meta["encoder"].get("config") or {})
    config.pop("weights", None)  # never reload pretrained files: the bundle has the weights
    try:
        return create_encoder(name, **config)
    except TwinsightError as exc:
        raise TwinsightError(f"model '{folder}': cannot rebuild its encoder: {exc}") from None


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise TwinsightError(
            f"model '{folder}' has no {WEIGHTS_FILE}; the folder is incomplete, train or copy "
            f"the model again"
        )
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise TwinsightError(
            f"model '{folder}': {WEIGHTS_FILE} is damaged or truncated ({exc}); train or copy "
            f"the model again"
        ) from None
