"""What the sync and async clients share, everything but the I/O: building requests, choosing a
replica (least outstanding requests), the retry policy and parsing answers. The clients differ
only in how they send and sleep (``sync.py``, ``aio.py``)."""

from __future__ import annotations

import itertools
import json
import random
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from ..common.features_wire import decode_features
from ..common.protocol import (
    DISTILL_CONFIG_PARAM,
    DISTILL_PATH,
    FEATURES_IMAGE_FIELD,
    FEATURES_PATH,
    IMAGE_ROLES,
    METRICS_FIELD,
    OPTIONS_FIELD,
    SCORE_BATCH_PATH,
    SCORE_CLIP_PATH,
    SCORE_PATH,
)
from .encoding import _to_numpy, encode_image
from .errors import BadRequest, ConnectionFailed, RequestTimeout, ServerBusy, ServerError, Unauthorized, describe

RETRY_STATUSES = (503,)
# Failures of one try that another try may not meet: the connection, not the request, failed.
TRANSPORT_ERRORS = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


@dataclass
class RequestSpec:
    method: str
    path: str
    params: dict | None = None
    content: bytes | None = None
    headers: dict = field(default_factory=dict)

    @classmethod
    def form(cls, path: str, files: list, data: dict) -> RequestSpec:
        """A multipart POST, encoded once by httpx into one body. Given ``files=``, httpx writes a
        form field by field: ~10 TCP segments, each waking the server to parse a piece (0.5 ms of a
        lone 128² request). One body goes out in one write, and a retry re-sends the same bytes."""
        request = httpx.Request("POST", "http://form.invalid" + path, files=files, data=data)
        return cls("POST", path, content=request.read(), headers={"Content-Type": request.headers["Content-Type"]})


class ClientCore:
    """Everything but the I/O: request building, replica choice, retry policy, parsing."""

    def __init__(
        self,
        urls: str | Sequence[str],
        api_key: str | None = None,
        retries: int = 4,
        backoff: float = 0.2,
        max_backoff: float = 10.0,
    ):
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("give at least one base URL")
        self.urls = [u.rstrip("/") for u in self.urls]
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.outstanding = {url: 0 for url in self.urls}
        self.sent = {url: 0 for url in self.urls}
        self._lock = threading.Lock()
        self._tiebreak = itertools.count()

    # replica choice: least outstanding requests, ties broken round-robin
    def acquire(self) -> str:
        with self._lock:
            turn = next(self._tiebreak)
            n = len(self.urls)
            url = min((self.urls[(turn + i) % n] for i in range(n)), key=lambda u: self.outstanding[u])
            self.outstanding[url] += 1
            self.sent[url] += 1
            return url

    def release(self, url: str) -> None:
        with self._lock:
            self.outstanding[url] -= 1

    # requests
    @staticmethod
    def _form(metrics: str | Sequence[str] | None, options: Mapping[str, Any]) -> dict:
        data = {}
        if metrics is not None:
            data[METRICS_FIELD] = metrics if isinstance(metrics, str) else ",".join(metrics)
        if options:
            data[OPTIONS_FIELD] = json.dumps(dict(options))
        return data

    def score_request(self, images: Mapping[str, Any], metrics=None, options: Mapping[str, Any] | None = None) -> RequestSpec:
        files = [(role, encode_image(images[role], role)) for role in IMAGE_ROLES if images.get(role) is not None]
        return RequestSpec.form(SCORE_PATH, files, self._form(metrics, options or {}))

    def batch_request(self, triplets: Iterable[Mapping[str, Any]], metrics=None, options=None) -> RequestSpec:
        files = []
        for triplet in triplets:
            triplet = as_triplet(triplet)
            files += [(role, encode_image(triplet[role], role)) for role in IMAGE_ROLES if triplet.get(role) is not None]
        return RequestSpec.form(SCORE_BATCH_PATH, files, self._form(metrics, options or {}))

    def candidates_request(
        self, candidates: Sequence[Any], gt: Any, lr: Any = None, teacher: Any = None, metrics=None, options=None
    ) -> RequestSpec:
        """Many SR candidates against one reference: each reference image is sent once."""
        files = [("sr", encode_image(candidate, "sr")) for candidate in candidates]
        files += [(role, encode_image(image, role)) for role, image in (("gt", gt), ("lr", lr), ("teacher", teacher)) if image is not None]
        return RequestSpec.form(SCORE_BATCH_PATH, files, self._form(metrics, options or {}))

    def clip_request(self, sr: Any, gt: Any, metrics=None, options=None) -> RequestSpec:
        """One clip per role: a video (a path or bytes, sent as one upload) or its frames in order."""
        files = []
        for role, clip in (("sr", sr), ("gt", gt)):
            frames = [clip] if isinstance(clip, str | Path | bytes | bytearray) else list(clip)
            files += [(role, encode_image(frame, role)) for frame in frames]
        return RequestSpec.form(SCORE_CLIP_PATH, files, self._form(metrics, options or {}))

    def features_request(self, images: Sequence[Any], metrics=None, options: Mapping[str, Any] | None = None) -> RequestSpec:
        """One set's images (paths, bytes or arrays) for dataset-metric features, in order;
        ``options`` as the metrics take them (``{"convention": "clean-fid"}``)."""
        files = [(FEATURES_IMAGE_FIELD, encode_image(image, FEATURES_IMAGE_FIELD)) for image in images]
        return RequestSpec.form(FEATURES_PATH, files, self._form(metrics, options or {}))

    @staticmethod
    def features_result(payload: dict) -> dict:
        """The /v1/features answer with ``features`` decoded to a (count, dim) float32 array."""
        return {**payload, "features": decode_features(payload)}

    def distill_request(self, tensors: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> RequestSpec:
        from safetensors.numpy import save

        arrays = {name: np.ascontiguousarray(_to_numpy(t)) for name, t in tensors.items()}
        return RequestSpec(
            "POST",
            DISTILL_PATH,
            params={DISTILL_CONFIG_PARAM: json.dumps(dict(config or {}))},
            content=save(arrays),
            headers={"Content-Type": "application/octet-stream"},
        )

    # responses
    def retry_delay(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before retry ``attempt`` (0-based), or None to give up."""
        if attempt >= self.retries:
            return None
        delay = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random())  # exponential, jittered
        if response is not None:
            retry_after = response.headers.get("retry-after", "")
            if retry_after.replace(".", "", 1).isdigit():
                delay = max(delay, float(retry_after))
        return delay

    @staticmethod
    def request_args(url: str, spec: RequestSpec) -> dict:
        """``httpx``'s ``request`` arguments for one try of ``spec`` on replica ``url``."""
        return dict(method=spec.method, url=url + spec.path, params=spec.params, content=spec.content, headers=spec.headers)

    def settle(self, attempt: int, url: str, spec: RequestSpec, response: httpx.Response | None, error: Exception | None):
        """After try ``attempt`` (0-based), which got ``response`` or failed with ``error`` (a
        timeout or one of TRANSPORT_ERRORS): ``(True, parsed result)``, ``(False, delay)`` to
        retry after ``delay`` seconds, or raise."""
        if isinstance(error, httpx.TimeoutException):
            raise self.timeout(url, spec, error) from error
        if response is not None and response.status_code not in RETRY_STATUSES:
            return True, self.parse(response)
        delay = self.retry_delay(attempt, response)
        if delay is not None:
            return False, delay
        if response is not None:
            return True, self.parse(response)
        raise ConnectionFailed(f"{url}{spec.path}: {error}") from error

    @staticmethod
    def timeout(url: str, spec: RequestSpec, exc: Exception) -> RequestTimeout:
        return RequestTimeout(f"{url}{spec.path}: no answer within the timeout ({exc})")

    @staticmethod
    def parse(response: httpx.Response) -> Any:
        if response.status_code < 400:
            return response.json()
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text
        message = f"{response.request.method} {response.request.url.path}: HTTP {response.status_code}: {describe(detail)}"
        status = response.status_code
        kind = Unauthorized if status == 401 else BadRequest if status < 500 else ServerBusy if status == 503 else ServerError
        raise kind(message, status, detail)


def as_triplet(item: Any) -> dict:
    """A mapping with sr/gt[/lr/teacher], or a tuple (sr, gt[, lr[, teacher]])."""
    if isinstance(item, Mapping):
        return dict(item)
    return dict(zip(IMAGE_ROLES, item))


class ClientBase:
    """What both clients set up alike: the shared core and an httpx client of ``http_class``
    (``httpx.Client`` or ``httpx.AsyncClient``) with one connection pool for every replica."""

    http_class: type

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.2,
        max_connections: int = 64,
    ):
        self.core = ClientCore(urls, api_key, retries, backoff)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.http = self.http_class(timeout=timeout, headers=self.core.headers, limits=limits)
