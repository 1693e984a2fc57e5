"""``jaxagent train|eval|export CONFIG [key=value ...]``: the trainers (``trainer`` in the config names one of
``jaxagent.experiment_config.TRAINERS``: a sequence of the phases below, with paired evaluation, or the EEF paper's
methods on tasks, compared in :mod:`jaxagent.trainers.compare`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from envs_jax.yaml_config import ConfigError
from jaxagent import analyses, metrics, storage
from jaxagent.checkpoint import Checkpointer, is_step_directory
from jaxagent.experiment_config import TASK_METHODS, TRAINERS, load_experiment
from jaxagent.model import load_policy
from jaxagent.model.policy import Policy
from jaxagent.runlog import RunLog, is_main_process
from jaxagent.text.tokenizer import save_hf_tokenizer
from jaxagent.trainers import compare, rlft, sft
from jaxagent.trainers.evaluate import Evaluator, print_table, summarise, write_report, write_summary
from jaxagent.trainers.setup import SHIPPED, build, checkpoint_path, tokenizer_for

# phase name -> train(exp, params, directory, log, evaluate) -> tuned params
PHASES = {"sft": sft.train, "rlft": rlft.train}

def _baselines(exp, evaluator: Evaluator) -> dict:
    """The env kind's reference players on the held-out instances (random / UCB / greedy, or minimax)."""
    experts = exp.kind.baseline_experts(exp.env, exp.tokenizer, exp.labels)
    return {name: evaluator.expert(expert) for name, expert in experts.items()}


def _eval_scalars(evaluator: Evaluator):
    def scalars(params):
        s = summarise(evaluator.model(params))
        return {metric: row["mean"] for metric, row in s.items()}
    return scalars


def _across_seeds(directory: Path, runs: dict[int, Path]) -> dict:
    """``summary.json`` and ``curves.json`` of runs that differ only in their seed: per method and metric the mean
    of the seeds' means with its 95% CI over seeds (the paper's), and the per-seed means; the curves likewise.
    Process 0 of a multi-host run, which wrote the seeds' files, reads them; the others return nothing."""
    if not is_main_process():
        return {}
    summaries = {seed: json.loads((d / "summary.json").read_text()) for seed, d in runs.items()}
    curves = {seed: json.loads((d / "curves.json").read_text()) for seed, d in runs.items()}
    first = next(iter(summaries.values()))
    summary, stats = {}, {}
    for method, row in first.items():
        summary[method] = {}
        for metric in row:
            values = np.asarray([summaries[seed][method][metric]["mean"] for seed in runs])
            mean, half = metrics.mean_ci95(values)
            summary[method][metric] = {"mean": float(mean), "ci95": float(half), "per_seed": values.tolist()}
        stats[method] = {}
        for metric in next(iter(curves.values()))[method]:
            x = np.asarray([curves[seed][method][metric]["mean"] for seed in runs])
            mean, half = metrics.mean_ci95(x)
            stats[method][metric] = {"mean": np.asarray(mean).tolist(), "ci95": np.asarray(half).tolist()}
    write_summary(directory, summary, stats)
    return summary


def train_from_config(path, overrides) -> dict:
    cfg = load_experiment(path, overrides)
    if cfg.run.seeds:  # one run per seed in its own directory, then the summary over seeds
        runs = {}
        for seed in cfg.run.seeds:
            train_from_config(path, [*overrides, "run.seeds=[]", f"run.seed={seed}", f"run.name=seed_{seed}",
                                     f"run.output_dir={cfg.run.directory}"])
            runs[seed] = cfg.run.directory / f"seed_{seed}"
        summary = _across_seeds(cfg.run.directory, runs)
        storage.publish(cfg.run.directory)
        print_table(summary)
        print(f"run directory: {cfg.run.directory} (summary.json over seeds {list(cfg.run.seeds)}, seed_S/)")
        return summary
    exp = build(cfg)
    directory = cfg.run.directory
    if set(TRAINERS[cfg.trainer]) <= set(TASK_METHODS):
        with RunLog(directory, cfg, seeds={"eef": list(cfg.eef.seeds), "eval": cfg.eval.seed}) as log:
            results = compare.run(exp, TRAINERS[cfg.trainer], directory, log)
        print(f"run directory: {directory} (eef_results.json, eef_results.csv, eef_success.png, tb/)")
        return results
    with RunLog(directory, cfg, seeds={"run": cfg.run.seed, "eval": cfg.eval.seed}) as log:
        evaluator = Evaluator(exp, cfg.eval.num_episodes, cfg.eval.seed)
        curves = _baselines(exp, evaluator)
        params = exp.init_params
        phases = TRAINERS[cfg.trainer]
        if phases[0] != "sft":
            curves["initial" + cfg.eval.mechanisms] = evaluator.model(params)
        for phase in phases:
            params = PHASES[phase](exp, params, directory / phase, log, _eval_scalars(evaluator))
            curves[phase + cfg.eval.mechanisms] = evaluator.model(params)
        Policy(exp.model_cfg, params).save(storage.durable(directory / "policy"))
        summary = write_report(directory, curves)
    print_table(summary)
    print(f"run directory: {directory} (summary.json, regret.png, coverage.png, policy/, tb/)")
    return summary


def _pop(overrides, key: str, required: bool = True):
    values = [o.split("=", 1)[1] for o in overrides if o.startswith(f"{key}=")]
    rest = [o for o in overrides if not o.startswith(f"{key}=")]
    if required and not values:
        raise ConfigError(f"missing '{key}=...' on the command line")
    return (values[-1] if values else None), rest


def _checkpoint_arg(overrides) -> tuple[Path, list]:
    checkpoint, overrides = _pop(overrides, "checkpoint")
    if storage.is_url(checkpoint) or checkpoint.startswith(SHIPPED):
        return checkpoint_path(checkpoint, "checkpoint"), overrides
    if not Path(checkpoint).exists():
        raise ConfigError(f"checkpoint directory not found: {checkpoint}")
    return Path(checkpoint), overrides


def _load(path: Path, cfg, exp=None) -> Policy:
    """A policy from ``path``: a training step directory (parameters only, the model is the config's) or
    anything :func:`jaxagent.load_policy` reads."""
    if not is_step_directory(path):
        return load_policy(path, cfg.model.dtype)
    exp = exp or build(cfg)
    saved = Checkpointer(path.parent, create=False, async_save=False)
    try:
        return Policy(exp.model_cfg, saved.restore_params(exp.init_params, int(path.name)))
    finally:
        saved.close()


def eval_from_config(path, overrides) -> dict:
    """Evaluate a saved policy (``checkpoint=DIR``: a run's policy/, one of its training checkpoints, or any
    HF/Orbax Gemma 2 directory), or with ``analysis=NAME`` run one of :data:`jaxagent.analyses.ANALYSES` on it."""
    checkpoint, overrides = _checkpoint_arg(overrides)
    analysis, overrides = _pop(overrides, "analysis", required=False)
    if analysis is not None and analysis not in analyses.ANALYSES:
        raise ConfigError(f"analysis={analysis}: expected one of {', '.join(analyses.ANALYSES)}")
    cfg = load_experiment(path, overrides)
    exp = build(cfg)
    policy = _load(checkpoint, cfg, exp)
    evaluator = Evaluator(exp, cfg.eval.num_episodes, cfg.eval.seed)
    if analysis is not None:
        directory = cfg.run.directory / "analyses"
        result = analyses.run(analysis, exp, policy.params, evaluator, directory)
        storage.publish(directory)
        print(json.dumps(result, indent=2))
        print(f"analysis: {directory} ({analysis.replace('-', '_')}.json, .png)")
        return result
    curves = {**_baselines(exp, evaluator), "policy" + cfg.eval.mechanisms: evaluator.model(policy.params)}
    if is_step_directory(checkpoint):
        report = checkpoint.parent.parent / f"eval_{checkpoint.name}{cfg.eval.mechanisms}"
    else:
        report = checkpoint.parent / f"eval{cfg.eval.mechanisms}"
    summary = write_report(report, curves)
    storage.publish(report)
    print_table(summary)
    print(f"report: {report} (summary.json, regret.png, coverage.png)")
    return summary


def export_from_config(path, overrides) -> None:
    """Write a saved policy (``checkpoint=DIR``, as for eval) as a Hugging Face Gemma 2 directory (``out=DIR``):
    config and weights, the config's tokenizer with the chat template, and a generation config."""
    checkpoint, overrides = _checkpoint_arg(overrides)
    out, overrides = _pop(overrides, "out")
    if storage.is_url(out):
        raise ConfigError(f"out={out}: export writes a local directory (copy it to the bucket after)")
    cfg = load_experiment(path, overrides)
    _load(checkpoint, cfg).save_hf(out)
    save_hf_tokenizer(tokenizer_for(cfg), out)
    print(f"exported {checkpoint} -> {out}")


__all__ = ["PHASES", "eval_from_config", "export_from_config", "train_from_config"]
