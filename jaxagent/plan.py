"""``jaxagent plan CONFIG [key=value ...] [--devices N]``: the per-device memory a run of the config needs on a slice
of N devices laid out as ``model.mesh``, before paying for it. Nothing is loaded or compiled: shapes come from the
model's config (a preset, or a checkpoint's ``config.json``), shardings from the partition rules.

Exact (the arrays' shards): parameters and optimizer state in ``model.master_dtype``, gradients (float32
accumulation), the parameters' copy in the compute dtype (``model.dtype``, where it differs), and the rollout's KV
cache (``rollout.envs_per_rollout`` rows over the batch axes, the episode's cache length, kv heads over "tensor").
Estimated: training activations for the rows of one micro-batch: what ``model.remat`` keeps for the backward pass
(``dots``: every layer's input and weight-matmul outputs; ``full``: every layer pair's input), plus one layer pair's
intermediates while its backward pass runs, float32 attention weights included (they grow with the square of the
row length: no fused attention kernel).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh

from envs_jax.yaml_config import ConfigError
from jaxagent.mechanisms import correction_width
from jaxagent.model import GemmaConfig
from jaxagent.model.gemma import init_params
from jaxagent.model.policy import DTYPES, read_policy_config
from jaxagent.model.sharding import AXES, param_partition_specs
from jaxagent.optim import make_optimizer

GIB = 1024 ** 3


def mesh_sizes(requested: tuple[int, int, int], devices: int) -> tuple[int, int, int]:
    """``model.mesh`` with its -1 resolved for ``devices``."""
    fixed = math.prod(s for s in requested if s != -1)
    if devices % fixed:
        raise ConfigError(f"config key 'model.mesh': {list(requested)} does not divide {devices} devices")
    return tuple(devices // fixed if s == -1 else s for s in requested)


def _shard_bytes(leaf, spec, sizes: dict[str, int]) -> int:
    shape = list(leaf.shape)
    for i, axes in enumerate(spec):
        for axis in () if axes is None else (axes if isinstance(axes, tuple) else (axes,)):
            shape[i] //= sizes[axis]
    return math.prod(shape) * jnp.dtype(leaf.dtype).itemsize


def _model_config(cfg) -> GemmaConfig:
    if cfg.model.checkpoint is None:
        return GemmaConfig.preset(cfg.model.preset)
    from jaxagent.trainers.setup import checkpoint_path

    return read_policy_config(checkpoint_path(cfg.model.checkpoint))


def _correction(cfg, renderer) -> int:
    """Tokens a self-corrected turn adds before its answer (``rollout.self_correction``), else 0."""
    if not cfg.rollout.self_correction:
        return 0
    return correction_width(renderer.tokenizer, cfg.rollout.max_new_tokens)


def row_shape(cfg, renderer, num_steps: int) -> tuple[int, int]:
    """(tokens, query-key pairs of attention) of one training row: a step context (its prompt and generation) for
    ``rl.batch_unit: context``; a packed episode (shared prefix and lines once, then each step's tail and
    generation attending to them) otherwise."""
    G = cfg.rollout.max_new_tokens
    if cfg.rl.batch_unit == "context":
        t = renderer.width + G + _correction(cfg, renderer)
        return t, t * t
    shared = renderer.prefix[1] + num_steps * renderer.line_width
    private = renderer.tail_width + G
    return shared + num_steps * private, shared * shared + num_steps * private * (shared + private)


def plan(cfg, devices: int, cache_len: int, row: tuple[int, int], micro_batch_rows: int) -> dict:
    """Bytes per device of each part on ``devices`` devices; ``cache_len``: the episode's cache slots per rollout
    row; ``row``: :func:`row_shape`; ``micro_batch_rows``: the training rows of one micro-batch, all devices."""
    m = cfg.model
    model_cfg = _model_config(cfg)
    sizes = dict(zip(AXES, mesh_sizes(m.mesh, devices)))
    mesh = AbstractMesh(tuple(sizes.values()), AXES)
    master, compute = jnp.dtype(DTYPES[m.master_dtype]), jnp.dtype(DTYPES[m.dtype])
    params = jax.eval_shape(lambda: init_params(model_cfg, jax.random.key(0), master, value_head=m.value_head))
    shards = jax.tree.map(lambda leaf, spec: _shard_bytes(leaf, spec, sizes), params,
                          param_partition_specs(params, mesh))
    param_bytes = sum(jax.tree.leaves(shards))
    by_shape = {(leaf.shape, leaf.dtype): shard for leaf, shard in zip(jax.tree.leaves(params),
                                                                     jax.tree.leaves(shards))}
    opt_state = jax.eval_shape(make_optimizer(cfg.optim, 1000).init, params)
    # optimizer moments shard like their parameters; factored statistics (Adafactor) are counted whole
    opt_bytes = sum(by_shape.get((x.shape, x.dtype), math.prod(x.shape) * jnp.dtype(x.dtype).itemsize)
                    for x in jax.tree.leaves(opt_state) if hasattr(x, "shape"))
    elements = param_bytes // master.itemsize
    batch_shards = sizes["data"] * sizes["fsdp"]
    envs = cfg.rollout.envs_per_rollout  # rows that do not split over the batch axes stay whole on every device
    rollout_rows = envs // batch_shards if envs % batch_shards == 0 else envs
    kv_heads = model_cfg.num_kv_heads // (sizes["tensor"] if model_cfg.num_kv_heads % sizes["tensor"] == 0 else 1)
    heads = max(1, model_cfg.num_heads // sizes["tensor"])
    tokens, pairs = row
    train_rows = max(1, math.ceil(micro_batch_rows / batch_shards))
    d, L = model_cfg.d_model, model_cfg.num_layers
    projections = (heads + 2 * kv_heads) * model_cfg.head_dim  # queries, keys, values
    mlp = 3 * model_cfg.ffw_dim // sizes["tensor"]  # gate, up, their product
    # one layer pair's intermediates while its backward pass runs: every activation and the attention weights
    pair_peak = 2 * (tokens * (3 * d + projections + heads * model_cfg.head_dim + mlp) * compute.itemsize
                     + heads * pairs * 4)
    if m.remat == "dots":  # kept: each layer's input and weight-matmul outputs
        kept = L * tokens * (3 * d + projections + 2 * mlp // 3) * compute.itemsize
    else:  # kept: each pair's input
        kept = (L + 1) // 2 * tokens * d * compute.itemsize
    activations = train_rows * (kept + pair_peak)
    parts = {"parameters": param_bytes, "optimizer state": opt_bytes, "gradients (float32)": elements * 4,
             "compute copy of the parameters": 0 if compute == master else elements * compute.itemsize,
             "rollout KV cache": (model_cfg.num_layers * 2 * rollout_rows * cache_len * kv_heads
                                  * model_cfg.head_dim * compute.itemsize),
             "training activations (estimate)": activations}
    return {"devices": devices, "mesh": sizes, "model": f"{model_cfg.num_params / 1e9:.2f} B params",
            "parts": parts, "total": sum(parts.values())}


def format_plan(result: dict) -> str:
    lines = [f"{result['model']} on {result['devices']} devices, mesh "
             + " x ".join(f"{k} {v}" for k, v in result["mesh"].items())]
    for name, value in result["parts"].items():
        lines.append(f"  {name:<34}{value / GIB:10.2f} GiB per device")
    lines.append(f"  {'total':<34}{result['total'] / GIB:10.2f} GiB per device")
    return "\n".join(lines)



def plan_from_config(path, overrides, devices: int | None = None) -> dict:
    """The plan of a config (``devices``: default the mesh's fixed sizes, or this host's device count)."""
    import envs_jax
    from jaxagent.experiment_config import load_experiment
    from jaxagent.trainers.loop import episodes_per_update
    from jaxagent.trainers.setup import renderer_for, tokenizer_for

    cfg = load_experiment(path, overrides)
    env = envs_jax.make_env(cfg.env.name, **cfg.env.options)
    renderer = renderer_for(env, tokenizer_for(cfg), cfg)
    num_steps = cfg.env.num_steps or env.horizon
    rl = cfg.rl
    rows = rl.micro_batch_size or rl.batch_size
    if rl.batch_unit == "episode":
        rows = episodes_per_update(rows, num_steps)
    if devices is None:
        devices = math.prod(cfg.model.mesh) if -1 not in cfg.model.mesh else jax.device_count()
    cache_len = renderer.width + cfg.rollout.max_new_tokens + _correction(cfg, renderer)
    result = plan(cfg, devices, cache_len, row_shape(cfg, renderer, num_steps), rows)
    print(format_plan(result))
    return result
