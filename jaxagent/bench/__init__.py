"""Side-by-side benchmarks against peer libraries, run as ``jaxagent bench NAME``.

Each module exposes ``run(quick: bool = False) -> dict``: it times our implementation and the peer in the
same process, prints a table (medians, ratio, compile time apart) and returns the JSON-able result.
"""
import statistics
import time


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` (which must block until its work is done)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
