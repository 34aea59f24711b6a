"""The feature wire format of ``POST /v1/features`` (README.md, the endpoint table).

A response carries one float32 row per uploaded image, in upload order, as base64 of the
little-endian bytes: 2048 floats are 8 KiB raw, 10.7 KiB in base64, next to the ~10–50 KiB an
uploaded 128² PNG takes. ``format`` and ``version`` let a reader refuse what it does not know.
NumPy only: both the server and the torch-free client import it.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import numpy as np

FEATURES_FORMAT = "loss-service.features"
FEATURES_VERSION = 1
WIRE_DTYPE = np.dtype("<f4")


class FeaturesFormatError(ValueError):
    """A payload this reader cannot decode (another format or version, or a wrong length)."""


def encode_features(rows: np.ndarray) -> dict[str, Any]:
    """(N, D) features → the payload's format fields (``format`` … ``features``)."""
    rows = np.ascontiguousarray(rows, dtype=WIRE_DTYPE)
    return dict(
        format=FEATURES_FORMAT,
        version=FEATURES_VERSION,
        count=rows.shape[0],
        dim=rows.shape[1],
        dtype=WIRE_DTYPE.str,
        features=base64.b64encode(rows.tobytes()).decode("ascii"),
    )


def decode_features(payload: Mapping[str, Any]) -> np.ndarray:
    """The payload's (count, dim) float32 rows, after checking its format, version and length."""
    if payload.get("format") != FEATURES_FORMAT or payload.get("version") != FEATURES_VERSION:
        raise FeaturesFormatError(
            f"features payload is {payload.get('format')!r} version {payload.get('version')!r}; "
            f"this client reads {FEATURES_FORMAT!r} version {FEATURES_VERSION} (upgrade the client or the server)"
        )
    if payload.get("dtype") != WIRE_DTYPE.str:
        raise FeaturesFormatError(f"features dtype {payload.get('dtype')!r}; expected {WIRE_DTYPE.str!r}")
    raw = base64.b64decode(payload["features"], validate=True)
    count, dim = int(payload["count"]), int(payload["dim"])
    if len(raw) != count * dim * WIRE_DTYPE.itemsize:
        raise FeaturesFormatError(f"features hold {len(raw)} bytes; {count}×{dim} float32 need {count * dim * WIRE_DTYPE.itemsize}")
    return np.frombuffer(raw, WIRE_DTYPE).reshape(count, dim)
