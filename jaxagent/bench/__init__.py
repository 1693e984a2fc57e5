"""Side-by-side benchmarks against peer libraries, run as ``jaxagent bench NAME``.

Each module exposes ``run(quick: bool = False) -> dict``: it times our implementation and the peer in the
same process, prints a table (medians, ratio, compile time apart) and returns the JSON-able result.
"""
