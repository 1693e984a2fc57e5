"""Score a whole episode without re-reading its shared history once per step.

Step ``t`` of an episode sees ``prefix ++ line_1 … line_t ++ tail_t`` and generates ``gen_t``. Scoring the
50 contexts of a bandit episode one by one re-reads the shared prefix and history 50 times. Instead:

1. the *shared* sequence ``prefix | line_1 | line_2 | …`` of each episode row goes through the model once
   (causal, and a line never sees the lines of an earlier episode in the same row);
2. each step's *private* tokens ``tail_t ++ gen_t`` become their own row, attending to its own tokens and to
   the shared keys/values it saw when it was generated (prefix and lines up to ``line_t``, same episode),
   read in place: the episode's keys/values are not repeated per step.

Positions are those the tokens had in their own context, so the log-probs of ``gen_t`` equal those of scoring
step ``t``'s context alone, at the cost of one pass over the history plus one short row per step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxagent.model.config import GemmaConfig
from jaxagent.model.gemma import transformer, unembed, value
from jaxagent.model.kv_cache import as_block
from jaxagent.model.sampler import token_logprobs

PREFIX_EPISODE, PADDING = -1, -2


@struct.dataclass
class PackedEpisodes:
    shared_tokens: jax.Array  # [B, S] prefix then every history line, compact
    shared_positions: jax.Array  # [B, S]
    shared_mask: jax.Array  # [B, S, S] shared query i may attend to shared key k
    visible: jax.Array  # [B, T, S] step t's private tokens may attend to shared key k
    private_tokens: jax.Array  # [B, T, W] tail_t ++ gen_t, W = tail width + G
    private_positions: jax.Array  # [B, T, W]
    tail_lengths: jax.Array  # [B, T]
    max_new_tokens: int = struct.field(pytree_node=False, default=0)  # G


def token_mask(traj) -> jax.Array:
    """[B, T, G]: 1 on each active step's generated tokens."""
    G = traj.tokens.shape[-1]
    generated = jnp.arange(G)[None, None, :] < traj.lengths[..., None]
    return (generated & traj.active[..., None]).astype(jnp.float32)


def pack(prefix_tokens: jax.Array, traj, pad_id: int, history_width: int | None = None) -> PackedEpisodes:
    """Pack the episodes of a :class:`jaxagent.rollout.Trajectory` (batch-major) with the shared prompt prefix.
    ``history_width``: the most history tokens a row holds (default: its start history's width plus every step's
    line); rows of one episode each hold at most the horizon's lines, a narrower shared sequence to score."""
    token_fields = traj.replace(states=None, prefix_length=None)
    return jax.vmap(lambda row: _pack_row(prefix_tokens, row, pad_id, history_width))(token_fields)


def _pack_row(prefix_tokens, row, pad_id, history_width):
    P, S0 = prefix_tokens.shape[0], row.start_tokens.shape[0]
    T, Lh = row.line_tokens.shape
    Lt, G = row.tail_tokens.shape[1], row.tokens.shape[1]
    S, W = P + (S0 + T * Lh if history_width is None else history_width), Lt + G

    first = row.first.astype(jnp.int32)
    episode = jnp.cumsum(first) - first[0]  # [T], 0 for the first episode (a started row's starts mid-way)
    line_len = row.line_lengths
    # history tokens of this row before this step's line (a started row's start history first)
    hist_before = jnp.cumsum(line_len) - line_len + row.start_lengths
    episode_start = jax.lax.cummax(jnp.where(row.first, hist_before, 0))
    line_pos0 = P + hist_before - episode_start  # each episode's history restarts after the prefix
    tail_pos0 = line_pos0 + line_len

    # shared sequence: prefix, the start history, then the lines back to back
    j0 = jnp.arange(S0, dtype=jnp.int32)
    j = jnp.arange(Lh, dtype=jnp.int32)
    dest = jnp.concatenate([jnp.where(j0 < row.start_lengths, P + j0, S),
                            jnp.where(j[None, :] < line_len[:, None], P + hist_before[:, None] + j[None, :],
                                      S).reshape(-1)])
    scatter = lambda base, *values: base.at[dest].set(jnp.concatenate([v.reshape(-1) for v in values]), mode="drop")
    tokens = scatter(jnp.full((S,), pad_id, jnp.int32).at[:P].set(prefix_tokens), row.start_tokens, row.line_tokens)
    positions = scatter(jnp.arange(S, dtype=jnp.int32), P + j0, line_pos0[:, None] + j[None, :])
    ep = scatter(jnp.full((S,), PADDING, jnp.int32).at[:P].set(PREFIX_EPISODE), jnp.zeros((S0,), jnp.int32),
                 jnp.broadcast_to(episode[:, None], (T, Lh)))
    idx = jnp.arange(S)
    key_ok = ep != PADDING
    same = (ep[None, :] == ep[:, None]) | (ep[None, :] == PREFIX_EPISODE)
    shared_mask = (idx[None, :] <= idx[:, None]) & key_ok[None, :] & same
    shared_end = P + hist_before + line_len  # [T] shared tokens step t has seen (its line included)
    visible = ((idx[None, :] < shared_end[:, None]) & key_ok[None, :]
               & ((ep[None, :] == episode[:, None]) | (ep[None, :] == PREFIX_EPISODE)))

    # private rows: tail then generated tokens, compact
    w = jnp.arange(W, dtype=jnp.int32)
    from_tail = w[None, :] < row.tail_lengths[:, None]
    gen_at = jnp.clip(w[None, :] - row.tail_lengths[:, None], 0, G - 1)
    private = jnp.where(from_tail, jnp.take_along_axis(row.tail_tokens, jnp.minimum(w, Lt - 1)[None, :].repeat(T, 0),
                                                       axis=1),
                        jnp.take_along_axis(row.tokens, gen_at, axis=1))
    private_positions = tail_pos0[:, None] + w[None, :]
    return PackedEpisodes(tokens, positions, shared_mask, visible, private, private_positions, row.tail_lengths, G)


def score_packed(params, cfg: GemmaConfig, packed: PackedEpisodes, *, temperature: float = 1.0,
                 with_values: bool = False):
    """Log-probs ``[B, T, G]`` of every generated token (meaningful up to each step's length) and, with
    ``with_values``, the value head at each step's last prompt token ``[B, T]``."""
    B, T, W = packed.private_tokens.shape
    params = cfg.compute_params(params)
    _, k, v = transformer(params, cfg, packed.shared_tokens, packed.shared_positions, self_mask=packed.shared_mask)
    # Each episode row's shared keys/values serve its T step rows as they are, without a per-step copy.
    block = as_block(cfg, k, v, packed.shared_positions, packed.visible.reshape(B * T, -1))
    h, _, _ = transformer(params, cfg, packed.private_tokens.reshape(B * T, W),
                          packed.private_positions.reshape(B * T, W), blocks=(block,))
    tail = packed.tail_lengths.reshape(B * T, 1)
    G = packed.max_new_tokens
    g = jnp.arange(G, dtype=jnp.int32)[None, :]
    predictor = jnp.clip(tail + g - 1, 0, W - 1)  # the token before generated token g
    target = jnp.clip(tail + g, 0, W - 1)
    h_pred = jnp.take_along_axis(h, predictor[..., None], axis=1)
    targets = jnp.take_along_axis(packed.private_tokens.reshape(B * T, W), target, axis=1)
    logp = token_logprobs(unembed(params, cfg, h_pred), targets, temperature).reshape(B, T, G)
    if not with_values:
        return logp
    h_state = jnp.take_along_axis(h, jnp.maximum(tail - 1, 0)[..., None], axis=1)[:, 0]
    return logp, value(params, h_state).reshape(B, T)
