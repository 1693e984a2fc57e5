"""The shipped sweep configs run end to end (smaller sizes) and show the expected orderings."""
import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cpu_devices import FLAGS as CPU_FLAGS, run_on_cpu_devices
from envs_jax import sweep

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "sweeps"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def test_a_sweep_split_over_two_processes_equals_one_device(tmp_path):
    """The same command, its episodes split over 2 processes x 2 CPU devices (joined by jax.distributed, gloo)
    and padded (3 x 25 episodes per call over 4 devices): process 0 writes the results of one device's run."""
    cfg = tmp_path / "s.yaml"
    cfg.write_text("""
name: split
seeds: 3
instances: 25
plots: false
envs:
  - name: contextual-movielens
    options: {horizon: 10, num_users: 20, num_arms: 5}
policies: [{name: random}, {name: linucb}]
""")
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {CPU_FLAGS} --xla_force_host_platform_device_count=2")
    procs = [subprocess.Popen([sys.executable, "-m", "jaxagent.cli", "sweep", str(cfg), f"out_dir={tmp_path / 'two'}",
                               "distributed=true", f"coordinator_address=127.0.0.1:{port}", "num_processes=2",
                               f"process_id={i}"], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "regret" in outs[0][0] and "regret" not in outs[1][0]  # process 0 alone prints and writes
    one = sweep.run_from_config(cfg, [f"out_dir={tmp_path / 'one'}"])
    two = json.loads((tmp_path / "two" / "split" / "results.json").read_text())
    assert [r["episodes"] for r in two["rows"]] == [75, 75]
    for got, want in zip(two["rows"], one["rows"]):
        assert got.keys() == want.keys()
        for k, value in want.items():
            assert got[k] == (value if isinstance(value, str) else pytest.approx(value, rel=1e-6, abs=1e-6)), k


def test_episodes_of_any_count_split_over_four_devices_and_gather_back():
    """Padding to a multiple of the device count, whatever the count (fewer episodes than devices included)."""
    script = """
import jax, numpy as np
from envs_jax import sweep
assert jax.device_count() == 4
for n in range(1, 10):
    tree = {"a": np.arange(n * 3, dtype=np.float32).reshape(n, 3), "k": np.arange(n, dtype=np.uint32)}
    split = sweep._over_devices(tree)
    assert split["a"].shape[0] % 4 == 0 and len(split["a"].sharding.device_set) == 4
    back = sweep._gather(split, n)
    assert all(np.array_equal(back[k], tree[k]) for k in tree), n
print("ok")
"""
    assert run_on_cpu_devices(4, ["-c", script]).strip() == "ok"
