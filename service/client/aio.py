"""The async client, ``AsyncLossClient``: the sync client's twin on ``httpx.AsyncClient``."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import httpx

from ..common.protocol import CATALOGUE_PATH, READYZ_PATH
from . import progress as in_order
from .core import TRANSPORT_ERRORS, ClientBase, RequestSpec, as_triplet


class AsyncLossClient(ClientBase):
    """The async twin of ``LossClient``; use ``async with AsyncLossClient(url) as client``."""

    http_class = httpx.AsyncClient

    async def __aenter__(self) -> AsyncLossClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _send(self, spec: RequestSpec) -> Any:
        """Send ``spec``, retrying 503s and transport failures as ``ClientCore.settle`` decides."""
        for attempt in itertools.count():
            url = self.core.acquire()
            try:
                response, error = await self.http.request(**self.core.request_args(url, spec)), None
            except (httpx.TimeoutException, *TRANSPORT_ERRORS) as exc:
                response, error = None, exc
            finally:
                self.core.release(url)
            done, value = self.core.settle(attempt, url, spec, response, error)
            if done:
                return value
            await asyncio.sleep(value)

    async def score(self, sr, gt=None, lr=None, teacher=None, metrics=None, **options) -> dict:
        return await self._send(self.core.score_request(dict(sr=sr, gt=gt, lr=lr, teacher=teacher), metrics, options))

    async def score_batch(self, triplets: Iterable, metrics=None, **options) -> dict:
        return await self._send(self.core.batch_request(triplets, metrics, options))

    async def score_candidates(self, candidates: Sequence[Any], gt=None, lr=None, teacher=None, metrics=None, **options) -> dict:
        """See ``LossClient.score_candidates``."""
        return await self._send(self.core.candidates_request(candidates, gt, lr, teacher, metrics, options))

    async def score_many(
        self,
        triplets: Iterable,
        metrics=None,
        *,
        concurrency: int = 8,
        progress: bool = False,
        return_exceptions: bool = False,
        total: int | None = None,
        **options,
    ) -> AsyncIterator[Any]:
        """Score with up to ``concurrency`` requests in flight; yield results in input order."""
        semaphore = asyncio.Semaphore(concurrency)

        async def one(t: dict):
            async with semaphore:
                return await self.score(t.get("sr"), t.get("gt"), t.get("lr"), t.get("teacher"), metrics, **options)

        with in_order.ProgressBar(progress, total) as advance:
            window: deque = deque()
            for triplet in triplets:
                window.append(asyncio.ensure_future(one(as_triplet(triplet))))
                if len(window) >= concurrency * 2:
                    yield in_order.counted(await in_order.async_outcome(window.popleft(), return_exceptions), advance)
            while window:
                yield in_order.counted(await in_order.async_outcome(window.popleft(), return_exceptions), advance)

    async def score_clip(self, sr, gt, metrics=None, **options) -> dict:
        """Score one clip: ``sr`` and ``gt`` each a video (path or bytes) or its frames in order;
        per-frame, per-pair (tof, tlp) and per-clip values (``POST /v1/score/clip``)."""
        return await self._send(self.core.clip_request(sr, gt, metrics, options))

    async def features(self, images: Sequence[Any], metrics=None, options: Mapping[str, Any] | None = None) -> dict:
        """Dataset-metric features of ``images`` (paths, bytes or arrays), one row each in order
        (``POST /v1/features``): the answer with ``features`` as a (count, dim) float32 array."""
        return self.core.features_result(await self._send(self.core.features_request(images, metrics, options)))

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
