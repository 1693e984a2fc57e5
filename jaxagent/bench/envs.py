"""``jaxagent bench envs``: our envs beside gymnax and pgx, in one process, same harness.

- bandit: our ``bandit-bernoulli`` with K=2, gap 0.8 (arm probabilities 0.9/0.1: gymnax's
  ``BernoulliBandit-misc`` task), horizon 100 (gymnax's episode length), **full action/reward history kept**,
  auto-reset by ``envs_jax.AutoReset``; vs gymnax ``BernoulliBandit-misc`` (auto-reset built into its step).
- tictactoe: our game core (``envs_jax.games.tictactoe``, auto-reset by ``envs_jax.auto_reset``) vs pgx
  ``tic_tac_toe`` (``pgx.experimental.auto_reset``); one step = one move, as pgx counts.

Both sides: batch 4096, ``jit(lax.scan)`` of 1,000 steps, random actions drawn by the same code (uniform arm;
uniform legal move from one uniform float per game), fresh per-env keys each step (``split(key, B)``) for envs
that take one. Compile time (first call minus a warm call) is reported apart; steady-state times are the
median of interleaved rounds (ours, peer, ours, peer, ...) so machine noise hits both alike.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


def _scan_runner(step: Callable, action_fn: Callable, batch: int, steps: int, needs_keys: bool):
    """jit(key, state) -> (state, checksum): ``steps`` x [draw actions, (split keys), step the batch]."""
    def body(carry, _):
        key, state = carry
        key, k_act, k_env = jax.random.split(key, 3)
        actions = action_fn(k_act, state)
        keys = jax.random.split(k_env, batch) if needs_keys else None
        state, reward = step(keys, state, actions)
        return (key, state), jnp.sum(reward)

    @jax.jit
    def run(key, state):
        (_, state), rewards = jax.lax.scan(body, (key, state), None, length=steps)
        return state, jnp.sum(rewards)
    return run


def _time_pair(ours: tuple, peer: tuple, rounds: int) -> dict:
    """Compile both, then interleave timed rounds; medians and the ratio of medians."""
    out: dict[str, Any] = {}
    runs = {"ours": ours, "peer": peer}
    states = {}
    for name, (fn, state) in runs.items():
        t0 = time.perf_counter()
        res = fn(jax.random.key(0), state)
        jax.block_until_ready(res)
        first = time.perf_counter() - t0
        res = fn(jax.random.key(1), res[0])   # second call: a peer whose state dtypes change recompiles here
        jax.block_until_ready(res)
        t0 = time.perf_counter()
        res = fn(jax.random.key(2), res[0])
        jax.block_until_ready(res)
        warm = time.perf_counter() - t0
        out[f"{name}_compile_s"] = round(max(first - warm, 0.0), 3)
        states[name] = res[0]
    times: dict[str, list] = {"ours": [], "peer": []}
    for r in range(rounds):
        for name, (fn, _) in runs.items():
            t0 = time.perf_counter()
            res = fn(jax.random.key(10 + r), states[name])
            jax.block_until_ready(res)
            times[name].append(time.perf_counter() - t0)
            states[name] = res[0]
    out["ours_s"] = float(np.median(times["ours"]))
    out["peer_s"] = float(np.median(times["peer"]))
    out["rounds"] = rounds
    return out


def bench_bandit(batch: int, steps: int, rounds: int) -> dict:
    import envs_jax
    from envs_jax.bandits import BernoulliBandit

    env = envs_jax.AutoReset(BernoulliBandit(num_arms=2, gap=0.8, horizon=100))
    params = jax.vmap(env.sample_params)(jax.random.split(jax.random.key(0), batch))
    _, state = jax.vmap(env.reset)(jax.random.split(jax.random.key(1), batch), params)

    def our_step(keys, state, actions):
        _, state, reward, _, _, _ = jax.vmap(env.step)(keys, state, actions, params)
        return state, reward

    def actions(key, state):
        return jax.random.randint(key, (batch,), 0, 2)

    ours = (_scan_runner(our_step, actions, batch, steps, True), state)
    result = {"ours": "envs_jax bandit-bernoulli K=2 gap=0.8 horizon=100, full history, AutoReset"}
    try:
        import gymnax
    except ImportError as e:
        return {**result, "peer": f"gymnax not installed ({e}): make bench, or pip install gymnax"}
    genv, gparams = gymnax.make("BernoulliBandit-misc")
    _, gstate = jax.vmap(genv.reset, (0, None))(jax.random.split(jax.random.key(2), batch), gparams)

    def gym_step(keys, state, actions):
        _, state, reward, _, _, _ = jax.vmap(genv.step, (0, 0, 0, None))(keys, state, actions, gparams)
        return state, reward.astype(jnp.float32)

    peer = (_scan_runner(gym_step, actions, batch, steps, True), gstate)
    t = _time_pair(ours, peer, rounds)
    return {**result, "peer": f"gymnax {_version('gymnax')} BernoulliBandit-misc", **_rates(t, batch, steps)}


def bench_tictactoe(batch: int, steps: int, rounds: int) -> dict:
    from envs_jax import auto_reset
    from envs_jax.core import random_true_index
    from envs_jax.games import tictactoe as game

    def actions(key, state):
        return random_true_index(jax.random.uniform(key, (batch,)), state.legal_action_mask)

    core_step = jax.vmap(auto_reset(game.step, game.init))

    def our_step(keys, state, acts):
        state, stepped = core_step(state, acts)
        return state, stepped.rewards[:, 0]

    state = jax.vmap(lambda _: game.init())(jnp.arange(batch))
    ours = (_scan_runner(our_step, actions, batch, steps, False), state)
    result = {"ours": "envs_jax.games.tictactoe core, envs_jax.auto_reset"}
    try:
        import pgx
        from pgx.experimental import auto_reset as pgx_auto_reset
    except ImportError as e:
        return {**result, "peer": f"pgx not installed ({e}): make bench, or pip install pgx"}
    penv = pgx.make("tic_tac_toe")
    pstep = jax.vmap(pgx_auto_reset(penv.step, penv.init))

    def peer_step(keys, state, acts):
        state = pstep(state, acts, keys)
        return state, state.rewards[:, 0]

    pstate = jax.jit(jax.vmap(penv.init))(jax.random.split(jax.random.key(3), batch))
    peer = (_scan_runner(peer_step, actions, batch, steps, True), pstate)
    t = _time_pair(ours, peer, rounds)
    return {**result, "peer": f"pgx {_version('pgx')} tic_tac_toe", **_rates(t, batch, steps)}


def _rates(t: dict, batch: int, steps: int) -> dict:
    ours = batch * steps / t["ours_s"]
    peer = batch * steps / t["peer_s"]
    return {"ours_steps_per_s": round(ours), "peer_steps_per_s": round(peer), "ratio": round(ours / peer, 3),
            "ours_compile_s": t["ours_compile_s"], "peer_compile_s": t["peer_compile_s"],
            "batch": batch, "scan_steps": steps, "rounds": t["rounds"]}


def run(quick: bool = False) -> dict:
    batch, steps, rounds = (256, 50, 2) if quick else (4096, 1000, 7)
    out = {"bandit": bench_bandit(batch, steps, rounds), "tictactoe": bench_tictactoe(batch, steps, rounds),
           "device": str(jax.devices()[0]), "jax": jax.__version__}
    print(format_table(out))
    return out


def format_table(out: dict) -> str:
    lines = [f"{'task':<10} {'ours steps/s':>14} {'peer steps/s':>14} {'ratio':>7} {'compile ours/peer':>18}  peer"]
    for task in ("bandit", "tictactoe"):
        r = out[task]
        if "ratio" not in r:
            lines.append(f"{task:<10} {'-':>14} {'-':>14} {'-':>7} {'-':>18}  {r['peer']}")
            continue
        lines.append(f"{task:<10} {r['ours_steps_per_s'] / 1e6:>12.2f} M {r['peer_steps_per_s'] / 1e6:>12.2f} M "
                     f"{r['ratio']:>7.2f} {r['ours_compile_s']:>8.2f} / {r['peer_compile_s']:<7.2f}  {r['peer']}")
    return "\n".join(lines)


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"
