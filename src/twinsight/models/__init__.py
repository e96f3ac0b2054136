"""Encoders (images -> unit embeddings) and the model bundle that saves them safely."""

from __future__ import annotations

from twinsight.models.bundle import ModelBundle
from twinsight.models.encoders import (
    Encoder,
    create_encoder,
    list_encoders,
    register_encoder,
    unregister_encoder,
)

__all__ = [
    "Encoder",
    "ModelBundle",
    "create_encoder",
    "list_encoders",
    "register_encoder",
    "unregister_encoder",
]
