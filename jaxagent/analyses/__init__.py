"""The RLFT paper's analyses of a policy, run by ``jaxagent eval CONFIG checkpoint=DIR analysis=NAME``:
``frequency-bias`` (:mod:`.frequency_bias`) and ``knowing-doing`` (:mod:`.knowing_doing`). Each writes
``<name>.json`` and ``<name>.png`` to ``run.output_dir/run.name/analyses/``."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from envs_jax.yaml_config import ConfigError
from jaxagent import plots
from jaxagent.analyses import frequency_bias, knowing_doing
from jaxagent.runlog import is_main_process

ANALYSES = ("frequency-bias", "knowing-doing")


def run(name: str, exp, params, evaluator, directory: Path) -> dict:
    if exp.env.kind != "bandit":
        raise ConfigError(f"config key 'env.name': the {name} analysis needs a multi-armed bandit, "
                          f"got {exp.cfg.env.name!r}")
    if name == "frequency-bias":
        result = frequency_bias.run(exp, params, jax.random.key(exp.cfg.analysis.seed), exp.cfg.analysis)
    else:
        result = knowing_doing.run(exp, params, evaluator)
    if is_main_process():
        directory.mkdir(parents=True, exist_ok=True)
        stem = name.replace("-", "_")
        (directory / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
        (_plot_frequency_bias if name == "frequency-bias" else _plot_knowing_doing)(result, directory / f"{stem}.png")
    return result


def _plot_frequency_bias(result: dict, path: Path) -> None:
    fig, (left, right) = plots.figure(1, 2, size=(9, 3.6))
    buckets = [b for b, row in result["buckets"].items() if "entropy" in row]
    bottom = np.zeros(len(buckets))
    for name in frequency_bias.FRACTIONS:
        heights = np.asarray([result["buckets"][b][name]["mean"] for b in buckets])
        left.bar(buckets, heights, bottom=bottom, label=name)
        bottom += heights
    left.set_xlabel("repetitions of the frequent action")
    left.set_ylabel("share of the policy's actions")
    left.set_ylim(0, 1.2)
    reps = [r for r, row in result["by_repetition"].items() if "entropy" in row]
    mean = np.asarray([result["by_repetition"][r]["entropy"]["mean"] for r in reps])
    half = np.asarray([result["by_repetition"][r]["entropy"]["ci95"] for r in reps])
    x = np.asarray(reps, float)
    right.plot(x, mean, marker="o")
    right.fill_between(x, mean - half, mean + half, alpha=0.2)
    right.set_xlabel("repetitions")
    right.set_ylabel("action entropy (nats)")
    right.set_title(f"corr = {result['entropy_repetition_correlation']:.2f} ({result['method']})", fontsize=9)
    plots.save(fig, path, [left, right], legend={"fontsize": 8, "ncol": 3, "loc": "upper center"})


def _plot_knowing_doing(result: dict, path: Path) -> None:
    fig, ax = plots.figure(size=(5.5, 3.6))
    columns = ("greedy", "optimal", "other")
    width = 0.27
    for i, row in enumerate(knowing_doing.ROWS):
        cells = [result["table"][f"{row}/{c}"] for c in columns]
        ax.bar(np.arange(3) + (i - 1) * width, [c["mean"] for c in cells], width,
               yerr=[c["ci95"] for c in cells], label=f"knowing {row}")
    ax.set_xticks(np.arange(3), [f"doing {c}" for c in columns])
    ax.set_ylabel("share of all steps")
    ax.set_title(f"parse rate {result['parse_rate']:.2f}", fontsize=9)
    plots.save(fig, path, [ax], legend={"fontsize": 8})
