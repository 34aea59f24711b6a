"""The torch-free client side: the sync and async HTTP clients, ``eval``, ``report`` and its
statistics. Imports ``service.common`` and the library's torch-free modules
(``losses.sets.statistics``: NumPy; ``losses.clips.means``: pure Python), never ``service.server``
(tests/test_architecture.py checks this from the import graph)."""

from .aio import AsyncLossClient
from .encoding import encode_image
from .errors import BadRequest, ConnectionFailed, LossServiceError, RequestTimeout, ServerBusy, ServerError, Unauthorized, describe
from .sync import LossClient
from .validator import Validator

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
