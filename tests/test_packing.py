"""Packed episode scoring equals scoring each step's context on its own."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagent.model import GemmaConfig, init_params
from jaxagent.model.sampler import score_jit
from jaxagent.packing import pack, score_packed
from jaxagent.rollout import Trajectory

CFG = GemmaConfig(vocab_size=64, num_layers=2, d_model=32, ffw_dim=64, num_heads=4, num_kv_heads=2, head_dim=8,
                  sliding_window=6, query_pre_attn_scalar=8)


def random_trajectory(rng, B=3, T=5, Lh=4, Lt=3, G=5, S0=0):
    """Random rows; with ``S0`` > 0, rows 1.. started mid-episode (a start history of up to S0 tokens)."""
    def ragged(shape, width, low):
        lengths = rng.integers(low, width + 1, size=shape)
        tokens = np.where(np.arange(width) < lengths[..., None], rng.integers(3, 64, size=shape + (width,)), 0)
        return tokens.astype(np.int32), lengths.astype(np.int32)
    first = rng.random((B, T)) < 0.3
    first[:, 0] = True
    start, start_len = ragged((B,), S0, 1) if S0 else (np.zeros((B, 0), np.int32), np.zeros(B, np.int32))
    if S0:
        first[1:, 0], start_len[0], start[0] = False, 0, 0
    line, line_len = ragged((B, T), Lh, 1)
    line_len = np.where(first, 0, line_len)
    tail, tail_len = ragged((B, T), Lt, 1)
    gen, gen_len = ragged((B, T), G, 1)
    zeros = np.zeros((B, T), np.float32)
    return Trajectory(line, line_len, tail, tail_len, gen, zeros[..., None] + np.zeros(G, np.float32), gen_len,
                      zeros.astype(np.int32), zeros.astype(bool), zeros, zeros, first, ~zeros.astype(bool),
                      zeros.astype(bool), zeros.astype(bool), zeros, zeros, None, start, start_len, np.int32(0))


@pytest.mark.parametrize("seed, start_width", [(0, 0), (1, 0), (2, 6)])
def test_packed_scores_equal_per_context_scores(seed, start_width):
    rng = np.random.default_rng(seed)
    prefix = rng.integers(3, 64, size=4).astype(np.int32)
    traj = random_trajectory(rng, S0=start_width)
    params = init_params(CFG, jax.random.key(seed), std=0.3)
    packed = pack(jnp.asarray(prefix), jax.tree.map(jnp.asarray, traj), pad_id=0)
    got = np.asarray(jax.jit(score_packed, static_argnames="cfg")(params, CFG, packed))
    B, T, G = traj.tokens.shape
    width = len(prefix) + start_width + T * traj.line_tokens.shape[-1] + traj.tail_tokens.shape[-1] + G
    for b in range(B):
        history = list(traj.start_tokens[b, :traj.start_lengths[b]])
        for t in range(T):
            if traj.first[b, t]:
                history = []
            history += list(traj.line_tokens[b, t, : traj.line_lengths[b, t]])
            context = list(prefix) + history + list(traj.tail_tokens[b, t, : traj.tail_lengths[b, t]])
            gen = list(traj.tokens[b, t, : traj.lengths[b, t]])
            # right-padded to one width, so one program scores every context (causal: padding is never seen)
            full = np.zeros((1, width), np.int32)
            full[0, :len(context) + len(gen)] = context + gen
            expected = np.asarray(score_jit(params, CFG, jnp.asarray(full)))[0, len(context):len(context) + len(gen)]
            np.testing.assert_allclose(got[b, t, : len(gen)], expected, atol=2e-5, rtol=1e-5)
