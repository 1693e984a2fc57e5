"""Step contexts scored one at a time: the batch unit where prompts do not only grow (a history window, whose
oldest line leaves the prompt) and where a batch counts contexts exactly (the paper's 128).

Each step of a trajectory becomes one row: its whole prompt, rendered again from the env state the step saw (under
the arm labels it was shown, with context randomisation; the renderer's contract makes it the prompt the episode
showed, token for token), then the tokens generated there.
Scoring re-reads every prompt, where :mod:`jaxagent.packing` reads an episode's shared history once; the log-probs
are those of the same tokens at the same positions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxagent.model.config import GemmaConfig
from jaxagent.model.sampler import score
from jaxagent.text.relabel import relabel_state


@struct.dataclass
class StepContexts:
    tokens: jax.Array          # [..., L] prompt, generated tokens, pad (L = prompt budget + G)
    prompt_lengths: jax.Array  # [...]
    max_new_tokens: int = struct.field(pytree_node=False, default=0)  # G


def step_contexts(renderer, traj, env_params, pad_id: int) -> StepContexts:
    """The ``[B, T]`` step contexts of a trajectory played on ``env_params`` (batched like its rows). A
    self-correction turn's first answer and request count as its prompt: only the final answer is scored."""
    B, T, G = traj.tokens.shape
    preamble, preamble_lengths = traj.preamble or (jnp.zeros((B, T, 0), jnp.int32), jnp.zeros((B, T), jnp.int32))
    W = preamble.shape[-1]

    def one(state, params, before, before_length, generated):
        prompt, length = renderer.render(state, params)
        tokens = jnp.concatenate([prompt, jnp.full((W + G,), pad_id, jnp.int32)])
        tokens = jax.lax.dynamic_update_slice(tokens, before, (length,))
        length = length + before_length
        return jax.lax.dynamic_update_slice(tokens, generated, (length,)), length

    per_row = jax.vmap(one, in_axes=(0, None, 0, 0, 0))
    states = traj.states
    if traj.relabelling is not None:
        states = jax.vmap(jax.vmap(relabel_state))(states, traj.relabelling)
    tokens, lengths = jax.vmap(per_row)(states, env_params, preamble, preamble_lengths, traj.tokens)
    return StepContexts(tokens, lengths, G)


def score_contexts(params, cfg: GemmaConfig, contexts: StepContexts, *, temperature: float = 1.0,
                   with_values: bool = False):
    """Log-probs ``[..., G]`` of each context's generated tokens and, with ``with_values``, the value head at its
    last prompt token ``[...]``."""
    lead, L = contexts.tokens.shape[:-1], contexts.tokens.shape[-1]
    tokens, lengths = contexts.tokens.reshape(-1, L), contexts.prompt_lengths.reshape(-1)
    out = score(params, cfg, tokens, temperature=temperature, with_values=with_values)
    logp, values = out if with_values else (out, None)
    at = jnp.minimum(lengths[:, None] + jnp.arange(contexts.max_new_tokens), L - 1)
    logp = jnp.take_along_axis(logp, at, axis=1).reshape(*lead, -1)
    if not with_values:
        return logp
    return logp, jnp.take_along_axis(values, jnp.maximum(lengths - 1, 0)[:, None], axis=1).reshape(lead)


def final_values(params, cfg: GemmaConfig, renderer, traj, env_params, *, temperature: float = 1.0):
    """V of the state after each row's last step ``[B]``: the value head at the last token of its prompt."""
    prompts, lengths = jax.vmap(renderer.render)(traj.final_states, env_params)
    return score_contexts(params, cfg, StepContexts(prompts, lengths, 0), temperature=temperature,
                          with_values=True)[1]
