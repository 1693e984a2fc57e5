"""``load_policy``: a Gemma 2 checkpoint directory (HF or Orbax) as an object with logits, generate and export."""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxagent.model import sharding, weights
from jaxagent.model.config import CheckpointError, GemmaConfig
from jaxagent.model.gemma import forward
from jaxagent.model.sampler import generate

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@functools.partial(jax.jit, static_argnames=("cfg",))
def _logits(params, cfg, tokens):
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    return forward(params, cfg, tokens, positions)[0]


@dataclasses.dataclass
class Policy:
    cfg: GemmaConfig
    params: dict

    def logits(self, tokens) -> jax.Array:
        """``int32 [B, T] -> float32 [B, T, vocab]``, positions 0..T-1, causal."""
        tokens = jnp.asarray(tokens, jnp.int32)
        if tokens.ndim != 2:
            raise ValueError(f"tokens: expected int32 [B, T], got shape {tokens.shape}")
        return _logits(self.params, self.cfg, tokens)

    def generate(self, prompts, prompt_lengths=None, *, max_new_tokens: int, key=None, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, stop_tokens=None, max_len: int | None = None,
                 unroll_layers: bool = False):
        """Right-padded ``prompts [B, P]`` -> ``(tokens [B, G], logprobs [B, G], lengths [B])``.

        ``stop_tokens`` defaults to the config's EOS id; pass ``()`` to always generate ``max_new_tokens``.
        ``unroll_layers``: decode with the layers unrolled (faster on CPU, compile time grows with depth).
        """
        prompts = jnp.asarray(prompts, jnp.int32)
        if prompts.ndim != 2:
            raise ValueError(f"prompts: expected int32 [B, P], got shape {prompts.shape}")
        B, P = prompts.shape
        lengths = jnp.full((B,), P, jnp.int32) if prompt_lengths is None else jnp.asarray(prompt_lengths, jnp.int32)
        stops = (self.cfg.eos_id,) if stop_tokens is None else tuple(int(t) for t in stop_tokens)
        _, toks, logps, lens = generate(
            self.params, self.cfg, prompts, lengths, jax.random.key(0) if key is None else key,
            max_len=max_len or P + max_new_tokens, max_new_tokens=max_new_tokens, temperature=temperature,
            top_k=top_k, top_p=top_p, stop_tokens=stops, unroll_layers=unroll_layers)
        return toks, logps, lens

    def save_hf(self, path, dtype=None) -> None:
        weights.save_hf(self.params, self.cfg, path, dtype)

    def save(self, path) -> None:
        """Orbax checkpoint, readable by ``load_policy``."""
        weights.save_orbax(self.params, self.cfg, path)


def read_policy_config(path) -> GemmaConfig:
    """The model config of an HF Gemma 2 directory or a jaxagent Orbax checkpoint, without reading weights."""
    path = Path(path)
    if (path / weights.ORBAX_CONFIG).is_file():
        return GemmaConfig(**json.loads((path / weights.ORBAX_CONFIG).read_text()))
    if (path / "config.json").is_file():
        return weights.read_hf_config(path)
    raise CheckpointError(f"{path}: neither a Hugging Face directory (config.json) "
                          f"nor a jaxagent Orbax checkpoint ({weights.ORBAX_CONFIG})")


def load_policy(path, dtype: str = "float32", mesh: jax.sharding.Mesh | None = None) -> Policy:
    """Load an HF Gemma 2 directory or a jaxagent Orbax checkpoint; with ``mesh``, params land sharded on it."""
    path = Path(path)
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    cfg = read_policy_config(path)
    loader = weights.load_orbax if (path / weights.ORBAX_CONFIG).is_file() else weights.load_hf
    shardings = None
    if mesh is not None:
        shapes = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, np.float32),
                              weights.param_shapes(cfg), is_leaf=lambda s: isinstance(s, tuple))
        shardings = sharding.param_shardings(mesh, shapes)
    cfg, params = loader(path, DTYPES[dtype], shardings)
    return Policy(cfg, params)
