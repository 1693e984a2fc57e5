"""Paired evaluation on held-out instances: every method plays the same instances with the same env keys.

Bandits: cumulative regret, action coverage and the greedy-action rate (the share of steps that pick an
arm with the best average reward so far, the paper's measure of greediness) by step; each method's summary
is the mean and the 95%-CI half-width over episodes of their final values. Tic-tac-toe: return and
win/draw/loss per finished game (a row plays games one after another).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxagent import metrics, plots
from jaxagent.runlog import is_main_process


def episode_curves(traj, num_actions: int, game: bool = False) -> dict[str, np.ndarray]:
    """Per-row curves ``[B, T]`` from a trajectory; for games also the finished games' outcomes."""
    out = {"regret": metrics.cumulative_regret(traj.expected_reward, traj.best_expected_reward),
           "coverage": metrics.action_coverage(traj.actions, num_actions),
           "invalid": 1.0 - traj.valid.astype(jnp.float32),
           "return": jnp.cumsum(traj.env_rewards, axis=1)}
    if game:  # a row plays several games: its return so far per finished game (rewards come at a game's end)
        out["return"] = out["return"] / jnp.maximum(jnp.cumsum(traj.done, axis=1), 1)
        out["outcomes"] = metrics.game_outcomes(traj.env_rewards, traj.done)
    else:
        out["greedy"] = metrics.greedy_rate_by_step(traj.actions, traj.env_rewards, num_actions)
    return jax.tree.map(np.asarray, out)


def summarise(curves: dict) -> dict:
    """Mean and 95%-CI half-width of the final regret, coverage, return (and greedy-action rate, bandits) and of
    the invalid rate; for games also the win / draw / loss fractions of the finished games (normal-approximation
    intervals)."""
    out = {}
    for name in ("regret", "coverage", "invalid", "return", "greedy"):
        if name not in curves:
            continue
        mean, half = metrics.mean_ci95(jnp.asarray(curves[name][:, -1] if name != "invalid"
                                                   else curves[name].mean(axis=1)))
        out[name] = {"mean": float(mean), "ci95": float(half)}
    if "outcomes" in curves:
        outcomes = {name: float(curves["outcomes"][name]) for name in ("win", "draw", "loss")}
        games = max(int(curves["outcomes"]["episodes"]), 1)
        for name, p in outcomes.items():
            out[name] = {"mean": p, "ci95": 1.96 * float(np.sqrt(p * (1 - p) / games)), "games": games}
        # per finished game, pooled as the outcomes are: returns are +1 / 0 / -1
        mean = outcomes["win"] - outcomes["loss"]
        spread = outcomes["win"] + outcomes["loss"] - mean ** 2
        out["return"] = {"mean": mean, "ci95": 1.96 * float(np.sqrt(spread / games)), "games": games}
    return out


class Evaluator:
    """Held-out instances and keys fixed at construction; ``model`` and ``expert`` give comparable curves."""

    def __init__(self, experiment, num_episodes: int, seed: int):
        self.exp = experiment
        pool_key, self.key = jax.random.split(jax.random.key(seed))
        self.pool = experiment.pool(pool_key, num_episodes)
        self._model = jax.jit(experiment.eval_loop.rollout)
        self.game = experiment.kind.games
        self._last = (None, None)

    def model(self, params) -> dict[str, np.ndarray]:
        """Curves of the policy ``params``. The last result is kept: a phase's final periodic evaluation and the
        report's evaluation of the parameters it returns are one evaluation."""
        if self._last[0] is not params:
            curves = episode_curves(self.trajectory(params), self.exp.env.num_actions, self.game)
            self._last = (params, curves)
        return self._last[1]

    def trajectory(self, params):
        """The policy's episodes on the held-out instances."""
        return self._model(params, self.pool, self.key)

    def expert(self, expert) -> dict[str, np.ndarray]:
        """Curves of an expert (anything with ``act`` and ``width``, see :mod:`jaxagent.experts`)."""
        # a reference player plays alone, and its text only has to fit its own turn buffer, not the policy's budget
        loop = dataclasses.replace(self.exp.eval_loop, exploration=None,
                                   max_new_tokens=max(self.exp.eval_loop.max_new_tokens, expert.width))
        traj = jax.jit(lambda pool, key: loop.expert_rollout(expert, pool, key))(self.pool, self.key)
        return episode_curves(traj, self.exp.env.num_actions, self.game)


def curve_stats(curves_by_method: dict[str, dict[str, np.ndarray]]) -> dict:
    """Per method and per-step metric: the mean and 95%-CI half-width over episodes at every step (lists)."""
    out = {}
    for name, curves in curves_by_method.items():
        out[name] = {}
        for metric, x in curves.items():
            if metric == "outcomes":
                continue
            mean, half = metrics.mean_ci95(jnp.asarray(x))
            out[name][metric] = {"mean": np.asarray(mean).tolist(), "ci95": np.asarray(half).tolist()}
    return out


def write_report(directory: Path, curves_by_method: dict[str, dict[str, np.ndarray]]) -> dict:
    """``summary.json`` (final values, mean and ci95 per method), ``curves.json`` (the per-step curves' mean and
    ci95, for ``jaxagent report``) and PNG plots of the curves, written by the main process."""
    summary = {name: summarise(curves) for name, curves in curves_by_method.items()}
    write_summary(directory, summary, curve_stats(curves_by_method))
    return summary


def write_summary(directory: Path, summary: dict, stats: dict) -> None:
    """``summary.json``, ``curves.json`` and the curves' plots, by the main process."""
    if is_main_process():
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (directory / "curves.json").write_text(json.dumps(stats) + "\n")
        _plot(directory, stats)


CURVE_LABELS = {"regret": "cumulative regret", "coverage": "action coverage", "greedy": "greedy-action rate",
                "return": "return per finished game"}


def plot_curves(stats_by_method: dict, metric: str, path: Path) -> None:
    """One metric's mean curve with its 95% band per method (``stats_by_method`` as :func:`curve_stats` gives)."""
    fig, ax = plots.figure()
    for name, stats in stats_by_method.items():
        mean, half = np.asarray(stats[metric]["mean"]), np.asarray(stats[metric]["ci95"])
        steps = np.arange(1, mean.shape[0] + 1)
        ax.plot(steps, mean, label=name)
        ax.fill_between(steps, mean - half, mean + half, alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel(CURVE_LABELS[metric])
    plots.save(fig, path, [ax], legend={})


def _plot(directory: Path, stats: dict) -> None:
    game = all("greedy" not in row for row in stats.values())
    for metric in ("return",) if game else ("regret", "coverage"):
        plot_curves(stats, metric, directory / f"{metric}.png")


def print_table(summary: dict) -> None:
    game = all("win" in row for row in summary.values())
    columns = ("return", "win", "draw", "loss", "invalid") if game else ("regret", "coverage", "greedy", "invalid")
    print(f"{'method':<16}" + "".join(f"{c:>18}" for c in columns))
    for name, row in summary.items():
        print(f"{name:<16}" + "".join(f"{row[c]['mean']:>10.3f} ± {row[c]['ci95']:<5.3f}" for c in columns))
