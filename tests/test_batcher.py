"""The batcher's cost limits: a batch closes on any limit of its cost vector (the service's is
pixels and estimated bytes), so cheap items batch widely while costly ones stay small."""

import asyncio
import threading
import time

import pytest

from service.server.batcher import Batcher, BatchTooLarge, QueueFull, ShuttingDown


def batches_for(items, limits, max_batch_size=16):
    """Submit every item before the worker starts; return the batches it formed, as key lists."""
    seen = []
    release = threading.Event()

    def run(key, payloads):
        release.wait(5)
        seen.append([p for p in payloads])
        return payloads

    async def scenario():
        batcher = Batcher(run, max_batch_size=max_batch_size, max_batch_cost=limits)
        tasks = [asyncio.ensure_future(batcher.submit(key, name, cost)) for key, name, cost in items]
        await asyncio.sleep(0.05)  # every item queued before the worker looks
        batcher.start()
        release.set()
        results = await asyncio.gather(*tasks)
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    assert [r.value for r in results] == [name for _, name, _ in items]
    return seen


def test_a_batch_closes_on_estimated_bytes_per_metric_mix():
    # (pixels, bytes): psnr costs 150 B/pixel, clp 4,000 B/pixel, both at 512².
    pixels = 512 * 512
    psnr = [("psnr", f"p{i}", (pixels, 150 * pixels)) for i in range(8)]
    clp = [("clp", f"c{i}", (pixels, 4000 * pixels)) for i in range(4)]
    seen = batches_for(psnr + clp, (None, 2.5 * 4000 * pixels))
    assert [len(b) for b in seen] == [8, 2, 2]  # psnr all together; clp two at a time


def test_every_limit_binds_and_a_lone_item_always_runs():
    items = [("k", f"i{i}", (100, 10)) for i in range(6)]
    assert [len(b) for b in batches_for(items, (250, None))] == [2, 2, 2]  # pixels bind
    assert [len(b) for b in batches_for(items, (None, 30))] == [3, 3]  # bytes bind
    assert [len(b) for b in batches_for(items, (None, None), max_batch_size=4)] == [4, 2]
    big = [("k", "huge", (10**9, 10**12))]
    assert batches_for(big, (250, 30)) == [["huge"]]  # over every limit alone: it still runs (OOM splits later)


def run_scenario(run_batch, items, **batcher_options):
    """Queue every item before the worker starts, run them, return (outcomes or exceptions, batcher)."""

    async def scenario():
        batcher = Batcher(run_batch, **batcher_options)
        tasks = [asyncio.ensure_future(batcher.submit(key, payload, cost)) for key, payload, cost in items]
        await asyncio.sleep(0.05)
        batcher.start()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.stop()
        return results, batcher

    return asyncio.run(scenario())


def test_batches_close_at_max_batch_size_and_report_outcomes():
    sizes, observed = [], []

    def run(key, payloads):
        sizes.append(len(payloads))
        return [p * 10 for p in payloads]

    items = [("k", i, ()) for i in range(10)]
    results, _ = run_scenario(run, items, max_batch_size=4, on_batch=lambda key, size, seconds: observed.append((key, size, seconds)))
    assert sizes == [4, 4, 2]
    assert [r.value for r in results] == [i * 10 for i in range(10)]
    assert [r.batch_size for r in results] == [4] * 8 + [2] * 2
    # queued 50 ms before the worker started; every duration is a difference of clock readings (seconds, not hours)
    assert all(0.04 <= r.queue_s < 30 and 0 <= r.compute_s < 30 for r in results)
    assert [(k, s) for k, s, _ in observed] == [("k", 4), ("k", 4), ("k", 2)] and all(0 <= t < 30 for *_, t in observed)


def test_items_batch_only_with_their_own_key():
    seen = []
    results, _ = run_scenario(
        lambda key, payloads: seen.append((key, list(payloads))) or payloads, [("a", 1, ()), ("b", 2, ()), ("a", 3, ()), ("b", 4, ())]
    )
    assert seen == [("a", [1, 3]), ("b", [2, 4])] and [r.value for r in results] == [1, 2, 3, 4]


def test_an_oversized_batch_splits_in_halves_and_a_lone_item_fails_alone():
    sizes = []

    def run(key, payloads):
        sizes.append(len(payloads))
        if len(payloads) > 2 or "huge" in payloads:
            raise BatchTooLarge(f"{len(payloads)} items")
        return payloads

    results, _ = run_scenario(run, [("k", p, ()) for p in ("a", "b", "c", "d", "huge")])
    assert sizes == [5, 2, 3, 1, 2, 1, 1]  # halves (2 + 3), the 3 again (1 + 2), then the pair holding "huge"
    assert [r.value for r in results[:4]] == ["a", "b", "c", "d"]
    assert isinstance(results[4], BatchTooLarge) and "1 items" in str(results[4])


def test_a_failing_item_fails_alone_and_results_may_be_exceptions():
    def run(key, payloads):
        if "bad" in payloads and len(payloads) > 1:
            raise ValueError("one bad item")
        if payloads == ["bad"]:
            raise ValueError("bad alone")
        return [KeyError(p) if p == "error" else p for p in payloads]

    results, _ = run_scenario(run, [("k", p, ()) for p in ("x", "bad", "y", "error")])
    assert results[0].value == "x" and results[2].value == "y"
    assert isinstance(results[1], ValueError) and str(results[1]) == "bad alone"
    assert isinstance(results[3], KeyError)


def test_wrong_result_count_is_an_error_per_item():
    results, _ = run_scenario(lambda key, payloads: payloads[:1], [("k", 1, ()), ("k", 2, ())])
    assert results[0].value == 1  # alone, each returns its one result
    assert results[1].value == 2
    (result,), _ = run_scenario(lambda key, payloads: [], [("k", 1, ())])
    assert isinstance(result, RuntimeError) and str(result) == "run_batch returned 0 results for 1 items"


def test_queue_limit_and_shutdown():
    async def scenario():
        batcher = Batcher(lambda key, payloads: payloads, max_queue=2)
        first = [asyncio.ensure_future(batcher.submit("k", i)) for i in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match="queue full \\(2 items\\)"):
            await batcher.submit("k", 3)
        assert batcher.depth == 2
        batcher.start()
        done = await asyncio.gather(*first)
        await batcher.stop()
        with pytest.raises(ShuttingDown, match="^the batcher is shutting down$"):
            await batcher.submit("k", 4)
        return done

    assert [r.value for r in asyncio.run(scenario())] == [0, 1]


def test_a_batch_waits_for_company_up_to_max_delay():
    sizes = []

    async def scenario():
        batcher = Batcher(lambda key, payloads: sizes.append(len(payloads)) or payloads, max_delay_s=2.0, max_batch_size=3)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit("k", 1))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(batcher.submit("k", i)) for i in (2, 3)]
        results = await asyncio.gather(first, *rest)
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    assert sizes == [3] and [r.value for r in results] == [1, 2, 3]  # full at 3: it did not wait out the delay
    assert results[0].queue_s >= 0.04


def timed_batches(items, **options):
    """Start the worker, submit ``items`` (key, payload, cost, delay before submitting); return
    (batch sizes, outcomes, seconds until all were answered). Checks what ``on_batch`` saw."""
    sizes, observed = [], []

    async def scenario():
        batcher = Batcher(
            lambda key, payloads: sizes.append(len(payloads)) or payloads,
            on_batch=lambda key, size, seconds: observed.append((key, size, seconds)),
            **options,
        )
        batcher.start()
        start = time.perf_counter()
        tasks = []
        for key, payload, cost, delay in items:
            await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(batcher.submit(key, payload, cost)))
        results = await asyncio.wait_for(asyncio.gather(*tasks), 20)
        elapsed = time.perf_counter() - start
        await batcher.stop()
        return results, elapsed

    results, elapsed = asyncio.run(scenario())
    assert [(key, size) for key, size, _ in observed] == [(items[0][0], size) for size in sizes]
    assert all(0 <= seconds <= elapsed for *_, seconds in observed)
    assert all(0 <= r.queue_s <= elapsed and 0 <= r.compute_s <= elapsed for r in results)
    return sizes, results, elapsed


@pytest.mark.parametrize("gap", [0, 0.1])
@pytest.mark.parametrize("options", [dict(max_batch_size=2), dict(max_batch_cost=(2,))], ids=["count", "cost"])
def test_a_full_batch_does_not_wait_out_the_delay(options, gap):
    """Full by count, or by a cost limit reached exactly, whether the second item came with the
    first or while the first waited: it runs at once, not after 5 s."""
    sizes, _, elapsed = timed_batches([("k", 1, (1,), 0), ("k", 2, (1,), gap)], max_delay_s=5.0, **options)
    assert sizes == [2] and elapsed < 2.5


def test_a_lone_item_runs_when_the_delay_expires():
    sizes, results, elapsed = timed_batches([("k", 1, (), 0)], max_delay_s=0.3)
    assert sizes == [1] and 0.25 <= results[0].queue_s and elapsed < 5


def test_company_within_a_short_delay_joins():
    sizes, results, _ = timed_batches([("k", 1, (), 0), ("k", 2, (), 0.1)], max_delay_s=0.5, max_batch_size=4)
    assert sizes == [2] and [r.value for r in results] == [1, 2]


def test_defaults_batch_sixteen_without_waiting_on_a_named_daemon_thread():
    batcher = Batcher(lambda key, payloads: payloads)
    assert (batcher.max_batch_size, batcher.max_delay_s, batcher.max_queue) == (16, 0.0, None)
    assert batcher._thread.name == "batcher" and batcher._thread.daemon  # never blocks interpreter exit
    assert Batcher(lambda key, payloads: payloads, name="device-cpu")._thread.name == "device-cpu"
    sizes, _, elapsed = timed_batches([("k", i, (), 0) for i in range(3)])
    assert sum(sizes) == 3 and elapsed < 2.5  # no delay by default


def test_call_runs_alone_on_the_worker_thread_in_queue_order():
    """``call`` is for work that must share the batches' thread (the service loads its models
    there): it runs on that thread, between batches in submission order, even with a delay set."""
    events = []

    def run(key, payloads):
        events.append(("batch", list(payloads), threading.current_thread().name))
        return payloads

    def fails():
        raise KeyError("no such model")

    async def scenario():
        batcher = Batcher(run, max_delay_s=5.0, max_batch_size=2, max_queue=3, name="device-x")
        first = asyncio.ensure_future(batcher.submit("k", 1))
        call = asyncio.ensure_future(batcher.call(lambda: events.append(("call", threading.current_thread().name)) or "loaded"))
        second = asyncio.ensure_future(batcher.submit("k", 2))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await batcher.call(lambda: None)  # calls count against the queue limit like items
        start = time.perf_counter()
        batcher.start()
        results = await asyncio.wait_for(asyncio.gather(first, call, second), 10)
        with pytest.raises(KeyError, match="no such model"):
            await batcher.call(fails)
        elapsed = time.perf_counter() - start
        await batcher.stop()
        with pytest.raises(ShuttingDown):
            await batcher.call(lambda: None)
        return results, elapsed

    (first, called, second), elapsed = asyncio.run(scenario())
    assert called == "loaded" and first.value == 1 and second.value == 2
    # The oldest item's key takes every compatible item: the call never joins a batch, and runs
    # at once rather than waiting out the 5 s delay for company.
    assert events == [("batch", [1, 2], "device-x"), ("call", "device-x")]
    assert elapsed < 2.5
