"""EEF's use of failed expert episodes, as pure array functions (batched over episodes, fixed shapes).

A failed expert episode of ``n`` steps is restarted from ``M`` of its states, every ``l = ⌊n / (M + 1)⌋`` steps:
``s_l, s_2l, …, s_Ml``; column 0 of every ``[N, M + 1]`` array below stands for the task's initial state
``s_0`` (the policy's own rollout from the task). An episode shorter than ``M + 1`` steps would have ``l = 0``:
it restarts at every step instead (``l = 1``, steps before ``n`` only) and is reported as clamped.

From the restarts' successes:

- a state is *need-recover* when the policy succeeds from the previous restart and fails from it: the expert
  actions in between turned a solvable state into one the policy cannot solve;
- the *important* states are the initial state and the need-recover states;
- each important state keeps one successful trajectory through it: the restart from it or from a later state
  with the fewest expert actions, i.e. the first successful restart at or after it;
- that trajectory is the expert's steps up to the restart followed by the policy's, trained on from the
  important state on: the expert's actions before it (harmful, for a need-recover state) stay in the context
  without loss.

The paper's example: restarts from ``s_0, s_l, s_2l, s_3l`` fail, succeed, fail, succeed. ``s_2l`` needs recovering;
``s_0`` keeps the restart from ``s_l`` (expert actions ``0 … l−1`` learnt) and ``s_2l`` the restart from ``s_3l``
(expert actions ``2l … 3l−1`` learnt); the actions ``l … 2l−1`` are never learnt.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxagent.packing import token_mask


def restart_steps(lengths: jax.Array, num_restarts: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(steps [N, M+1], valid [N, M+1], clamped [N])`` for expert episodes of ``lengths [N]`` steps: the
    expert step each restart starts from (column 0: step 0) and whether that restart exists."""
    lengths = jnp.asarray(lengths, jnp.int32)
    clamped = lengths < num_restarts + 1
    interval = jnp.maximum(lengths // (num_restarts + 1), 1)
    steps = interval[:, None] * jnp.arange(num_restarts + 1, dtype=jnp.int32)[None, :]
    valid = steps < lengths[:, None]
    return jnp.where(valid, steps, 0), valid, clamped


def need_recover(success: jax.Array, valid: jax.Array) -> jax.Array:
    """``[N, M+1]``: the restart fails although the previous one succeeded (never column 0)."""
    before = jnp.pad(success & valid, ((0, 0), (1, 0)))[:, :-1]
    return before & ~success & valid


def first_success_from(success: jax.Array, valid: jax.Array) -> jax.Array:
    """``[N, M+1]``: for each restart, the first successful restart at or after it (fewest expert actions after
    the state, among the successful trajectories through it); −1 where there is none."""
    width = success.shape[-1]
    index = jnp.where(success & valid, jnp.arange(width)[None, :], width)
    first = jax.lax.cummin(index, axis=1, reverse=True)
    return jnp.where(first < width, first, -1)


def select(success: jax.Array, valid: jax.Array, initial: bool = True, recover: bool = True) -> dict:
    """What EEF trains on from the restarts of failed expert episodes (``[N, M+1]`` each):

    - ``keep``: the state is important (initial with ``initial``, need-recover with ``recover``) and some
      trajectory through it succeeded;
    - ``source``: the restart whose trajectory it keeps;
    - ``need_recover``: as :func:`need_recover`.
    """
    recovering = need_recover(success, valid)
    source = first_success_from(success, valid)
    column = jnp.arange(success.shape[-1])[None, :]
    important = ((column == 0) & initial & valid) | (recovering & recover)
    return {"keep": important & (source >= 0), "source": jnp.maximum(source, 0), "need_recover": recovering}


def splice(expert, policy, steps: jax.Array):
    """Per row, the expert's first ``steps`` steps followed by the policy's episode restarted from the expert's
    state at that step: the whole episode from the task's start, as one :class:`jaxagent.rollout.Trajectory`
    (``[B, T, …]`` fields; the expert's start history). ``policy`` rows play from ``expert.states[:, steps]``."""
    T = expert.tokens.shape[1]
    t = jnp.arange(T, dtype=jnp.int32)[None, :]
    from_expert = t < steps[:, None]
    at = jnp.clip(t - steps[:, None], 0, T - 1)

    def pick(e, p):
        p = jnp.take_along_axis(p, at.reshape(at.shape + (1,) * (p.ndim - 2)), axis=1)
        return jnp.where(from_expert.reshape(from_expert.shape + (1,) * (e.ndim - 2)), e, p)

    whole = dict(start_tokens=None, start_lengths=None, prefix_length=None, final_states=None)  # not per step
    spliced = jax.tree.map(pick, expert.replace(**whole), policy.replace(**whole))
    return spliced.replace(start_tokens=expert.start_tokens, start_lengths=expert.start_lengths,
                           prefix_length=expert.prefix_length, final_states=policy.final_states)


def loss_mask(traj, from_step: jax.Array) -> jax.Array:
    """``[B, T, G]``: 1 on the generated tokens of each active step at or after ``from_step [B]`` (never on prompt,
    history or environment tokens, nor on the turns before the state a sample is for)."""
    later = jnp.arange(traj.tokens.shape[1])[None, :] >= from_step[:, None]
    return token_mask(traj) * later[..., None]
