"""Sync and async clients for loss-service, on httpx; importable without torch or the server.

Both clients share ``ClientCore``, which builds requests, encodes images, picks a replica
(least outstanding requests), decides retries and parses responses; they differ only in
how they send and sleep.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import random
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence

import httpx
import numpy as np

from .protocol import (CATALOGUE_PATH, DISTILL_CONFIG_PARAM, DISTILL_PATH, IMAGE_ROLES, METRICS_FIELD, OPTIONS_FIELD, READYZ_PATH,
                       SCORE_BATCH_PATH, SCORE_PATH)

CHANNELS = (1, 2, 3, 4)  # grey, grey + alpha, RGB, RGBA
CONTENT_TYPES = {
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
    ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff", ".npy": "application/octet-stream",
}
RETRY_STATUSES = (503,)


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


# --- images -------------------------------------------------------------------------------


def _png(array: np.ndarray) -> bytes:
    """uint8 / uint16 H×W or H×W×C as PNG (pypng keeps 16-bit colour, which Pillow cannot)."""
    import png

    height, width = array.shape[:2]
    planes = 1 if array.ndim == 2 else array.shape[2]
    greyscale, alpha = planes in (1, 2), planes in (2, 4)
    buffer = io.BytesIO()
    writer = png.Writer(width, height, greyscale=greyscale, alpha=alpha, bitdepth=8 * array.dtype.itemsize)
    writer.write(buffer, array.reshape(height, width * planes))
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _tensor_to_array(tensor: Any, role: str) -> np.ndarray:
    """(C, H, W) or (1, C, H, W) tensor → H×W×C array (torch is already imported by the caller).
    An integer tensor keeps its dtype: uint8 from ``torchvision.io.read_image`` travels as PNG, as
    a uint8 array does (made float, its 0–255 values would be clamped to 1). Floats become float32."""
    tensor = tensor.detach().cpu()
    array = (tensor.float() if tensor.is_floating_point() else tensor).numpy()
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise ValueError(f"{role}: pass one image per field, got a batch of {array.shape[0]}")
        array = array[0]
    if array.ndim == 3 and array.shape[0] not in CHANNELS:
        raise ValueError(f"{role}: tensors are (C, H, W) with C in 1..4, got shape {tuple(tensor.shape)}; "
                         "for an (H, W, C) tensor pass t.permute(2, 0, 1)")
    return np.moveaxis(array, 0, -1) if array.ndim == 3 else array


def _image_array(array: np.ndarray, role: str) -> np.ndarray:
    """H×W or H×W×C with C in 1..4, as the server decodes ``.npy``; a batch of one is its image.
    Checked here: pypng's "Expected 96 values but got 1024" named neither the field nor the shape."""
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in CHANNELS):
        return array
    hint = "; channels first? pass np.moveaxis(a, 0, -1)" if array.ndim == 3 and array.shape[0] in CHANNELS else ""
    raise ValueError(f"{role}: arrays are H×W or H×W×C with C in 1..4, got shape {array.shape}{hint}")


def _pil_image(image: Any, role: str) -> tuple[str, bytes, str]:
    """PNG where PNG holds the mode; else TIFF, which keeps CMYK, YCbCr, LAB, 32-bit integer and
    float pixels as stored, for the server to convert as it converts such a file; else (HSV) RGB."""
    for fmt, suffix, content_type in (("PNG", "png", "image/png"), ("TIFF", "tif", "image/tiff")):
        buffer = io.BytesIO()
        try:
            image.save(buffer, format=fmt)
        except OSError:  # "cannot write mode CMYK as PNG"
            continue
        return f"{role}.{suffix}", buffer.getvalue(), content_type
    return _pil_image(image.convert("RGB"), role)


def _to_numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if type(value).__module__.startswith("torch") else np.asarray(value)


def encode_image(image: Any, role: str) -> tuple[str, bytes, str]:
    """A path, bytes, PIL image, NumPy array or torch tensor → (filename, bytes, content type).

    uint8/uint16 arrays travel as PNG, float arrays losslessly as ``.npy``.
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        return path.name, path.read_bytes(), CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        return (f"{role}.npy", data, CONTENT_TYPES[".npy"]) if data.startswith(b"\x93NUMPY") else (role, data, "application/octet-stream")
    if type(image).__module__.startswith("PIL."):
        return _pil_image(image, role)
    if type(image).__module__.startswith("torch"):
        image = _tensor_to_array(image, role)
    if isinstance(image, np.ndarray):
        image = _image_array(image, role)
        if image.dtype.newbyteorder("=") in (np.uint8, np.uint16):  # either byte order
            return f"{role}.png", _png(image), "image/png"
        if image.dtype.kind == "f":
            return f"{role}.npy", _npy(image.astype(np.float32, copy=False)), CONTENT_TYPES[".npy"]
        raise TypeError(f"{role}: arrays must be uint8, uint16 or float, got {image.dtype}")
    raise TypeError(f"{role}: unsupported image type {type(image).__name__}")


# --- the shared core ----------------------------------------------------------------------


@dataclass
class RequestSpec:
    method: str
    path: str
    params: dict | None = None
    content: bytes | None = None
    headers: dict = field(default_factory=dict)

    @classmethod
    def form(cls, path: str, files: list, data: dict) -> "RequestSpec":
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

    def attempt(self, spec: "RequestSpec", number: int) -> "Attempt":
        """One try of ``spec`` on the chosen replica, as a context manager around the I/O."""
        return Attempt(self, spec, number)

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

    def candidates_request(self, candidates: Sequence[Any], gt: Any, lr: Any = None, teacher: Any = None, metrics=None,
                           options=None) -> RequestSpec:
        """Many SR candidates against one reference: each reference image is sent once."""
        files = [("sr", encode_image(candidate, "sr")) for candidate in candidates]
        files += [(role, encode_image(image, role)) for role, image in (("gt", gt), ("lr", lr), ("teacher", teacher)) if image is not None]
        return RequestSpec.form(SCORE_BATCH_PATH, files, self._form(metrics, options or {}))

    def distill_request(self, tensors: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> RequestSpec:
        from safetensors.numpy import save

        arrays = {name: np.ascontiguousarray(_to_numpy(t)) for name, t in tensors.items()}
        return RequestSpec("POST", DISTILL_PATH, params={DISTILL_CONFIG_PARAM: json.dumps(dict(config or {}))}, content=save(arrays),
                           headers={"Content-Type": "application/octet-stream"})

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

    def settle(self, attempt: int, url: str, spec: RequestSpec, response: httpx.Response | None, error: Exception | None):
        """After one attempt: ``(True, parsed result)``, ``(False, delay)`` to retry, or raise."""
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


class Attempt:
    """Holds one replica for one try; on exit releases it and decides: ``done`` with ``result``,
    or retry after ``delay``. A timeout raises ``RequestTimeout``; transport errors are retried."""

    def __init__(self, core: ClientCore, spec: RequestSpec, number: int):
        self.core, self.spec, self.number = core, spec, number
        self.response: httpx.Response | None = None
        self.done, self.result, self.delay = False, None, 0.0

    def __enter__(self) -> "Attempt":
        self.url = self.core.acquire()
        spec = self.spec
        self.request_args = dict(method=spec.method, url=self.url + spec.path, params=spec.params, content=spec.content,
                                 headers=spec.headers)
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        self.core.release(self.url)
        if isinstance(error, httpx.TimeoutException):
            raise self.core.timeout(self.url, self.spec, error) from error
        if error is not None and not isinstance(error, TRANSPORT_ERRORS):
            return False
        self.done, value = self.core.settle(self.number, self.url, self.spec, self.response, error)
        self.result, self.delay = (value, 0.0) if self.done else (None, value)
        return True


def describe(detail: Any) -> str:
    if isinstance(detail, list):
        return "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" if isinstance(d, dict) else str(d) for d in detail)
    return str(detail)


def as_triplet(item: Any) -> dict:
    """A mapping with sr/gt[/lr/teacher], or a tuple (sr, gt[, lr[, teacher]])."""
    if isinstance(item, Mapping):
        return dict(item)
    return dict(zip(IMAGE_ROLES, item))


TRANSPORT_ERRORS = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


# --- the sync client ----------------------------------------------------------------------


class LossClient:
    """``LossClient("http://gpu-1:8000", ...).score(sr, gt, metrics="psnr,ssim", crop_border=4)``."""

    def __init__(self, urls: str | Sequence[str], *, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 4, backoff: float = 0.2, max_connections: int = 64):
        self.core = ClientCore(urls, api_key, retries, backoff)
        self.http = httpx.Client(timeout=timeout, headers=self.core.headers,
                                 limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections))

    def __enter__(self) -> "LossClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _send(self, spec: RequestSpec) -> Any:
        for number in itertools.count():
            with self.core.attempt(spec, number) as trial:
                trial.response = self.http.request(**trial.request_args)
            if trial.done:
                return trial.result
            time.sleep(trial.delay)

    def score(self, sr, gt, lr=None, teacher=None, metrics=None, **options) -> dict:
        return self._send(self.core.score_request(dict(sr=sr, gt=gt, lr=lr, teacher=teacher), metrics, options))

    def score_batch(self, triplets: Iterable, metrics=None, **options) -> dict:
        return self._send(self.core.batch_request(triplets, metrics, options))

    def score_candidates(self, candidates: Sequence[Any], gt, lr=None, teacher=None, metrics=None, **options) -> dict:
        """Score each of ``candidates`` against one ``gt`` (and ``lr``/``teacher``) in one request;
        the server decodes the reference and computes its features once. Returns the batch
        response: ``results`` in candidate order, ``mean``, ``conventions``."""
        return self._send(self.core.candidates_request(candidates, gt, lr, teacher, metrics, options))

    def imap(self, function: Callable[[Any], Any], items: Iterable, *, concurrency: int = 8, progress: bool = False,
             return_exceptions: bool = False, total: int | None = None) -> Iterator[Any]:
        """``function(item)`` for each item with up to ``concurrency`` calls in flight; results in input order."""
        with ThreadPoolExecutor(concurrency) as pool, _progress(progress, total) as advance:
            window: deque = deque()
            for item in items:
                window.append(pool.submit(function, item))
                if len(window) >= concurrency * 2:
                    yield _counted(_outcome(window.popleft(), return_exceptions), advance)
            while window:
                yield _counted(_outcome(window.popleft(), return_exceptions), advance)

    def score_many(self, triplets: Iterable, metrics=None, *, concurrency: int = 8, progress: bool = False,
                   return_exceptions: bool = False, total: int | None = None, **options) -> Iterator[Any]:
        """Score each triplet with up to ``concurrency`` requests in flight; yield in input order."""

        def one(triplet) -> dict:
            t = as_triplet(triplet)
            return self.score(t.get("sr"), t.get("gt"), t.get("lr"), t.get("teacher"), metrics, **options)

        return self.imap(one, triplets, concurrency=concurrency, progress=progress, return_exceptions=return_exceptions, total=total)

    def metrics(self) -> list[dict]:
        return self._send(RequestSpec("GET", CATALOGUE_PATH))

    def ready(self) -> dict:
        """/readyz of one replica (503 there is reported, not raised: it is an answer)."""
        url = self.core.acquire()
        try:
            return self.http.get(url + READYZ_PATH).json()
        finally:
            self.core.release(url)

    def distill(self, tensors: Mapping[str, Any], **config) -> dict:
        return self._send(self.core.distill_request(tensors, config))


def _outcome(future, return_exceptions: bool):
    try:
        return future.result()
    except LossServiceError as exc:
        if return_exceptions:
            return exc
        raise


def _counted(outcome, advance: Callable[[], None]):
    """``outcome`` after the progress bar has counted it: a consumer that stops at the last item
    (``zip``) then still sees the bar at its total."""
    advance()
    return outcome


class _progress:
    """A rich progress bar as a context manager yielding an ``advance()`` callable."""

    def __init__(self, enabled: bool, total: int | None):
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.console import Console
        from rich.progress import Progress

        self.bar = Progress(console=Console(stderr=True))  # stdout stays clean for the caller's output
        self.bar.start()
        task = self.bar.add_task("scoring", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.stop()


# --- the async client ---------------------------------------------------------------------


class AsyncLossClient:
    """The async twin of ``LossClient``; use ``async with AsyncLossClient(url) as client``."""

    def __init__(self, urls: str | Sequence[str], *, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 4, backoff: float = 0.2, max_connections: int = 64):
        self.core = ClientCore(urls, api_key, retries, backoff)
        self.http = httpx.AsyncClient(timeout=timeout, headers=self.core.headers,
                                      limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections))

    async def __aenter__(self) -> "AsyncLossClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _send(self, spec: RequestSpec) -> Any:
        for number in itertools.count():
            with self.core.attempt(spec, number) as trial:
                trial.response = await self.http.request(**trial.request_args)
            if trial.done:
                return trial.result
            await asyncio.sleep(trial.delay)

    async def score(self, sr, gt, lr=None, teacher=None, metrics=None, **options) -> dict:
        return await self._send(self.core.score_request(dict(sr=sr, gt=gt, lr=lr, teacher=teacher), metrics, options))

    async def score_batch(self, triplets: Iterable, metrics=None, **options) -> dict:
        return await self._send(self.core.batch_request(triplets, metrics, options))

    async def score_candidates(self, candidates: Sequence[Any], gt, lr=None, teacher=None, metrics=None, **options) -> dict:
        """See ``LossClient.score_candidates``."""
        return await self._send(self.core.candidates_request(candidates, gt, lr, teacher, metrics, options))

    async def score_many(self, triplets: Iterable, metrics=None, *, concurrency: int = 8, progress: bool = False,
                         return_exceptions: bool = False, total: int | None = None, **options) -> AsyncIterator[Any]:
        """Score with up to ``concurrency`` requests in flight; yield results in input order."""
        semaphore = asyncio.Semaphore(concurrency)

        async def one(t: dict):
            async with semaphore:
                return await self.score(t.get("sr"), t.get("gt"), t.get("lr"), t.get("teacher"), metrics, **options)

        with _progress(progress, total) as advance:
            window: deque = deque()
            for triplet in triplets:
                window.append(asyncio.ensure_future(one(as_triplet(triplet))))
                if len(window) >= concurrency * 2:
                    yield _counted(await _async_outcome(window.popleft(), return_exceptions), advance)
            while window:
                yield _counted(await _async_outcome(window.popleft(), return_exceptions), advance)

    async def metrics(self) -> list[dict]:
        return await self._send(RequestSpec("GET", CATALOGUE_PATH))

    async def ready(self) -> dict:
        url = self.core.acquire()
        try:
            return (await self.http.get(url + READYZ_PATH)).json()
        finally:
            self.core.release(url)

    async def distill(self, tensors: Mapping[str, Any], **config) -> dict:
        return await self._send(self.core.distill_request(tensors, config))


async def _async_outcome(task, return_exceptions: bool):
    try:
        return await task
    except LossServiceError as exc:
        if return_exceptions:
            return exc
        raise
