"""Vectorised baseline sweeps: ``jaxagent sweep CONFIG.yaml [key=value ...]``.

A sweep is a grid of env options x baselines x seeds x instances. Grid cells whose envs share one compiled
step (same ``env.signature``: e.g. the same arm count, different noise levels) are stacked into one params
pool, so each group is **one jitted call** that runs every policy over every cell, seed and instance. All
policies see the same instances and env keys (common random numbers). The episodes are split over every device of
every process (``distributed: true`` joins a multi-host job first), so the same command runs on one CPU or a pod;
process 0 gathers the results and writes ``results.csv``,
``results.json`` (with mean curves), ``regret.png`` / ``coverage.png`` (bandits) and ``outcomes.png``
(tic-tac-toe) to ``out_dir/name``, and prints a table. Means come with 95% CI half-widths
(1.96 * sd / sqrt(n) over the seeds x instances episodes).
"""
from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from envs_jax import baselines, processes
from envs_jax.core import EnvError
from envs_jax.registry import make_env
from envs_jax.yaml_config import ConfigError, load


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    name: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    label: str | None = None

    @property
    def title(self) -> str:
        if self.label:
            return self.label
        return self.name + "".join(f" {k}={v}" for k, v in sorted(self.options.items()))


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    name: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    grid: dict[str, list] = dataclasses.field(default_factory=dict)
    policies: tuple[PolicySpec, ...] | None = None


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    name: str = "sweep"
    envs: tuple[EnvSpec, ...] = ()
    policies: tuple[PolicySpec, ...] = ()
    seeds: int = 3
    instances: int = 512
    seed: int = 0
    out_dir: str = "runs/sweeps"
    plots: bool = True
    distributed: bool = False              # multi-host: join the job's processes (as run.distributed in training)
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def validate(self) -> None:
        processes.check_keys("", self.distributed, self.coordinator_address, self.num_processes, self.process_id)
        if "://" in self.out_dir:
            raise ConfigError(f"config key 'out_dir': {self.out_dir!r}: sweeps write to a local directory")
        if not self.envs:
            raise ConfigError("config key 'envs': at least one environment is needed")
        if self.seeds < 1:
            raise ConfigError(f"config key 'seeds': must be >= 1, got {self.seeds}")
        if self.instances < 1:
            raise ConfigError(f"config key 'instances': must be >= 1, got {self.instances}")
        for i, env in enumerate(self.envs):
            for k, v in env.grid.items():
                if not isinstance(v, (list, tuple)) or not v:
                    raise ConfigError(f"config key 'envs[{i}].grid.{k}': expected a non-empty list, got {v!r}")
            if not (env.policies or self.policies):
                raise ConfigError(f"config key 'envs[{i}].policies': no policies (and no top-level 'policies')")


@dataclasses.dataclass
class Cell:
    env_index: int
    name: str
    options: dict
    swept: dict
    env: Any
    policies: tuple


# -------------------------------------------------------------------------------------------- episodes
def _group_runner(env, policies):
    """jit(params[N], keys[N]) -> [metrics per policy], every policy in one call.

    One ``lax.scan`` over time steps all policies side by side: each policy picks its action from its own copy
    of the state, then one ``env.step`` (vmapped over the policies) advances them all with the same env key
    (common random numbers; the env's hashing is traced once, which keeps compile time down).
    """
    num_policies = len(policies)
    horizon = env.horizon

    def episode(key, params):
        k_reset, k_steps = jax.random.split(key)
        _, state = env.reset(k_reset, params)
        states = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_policies,) + jnp.shape(x)), state)
        step_keys = jax.random.split(k_steps, (horizon, num_policies + 1))

        def body(states, keys):
            actions = jnp.stack([
                jnp.asarray(pol(keys[i], jax.tree.map(lambda x, i=i: x[i], states), params), jnp.int32)
                for i, pol in enumerate(policies)])
            _, states, reward, _, _, info = jax.vmap(env.step, (None, 0, 0, None))(
                keys[num_policies], states, actions, params)
            out = {"reward": reward, "invalid": info["invalid"], "action": actions}
            if "expected_reward" in info:
                out["expected"] = info["expected_reward"]
                out["best"] = info["best_expected_reward"]
            return states, out

        return jax.lax.scan(body, states, step_keys)

    @jax.jit
    def run(params, key_data):
        # final: [N, P, ...]; steps: [N, H, P]
        final, steps = jax.vmap(episode)(jax.random.wrap_key_data(key_data), params)
        results = []
        for i in range(num_policies):
            st = jax.tree.map(lambda x, i=i: x[:, i], final)
            sp = jax.tree.map(lambda x, i=i: x[:, :, i], steps)
            results.append(_metrics(env, st, sp))
        return results
    return run


def _metrics(env, state, steps) -> dict[str, jax.Array]:
    """Per-episode metrics [N] and per-step curves [N, H] from a batch of episodes."""
    out = {"return": jnp.sum(steps["reward"], 1),
           "invalid_rate": jnp.mean(steps["invalid"].astype(jnp.float32), 1)}
    if "expected" in steps:
        regret = jnp.cumsum(steps["best"] - steps["expected"], axis=1)
        tried = jax.nn.one_hot(steps["action"], env.num_actions, dtype=jnp.float32)
        coverage = jnp.mean(jax.lax.cummax(tried, axis=1), axis=-1)
        out.update(regret=regret[:, -1], coverage=coverage[:, -1], regret_curve=regret, coverage_curve=coverage)
    if env.kind == "game":
        out.update(win=(state.winner == 1).astype(jnp.float32), loss=(state.winner == 2).astype(jnp.float32),
                   draw=(state.terminated & (state.winner == 0)).astype(jnp.float32),
                   moves=state.t.astype(jnp.float32))
    return out


# ------------------------------------------------------------------------------------------------ run
def expand(cfg: SweepConfig) -> list[Cell]:
    cells = []
    for i, spec in enumerate(cfg.envs):
        keys = list(spec.grid)
        for combo in itertools.product(*(spec.grid[k] for k in keys)):
            swept = dict(zip(keys, combo))
            options = {**spec.options, **swept}
            try:
                env = make_env(spec.name, **options)
                specs = spec.policies or cfg.policies
                pols = tuple((ps, baselines.make(ps.name, env, **ps.options)) for ps in specs)
            except EnvError as e:
                raise ConfigError(f"config key 'envs[{i}]' ({spec.name} {options}): {e}") from None
            cells.append(Cell(i, spec.name, options, swept, env, pols))
    return cells


def _stat(x: np.ndarray) -> tuple[float, float]:
    x = np.asarray(x, np.float64)
    sd = x.std(ddof=1) if x.size > 1 else 0.0
    return float(x.mean()), float(1.96 * sd / np.sqrt(x.size))


def _over_devices(tree):
    """The episodes (leading axis) of ``tree``, equal on every process, split over all devices of all processes;
    padded with copies of the first episodes to a multiple of the device count."""
    devices = jax.devices()
    sharding = NamedSharding(Mesh(np.array(devices), ("episodes",)), PartitionSpec("episodes"))

    def put(x):
        x = np.asarray(x)
        x = x[np.arange(-(-len(x) // len(devices)) * len(devices)) % len(x)]
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
    return jax.tree.map(put, tree)


def _gather(tree, episodes: int):
    """Every process's shards as host arrays, padding dropped."""
    full = multihost_utils.process_allgather(tree, tiled=True) if jax.process_count() > 1 else jax.device_get(tree)
    return jax.tree.map(lambda x: np.asarray(x)[:episodes], full)


def run(cfg: SweepConfig, verbose: bool = True) -> dict:
    """Run a sweep; returns the results mapping (written to out_dir by process 0)."""
    if cfg.distributed:
        processes.join("", cfg.coordinator_address, cfg.num_processes, cfg.process_id)
    verbose = verbose and jax.process_index() == 0
    start = time.perf_counter()
    cells = expand(cfg)
    groups: dict[tuple, list[int]] = {}
    for ci, cell in enumerate(cells):
        sig = (cell.name, cell.env.signature, tuple(ps.title for ps, _ in cell.policies))
        groups.setdefault(sig, []).append(ci)
    episodes = cfg.seeds * cfg.instances
    base = jax.random.key(cfg.seed)
    rows, curves = [], []
    prepared = []
    for sig, members in groups.items():
        env = cells[members[0]].env
        pols = [p for _, p in cells[members[0]].policies]
        pool, keys = [], []
        for ci in members:
            kc = jax.random.fold_in(base, ci)
            seed_keys = jax.vmap(lambda s: jax.random.fold_in(kc, s))(jnp.arange(cfg.seeds))
            inst = jax.vmap(lambda k: jax.random.split(k, cfg.instances))(seed_keys).reshape(-1)
            kp, kr = _split2(inst)
            pool.append(jax.vmap(cells[ci].env.sample_params)(kp))
            keys.append(kr)
        params = _over_devices(jax.tree.map(lambda *x: jnp.concatenate(x), *pool))
        keys = _over_devices(jax.random.key_data(jnp.concatenate(keys)))
        prepared.append((members, _group_runner(env, pols).lower(params, keys), params, keys))
    if verbose:
        print(f"compiling {len(prepared)} jitted calls ({len(cells)} cells)", flush=True)
    t0 = time.perf_counter()
    compiled = [item[1].compile() for item in prepared]   # XLA's CPU codegen already uses every core
    compile_s = time.perf_counter() - t0
    for call, ((members, _, params, keys), fn) in enumerate(zip(prepared, compiled)):
        tick = time.perf_counter()
        out = _gather(fn(params, keys), len(members) * episodes)
        if verbose:
            first = cells[members[0]]
            print(f"[{call + 1}/{len(prepared)}] {first.name} {len(members)} cells x {len(first.policies)} policies "
                  f"x {episodes} episodes: {time.perf_counter() - tick:.1f} s", flush=True)
        out = [{k: v.reshape((len(members), episodes) + v.shape[1:]) for k, v in m.items()} for m in out]
        for pi, metrics in enumerate(out):
            for j, ci in enumerate(members):
                cell = cells[ci]
                ps = cell.policies[pi][0]
                row = {"env": cell.name, **{f"opt.{k}": v for k, v in cell.swept.items()},
                       "policy": ps.title, "episodes": episodes}
                for m in ("regret", "coverage", "win", "draw", "loss", "return", "invalid_rate", "moves"):
                    if m in metrics:
                        row[m], row[f"{m}_ci95"] = _stat(metrics[m][j])
                rows.append(row)
                if "regret_curve" in metrics:
                    curves.append({"cell": ci, "env": cell.name, "swept": cell.swept, "options": cell.options,
                                   "policy": ps.title,
                                   "regret_mean": metrics["regret_curve"][j].mean(0).tolist(),
                                   "regret_ci95": (1.96 * metrics["regret_curve"][j].std(0, ddof=1)
                                                   / np.sqrt(episodes)).tolist(),
                                   "coverage_mean": metrics["coverage_curve"][j].mean(0).tolist(),
                                   "coverage_ci95": (1.96 * metrics["coverage_curve"][j].std(0, ddof=1)
                                                     / np.sqrt(episodes)).tolist()})
    elapsed = time.perf_counter() - start
    result = {"name": cfg.name, "seeds": cfg.seeds, "instances": cfg.instances, "jitted_calls": len(groups),
              "compile_s": round(compile_s, 2), "total_s": round(elapsed, 2), "rows": rows, "curves": curves}
    if jax.process_index() != 0:
        return result
    out_dir = Path(cfg.out_dir) / cfg.name
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / "results.csv", rows)
    (out_dir / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    files = ["results.csv", "results.json"]
    if cfg.plots:
        files += _plots(out_dir, curves, rows)
    result["files"] = [str(out_dir / f) for f in files]
    if verbose:
        print(format_table(rows))
        print(f"\n{len(cells)} cells x policies x {cfg.seeds} seeds x {cfg.instances} instances in "
              f"{len(groups)} jitted calls; compile {compile_s:.1f} s, total {elapsed:.1f} s")
        print("wrote " + ", ".join(result["files"]))
    return result


def _split2(keys):
    pairs = jax.vmap(lambda k: jax.random.split(k))(keys)
    return pairs[:, 0], pairs[:, 1]


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def format_table(rows: list[dict]) -> str:
    """A plain-text table: one line per (cell, policy), one block per kind of metrics."""
    def cell_name(r):
        opts = " ".join(f"{k[4:]}={v}" for k, v in r.items() if k.startswith("opt."))
        return f"{r['env']} {opts}".strip()

    def cols(r):
        if "regret" in r:
            return [("regret", f"{r['regret']:8.2f} ± {r['regret_ci95']:5.2f}"), ("coverage", f"{r['coverage']:8.2f}")]
        return [("win", f"{r['win']:5.3f}"), ("draw", f"{r['draw']:5.3f}"), ("loss", f"{r['loss']:5.3f}"),
                ("return", f"{r['return']:6.3f} ± {r['return_ci95']:5.3f}")]

    w_env = max([len(cell_name(r)) for r in rows] + [3])
    w_pol = max([len(r["policy"]) for r in rows] + [6])
    lines, header = [], None
    for r in rows:
        c = cols(r)
        h = f"{'env':<{w_env}}  {'policy':<{w_pol}}  " + "  ".join(f"{n:>{len(v)}}" for n, v in c)
        if h != header:
            lines += ["", h, "-" * len(h)]
            header = h
        lines.append(f"{cell_name(r):<{w_env}}  {r['policy']:<{w_pol}}  " + "  ".join(v for _, v in c))
    return "\n".join(lines).lstrip("\n")


def _plots(out_dir: Path, curves: list[dict], rows: list[dict]) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if curves:
        cell_ids = sorted({c["cell"] for c in curves})
        n = len(cell_ids)
        cols = min(3, n)
        nrows = -(-n // cols)
        for metric, fname, ylabel in (("regret", "regret.png", "cumulative regret"),
                                      ("coverage", "coverage.png", "action coverage")):
            fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
            for ax, ci in zip(axes.flat, cell_ids):
                for c in (c for c in curves if c["cell"] == ci):
                    m, e = np.array(c[f"{metric}_mean"]), np.array(c[f"{metric}_ci95"])
                    x = np.arange(1, len(m) + 1)
                    ax.plot(x, m, label=c["policy"])
                    ax.fill_between(x, m - e, m + e, alpha=0.2)
                first = next(c for c in curves if c["cell"] == ci)
                ax.set_title(f"{first['env']} " + " ".join(f"{k}={v}" for k, v in first["swept"].items()),
                             fontsize=9)
                ax.set_xlabel("step")
                ax.set_ylabel(ylabel)
            for ax in list(axes.flat)[n:]:
                ax.axis("off")
            axes.flat[0].legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(out_dir / fname, dpi=90)
            plt.close(fig)
            written.append(fname)
    games = [r for r in rows if "win" in r]
    if games:
        labels = [" ".join([r["policy"]] + [f"{k[4:]}={v}" for k, v in r.items() if k.startswith("opt.")])
                  for r in games]
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(games)), 4))
        x = np.arange(len(games))
        bottom = np.zeros(len(games))
        for m, colour in (("win", "tab:green"), ("draw", "tab:gray"), ("loss", "tab:red")):
            v = np.array([r[m] for r in games])
            ax.bar(x, v, bottom=bottom, color=colour, label=m)
            bottom += v
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("fraction of games")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "outcomes.png", dpi=90)
        plt.close(fig)
        written.append("outcomes.png")
    return written


def load_config(config_path: str | Path | None, overrides=()) -> SweepConfig:
    return load(SweepConfig, config_path, list(overrides))


def run_from_config(config_path: str | Path, overrides=()) -> dict:
    """The ``jaxagent sweep`` entry point."""
    return run(load_config(config_path, overrides))
