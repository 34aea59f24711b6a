"""The batcher's cost limits: a batch closes on any limit of its cost vector (the service's is
pixels and estimated bytes), so cheap items batch widely while costly ones stay small."""

import asyncio
import threading

from service.batcher import Batcher


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
