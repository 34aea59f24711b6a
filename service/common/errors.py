"""Refusals the service reports to a client: a kind, the field it names and a message.

The kind says what went wrong (``invalid``, ``too_large``, ...); the HTTP layer alone maps it to a
status code (``service/server/http_errors.py``). ``error_detail`` builds the one body every 4xx and
503 carries, FastAPI's own validation shape ``[{"loc": [...], "msg": ..., "type": ...}]``, so
clients parse one format for every refusal.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

# What went wrong, as the ``type`` of a detail; the HTTP layer gives each its status code.
INVALID, TOO_LARGE, UNSUPPORTED_MEDIA, UNAVAILABLE = "invalid", "too_large", "unsupported_media", "unavailable"
UNAUTHORIZED, TIMEOUT = "unauthorized", "timeout"


def error_detail(message: str, kind: str, loc: Sequence[str] = ("request",)) -> list[dict]:
    """The detail of every refusal: one entry naming where (``loc``), what (``msg``) and its kind."""
    return [{"loc": list(loc), "msg": message, "type": kind}]


class ServiceError(Exception):
    """A refusal of the request: raised by decoding and the scoring engine, answered by the HTTP layer."""

    def __init__(self, kind: str, field: str | None, message: str, headers: dict | None = None, location: str | None = None):
        super().__init__(message)
        self.kind, self.field, self.message, self.headers = kind, field, message, headers
        self.location = location  # "body" (a form field, the upload or the body itself) or "query"

    @property
    def detail(self) -> list[dict]:
        """Located at ``[location, field]``: a field is in the body unless said otherwise; a refusal
        naming no field is the request's, or the body's where ``location`` says so."""
        loc = [self.location or "body", self.field] if self.field else [self.location or "request"]
        return error_detail(self.message, self.kind, loc)


def too_large(field: str, message: str) -> ServiceError:
    return ServiceError(TOO_LARGE, field, message)


def unsupported(field: str, message: str) -> ServiceError:
    return ServiceError(UNSUPPORTED_MEDIA, field, message)


def invalid(field: str, message: str, location: str | None = None) -> ServiceError:
    return ServiceError(INVALID, field, message, location=location)


def unavailable(field: str | None, message: str, retry_after: int | None = None) -> ServiceError:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return ServiceError(UNAVAILABLE, field, message, headers)


def comma_list(text: str | None) -> list[str]:
    """A comma-separated list as the metrics field, ``--metrics`` and ``--models`` take it: names
    stripped, empty entries dropped (``"psnr, ssim,"`` is ``["psnr", "ssim"]``)."""
    return [name.strip() for name in (text or "").split(",") if name.strip()]


class RepeatedKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise RepeatedKey(f"{repeated[0]!r} given {keys.count(repeated[0])} times; give each key once")
    return dict(pairs)


def loads_unique(text: str):
    """``json.loads`` that refuses a repeated key, which it would settle by keeping the last:
    ``{"crop_border": 4, "crop_border": 0}`` is a mistake to report, not a choice to make."""
    return json.loads(text, object_pairs_hook=_unique_keys)


def parse_json_object(text: str, example: str) -> dict:
    """A JSON object with each key once, or a ``ValueError`` saying what is wrong with ``text``."""
    try:
        value = loads_unique(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc}); e.g. {example}") from None
    except RepeatedKey as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(value, dict):
        raise ValueError(f"must be a JSON object, e.g. {example}, got {text!r}")
    return value


def json_object(text: str, field: str, example: str, max_chars: int = 4096) -> dict:
    """A JSON-object form or query field, or a refusal naming it."""
    if len(text) > max_chars:
        raise invalid(field, f"{field}: {len(text)} characters; at most {max_chars}")
    try:
        return parse_json_object(text, example)
    except ValueError as exc:
        raise invalid(field, f"{field}: {exc}") from None
