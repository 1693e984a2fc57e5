"""The EEF paper's methods on the same tasks, expert episodes and seeds, at matched simulations.

``rft_xN`` plays ``N`` episodes per task per iteration, ``N`` chosen before any method runs so that its simulations
match EEF's: EEF plays one episode per task plus one per restart of a failed expert episode (the expert episodes,
hence the restarts, are fixed per seed). Writes to the run directory:

- ``eef_results.json``: ``{method: {"success": {"mean", "ci95"}, "simulations", "wall_s", "per_iteration"}}``;
  success is the greedy policy's on the held-out tasks, its mean over seeds and tasks, its ci95 the 95% half-width
  over the seeds' rates (over the tasks with one seed);
- ``eef_results.csv`` (one row per method) and ``eef_success.png`` (success against simulations used);
- ``eef_diagnostics.json``: the expert's success rates, ``N``, and EEF against ``rft_xN`` paired by seed and by
  (seed, task).
"""
from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np

from jaxagent import metrics, plots
from jaxagent.trainers import eef, rft
from jaxagent.trainers.eef import restart_plan
from jaxagent.trainers.expert_tasks import write_json


def matched_rollouts(ctx: rft.Context, seeds) -> int:
    """RFT's episodes per task that match EEF's simulations per iteration (the mean over seeds, rounded)."""
    M = ctx.exp.cfg.eef.num_restarts
    per_task = [restart_plan(s, M)[1].sum() / len(s.tasks) for s in seeds]
    return max(1, int(round(float(np.mean(per_task)))))


def _ci95(values) -> float | None:
    """The 95% half-width (t-distribution); None for a single value."""
    values = np.asarray(values, np.float32)
    return float(metrics.mean_ci95(values)[1]) if values.size >= 2 else None


def summarise_runs(per_seed: list[dict]) -> dict:
    """One method's result over its seeds: success mean and ci95, mean simulations, total wall time, per iteration."""
    rates = [r["success"] for r in per_seed]
    outcomes = np.concatenate([r["per_task"] for r in per_seed]).astype(np.float32)
    iterations = []
    for i in range(len(per_seed[0]["per_iteration"])):
        rows = [r["per_iteration"][i] for r in per_seed]
        iterations.append({k: float(np.mean([row[k] for row in rows])) for k in rows[0]
                           if isinstance(rows[0][k], (int, float)) and not isinstance(rows[0][k], bool)})
    return {"success": {"mean": float(outcomes.mean()), "ci95": _ci95(rates if len(rates) > 1 else outcomes)},
            "simulations": int(round(np.mean([r["simulations"]["episodes"] for r in per_seed]))),
            "steps": int(round(np.mean([r["simulations"]["steps"] for r in per_seed]))),
            "wall_s": float(sum(r["wall_s"] for r in per_seed)),
            "per_seed": rates, "per_iteration": iterations}


def paired(a: list[dict], b: list[dict]) -> dict:
    """``a`` minus ``b``: by seed (success rates) and by (seed, held-out task) (0/1 outcomes)."""
    by_seed = np.array([x["success"] - y["success"] for x, y in zip(a, b)])
    by_task = np.concatenate([np.asarray(x["per_task"], np.float32) - np.asarray(y["per_task"], np.float32)
                              for x, y in zip(a, b)])
    return {"by_seed": {"mean": float(by_seed.mean()), "ci95": _ci95(by_seed), "values": by_seed.tolist()},
            "by_seed_and_task": {"mean": float(by_task.mean()), "ci95": _ci95(by_task)}}


def runners(n: int) -> dict:
    """Method name -> ``run(ctx, seeded) -> result``; ``rft_xN`` plays ``n`` episodes per task."""
    return {"sft_pos": rft.sft_pos, "sft_all": rft.sft_all, "rft": rft.rft,
            "rft_xN": lambda ctx, seeded: rft.rft(ctx, seeded, per_task=n), "eef": eef.eef}


def run(exp, methods: tuple[str, ...], directory: Path, log) -> dict:
    ctx = rft.Context.build(exp, directory, log)
    start = time.perf_counter()
    seeds = [rft.prepare(ctx, s) for s in exp.cfg.eef.seeds]
    n = matched_rollouts(ctx, seeds)
    run_method, names = runners(n), {"rft_xN": f"rft_x{n}"}
    per_method = {}
    for method in methods:
        per_method[names.get(method, method)] = [run_method[method](ctx, seeded) for seeded in seeds]
    results = {name: summarise_runs(runs) for name, runs in per_method.items()}
    diagnostics = {"expert_success_train": [float(s.expert_success.mean()) for s in seeds],
                   "rft_rollouts_per_task": n, "setup_and_runs_s": time.perf_counter() - start}
    if "eef" in per_method and names["rft_xN"] in per_method:
        diagnostics["eef_minus_" + names["rft_xN"]] = paired(per_method["eef"], per_method[names["rft_xN"]])
    write_json(directory / "eef_results.json", results)
    write_json(directory / "eef_diagnostics.json", diagnostics)
    _write_csv(directory / "eef_results.csv", results)
    _plot(directory / "eef_success.png", results)
    print_results(results, diagnostics)
    return results


def _write_csv(path: Path, results: dict) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["method", "success_mean", "success_ci95", "simulations", "steps", "wall_s"])
        for name, r in results.items():
            out.writerow([name, f"{r['success']['mean']:.4f}", f"{r['success']['ci95']:.4f}", r["simulations"],
                          r["steps"], f"{r['wall_s']:.1f}"])


def _plot(path: Path, results: dict) -> None:
    fig, ax = plots.figure()
    for name, r in results.items():
        points = r["per_iteration"]
        ax.plot([p["episodes"] for p in points], [p["success"] for p in points], marker="o", label=name)
    ax.set_xlabel("policy episodes simulated (mean over seeds)")
    ax.set_ylabel("held-out success rate")
    plots.save(fig, path, [ax], legend={})


def print_results(results: dict, diagnostics: dict) -> None:
    print(f"{'method':<10}{'success':>18}{'simulations':>13}{'wall s':>9}")
    for name, r in results.items():
        s = r["success"]
        print(f"{name:<10}{s['mean']:>10.3f} ± {s['ci95']:<5.3f}{r['simulations']:>13}{r['wall_s']:>9.0f}")
    for key, value in diagnostics.items():
        if key.startswith("eef_minus_"):
            d = value["by_seed"]
            by_seed = "" if d["ci95"] is None else f"{d['mean']:+.3f} ± {d['ci95']:.3f} by seed, "
            t = value["by_seed_and_task"]
            print(f"{key}: {by_seed}{t['mean']:+.3f} ± {t['ci95']:.3f} by seed and task")
