"""The torch-free client side: the sync and async HTTP clients, ``eval``, ``report`` and its
statistics. Imports ``service.common`` and the library's torch-free modules
(``losses.sets.statistics``: NumPy; ``losses.clips.means``: pure Python), never ``service.server``
(tests/test_architecture.py checks this from the import graph).

The names below load on first use, so that ``loss-service --help`` builds ``eval``'s parser
(``eval/options.py``) without loading the HTTP side.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_HOMES = {
    "AsyncLossClient": "aio",
    "encode_image": "encoding",
    **dict.fromkeys(
        ("BadRequest", "ConnectionFailed", "LossServiceError", "RequestTimeout", "ServerBusy", "ServerError", "Unauthorized", "describe"),
        "errors",
    ),
    "LossClient": "sync",
    "Validator": "validator",
}

__all__ = [
    "AsyncLossClient",
    "BadRequest",
    "ConnectionFailed",
    "LossClient",
    "LossServiceError",
    "RequestTimeout",
    "ServerBusy",
    "ServerError",
    "Unauthorized",
    "Validator",
    "describe",
    "encode_image",
]

if TYPE_CHECKING:
    from .aio import AsyncLossClient
    from .encoding import encode_image
    from .errors import BadRequest, ConnectionFailed, LossServiceError, RequestTimeout, ServerBusy, ServerError, Unauthorized, describe
    from .sync import LossClient
    from .validator import Validator


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value
