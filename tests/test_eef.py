"""EEF and its baselines end to end on tic-tac-toe: exact restarts from expert states, the contexts trained on,
simulation counts, the results files, and resuming at the iteration a run stopped."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagent import restarts
from jaxagent.experiment_config import load_experiment
from jaxagent.packing import score_packed
from jaxagent.runlog import RunLog
from jaxagent.trainers import compare, eef, rft
from jaxagent.trainers.expert_tasks import Tasks, states_at, take
from jaxagent.trainers.setup import build

OVERRIDES = ["trainer=eef_comparison", "env.name=tictactoe", "env.options={opponent: optimal}",
             "model.checkpoint=shipped:nano-greedy-base", "model.tokenizer=shipped", "sft.target=behaviour_cloning",
             "rollout.max_new_tokens=8", "eef.success=not_lose", "eef.train_tasks=8", "eef.eval_tasks=8",
             "eef.opening_plies=[1]", "eef.expert_blunder=1.0", "eef.num_restarts=4", "eef.iterations=2",
             "eef.sft_updates=1", "eef.updates_per_iteration=1", "eef.batch_size=2", "eef.rollout_chunk=8",
             "optim.name=adamw", "optim.warmup_steps=0", "optim.learning_rate=1e-3", "eval.seed=7"]


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    directory = tmp_path_factory.mktemp("eef")
    cfg = load_experiment(None, OVERRIDES + [f"run.output_dir={directory}"])
    exp = build(cfg)
    log = RunLog(cfg.run.directory, cfg, seeds={})
    ctx = rft.Context.build(exp, cfg.run.directory, log)
    seeded = rft.prepare(ctx, 0)
    yield exp, ctx, seeded
    log.close()


def _host_replay(exp, tasks, actions, key, k):
    """The states after the first ``k`` expert actions from each task, with the per-row env keys the expert episode
    used (``AgentLoop._play``: per step, the env key split over rows, then into random-action / step / reset keys)."""
    B = len(tasks)
    step = jax.jit(exp.env.step)
    keys = jax.random.split(jax.random.split(key)[1], exp.train_loop.num_steps)
    states = []
    for b in range(B):
        params, state = take(tasks.params, b), take(tasks.states, b)
        for t in range(k[b]):
            k_env = jax.random.split(jax.random.split(keys[t])[1], B)[b]
            _, state, *_ = step(jax.random.split(k_env, 3)[1], state, actions[b, t], params)
        states.append(state)
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def test_a_restart_is_the_expert_state_and_trains_on_the_contexts_the_policy_saw(setting):
    exp, ctx, seeded = setting
    # the expert's state at step k is the one its first k actions reach from the task (replayed with its keys: the
    # 8 tasks are one chunk of 8 rows, played with the key folded with the chunk's index 0)
    key = jax.random.key(3)
    expert = ctx.expert(ctx.sim, seeded.tasks, key)
    k = np.minimum(np.asarray(expert.active.sum(1)) - 1, 2)
    replayed = _host_replay(exp, seeded.tasks, np.asarray(expert.actions), jax.random.fold_in(key, 0), k)
    at_k = states_at(expert, np.arange(k.size), k)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), replayed, at_k)

    # the policy restarted there, spliced after the expert's first k steps
    policy = ctx.sim.policy(exp.init_params, Tasks(seeded.tasks.params, at_k), at_k, jax.random.key(4))
    whole = restarts.splice(expert, policy, jnp.asarray(k))
    tok, renderer = exp.tokenizer, exp.renderer
    prefix = np.asarray(renderer.prefix[0][:renderer.prefix[1]]).tolist()
    for b in range(k.size):
        history = np.asarray(whole.start_tokens[b, :whole.start_lengths[b]]).tolist()
        for t in np.nonzero(np.asarray(whole.active[b]))[0]:
            history += np.asarray(whole.line_tokens[b, t, :whole.line_lengths[b, t]]).tolist()
            tail = np.asarray(whole.tail_tokens[b, t, :whole.tail_lengths[b, t]]).tolist()
            state = take(whole.states, (b, t))
            assert prefix + history + tail == tok.encode(renderer.render_text(state, take(seeded.tasks.params, b)))
    # scoring the spliced episode as training packs it gives the policy's own log-probs on its steps
    batch = ctx.to_batch(whole.replace(states=None), restarts.loss_mask(whole, jnp.asarray(k)))
    scored = jax.jit(score_packed, static_argnames="cfg")(exp.init_params, exp.model_cfg, batch["packed"])
    assert batch["packed"].shared_tokens.shape[1] < len(prefix) + whole.start_tokens.shape[1] + \
        exp.train_loop.num_steps * whole.line_tokens.shape[2]  # the one-episode width
    for b in range(k.size):
        for t in range(k[b], exp.train_loop.num_steps):
            n = int(whole.lengths[b, t]) * bool(whole.active[b, t])
            np.testing.assert_allclose(scored[b, t, :n], policy.logprobs[b, t - k[b], :n], atol=1e-5, rtol=0)


def test_eef_explores_from_failed_expert_episodes(setting):
    exp, ctx, seeded = setting
    steps, valid, _ = eef.restart_plan(seeded, exp.cfg.eef.num_restarts)
    assert seeded.expert_success.mean() < 1 and valid[:, 0].all() and valid[:, 1:].any()
    assert not valid[seeded.expert_success, 1:].any()  # successful expert episodes are not restarted
    episodes, masks, keep, diagnostics, sims = eef.explore(ctx, seeded, exp.init_params, jax.random.key(5))
    assert sims["episodes"] == valid.sum() == len(seeded.tasks) + diagnostics["restarts"]
    assert diagnostics["need_recover_kept"] <= diagnostics["need_recover"] <= diagnostics["restarts"]
    assert keep.size == diagnostics["initial_kept"] + diagnostics["need_recover_kept"] == masks.shape[0]
    assert (np.asarray(ctx.sim.success(episodes)) if keep.size else keep).all()  # only successes are kept


def test_comparison_writes_its_results_and_resumes_at_the_iteration_it_stopped(setting):
    exp, ctx, seeded = setting
    directory = ctx.directory
    results = compare.run(exp, ("rft_xN", "eef"), directory, ctx.log)
    n = json.loads((directory / "eef_diagnostics.json").read_text())["rft_rollouts_per_task"]
    name = f"rft_x{n}"
    assert set(results) == {name, "eef"}
    assert json.loads((directory / "eef_results.json").read_text()) == results
    assert (directory / "eef_results.csv").read_text().count("\n") == 3 and (directory / "eef_success.png").exists()
    for r in results.values():
        assert set(r) >= {"success", "simulations", "wall_s", "per_iteration"} and set(r["success"]) == {"mean",
                                                                                                          "ci95"}
    assert results[name]["per_iteration"][0]["episodes"] == 0  # iteration 0: SFT-POS
    assert results[name]["simulations"] == 2 * n * len(seeded.tasks)  # two iterations
    restarts_played = sum(it["restarts"] for it in results["eef"]["per_iteration"][1:])
    assert restarts_played > 0 and results["eef"]["simulations"] == 2 * len(seeded.tasks) + restarts_played

    # killed during iteration 2: its directory half-written, nothing after it
    run_dir = directory / "eef" / "seed_0"
    before = json.loads((run_dir / "iteration_2" / "progress.json").read_text())
    repository = (run_dir / "iteration_2" / "repository.npz").read_bytes()
    shutil.rmtree(run_dir / "policy")
    (run_dir / "iteration_2" / "progress.json").unlink()
    (run_dir / "iteration_2" / "repository.npz").unlink()
    again = rft.iterate(ctx, seeded, "eef", eef.explore)
    after = json.loads((run_dir / "iteration_2" / "progress.json").read_text())
    assert (run_dir / "iteration_2" / "repository.npz").read_bytes() == repository
    drop = lambda entry: {k: v for k, v in entry.items() if k != "wall_s"}
    assert drop(after) == drop(before) and again["per_task"] == before["per_task"]


def test_an_iteration_that_finds_no_success_is_logged_and_skipped(setting, capsys):
    exp, ctx, seeded = setting

    def finds_nothing(ctx, seeded, params, key):
        traj = seeded.expert
        return traj, np.zeros(traj.tokens.shape), np.zeros(len(seeded.tasks), bool), {}, {"episodes": 8, "steps": 20}

    out = rft.iterate(ctx, seeded, "finds_nothing", finds_nothing)
    assert "no successful episode found" in capsys.readouterr().out
    sft_pos = json.loads((ctx.directory / "sft_pos" / "seed_0" / "result.json").read_text())
    assert [it["skipped"] for it in out["per_iteration"][1:]] == [True, True]
    assert out["per_task"] == sft_pos["per_task"] and out["simulations"] == {"episodes": 16, "steps": 40}
    assert not (ctx.directory / "finds_nothing" / "seed_0" / "iteration_1" / "checkpoints").exists()


@pytest.mark.parametrize("override, key", [("eef.opening_plies=[4]", "eef.opening_plies"),
                                           ("eef.num_restarts=5", "eef.num_restarts"),
                                           ("eef.success=regret_below", "eef.success"),
                                           ("eef.expert=ucb", "eef.expert"),
                                           ("eef.expert_checkpoint=/no/such/dir", "eef.expert_checkpoint")])
def test_bad_settings_name_their_key(setting, tmp_path, override, key):
    from envs_jax.yaml_config import ConfigError

    exp = setting[0]
    cfg = load_experiment(None, OVERRIDES + [override, f"run.output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        rft.Context.build(dataclasses.replace(exp, cfg=cfg), tmp_path, None)


def test_a_policy_checkpoint_as_the_expert_plays_its_greedy_episodes(setting, tmp_path):
    exp, ctx, seeded = setting
    cfg = load_experiment(None, OVERRIDES + ["eef.expert_blunder=0", "eef.expert_checkpoint=shipped:nano-tictactoe-base",
                                             f"run.output_dir={tmp_path}"])
    other = rft.Context.build(dataclasses.replace(exp, cfg=cfg), tmp_path, None)
    played = rft.prepare(other, 0)
    from jaxagent.model import load_policy
    from jaxagent.trainers.setup import checkpoint_path
    params = load_policy(checkpoint_path("shipped:nano-tictactoe-base")).params
    # the same model config as the policy's: its greedy episodes, chunk for chunk, with the expert's key
    again = ctx.sim.policy(params, played.tasks, played.tasks.states, jax.random.fold_in(played.key, 1), greedy=True)
    np.testing.assert_array_equal(np.asarray(played.expert.actions), np.asarray(again.actions))
    np.testing.assert_array_equal(np.asarray(played.expert.tokens), np.asarray(again.tokens))
