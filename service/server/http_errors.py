"""The HTTP layer's side of refusals: the status code of each kind of ``ServiceError`` and the
JSON response every refusal gets. Nothing below the routes names a status code."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from ..common.errors import INVALID, TIMEOUT, TOO_LARGE, UNAUTHORIZED, UNAVAILABLE, UNSUPPORTED_MEDIA, ServiceError, error_detail

STATUS_OF_KIND = {UNAUTHORIZED: 401, TIMEOUT: 408, TOO_LARGE: 413, UNSUPPORTED_MEDIA: 415, INVALID: 422, UNAVAILABLE: 503}
# The framework's own errors (a multipart body without its boundary, an unknown path, a wrong method).
KIND_OF_STATUS = {400: "malformed_body", 404: "not_found", 405: "method_not_allowed"}


def status_of(error: ServiceError) -> int:
    return STATUS_OF_KIND[error.kind]


def error_response(error: ServiceError, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": error.detail}, status_code=status_of(error), headers={**(error.headers or {}), **(headers or {})})


def framework_detail(status: int, message: str) -> list[dict]:
    """A framework's bare-string error as the detail every refusal has; a 400 is the body's."""
    return error_detail(message, KIND_OF_STATUS.get(status, "http_error"), ["body"] if status == 400 else ["request"])
