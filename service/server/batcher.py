"""A generic dynamic batcher: it groups keyed work items and runs a batch callable on them.

It knows nothing about metrics or tensors. Items with equal keys can share one call of
``run_batch(key, payloads) -> results``. A dedicated worker thread (one per device) takes the
oldest item's key and every queued item with that key, up to ``max_batch_size`` items or any
limit of ``max_batch_cost``: each item carries a cost vector (the service's is pixels and
estimated bytes) and a batch's summed costs stay within the limits, one limit per entry (None:
no limit). With ``max_delay_s`` > 0 a batch may wait that long after its first item for
company, and with 0 the worker never waits while work is queued.

``call(fn)`` runs any other callable on the same worker thread, alone and in queue order:
for work that must share the thread the batches run on.

Faults: ``run_batch`` raises ``BatchTooLarge`` (e.g. on out-of-memory) to have the batch
split in halves and retried; any other exception makes each item run alone, so one bad
item fails alone. Results may also be exception instances, which fail their item.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """The queue holds ``max_queue`` items; the caller should retry later."""


class BatchTooLarge(Exception):
    """Raised by ``run_batch`` when the batch does not fit; the batcher splits it."""


class ShuttingDown(Exception):
    """The batcher no longer accepts work."""


@dataclass
class Outcome:
    value: Any
    queue_s: float
    compute_s: float
    batch_size: int


@dataclass
class _Item:
    key: Hashable
    payload: Any
    cost: Costs
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    is_call: bool = False  # payload is a callable run alone (``Batcher.call``), not a batch item
    enqueued: float = field(default_factory=time.perf_counter)


BatchObserver = Callable[[Hashable, int, float], None]
Costs = tuple[float, ...]
Limits = tuple[float | None, ...]


def _within(total: Costs, limits: Limits) -> bool:
    return all(limit is None or value <= limit for value, limit in zip(total, limits))


def _add(a: Costs, b: Costs) -> Costs:
    return tuple(x + y for x, y in zip(a, b)) if a else b


class Batcher:
    def __init__(
        self,
        run_batch: Callable[[Hashable, Sequence[Any]], Sequence[Any]],
        *,
        max_batch_size: int = 16,
        max_batch_cost: Limits = (),
        max_delay_s: float = 0.0,
        max_queue: int | None = None,
        on_batch: BatchObserver | None = None,
        name: str = "batcher",
    ):
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_batch_cost = tuple(max_batch_cost)
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)

    @property
    def depth(self) -> int:
        """Items queued and not yet taken into a batch."""
        return len(self._queue)

    def start(self) -> None:
        self._thread.start()

    async def submit(self, key: Hashable, payload: Any, cost: Costs = ()) -> Outcome:
        return await self._enqueue(key, payload, cost, is_call=False)

    async def call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run on the worker thread, alone and in queue order (same queue limit as
        ``submit``); its exception, if any, is raised here."""
        return (await self._enqueue(object(), fn, (), is_call=True)).value

    async def _enqueue(self, key: Hashable, payload: Any, cost: Costs, is_call: bool) -> Outcome:
        loop = asyncio.get_running_loop()
        item = _Item(key, payload, cost, loop, loop.create_future(), is_call)
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the batcher is shutting down")
            if self.max_queue is not None and len(self._queue) >= self.max_queue:
                raise QueueFull(f"queue full ({self.max_queue} items)")
            self._queue.append(item)
            self._cond.notify()
        return await item.future

    async def stop(self) -> None:
        """Finish everything already queued, then end the worker thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)

    # --- worker thread -------------------------------------------------------------------

    def _compatible(self, key: Hashable) -> list[_Item]:
        """Queued items with ``key``, oldest first, while the summed costs stay within the limits
        (the first item always goes: alone it is the smallest batch there is)."""
        batch, cost = [], ()
        for item in self._queue:
            if item.key != key:
                continue
            if batch and not _within(_add(cost, item.cost), self.max_batch_cost):
                break
            batch.append(item)
            cost = _add(cost, item.cost)
            if len(batch) == self.max_batch_size:
                break
        return batch

    def _is_full(self, batch: list[_Item]) -> bool:
        if len(batch) >= self.max_batch_size or batch[0].is_call:
            return True
        total: Costs = ()
        for item in batch:
            total = _add(total, item.cost)
        return any(limit is not None and value >= limit for value, limit in zip(total, self.max_batch_cost))

    def _next_batch(self) -> list[_Item] | None:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            first = self._queue[0]
            deadline = first.enqueued + self.max_delay_s
            batch = self._compatible(first.key)
            while not self._stopping and not self._is_full(batch) and (remaining := deadline - time.perf_counter()) > 0:
                self._cond.wait(remaining)
                batch = self._compatible(first.key)
            for item in batch:
                self._queue.remove(item)
            return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run(batch)

    def _run(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        if batch[0].is_call:
            try:
                result = batch[0].payload()
            except Exception as exc:  # noqa: BLE001 - raised to the caller
                result = exc
            self._settle(batch[0], result, started, time.perf_counter(), 1)
            return
        try:
            results = list(self._run_batch(batch[0].key, [item.payload for item in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
        except BatchTooLarge as exc:
            if len(batch) == 1:
                self._settle(batch[0], exc, started, time.perf_counter(), 1)
            else:
                half = len(batch) // 2
                self._run(batch[:half])
                self._run(batch[half:])
            return
        except Exception as exc:  # noqa: BLE001 - isolate the failing item
            if len(batch) == 1:
                self._settle(batch[0], exc, started, time.perf_counter(), 1)
            else:
                for item in batch:
                    self._run([item])
            return
        finished = time.perf_counter()
        if self._on_batch is not None:
            self._on_batch(batch[0].key, len(batch), finished - started)
        for item, result in zip(batch, results):
            self._settle(item, result, started, finished, len(batch))

    @staticmethod
    def _settle(item: _Item, result: Any, started: float, finished: float, size: int) -> None:
        def resolve() -> None:
            if item.future.done():  # the client went away
                return
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(Outcome(result, started - item.enqueued, finished - started, size))

        try:
            item.loop.call_soon_threadsafe(resolve)
        except RuntimeError:  # the event loop is already closed: nobody is waiting
            pass
