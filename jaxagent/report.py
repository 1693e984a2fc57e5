"""``jaxagent report RUN_DIR [RUN_DIR ...] [--out DIR]``: one self-contained HTML page (images inline, the PNGs
beside it) for a run, or comparing runs.

From each run directory it reads what training wrote: ``summary.json`` and ``curves.json`` (the held-out evaluation
of every method and baseline), the TensorBoard scalars under ``tb/`` (training curves, seconds per update),
``analyses/*.json`` (frequency bias, knowing-doing), ``config.yaml`` and ``run.json``. The page shows the summary
tables, the regret / coverage / greedy-action-rate (or per-game return) curves against the baselines, the
analyses' figures, the training curves, the throughput and each run's config.
"""
from __future__ import annotations

import base64
import html
import json
import shutil
import struct
from pathlib import Path

import numpy as np

from envs_jax.yaml_config import ConfigError
from jaxagent import plots
from jaxagent.analyses import frequency_bias
from jaxagent.trainers.evaluate import plot_curves

TRAINING_TAGS = ("loss", "env_reward", "train_reward", "invalid_rate", "generated_length", "regret", "coverage",
                 "eval/regret", "eval/coverage", "eval/return", "eval/win")


def read_scalars(tb_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar in the TensorBoard event files of ``tb_dir``: tag -> (steps, values), in step order."""
    from tensorboardX.proto import event_pb2

    points: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(tb_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at + 12 <= len(data):  # records: u64 length, u32 crc, payload, u32 crc
            (length,) = struct.unpack("<Q", data[at: at + 8])
            payload = data[at + 12: at + 12 + length]
            if len(payload) < length:
                break  # a record still being written
            at += 16 + length
            event = event_pb2.Event.FromString(payload)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    points.setdefault(value.tag, []).append((event.step, value.simple_value))
    return {tag: tuple(np.asarray(x) for x in zip(*sorted(p))) for tag, p in points.items()}


def _load_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


class Run:
    def __init__(self, directory: Path):
        if not any((directory / name).exists() for name in ("config.yaml", "summary.json", "analyses")):
            raise ConfigError(f"{directory}: not a run directory (no config.yaml, summary.json or analyses/)")
        self.directory, self.name = directory, directory.name
        self.summary = _load_json(directory / "summary.json") or {}
        self.curves = _load_json(directory / "curves.json") or {}
        self.info = _load_json(directory / "run.json") or {}
        config = directory / "config.yaml"
        self.config = config.read_text() if config.is_file() else ""
        self.scalars = read_scalars(directory / "tb") if (directory / "tb").is_dir() else {}
        self.analyses = {p.stem: (json.loads(p.read_text()), p.with_suffix(".png"))
                         for p in sorted((directory / "analyses").glob("*.json"))}

    @property
    def game(self) -> bool:
        return any("win" in row for row in self.summary.values())

    def trained(self, method: str) -> bool:
        """A method of this run's own (a phase with its directory, the initial or an evaluated policy), not a
        reference player."""
        name = method.split("+")[0]
        return name in ("initial", "policy") or (self.directory / name).is_dir()

    def seconds_per_update(self) -> dict[str, float]:
        """Median seconds per logged update of each phase (from ``<phase>/time/iteration_s``)."""
        return {tag.split("/")[0]: float(np.median(values)) for tag, (_, values) in self.scalars.items()
                if tag.endswith("time/iteration_s")}


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}">'


def _table(rows: dict[str, dict], columns: tuple[str, ...]) -> str:
    head = "".join(f"<th>{c}</th>" for c in ("method",) + columns)
    body = []
    for name, row in rows.items():
        cells = "".join(f"<td>{row[c]['mean']:.3f} ± {row[c]['ci95']:.3f}</td>" if c in row else "<td></td>"
                        for c in columns)
        body.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _training_plot(runs: list[Run], path: Path) -> bool:
    tags = sorted({t for run in runs for t in run.scalars
                   if t.split("/", 1)[-1] in TRAINING_TAGS or t.split("/", 1)[-1].startswith("loss/")})
    if not tags:
        return False
    columns = 3
    rows = -(-len(tags) // columns)
    fig, axes = plots.figure(rows, columns, size=(4 * columns, 2.8 * rows), squeeze=False)
    for ax, tag in zip(axes.flat, tags):
        for i, run in enumerate(runs):
            if tag in run.scalars:
                steps, values = run.scalars[tag]
                ax.plot(steps, values, color=f"C{i}", label=run.name, marker="o" if len(steps) < 12 else None)
        ax.set_title(tag, fontsize=9)
        ax.set_xlabel("update", fontsize=8)
    for ax in list(axes.flat)[len(tags):]:
        ax.axis("off")
    if len(runs) > 1:
        named = {label: handle for ax in axes.flat for handle, label in zip(*ax.get_legend_handles_labels())}
        fig.legend(list(named.values()), list(named), loc="lower right", frameon=False, fontsize=8)
    plots.save(fig, path, list(axes.flat)[: len(tags)], dpi=100)
    return True


def _frequency_bias_by_run(runs: list[Run], path: Path) -> bool:
    """Side by side, each run's frequent / greedy / other shares per repetition bucket (stacked bars)."""
    results = [(run.name, run.analyses["frequency_bias"][0]) for run in runs if "frequency_bias" in run.analyses]
    if len(results) < 2:
        return False
    fig, ax = plots.figure(size=(2.2 + 1.6 * len(results), 3.6))
    width = 0.8 / len(results)
    colours = {"frequent": "tab:blue", "greedy": "tab:orange", "other": "tab:green"}
    for i, (name, result) in enumerate(results):
        buckets = list(result["buckets"])
        x = np.arange(len(buckets)) + (i - (len(results) - 1) / 2) * width
        bottom = np.zeros(len(buckets))
        for part in frequency_bias.FRACTIONS:
            heights = np.asarray([result["buckets"][b].get(part, {"mean": 0.0})["mean"] for b in buckets])
            ax.bar(x, heights, width * 0.95, bottom=bottom, color=colours[part], label=part if i == 0 else None)
            bottom += heights
        for xi in x:
            ax.text(xi, 1.02, name, rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(np.arange(len(buckets)), [f"{b} repetitions" for b in buckets])
    ax.set_ylabel("share of the policy's actions")
    ax.set_ylim(0, 1.8)
    ax.set_yticks(np.linspace(0, 1, 6))
    plots.save(fig, path, [ax], legend={"fontsize": 8, "ncol": 3, "loc": "upper center"})
    return True


def _compared_curves(runs: list[Run]) -> dict:
    """The first run's methods and reference players; the other runs' own methods (a training phase, the initial
    or an evaluated policy), named ``run/method``."""
    if len(runs) == 1:
        return dict(runs[0].curves)
    out = {f"{runs[0].name}/{k}": v for k, v in runs[0].curves.items()}
    for run in runs[1:]:
        out.update({f"{run.name}/{k}": v for k, v in run.curves.items() if run.trained(k)})
    return out


def build(directories: list[Path], out: Path) -> Path:
    """Write ``out/report.html`` (and its PNGs) for the runs in ``directories``; returns the page's path."""
    runs = [Run(Path(d)) for d in directories]
    out.mkdir(parents=True, exist_ok=True)
    game = all(run.game for run in runs)
    sections = [f"<h1>jaxagent report: {html.escape(', '.join(run.name for run in runs))}</h1>"]
    columns = ("return", "win", "draw", "loss", "invalid") if game else ("regret", "coverage", "greedy", "invalid")
    for run in runs:
        sections.append(f"<h2>{html.escape(run.name)}: held-out evaluation</h2>")
        sections.append(_table(run.summary, columns) if run.summary else "<p>no summary.json yet</p>")
    curves = _compared_curves(runs)
    figures = []
    for metric in ("return",) if game else ("regret", "coverage", "greedy"):
        if curves and all(metric in stats for stats in curves.values()):
            path = out / f"{metric}.png"
            plot_curves(curves, metric, path)
            figures.append(_image(path))
    if figures:
        sections.append("<h2>Curves on the held-out instances (mean, 95% CI)</h2>" + "".join(figures))
    if _frequency_bias_by_run(runs, out / "frequency_bias_by_run.png"):
        sections.append("<h2>Frequency bias by run</h2>" + _image(out / "frequency_bias_by_run.png"))
    for run in runs:
        for name, (result, png) in run.analyses.items():
            sections.append(f"<h2>{html.escape(run.name)}: {html.escape(name.replace('_', ' '))}</h2>")
            if png.is_file():
                shutil.copy(png, out / f"{run.name}_{png.name}")
                sections.append(_image(png))
            sections.append(f"<pre>{html.escape(json.dumps(_headline(result), indent=1))}</pre>")
    if _training_plot(runs, out / "training.png"):
        sections.append("<h2>Training curves</h2>" + _image(out / "training.png"))
    sections.append("<h2>Throughput and set-up</h2>")
    for run in runs:
        start = (run.info.get("starts") or [{}])[-1]
        speed = ", ".join(f"{phase}: {s:.2f} s per update" for phase, s in run.seconds_per_update().items())
        sections.append(f"<h3>{html.escape(run.name)}</h3><p>{html.escape(speed or 'no timings logged')}; host "
                        f"{html.escape(str(start.get('host')))}, packages "
                        f"{html.escape(json.dumps(start.get('packages', {})))}, commit "
                        f"{html.escape(json.dumps(start.get('git')))}</p><pre>{html.escape(run.config)}</pre>")
    page = out / "report.html"
    page.write_text(_PAGE.format(body="\n".join(sections)))
    return page


def _headline(result: dict) -> dict:
    """An analysis result without its per-repetition detail."""
    return {k: v for k, v in result.items() if k != "by_repetition"}


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>jaxagent report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}img{{max-width:100%}}pre{{background:#f6f6f6;
padding:8px;overflow-x:auto;font-size:12px}}</style></head>
<body>
{body}
</body></html>
"""
