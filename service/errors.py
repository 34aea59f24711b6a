"""Client-facing errors: an HTTP status plus a machine-readable detail naming the field.

The detail has FastAPI's own validation shape, ``[{"loc": [...], "msg": ..., "type": ...}]``,
so clients parse one format for every 4xx.
"""

from __future__ import annotations

import json


class ServiceError(Exception):
    def __init__(self, status: int, field: str | None, message: str, kind: str, headers: dict | None = None,
                 location: str = "body"):
        super().__init__(message)
        self.status, self.field, self.message, self.kind, self.headers = status, field, message, kind, headers
        self.location = location  # "body" (a form field or the upload) or "query"

    @property
    def detail(self) -> list[dict]:
        loc = [self.location, self.field] if self.field else ["request"]
        return [{"loc": loc, "msg": self.message, "type": self.kind}]


HTTP_ERROR_KINDS = {400: "malformed_body", 404: "not_found", 405: "method_not_allowed"}


def as_detail(status: int, message: str) -> list[dict]:
    """A framework's bare-string error as the detail every 4xx has; a 400 is the body's."""
    return [{"loc": ["body"] if status == 400 else ["request"], "msg": message, "type": HTTP_ERROR_KINDS.get(status, "http_error")}]


def too_large(field: str, message: str) -> ServiceError:
    return ServiceError(413, field, message, "too_large")


def unsupported(field: str, message: str) -> ServiceError:
    return ServiceError(415, field, message, "unsupported_media")


def invalid(field: str, message: str, location: str = "body") -> ServiceError:
    return ServiceError(422, field, message, "invalid", location=location)


def unavailable(field: str | None, message: str, retry_after: int | None = None) -> ServiceError:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return ServiceError(503, field, message, "unavailable", headers)


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


def json_object(text: str, field: str, example: str, max_chars: int = 4096) -> dict:
    """Parse a JSON-object form/query field, or raise a 422 naming it."""
    if len(text) > max_chars:
        raise invalid(field, f"{field}: {len(text)} characters; at most {max_chars}")
    try:
        value = loads_unique(text)
    except json.JSONDecodeError as exc:
        raise invalid(field, f"{field}: not valid JSON ({exc})") from None
    except RepeatedKey as exc:
        raise invalid(field, f"{field}: {exc}") from None
    if not isinstance(value, dict):
        raise invalid(field, f"{field}: must be a JSON object, e.g. {example}")
    return value
