"""The sync client: ``LossClient("http://gpu-1:8000").score(sr, gt, metrics="psnr,ssim", crop_border=4)``."""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from ..common.protocol import CATALOGUE_PATH, READYZ_PATH
from . import progress as in_order
from .core import TRANSPORT_ERRORS, ClientBase, RequestSpec, as_triplet


class LossClient(ClientBase):
    """``LossClient("http://gpu-1:8000", ...).score(sr, gt, metrics="psnr,ssim", crop_border=4)``."""

    http_class = httpx.Client

    def __enter__(self) -> LossClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _send(self, spec: RequestSpec) -> Any:
        """Send ``spec``, retrying 503s and transport failures as ``ClientCore.settle`` decides."""
        for attempt in itertools.count():
            url = self.core.acquire()
            try:
                response, error = self.http.request(**self.core.request_args(url, spec)), None
            except (httpx.TimeoutException, *TRANSPORT_ERRORS) as exc:
                response, error = None, exc
            finally:
                self.core.release(url)
            done, value = self.core.settle(attempt, url, spec, response, error)
            if done:
                return value
            time.sleep(value)

    def score(self, sr, gt=None, lr=None, teacher=None, metrics=None, **options) -> dict:
        return self._send(self.core.score_request(dict(sr=sr, gt=gt, lr=lr, teacher=teacher), metrics, options))

    def score_batch(self, triplets: Iterable, metrics=None, **options) -> dict:
        return self._send(self.core.batch_request(triplets, metrics, options))

    def score_candidates(self, candidates: Sequence[Any], gt=None, lr=None, teacher=None, metrics=None, **options) -> dict:
        """Score each of ``candidates`` against one ``gt`` (and ``lr``/``teacher``) in one request;
        the server decodes the reference and computes its features once. Returns the batch
        response: ``results`` in candidate order, ``mean``, ``conventions``."""
        return self._send(self.core.candidates_request(candidates, gt, lr, teacher, metrics, options))

    def imap(
        self,
        function: Callable[[Any], Any],
        items: Iterable,
        *,
        concurrency: int = 8,
        progress: bool = False,
        return_exceptions: bool = False,
        total: int | None = None,
    ) -> Iterator[Any]:
        """``function(item)`` for each item with up to ``concurrency`` calls in flight; results in input order."""
        with ThreadPoolExecutor(concurrency) as pool, in_order.ProgressBar(progress, total) as advance:
            window: deque = deque()
            for item in items:
                window.append(pool.submit(function, item))
                if len(window) >= concurrency * 2:
                    yield in_order.counted(in_order.outcome(window.popleft(), return_exceptions), advance)
            while window:
                yield in_order.counted(in_order.outcome(window.popleft(), return_exceptions), advance)

    def score_many(
        self,
        triplets: Iterable,
        metrics=None,
        *,
        concurrency: int = 8,
        progress: bool = False,
        return_exceptions: bool = False,
        total: int | None = None,
        **options,
    ) -> Iterator[Any]:
        """Score each triplet with up to ``concurrency`` requests in flight; yield in input order."""

        def one(triplet) -> dict:
            t = as_triplet(triplet)
            return self.score(t.get("sr"), t.get("gt"), t.get("lr"), t.get("teacher"), metrics, **options)

        return self.imap(one, triplets, concurrency=concurrency, progress=progress, return_exceptions=return_exceptions, total=total)

    def score_clip(self, sr, gt, metrics=None, **options) -> dict:
        """Score one clip: ``sr`` and ``gt`` each a video (path or bytes) or its frames in order;
        per-frame, per-pair (tof, tlp) and per-clip values (``POST /v1/score/clip``)."""
        return self._send(self.core.clip_request(sr, gt, metrics, options))

    def features(self, images: Sequence[Any], metrics=None, options: Mapping[str, Any] | None = None) -> dict:
        """Dataset-metric features of ``images`` (paths, bytes or arrays), one row each in order
        (``POST /v1/features``): the answer with ``features`` as a (count, dim) float32 array."""
        return self.core.features_result(self._send(self.core.features_request(images, metrics, options)))

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
