"""Bad input: one clear error naming the env, option or file; never a crash deep inside JAX."""
import subprocess
import sys

import pytest

import envs_jax
from envs_jax import EnvError


def test_unknown_env_name_lists_the_registered_ones():
    with pytest.raises(EnvError, match="unknown environment 'bandit-gausian'.*bandit-gaussian"):
        envs_jax.make("bandit-gausian")


@pytest.mark.parametrize("name,options,option", [
    ("bandit-gaussian", {"num_arms": 1}, "num_arms"),
    ("bandit-gaussian", {"num_arms": 0}, "num_arms"),
    ("bandit-gaussian", {"num_arms": 2.5}, "num_arms"),
    ("bandit-gaussian", {"num_arms": True}, "num_arms"),
    ("bandit-gaussian", {"sigma": -0.1}, "sigma"),
    ("bandit-gaussian", {"sigma": float("nan")}, "sigma"),
    ("bandit-gaussian", {"sigma": "1"}, "sigma"),
    ("bandit-gaussian", {"mean_sampler": "beta"}, "mean_sampler"),
    ("bandit-gaussian", {"mean_std": -1}, "mean_std"),
    ("bandit-gaussian", {"horizon": 0}, "horizon"),
    ("bandit-gaussian", {"arms": 5}, "arms"),
    ("bandit-bernoulli", {"num_arms": 1}, "num_arms"),
    ("bandit-bernoulli", {"gap": 1.5}, "gap"),
    ("bandit-bernoulli", {"gap": -0.1}, "gap"),
    ("tictactoe", {"opponent": "mcts"}, "opponent"),
    ("tictactoe", {"illegal": "ignore"}, "illegal"),
    ("tictactoe", {"noise": 2.0}, "noise"),
    ("tictactoe", {"agent_first": "yes"}, "agent_first"),
    ("contextual-movielens", {"num_arms": 1}, "num_arms"),
    ("contextual-movielens", {"num_users": 0}, "num_users"),
    ("contextual-movielens", {"split": "test"}, "split"),
    ("contextual-movielens", {"data_dir": "/nonexistent/ml-100k"}, "data_dir"),
])
def test_bad_option_values_name_the_option(name, options, option):
    with pytest.raises(EnvError, match=f"'{option}'"):
        envs_jax.make(name, **options)


def test_baseline_errors_name_the_baseline_or_option():
    env = envs_jax.make_env("bandit-gaussian")
    with pytest.raises(EnvError, match="unknown baseline 'ucb2'"):
        envs_jax.baselines.make("ucb2", env)
    with pytest.raises(EnvError, match="'alpha'"):
        envs_jax.baselines.make("ucb", env, alpha=-1)
    with pytest.raises(EnvError, match="'form'"):
        envs_jax.baselines.make("ucb", env, form="ucb1")
    with pytest.raises(EnvError, match="unknown option 'eps'"):
        envs_jax.baselines.make("epsilon-greedy", env, eps=0.1)


def test_import_envs_jax_pulls_in_neither_jaxagent_nor_matplotlib():
    code = ("import sys, envs_jax, envs_jax.baselines; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('jaxagent', 'matplotlib')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sweep_config_errors_are_config_errors(tmp_path):
    from envs_jax.yaml_config import ConfigError
    from envs_jax import sweep
    cfg = tmp_path / "s.yaml"
    cfg.write_text("name: x\nenvs:\n  - name: bandit-gaussian\n    grid: {sigma: [-1.0]}\npolicies:\n  - {name: ucb}\n")
    with pytest.raises(ConfigError, match=r"envs\[0\].*'sigma'"):
        sweep.run_from_config(cfg, [f"out_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="unknown config key 'instance'"):
        sweep.run_from_config(cfg, ["instance=3"])
    with pytest.raises(ConfigError, match="'seeds'"):
        sweep.run_from_config(cfg, ["seeds=0"])
    cfg.write_text("name: x\nenvs:\n  - name: bandit-gaussian\npolicies:\n  - {name: linucb}\n")
    with pytest.raises(ConfigError, match="linucb"):
        sweep.run_from_config(cfg, [f"out_dir={tmp_path}"])


def test_cli_reports_a_sweep_config_error_in_one_line(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("name: x\nenvs:\n  - name: bandit-gaussian\n    options: {num_arms: 1}\npolicies:\n  - {name: ucb}\n")
    proc = subprocess.run([sys.executable, "-m", "jaxagent.cli", "sweep", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "num_arms" in proc.stderr and "Traceback" not in proc.stderr
