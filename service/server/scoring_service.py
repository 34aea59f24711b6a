"""The request-level scoring service shared by the routes: decode uploads on a CPU pool,
validate them against the plan, queue them on the device batcher and shape the answer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image
from starlette.datastructures import UploadFile

from losses import registry

from ..common.decode import decode
from ..common.errors import ServiceError, invalid, unavailable
from ..common.features_wire import encode_features
from ..common.protocol import FEATURES_IMAGE_FIELD, IMAGE_ROLES, RANDOM_WEIGHTS_WARNING
from . import clips
from .batcher import Batcher, BatchTooLarge, QueueFull, ShuttingDown
from .memory import MemoryGuard
from .schemas import BatchItemError, BatchResponse, ClipResponse, FeaturesResponse, ScoreResponse, ScoreResult
from .scoring import Job, Plan, Scorer, too_large_for_device
from .settings import Settings
from .telemetry import Telemetry

log = logging.getLogger("loss_service")
INLINE_DECODE_BYTES = 64 * 1024  # a 128² RGB PNG of noise is ~49 KB


class ScoringService:
    """Owns the scorer, the batcher and the CPU pool; knows HTTP only through ``ServiceError``."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.scorer = Scorer(settings.engine_config())
        self.memory = MemoryGuard(self.scorer.device, settings.max_memory_gb)
        self.telemetry = Telemetry()
        # Host-side work off the event loop: decoding uploads (no torch: see ``start``).
        self.cpu_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="cpu-work")
        self.batcher: Batcher | None = None
        self.ready = False
        self.draining = False

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self.settings.max_image_pixels:
            Image.MAX_IMAGE_PIXELS = self.settings.max_image_pixels
        self.batcher = Batcher(
            self.scorer.run_batch,
            max_batch_size=self.settings.max_batch_size,
            max_delay_s=self.settings.max_delay_ms / 1000.0,
            max_queue=self.settings.max_queue,
            on_batch=self._observe_batch,
            name=f"device-{self.scorer.device}",
        )
        self.batcher.start()
        try:
            # All torch work runs on the batcher's thread, loading and warm-up included: each thread
            # that runs a parallel CPU op keeps an OpenMP team of its own, and once a process has more
            # OpenMP threads than CPUs, libgomp sleeps between parallel regions instead of spinning
            # (~95 sleeps and wake-ups per VGG16 pass here), which made the server's compute slower
            # than the same call in-process.
            await self.batcher.call(self.scorer.setup)
            await self.batcher.call(self.scorer.warmup)
        except BaseException:
            await self.batcher.stop()
            raise
        # A batch closes on pixels (--max-batch-pixels) and on estimated bytes: per-metric costs
        # × pixels, so a psnr batch is not held to CLP's limit. Known once the models take their memory.
        memory_gb = self.settings.max_batch_memory_gb
        self.batcher.max_batch_cost = (self.settings.max_batch_pixels, memory_gb * 2**30 if memory_gb else self.memory.budget()[0])
        self.telemetry.queue_depth.set_function(lambda: self.batcher.depth)
        self.ready = True
        log.info("ready on %s (%s, pretrained=%s)", self.scorer.device, self.settings.precision, self.scorer.pretrained)

    async def on_device_thread(self, fn):
        """``fn()`` on the batcher's thread, between batches (see ``start``); busy or stopping → 503."""
        return await self._queued(lambda batcher: batcher.call(fn))

    async def stop(self) -> None:
        self.draining = True
        if self.batcher is not None:
            await self.batcher.stop()
        self.cpu_pool.shutdown(wait=True)

    def _observe_batch(self, key: tuple, size: int, seconds: float) -> None:
        plan, _ = key  # Job.key
        label = plan.backbone_label
        self.telemetry.batch_size.labels(backbone=label).observe(size)
        self.telemetry.compute.labels(backbone=label).observe(seconds)

    def readiness(self) -> dict:
        models = {name: vars(state) for name, state in self.scorer.models.items()}
        return dict(
            ready=self.ready and not self.draining and self.scorer.ready,
            draining=self.draining,
            pretrained=self.scorer.pretrained,
            device=str(self.scorer.device),
            precision=self.settings.precision,
            models=models,
            missing=[name for name, state in self.scorer.models.items() if not state.loaded],
        )

    def catalogue(self) -> list[dict]:
        """The registry's metrics of every kind, each saying whether this server can score it (its
        models loaded; for vmaf, FFmpeg with libvmaf)."""
        entries = []
        for metric in registry.REGISTRY.values():
            reason = self.scorer.missing_reason(metric, dict(metric.options))
            entries.append({**metric.catalogue_entry(), "available": reason is None, "unavailable_reason": reason})
        return entries

    # --- scoring ---------------------------------------------------------------------------

    async def _decode_all(self, uploads: dict[str, UploadFile], plan: Plan) -> dict:
        loop = asyncio.get_running_loop()
        contents = {role: await upload.read() for role, upload in uploads.items()}
        max_pixels = self.settings.max_image_pixels

        def decode_one(role: str, data: bytes):
            return decode(data, role, max_pixels, lambda height, width: self.memory.check(plan.names, height, width, role))

        # A small file decodes on the event loop: ~0.2 ms, less than a hand-off to the pool and back.
        small = {role: decode_one(role, data) for role, data in contents.items() if len(data) <= INLINE_DECODE_BYTES}
        tasks = {
            role: loop.run_in_executor(self.cpu_pool, decode_one, role, data)
            for role, data in contents.items()
            if len(data) > INLINE_DECODE_BYTES
        }
        return {**small, **{role: await task for role, task in tasks.items()}}

    async def score(self, uploads: dict[str, UploadFile | None], plan: Plan) -> ScoreResponse:
        received = time.perf_counter()
        decoded = await self._decode_all({role: upload for role, upload in uploads.items() if upload is not None}, plan)
        result = await self._score_decoded(decoded, plan, received)
        return ScoreResponse(**result.model_dump(), conventions=self.scorer.conventions(plan))

    async def _score_decoded(self, decoded: dict, plan: Plan, received: float) -> ScoreResult:
        job = self.scorer.job(plan, decoded)
        outcome = await self._submit(job)
        self.telemetry.queue_wait.observe(outcome.queue_s)
        timing = dict(queue=outcome.queue_s * 1e3, compute=outcome.compute_s * 1e3, total=(time.perf_counter() - received) * 1e3)
        return ScoreResult(**self.scorer.encode(job, outcome.value), timing_ms=timing)

    async def _submit(self, job: Job):
        cost = (job.pixels, self.memory.estimate(job.plan.names, job.pixels))
        return await self._queued(lambda batcher: batcher.submit(job.key, job, cost))

    async def _queued(self, enqueue: Callable[[Batcher], Awaitable[Any]]) -> Any:
        """``enqueue(batcher)`` awaited, the batcher's refusals mapped to HTTP errors."""
        # Draining refuses new requests at the door (middleware); one already accepted, even if
        # still decoding when SIGTERM came, is served until the batcher itself stops.
        if self.batcher is None:
            raise unavailable(None, "server is shutting down", self.settings.retry_after_s)
        try:
            return await enqueue(self.batcher)
        except QueueFull as exc:
            self.telemetry.rejected.labels(reason="queue_full").inc()
            raise unavailable(None, f"{exc}; retry later", self.settings.retry_after_s) from None
        except ShuttingDown:
            raise unavailable(None, "server is shutting down", self.settings.retry_after_s) from None
        except BatchTooLarge as exc:
            self.telemetry.rejected.labels(reason="out_of_memory").inc()
            raise too_large_for_device(self.settings.max_image_pixels, exc) from None

    async def features(self, uploads: list[UploadFile], plan: Plan) -> FeaturesResponse:
        """Each image's dataset-metric features (one row per upload, in order), its jobs batched on
        the device with every other request's. One refused image refuses the request, naming it."""
        received = time.perf_counter()
        fields = [f"{FEATURES_IMAGE_FIELD}[{i}]" for i in range(len(uploads))]
        decoded = await self._decode_all(dict(zip(fields, uploads)), plan)

        def job(field: str, upload: UploadFile) -> Job:
            try:
                return self.scorer.job(plan, {"sr": decoded[field]})
            except ServiceError as exc:
                raise ServiceError(exc.kind, field, f"{field} ({upload.filename}): {exc.message}") from None

        jobs = [job(field, upload) for field, upload in zip(fields, uploads)]
        outcomes = await asyncio.gather(*(self._submit(job) for job in jobs))
        name = plan.names[0]  # the plan's metrics read one extractor (``Scorer.plan``)
        rows = np.stack([outcome.value[name] for outcome in outcomes])
        compute = sum(outcome.compute_s for outcome in outcomes) / len(outcomes)
        timing = dict(queue=max(o.queue_s for o in outcomes) * 1e3, compute=compute * 1e3, total=(time.perf_counter() - received) * 1e3)
        metric = plan.metrics[0]
        return FeaturesResponse(
            **encode_features(rows),
            extractor=":".join(metric.dataset.extractor(plan.resolved[metric.name])),
            metrics=list(plan.names),
            pretrained=self.scorer.pretrained,
            device=str(self.scorer.device),
            precision=self.scorer.precision,
            warnings=[w for job in jobs for w in job.warnings] + ([] if self.scorer.pretrained else [RANDOM_WEIGHTS_WARNING]),
            timing_ms=timing,
            conventions=self.scorer.conventions(plan),
        )

    async def score_clip(self, fields: dict[str, list[UploadFile]], plan: Plan) -> ClipResponse:
        """One clip: both roles decoded on the CPU pool (sizes checked first), scored on the device thread."""
        received = time.perf_counter()
        loop = asyncio.get_running_loop()
        names = plan.names
        max_pixels = self.settings.max_image_pixels

        def decode_frame(data: bytes, field: str):
            return decode(data, field, max_pixels, lambda height, width: self.memory.check(names, height, width, field))

        uploads = {role: [await upload.read() for upload in fields[role]] for role in ("sr", "gt")}

        async def read(role: str):
            return await loop.run_in_executor(
                self.cpu_pool, clips.frames_of, uploads[role], role, decode_frame, self.settings.max_clip_pixels
            )

        decoded = {role: await read(role) for role in ("sr", "gt")}
        clips.check_clips(decoded)
        started = time.perf_counter()
        with clips.video_sources(uploads) as sources:
            result = await self.on_device_thread(lambda: clips.run(self.scorer, plan, decoded, sources))
        timing = dict(queue=0.0, compute=(time.perf_counter() - started) * 1e3, total=(time.perf_counter() - received) * 1e3)
        return ClipResponse(
            **result,
            pretrained=self.scorer.pretrained,
            device=str(self.scorer.device),
            precision=self.scorer.precision,
            timing_ms=timing,
            conventions=self.scorer.conventions(plan),
        )

    async def score_batch(self, fields: dict[str, list[UploadFile]], plan: Plan) -> BatchResponse:
        """Triplets paired by order; a reference role (gt, lr, teacher) given once serves every sr
        (candidates ranked against one reference): decoded once, its features computed once."""
        received = time.perf_counter()
        count = len(fields["sr"])
        shared = {}
        for role in IMAGE_ROLES[1:]:
            files = fields.get(role) or []
            if len(files) == 1 and count > 1:
                shared[role] = files[0]
            elif files and len(files) != count:
                raise invalid(
                    role, f"{len(files)} {role} files for {count} sr files; give one {role} per sr file (paired by order) or one for all"
                )
        references = await self._decode_all(shared, plan)

        async def one(index: int):
            uploads = {role: files[index] for role, files in fields.items() if files and role not in shared}
            try:
                return await self._score_decoded({**references, **await self._decode_all(uploads, plan)}, plan, received)
            except ServiceError as exc:
                return BatchItemError.of(exc)

        results = await asyncio.gather(*(one(i) for i in range(count)))
        return BatchResponse(results=results, mean=batch_mean(results), conventions=self.scorer.conventions(plan))


def batch_mean(results: list) -> dict[str, float | None]:
    columns: dict[str, list[float]] = {}
    for result in results:
        if isinstance(result, ScoreResult):
            for name, value in result.scores.items():
                columns.setdefault(name, [])
                if value is not None:
                    columns[name].append(value)
    return {name: (sum(values) / len(values) if values else None) for name, values in columns.items()}
