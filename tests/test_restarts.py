"""EEF's restart rules on hand-built cases, against plain-Python references written from the paper's description."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxagent import restarts
from jaxagent.rollout import Trajectory


def _reference_steps(n: int, M: int) -> list[int]:
    """s_0, then s_l … s_Ml with l = ⌊n / (M+1)⌋; every step when that is 0 (steps before n only)."""
    l = n // (M + 1) or 1
    return [m * l for m in range(M + 1) if m * l < n]


@pytest.mark.parametrize("n, M, expected", [
    (12, 5, [0, 2, 4, 6, 8, 10]),  # the paper's defaults: l = 2
    (10, 4, [0, 2, 4, 6, 8]),
    (11, 4, [0, 2, 4, 6, 8]),       # l rounds down: the last expert step is never a restart
    (7, 2, [0, 2, 4]),
    (5, 4, [0, 1, 2, 3, 4]),        # n = M + 1: every step
    (3, 4, [0, 1, 2]),              # n < M + 1: l would be 0, every step instead (clamped)
    (1, 5, [0]),
])
def test_restart_steps(n, M, expected):
    steps, valid, clamped = (np.asarray(x) for x in restarts.restart_steps(jnp.asarray([n]), M))
    assert steps[0][valid[0]].tolist() == expected == _reference_steps(n, M)
    assert steps.shape == (1, M + 1) and bool(clamped[0]) == (n < M + 1)


def test_restart_steps_property_over_many_lengths():
    rng = np.random.default_rng(0)
    for M in (1, 2, 3, 5, 8):
        lengths = rng.integers(1, 60, size=50)
        steps, valid, _ = (np.asarray(x) for x in restarts.restart_steps(jnp.asarray(lengths), M))
        for n, row, ok in zip(lengths, steps, valid):
            assert row[ok].tolist() == _reference_steps(int(n), M)


def _select(success, valid=None, **switches):
    success = np.asarray(success, bool)
    valid = np.ones_like(success) if valid is None else np.asarray(valid, bool)
    return {k: np.asarray(v) for k, v in restarts.select(jnp.asarray(success), jnp.asarray(valid), **switches).items()}


def test_the_papers_example():
    """Restarts from s_0, s_l, s_2l, s_3l fail, succeed, fail, succeed: s_2l needs recovering; s_0 keeps the
    trajectory through s_l (expert segment 0→l learnt), s_2l the one through s_3l (segment 2l→3l learnt); the
    segment l→2l, which turned a solvable state into an unsolvable one, is in no kept trajectory's loss."""
    out = _select([[False, True, False, True]])
    assert out["need_recover"][0].tolist() == [False, False, True, False]
    assert out["keep"][0].tolist() == [True, False, True, False]
    assert out["source"][0][[0, 2]].tolist() == [1, 3]
    # loss from the important state on, over the expert steps up to the source restart: 0→l and 2l→3l
    l = 4
    learnt = [set(range(m * l, out["source"][0][m] * l)) for m in (0, 2)]
    assert learnt == [set(range(0, l)), set(range(2 * l, 3 * l))]
    assert not any(set(range(l, 2 * l)) & segment for segment in learnt)


@pytest.mark.parametrize("success, need, keep, source", [
    # fewest expert actions: the first success at or after the state
    ([False, True, True, False, True], [0, 0, 0, 1, 0], [1, 0, 0, 1, 0], [1, 1, 2, 4, 4]),
    # the policy solves the task itself: its own episode (no expert action) is kept
    ([True, True, False, False], [0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0]),
    # nothing succeeds: nothing kept, nothing needs recovering
    ([False, False, False], [0, 0, 0], [0, 0, 0], [0, 0, 0]),
    # a need-recover state with no success after it keeps nothing
    ([False, True, False, False], [0, 0, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]),
])
def test_need_recover_and_fewest_expert_actions(success, need, keep, source):
    out = _select([success])
    assert out["need_recover"][0].astype(int).tolist() == need
    assert out["keep"][0].astype(int).tolist() == keep
    assert out["source"][0][out["keep"][0]].tolist() == np.asarray(source)[np.asarray(keep, bool)].tolist()


def test_invalid_restarts_count_for_nothing_and_switches_drop_their_states():
    # a restart past the episode's end (invalid) neither succeeds nor marks the next one need-recover
    out = _select([[False, True, True, False]], valid=[[True, True, False, False]])
    assert not out["need_recover"].any() and out["keep"][0].tolist() == [True, False, False, False]
    both = [[False, True, False, True]]
    assert _select(both, initial=False)["keep"][0].tolist() == [False, False, True, False]
    assert _select(both, recover=False)["keep"][0].tolist() == [True, False, False, False]


def _trajectory(tokens, lengths, active, start_tokens):
    """A hand-built trajectory: only the fields splicing and masks read carry information."""
    B, T, G = tokens.shape
    zeros = jnp.zeros((B, T), jnp.int32)
    return Trajectory(
        line_tokens=jnp.zeros((B, T, 2), jnp.int32), line_lengths=zeros, tail_tokens=jnp.zeros((B, T, 2), jnp.int32),
        tail_lengths=zeros, tokens=jnp.asarray(tokens), logprobs=jnp.zeros((B, T, G)), lengths=jnp.asarray(lengths),
        actions=jnp.asarray(tokens[..., 0]), valid=jnp.ones((B, T), bool), env_rewards=jnp.zeros((B, T)),
        train_rewards=jnp.zeros((B, T)), first=jnp.zeros((B, T), bool), active=jnp.asarray(active),
        forced=jnp.zeros((B, T), bool), done=jnp.zeros((B, T), bool), expected_reward=jnp.zeros((B, T)),
        best_expected_reward=jnp.zeros((B, T)), states={"t": jnp.broadcast_to(jnp.arange(T), (B, T))},
        start_tokens=jnp.asarray(start_tokens), start_lengths=jnp.full((B,), start_tokens.shape[1]),
        prefix_length=jnp.int32(7))


def test_splice_and_loss_mask():
    """Row 0 restarts at step 2 of a 5-step expert episode: steps 0-1 are the expert's, 2-4 the policy's first
    three (its 4th and 5th are past the episode, inactive); the loss starts at step 1 (the important state) and
    covers each step's generated tokens only (up to its length)."""
    B, T, G = 2, 5, 3
    expert = _trajectory(np.full((B, T, G), 100) + np.arange(T)[None, :, None], np.full((B, T), 2),
                         np.ones((B, T), bool), np.full((B, 4), 9))
    policy_active = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    policy = _trajectory(np.full((B, T, G), 200) + np.arange(T)[None, :, None], np.array([[1, 3, 2, 3, 3]] * B),
                         policy_active, np.full((B, 4), 8))
    whole = restarts.splice(expert, policy, jnp.asarray([2, 0]))
    tokens = np.asarray(whole.tokens[:, :, 0])
    assert tokens.tolist() == [[100, 101, 200, 201, 202], [200, 201, 202, 203, 204]]
    assert np.asarray(whole.states["t"]).tolist() == [[0, 1, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert np.asarray(whole.active).astype(int).tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert (np.asarray(whole.start_tokens) == 9).all() and int(whole.prefix_length) == 7
    mask = np.asarray(restarts.loss_mask(whole, jnp.asarray([1, 0])))
    assert mask[0].sum(axis=1).tolist() == [0, 2, 1, 3, 2]  # step 0 before the state; lengths 2, 1, 3, 2 after
    assert mask[1].sum(axis=1).tolist() == [1, 3, 2, 3, 3]
    assert mask[0, 2].tolist() == [1, 0, 0]  # nothing past a step's generated length
