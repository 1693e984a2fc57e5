"""Gemma 2 policy: architecture, multi-turn KV-cache sampler, checkpoints (HF, Orbax) and sharding rules."""
from jaxagent.model.weights import load_hf, load_orbax, save_hf, save_orbax
from jaxagent.model.config import CheckpointError, GemmaConfig
from jaxagent.model.gemma import forward, hidden_states, init_params, transformer, unembed, value
from jaxagent.model.kv_cache import KVCache, init_cache, rewind
from jaxagent.model.policy import Policy, load_policy
from jaxagent.model.sampler import append, generate, prefill, sample, score, token_logprobs
from jaxagent.model.sharding import (batch_sharding, cache_partition_spec, cache_shardings, make_mesh,
                                     param_partition_specs, param_shardings)

__all__ = ["CheckpointError", "GemmaConfig", "KVCache", "Policy", "append", "batch_sharding", "cache_partition_spec",
           "cache_shardings", "forward", "generate", "hidden_states", "init_cache", "init_params", "load_hf",
           "load_orbax", "load_policy", "make_mesh", "param_partition_specs", "param_shardings", "prefill", "rewind",
           "sample", "save_hf", "save_orbax", "score", "token_logprobs", "transformer", "unembed", "value"]
