"""Validation from a training loop without slowing it: ``validator(step, sr, gt)`` clones the
tensors and returns at once; a background thread copies them to the host, encodes them (floats
losslessly as float32 ``.npy``, as the library scores them) and scores them through the server
with the client's retries. ``validator.result(step)`` waits for that step's scores.

Bounded: at most ``max_in_flight`` batches wait or are being scored. When that many are pending,
``when_full="block"`` makes the call wait for room; ``"drop_oldest"`` drops the oldest batch not
yet sent, with a warning, and never blocks (it needs ``max_in_flight`` ≥ 2: the batch being sent
is never dropped). A server that cannot be reached is logged once, as an error, and
training goes on; each affected step's ``result`` raises the client's error.

Each result can go to TensorBoard (any object with ``add_scalar``, e.g. a ``SummaryWriter``), to
Weights & Biases (any object with ``log``, e.g. ``wandb.init(mode="offline")``) and to a results
store (``store="results.db"``). Torch is used only through the tensors handed in.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .errors import ConnectionFailed, LossServiceError
from .store import ResultsStore, Row, conventions_hash
from .sync import LossClient

log = logging.getLogger("loss_service.validator")
WHEN_FULL = ("block", "drop_oldest")


@dataclass
class _Batch:
    step: int
    images: dict[str, Any]  # role → (B, C, H, W) tensor, cloned at submission
    future: Future = field(default_factory=Future)


class Validator:
    """``Validator("http://gpu-1:8000", metrics="psnr,ssim,lpips_alex", crop_border=4)``; call it
    with ``(step, sr, gt[, lr])`` batches, read ``result(step)``; ``close()`` (or ``with``) at the end."""

    def __init__(
        self,
        url: str,
        metrics: str = "psnr,ssim",
        *,
        max_in_flight: int = 4,
        when_full: str = "block",
        eight_bit: bool = False,
        writer: Any = None,
        wandb_run: Any = None,
        store: str | None = None,
        model: str = "model",
        dataset: str = "validation",
        scale: int = 0,
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 4,
        **options: Any,
    ):
        if when_full not in WHEN_FULL:
            raise ValueError(f"when_full must be one of {WHEN_FULL}, got {when_full!r}")
        if max_in_flight < (2 if when_full == "drop_oldest" else 1):
            raise ValueError(
                f"max_in_flight must be at least {2 if when_full == 'drop_oldest' else 1} with when_full={when_full!r} "
                f"(the batch being sent is never dropped), got {max_in_flight}"
            )
        self.metrics, self.options, self.eight_bit = metrics, options, eight_bit
        self.max_in_flight, self.when_full = max_in_flight, when_full
        self.writer, self.wandb_run = writer, wandb_run
        self.store_path, self.store = store, None  # opened on the background thread, which alone writes it
        self.model, self.dataset, self.scale = model, dataset, scale
        self.client = LossClient(url, api_key=api_key, timeout=timeout, retries=retries)
        self.results: dict[int, Future] = {}
        self._queue: deque[_Batch] = deque()
        self._pending = 0  # queued + being scored
        self._room = threading.Condition()
        self._closed = False
        self._reported_failure = False
        self._thread = threading.Thread(target=self._work, name="loss-service-validator", daemon=True)
        self._thread.start()

    # --- the training loop's side ---------------------------------------------------------

    def __call__(self, step: int, sr, gt=None, lr=None) -> Future:
        """Queue one batch for scoring and return at once (or, with ``when_full="block"``, once
        there is room). The tensors are cloned, so the loop may overwrite its own."""
        images = {role: tensor.detach().clone() for role, tensor in (("sr", sr), ("gt", gt), ("lr", lr)) if tensor is not None}
        batch = _Batch(step, images)
        with self._room:
            if self._closed:
                raise RuntimeError("the validator is closed")
            while self._pending >= self.max_in_flight:
                if self.when_full == "drop_oldest" and self._queue:
                    dropped = self._queue.popleft()
                    self._pending -= 1
                    dropped.future.cancel()
                    log.warning(
                        "validation of step %d dropped: %d batches already in flight (max_in_flight)", dropped.step, self.max_in_flight
                    )
                else:
                    self._room.wait()
            self._queue.append(batch)
            self._pending += 1
            self.results[step] = batch.future
            self._room.notify_all()
        return batch.future

    def result(self, step: int, timeout: float | None = None) -> dict:
        """``{"per_image": [scores, ...], "mean": {metric: value}, "conventions": {...}}`` of ``step``."""
        return self.results[step].result(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Score what is queued, then stop the thread and close the client and the store."""
        with self._room:
            self._closed = True
            self._room.notify_all()
        self._thread.join(timeout)
        self.client.close()

    def __enter__(self) -> Validator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the background thread -------------------------------------------------------------

    def _work(self) -> None:
        try:
            self.store = ResultsStore(self.store_path) if self.store_path else None
        except Exception:  # noqa: BLE001 - a bad store path is reported and scoring goes on without it
            log.exception("the results store %s cannot be opened; scores are not stored", self.store_path)
        try:
            self._serve()
        finally:
            if self.store is not None:
                self.store.close()

    def _serve(self) -> None:
        while True:
            with self._room:
                while not self._queue and not self._closed:
                    self._room.wait()
                if not self._queue:
                    return
                batch = self._queue.popleft()
            try:
                if batch.future.set_running_or_notify_cancel():
                    batch.future.set_result(self._score(batch))
            except LossServiceError as exc:
                self._report_failure(batch.step, exc)
                batch.future.set_exception(exc)
            except Exception as exc:  # noqa: BLE001 - never let a validation error reach the training loop
                log.exception("validation of step %d failed", batch.step)
                batch.future.set_exception(exc)
            finally:
                with self._room:
                    self._pending -= 1
                    self._room.notify_all()

    def _score(self, batch: _Batch) -> dict:
        arrays = {role: self._host_images(tensor) for role, tensor in batch.images.items()}
        triplets = [{role: images[i] for role, images in arrays.items()} for i in range(len(arrays["sr"]))]
        answer = self.client.score_batch(triplets, self.metrics, **self.options)
        per_image = [item.get("scores") for item in answer["results"]]
        result = dict(per_image=per_image, mean=answer["mean"], conventions=answer["conventions"])
        self._log(batch.step, result)
        return result

    def _host_images(self, tensor) -> list:
        """(B, C, H, W) → B host arrays H×W×C: float32 (lossless, what the library scores) or uint8."""
        host = tensor.to("cpu").float().permute(0, 2, 3, 1).numpy()
        if self.eight_bit:
            host = (host.clip(0, 1) * 255.0).round().astype("uint8")
        return list(host)

    def _log(self, step: int, result: dict) -> None:
        scalars = {f"validation/{name}": value for name, value in result["mean"].items() if value is not None}
        if self.writer is not None:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, step)
        if self.wandb_run is not None:
            self.wandb_run.log(scalars, step=step)
        if self.store is not None:
            digest = conventions_hash(result["conventions"])
            rows = [
                Row(self.model, self.dataset, self.scale, f"{index:05d}", metric, value, digest, step=step)
                for index, scores in enumerate(result["per_image"])
                if scores is not None
                for metric, value in scores.items()
            ]
            self.store.add(rows, result["conventions"])

    def _report_failure(self, step: int, exc: LossServiceError) -> None:
        """A dead server is logged once, clearly; later failures of the same kind at debug level."""
        if isinstance(exc, ConnectionFailed) and self._reported_failure:
            log.debug("validation of step %d failed: %s", step, exc)
            return
        self._reported_failure = self._reported_failure or isinstance(exc, ConnectionFailed)
        log.error("validation of step %d failed (training goes on; result(%d) raises it): %s", step, step, exc)
