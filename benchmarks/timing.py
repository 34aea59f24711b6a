"""The timing the benchmark scripts share: the median of a few calls, side by side in one process."""

import statistics
import time


def median_seconds(call, repeats: int = 5) -> tuple[float, object]:
    """The median wall time of ``repeats`` calls, and the last call's value."""
    times, value = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        value = call()
        times.append(time.perf_counter() - started)
    return statistics.median(times), value
