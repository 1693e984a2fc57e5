"""The shipped sweep configs run end to end (smaller sizes) and show the expected orderings."""
import csv
import json
from pathlib import Path

import pytest

from envs_jax import sweep

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "sweeps"


@pytest.fixture(scope="module")
def mab(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweeps")
    return sweep.run_from_config(CONFIGS / "mab_baselines.yaml", ["seeds=2", "instances=128", f"out_dir={out}"]), out


def test_mab_sweep_writes_csv_json_and_plots(mab):
    result, out = mab
    d = out / "mab_baselines"
    for f in ("results.csv", "results.json", "regret.png", "coverage.png"):
        assert (d / f).stat().st_size > 0
    rows = list(csv.DictReader(open(d / "results.csv")))
    assert len(rows) == 9 * 5
    assert {"regret", "regret_ci95", "coverage", "coverage_ci95", "policy", "opt.num_arms", "opt.sigma"} <= set(rows[0])
    data = json.loads((d / "results.json").read_text())
    assert data["jitted_calls"] == 3          # one per arm count; the noise levels share it
    assert len(data["curves"][0]["regret_mean"]) == 50
    assert all(float(r["episodes"]) == 256 for r in rows)


def test_ucb_beats_random_in_every_bandit_setting(mab):
    result, _ = mab
    cells = {}
    for r in result["rows"]:
        key = (r["env"], tuple(sorted((k, v) for k, v in r.items() if k.startswith("opt."))))
        cells.setdefault(key, {})[r["policy"]] = r
    assert len(cells) == 9
    for key, pols in cells.items():
        for ucb in ("ucb a=0.5", "ucb sqrt(1/n)"):
            assert pols[ucb]["regret"] < pols["random"]["regret"], (key, ucb)
        assert pols["random"]["coverage"] <= 1.0


def test_bernoulli_ucb_beats_random(tmp_path):
    cfg = tmp_path / "b.yaml"
    cfg.write_text("""
name: bern
seeds: 2
instances: 256
plots: false
envs:
  - name: bandit-bernoulli
    grid: {num_arms: [5, 20], gap: [0.2, 0.5]}
policies:
  - {name: random}
  - {name: ucb, label: ucb}
  - {name: ucb, options: {form: rationale}, label: ucb-r}
""")
    result = sweep.run_from_config(cfg, [f"out_dir={tmp_path}"])
    cells = {}
    for r in result["rows"]:
        cells.setdefault((r["opt.num_arms"], r["opt.gap"]), {})[r["policy"]] = r["regret"]
    assert len(cells) == 4
    for pols in cells.values():
        assert pols["ucb"] < pols["random"] and pols["ucb-r"] < pols["random"]


def test_every_shipped_config_loads_and_expands():
    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = sweep.load_config(path)
        cells = sweep.expand(cfg)
        assert cells and all(c.policies for c in cells), path


def test_tictactoe_sweep(tmp_path):
    result = sweep.run_from_config(CONFIGS / "tictactoe_baselines.yaml",
                                   ["seeds=2", "instances=256", f"out_dir={tmp_path}"])
    assert (tmp_path / "tictactoe_baselines" / "outcomes.png").stat().st_size > 0
    rows = {(r["policy"], r["opt.opponent"], r["opt.agent_first"]): r for r in result["rows"]}
    assert len(rows) == 12
    for first in (True, False):
        assert rows[("minimax", "optimal", first)]["draw"] == 1.0
        assert rows[("minimax", "random", first)]["loss"] == 0.0
        assert rows[("random", "optimal", first)]["win"] == 0.0
        for r in (rows[(p, o, first)] for p in ("random", "minimax") for o in ("random", "optimal")):
            assert r["win"] + r["draw"] + r["loss"] == pytest.approx(1.0)
    assert result["jitted_calls"] == 1   # opponent and who moves first are params: one compiled call
