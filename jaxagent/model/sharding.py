"""Partition rules for a ``Mesh`` with axes ("data", "fsdp", "tensor"): parameters by name, KV cache, batches.

Matrices split their d_model side over "fsdp" and their heads / hidden units / vocabulary over "tensor";
the stacked layer axis and the norms stay whole. Batches (and the cache's batch axis) split over
("data", "fsdp"). An axis that does not divide a dimension is left out for that tensor, so any mesh works.
``rows_per_device`` runs a function of rows as one call per device instead of one partitioned program.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxagent.model.kv_cache import KVCache

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")
RULES = {
    "embed": ("tensor", "fsdp"),
    "q": (None, "fsdp", "tensor", None), "k": (None, "fsdp", "tensor", None), "v": (None, "fsdp", "tensor", None),
    "o": (None, "tensor", None, "fsdp"),
    "gate": (None, "fsdp", "tensor"), "up": (None, "fsdp", "tensor"), "down": (None, "tensor", "fsdp"),
}


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    import numpy as np

    from jax.experimental import mesh_utils

    devices = jax.devices() if devices is None else devices
    n = data * fsdp * tensor
    if n > len(devices):
        raise ValueError(f"mesh ({data}, {fsdp}, {tensor}) needs {n} devices, {len(devices)} available")
    if n < len(devices):
        return Mesh(np.array(devices[:n]).reshape(data, fsdp, tensor), AXES)
    # the whole slice: on TPU, axes laid along the chips' interconnect (tensor, the most talkative, innermost)
    try:
        grid = mesh_utils.create_device_mesh((data, fsdp, tensor), devices, allow_split_physical_axes=True)
    except (AssertionError, ValueError, NotImplementedError):  # a layout it cannot map: the devices in order
        grid = np.array(devices).reshape(data, fsdp, tensor)
    return Mesh(grid, AXES)


def _fit(spec: tuple, shape: tuple, mesh: Mesh | None) -> P:
    if mesh is None:
        return P(*spec)
    out = []
    for axes, dim in zip(spec, shape):
        names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
        size = 1
        for a in names:
            size *= mesh.shape[a]
        out.append(axes if names and dim % size == 0 else None)
    return P(*out)


def param_partition_specs(params, mesh: Mesh | None = None):
    """A ``PartitionSpec`` per parameter (arrays or ShapeDtypeStructs); with ``mesh``, fitted to its sizes."""
    def spec(path, leaf):
        name = getattr(path[-1], "key", None)
        return _fit(RULES.get(name, (None,) * len(leaf.shape)), leaf.shape, mesh)
    return jax.tree_util.tree_map_with_path(spec, params)


def param_shardings(mesh: Mesh, params):
    return jax.tree.map(lambda s: NamedSharding(mesh, s), param_partition_specs(params, mesh))


def cache_partition_spec(cache: KVCache | None = None, mesh: Mesh | None = None) -> KVCache:
    """Specs for a ``KVCache``: batch over ("data", "fsdp"), kv heads over "tensor"."""
    kv = (None, BATCH, "tensor", None, None)
    if cache is None:
        return KVCache(P(*kv), P(*kv), P(BATCH))
    return KVCache(_fit(kv, cache.k.shape, mesh), _fit(kv, cache.v.shape, mesh), _fit((BATCH,), cache.end.shape, mesh))


def cache_shardings(mesh: Mesh, cache: KVCache) -> KVCache:
    return jax.tree.map(lambda s: NamedSharding(mesh, s), cache_partition_spec(cache, mesh))


def batch_sharding(mesh: Mesh, shape: tuple) -> NamedSharding:
    """Sharding of a per-example array (tokens, lengths, keys...): leading axis over ("data", "fsdp")."""
    return NamedSharding(mesh, _fit((BATCH,) + (None,) * (len(shape) - 1), shape, mesh))


def row_shards(mesh: Mesh) -> int:
    """How many parts a batch's rows split into: the devices along ("data", "fsdp")."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def rows_per_device(fn: Callable, mesh: Mesh, split: Sequence[bool]) -> Callable:
    """``fn`` jitted as one independent call per device over ``mesh``'s batch axes (``shard_map``).

    Argument ``i`` is split along its leading axis (rows) where ``split[i]``, else passed whole to every device
    (trailing arguments may be left out).
    Every output must be 0-d (taken from one device: they must agree) or have rows as its leading axis.
    Unlike ``jit``'s partitioning of ``fn``, the devices never wait for each other inside the call: a decode
    loop's all-rows-done test, for one, would synchronise them at every step. Meant for replicated parameters
    (a data mesh); ``fn`` sees each device's rows only, so anything random in it needs a per-device key.
    """
    def call(*args):
        in_specs = tuple(P(BATCH) if s else P() for s in split[:len(args)])
        shards = row_shards(mesh)
        for i, (arg, s) in enumerate(zip(args, split)):
            rows = {a.shape[0] for a in jax.tree.leaves(arg)} if s else set()
            if any(r % shards for r in rows):
                raise ValueError(f"rows_per_device: argument {i} has {sorted(rows)} rows, which do not split over "
                                 f"the mesh's {shards} row devices")
        # The output tree, for its specs: traced per device (``fn`` may ask for its device index).
        outputs = jax.eval_shape(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=P(), check_vma=False),
                                 *args)
        out_specs = jax.tree.map(lambda a: P(BATCH) if a.ndim else P(), outputs)
        return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)(*args)
    return jax.jit(call)
