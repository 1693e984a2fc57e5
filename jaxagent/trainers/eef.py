"""EEF: RFT whose exploration also restarts the policy from states along the expert's *failed* episodes.

Per iteration (see :mod:`jaxagent.restarts` for the selection rules):

1. the policy plays one episode from every training task (RFT's exploration, the restarts' column 0);
2. each failed expert episode of ``n`` steps is restarted from ``M = eef.num_restarts`` of its states, every
   ``⌊n / (M+1)⌋`` steps: the expert's steps up to there, then the policy's (all restarts of all episodes in the
   same fixed-shape batched rollouts as step 1);
3. a restart that fails right after one that succeeded marks its state *need-recover*; each important state
   (initial, need-recover) keeps its successful trajectory with the fewest expert actions, trained on from that
   state on (``eef.initial_states`` / ``eef.recover_states`` switch D_s0 / D_r);
4. fine-tune on the expert's successes and everything kept so far (the loop of :func:`jaxagent.trainers.rft.iterate`).

Simulations per iteration: one episode per task plus one per restart, ``1 + M·f`` per task for a share ``f`` of
failed expert episodes.
"""
from __future__ import annotations

import numpy as np

from jaxagent import restarts
from jaxagent.trainers.expert_tasks import Tasks, simulations, states_at, take
from jaxagent.trainers.rft import Context, Seeded, iterate


def restart_plan(seeded: Seeded, num_restarts: int):
    """``(steps, valid, clamped)`` ``[N, M+1]``: column 0 for every task, the other columns along failed expert
    episodes only."""
    steps, valid, clamped = (np.asarray(x) for x in restarts.restart_steps(seeded.expert_lengths, num_restarts))
    failed = ~seeded.expert_success
    valid = valid & (failed[:, None] | (np.arange(num_restarts + 1) == 0)[None, :])
    return steps, valid, clamped & failed


def explore(ctx: Context, seeded: Seeded, params, key):
    e = ctx.exp.cfg.eef
    steps, valid, clamped = restart_plan(seeded, e.num_restarts)
    task, column = np.nonzero(valid)
    starts = states_at(seeded.expert, task, steps[task, column])
    traj = ctx.sim.policy(params, Tasks(take(seeded.tasks.params, task), starts), starts, key)
    whole = restarts.splice(take(seeded.expert, task), traj, steps[task, column])
    success = np.zeros(valid.shape, bool)
    success[task, column] = np.asarray(ctx.sim.success(whole))
    chosen = {k: np.asarray(v) for k, v in restarts.select(success, valid, e.initial_states, e.recover_states).items()}
    row_of = np.zeros(valid.shape, np.int64)
    row_of[task, column] = np.arange(task.size)
    kept_task, kept_column = np.nonzero(chosen["keep"])
    rows = row_of[kept_task, chosen["source"][kept_task, kept_column]]
    episodes = take(whole, rows)
    masks = restarts.loss_mask(episodes, steps[kept_task, kept_column])
    restarted = valid[:, 1:]
    diagnostics = {
        "restarts": int(restarted.sum()), "restarts_succeeded": int((success[:, 1:] & restarted).sum()),
        "need_recover": int(chosen["need_recover"].sum()),
        "need_recover_kept": int((chosen["need_recover"] & chosen["keep"]).sum()),
        "initial_kept": int(chosen["keep"][:, 0].sum()), "clamped_episodes": int(clamped.sum())}
    return episodes, masks, np.ones(rows.size, bool), diagnostics, simulations(traj)


def eef(ctx: Context, seeded: Seeded) -> dict:
    return iterate(ctx, seeded, "eef", explore)
