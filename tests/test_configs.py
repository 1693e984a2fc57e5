"""Every shipped config file loads and validates: experiment configs (keys, values, env and options, prompt
budget for the models shipped here) and sweep configs (every grid cell's env and policies)."""
from pathlib import Path

import numpy as np
import pytest

import envs_jax
from envs_jax import sweep
from jaxagent.experiment_config import load_experiment

CONFIGS = Path(__file__).parents[1] / "configs"
FILES = sorted(CONFIGS.rglob("*.yaml"))


def test_the_config_folder_is_found():
    assert len(FILES) >= 16 and (CONFIGS / "quickstart.yaml") in FILES


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(CONFIGS)) for p in FILES])
def test_a_shipped_config_validates(path):
    if path.parent.name == "sweeps":
        assert sweep.expand(sweep.load_config(path))
        return
    cfg = load_experiment(path)
    env = envs_jax.make_env(cfg.env.name, **cfg.env.options)
    if cfg.model.checkpoint is not None and cfg.model.checkpoint.startswith("shipped:"):
        from jaxagent.trainers.setup import renderer_for, tokenizer_for
        renderer_for(env, tokenizer_for(cfg), cfg)  # the worst-case prompt fits the budget


def test_the_no_chain_of_thought_paper_config_trains_at_its_budget_of_16_tokens_and_reports(tmp_path):
    """RLFT at G = 16 with the answer-only prompt runs a few updates on the nano model; its evaluation plays the
    reference players, whose rationales are longer than 16 tokens; ``jaxagent report`` pages the run."""
    from jaxagent.trainers import train_from_config
    summary = train_from_config(CONFIGS / "paper" / "mab_button_10arms_2b_no_cot.yaml", [
        "model.checkpoint=shipped:nano-greedy-base", "model.tokenizer=shipped", "model.dtype=float32",
        "env.options={num_arms: 10, sigma: 1.0, horizon: 4}", "env.pool_size=8", "rollout.envs_per_rollout=2",
        "rollout.history_segments=1", "rl.batch_size=8", "rl.num_updates=2", "optim.name=adamw", "optim.warmup_steps=1",
        "eval.num_episodes=4", "run.checkpoint_every=2", "run.log_every=1", "run.seeds=[]",
        f"run.output_dir={tmp_path}"])
    assert set(summary) == {"random", "ucb", "greedy_expert", "initial", "rlft"}
    from jaxagent import cli, report
    run = tmp_path / "mab_button_10arms_2b_no_cot"
    scalars = report.read_scalars(run / "tb")
    np.testing.assert_array_equal(scalars["rlft/loss"][0], [1, 2])
    cli.main(["report", str(run)])
    page = (run / "report" / "report.html").read_text()
    for name, row in summary.items():
        assert f"<td>{name}</td><td>{row['regret']['mean']:.3f} ± {row['regret']['ci95']:.3f}</td>" in page
    assert page.count("data:image/png;base64,") == 4  # regret, coverage, greedy-action rate, training
    assert "rlft: " in page and "s per update" in page


def test_the_contextual_paper_config_trains_with_a_history_window_one_context_at_a_time(tmp_path):
    """Contextual RLFT within the prompt budget: windowed prompts (re-prefilled as the oldest line leaves), each
    step context scored alone, LinUCB among the reference players."""
    from jaxagent.trainers import train_from_config
    summary = train_from_config(CONFIGS / "paper" / "cb_movielens_5arms_2b.yaml", [
        "model.checkpoint=shipped:nano-greedy-base", "model.tokenizer=shipped", "model.dtype=float32",
        "env.options={num_arms: 5, horizon: 4, num_users: 8, synthetic_users: 40}", "env.pool_size=8",
        "prompt.history_window=2", "rollout.envs_per_rollout=2", "rollout.max_new_tokens=16",
        "rollout.history_segments=1", "rl.batch_size=4", "rl.num_updates=2", "optim.name=adamw",
        "optim.warmup_steps=1", "eval.num_episodes=4", "run.checkpoint_every=2", "run.seeds=[]",
        f"run.output_dir={tmp_path}"])
    assert set(summary) == {"random", "ucb", "greedy_expert", "linucb", "initial", "rlft"}
    assert summary["linucb"]["regret"]["mean"] <= summary["random"]["regret"]["mean"]


def test_the_tictactoe_paper_config_trains_its_value_head_with_gae_end_to_end(tmp_path):
    """RLFT with the value head and GAE on tic-tac-toe rows cut mid-game (3 agent turns) runs through the trainer:
    a finite value loss is logged, and win / draw / loss are reported per finished game. The bootstrap's values
    are checked against a host computation in tests/test_objectives.py."""
    from jaxagent import report
    from jaxagent.trainers import train_from_config
    summary = train_from_config(CONFIGS / "paper" / "tictactoe_random_2b.yaml", [
        "model.checkpoint=shipped:nano-tictactoe-base", "model.tokenizer=shipped", "model.dtype=float32",
        "env.num_steps=3", "env.pool_size=8", "rollout.envs_per_rollout=4", "rollout.max_new_tokens=24",
        "rollout.history_segments=1", "rl.batch_size=6", "rl.num_updates=4", "optim.name=adamw",
        "optim.learning_rate=0.001", "optim.warmup_steps=1", "eval.num_episodes=4", "run.checkpoint_every=4",
        "run.log_every=1", "run.seeds=[]", f"run.output_dir={tmp_path}"])
    for row in summary.values():
        assert sum(row[k]["mean"] for k in ("win", "draw", "loss")) == pytest.approx(1.0)
    scalars = report.read_scalars(tmp_path / "tictactoe_random_2b" / "tb")
    steps, value_loss = scalars["rlft/loss/value"]  # one rollout of 12 contexts: 2 batches x 2 epochs
    np.testing.assert_array_equal(steps, [4])
    assert np.all(np.isfinite(value_loss)) and np.all(value_loss > 0)
