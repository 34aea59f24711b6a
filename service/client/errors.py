"""What the clients raise: an error answer from the server, or a transport failure."""

from __future__ import annotations

from typing import Any


class LossServiceError(Exception):
    """An error answer from the server (``status``, ``detail``) or a transport failure."""

    def __init__(self, message: str, status: int | None = None, detail: Any = None):
        super().__init__(message)
        self.status, self.detail = status, detail


class BadRequest(LossServiceError):
    """4xx: the request itself is wrong; ``detail`` names the field."""


class Unauthorized(BadRequest):
    """401: missing or wrong API key."""


class ServerBusy(LossServiceError):
    """503 after every retry: overloaded, draining, or a model is missing."""


class ServerError(LossServiceError):
    """5xx other than 503."""


class ConnectionFailed(LossServiceError):
    """No replica could be reached after every retry."""


class RequestTimeout(LossServiceError):
    """The server did not answer within the timeout."""


def describe(detail: Any) -> str:
    if isinstance(detail, list):
        return "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" if isinstance(d, dict) else str(d) for d in detail)
    return str(detail)
