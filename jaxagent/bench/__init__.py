"""Side-by-side benchmarks against peer libraries, run as ``jaxagent bench NAME``.

Each module exposes ``run(quick: bool = False) -> dict``: it times our implementation and the peer in the
same process, prints a table (medians, ratio, compile time apart) and returns the JSON-able result.
"""
import os
import platform
import statistics
import time

import jax

from jaxagent.model.sharding import batch_sharding, make_mesh, param_shardings, rows_per_device


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` (which must block until its work is done)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def host() -> dict:
    """What the figures were measured on: the CPU model, its cores, JAX's backend and devices, and versions."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "backend": jax.default_backend(), "devices": jax.device_count(),
            "device_kind": jax.devices()[0].device_kind, "jax": jax.__version__}


def on_each_layout(time_on) -> tuple[dict, int]:
    """``time_on(devices)`` (a tuple whose first item is seconds) on all devices, and on the first alone where there
    are more: ``({device count: result}, the faster count)``; that layout's devices are ``jax.devices()[:count]``.
    Which is faster depends on the host (whether its cores slow each other down when both compute) and on the
    batch; a benchmark reports both and takes the faster as its headline figure."""
    counts = (jax.device_count(), 1) if jax.device_count() > 1 else (1,)
    timed = {n: time_on(jax.devices()[:n]) for n in counts}
    return timed, min(timed, key=lambda n: timed[n][0])


def _data_mesh(devices=None):
    """A data mesh over ``devices`` (default: all), or None for one device."""
    devices = jax.devices() if devices is None else devices
    return None if len(devices) == 1 else make_mesh(data=len(devices), devices=devices)


def row_mesh(rows: int, devices=None):
    """The :func:`_data_mesh` to split ``rows`` over, or None: one device, or rows that do not divide evenly (they
    then stay whole, as :func:`over_devices` leaves them)."""
    mesh = _data_mesh(devices)
    return None if mesh is None or rows % mesh.size else mesh


def per_device(fn, split, rows: int, devices=None):
    """``fn`` jitted; over a :func:`row_mesh`, each device runs its share of the ``rows`` of the arguments marked
    in ``split`` on its own (see :func:`jaxagent.model.sharding.rows_per_device`)."""
    mesh = row_mesh(rows, devices)
    return jax.jit(fn) if mesh is None else rows_per_device(fn, mesh, split)


def over_devices(params, batch, devices=None):
    """``params`` replicated and every array of ``batch`` split along its leading axis over ``devices`` (default:
    all; a data mesh); as they are on one device. On a CPU host, ``jaxagent bench`` makes one device per core
    (see ``--cpu-devices``), each running its share of the rows on its own thread."""
    mesh = _data_mesh(devices)
    if mesh is None:
        return params, batch
    return (jax.device_put(params, param_shardings(mesh, params)),
            jax.tree.map(lambda a: jax.device_put(a, batch_sharding(mesh, a.shape)), batch))
