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
from jaxagent.trainers import compare, eef, expert_file, rft
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


def _host_replay(exp, tasks, actions, env_keys, k):
    """The states after the first ``k`` expert actions from each task, stepped one by one on the host with the
    expert's recorded env keys (each split into random-action / step / reset keys, as a played turn splits it)."""
    step = jax.jit(exp.env.step)
    states = []
    for b in range(len(tasks)):
        params, state = take(tasks.params, b), take(tasks.states, b)
        for t in range(k[b]):
            _, state, *_ = step(jax.random.split(env_keys[b, t], 3)[1], state, actions[b, t], params)
        states.append(state)
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def test_a_restart_is_the_expert_state_and_trains_on_the_contexts_the_policy_saw(setting):
    exp, ctx, seeded = setting
    # the expert's state at step k is the one its first k actions reach from the task, with its keys
    expert, env_keys = ctx.expert(ctx.sim, seeded.tasks, jax.random.key(3))
    k = np.minimum(np.asarray(expert.active.sum(1)) - 1, 2)
    replayed = _host_replay(exp, seeded.tasks, np.asarray(expert.actions), env_keys, k)
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
    # the same model config as the policy's: its greedy episodes (the 8 tasks are one chunk) with the expert's keys
    again = jax.jit(exp.eval_loop.rollout)(params, played.tasks.params, jax.random.fold_in(jax.random.fold_in(
        played.key, 1), 0), played.tasks.states, played.expert_keys)
    np.testing.assert_array_equal(np.asarray(played.expert.actions), np.asarray(again.actions))
    np.testing.assert_array_equal(np.asarray(played.expert.tokens), np.asarray(again.tokens))


def _same(a, b):
    host = lambda x: np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(host(x), host(y)), a, b)


def test_expert_episodes_read_from_their_file_replay_exactly(setting, tmp_path):
    from envs_jax.yaml_config import ConfigError

    exp, ctx, seeded = setting
    path = ctx.directory / "expert_episodes_seed_0.jsonl"  # written by prepare
    cfg = load_experiment(None, OVERRIDES + [f"eef.expert_file={path}", "eef.expert_blunder=0",
                                             f"run.output_dir={tmp_path}"])
    from_file = rft.prepare(rft.Context.build(dataclasses.replace(exp, cfg=cfg), tmp_path, None), 5)
    _same(from_file.tasks, seeded.tasks)
    # every field the methods use on the steps played (the file holds only those), the env state before each step
    # included: restarts start from it
    active = np.asarray(seeded.expert.active)
    played = lambda tree: jax.tree.map(lambda x: x[active] if x.shape[:2] == active.shape else x, tree)
    _same(played(from_file.expert_keys), played(seeded.expert_keys))
    drop = lambda traj: played(traj.replace(logprobs=None, prefix_length=None))
    _same(drop(from_file.expert), drop(seeded.expert))
    np.testing.assert_array_equal(from_file.expert_success, seeded.expert_success)
    with pytest.raises(ConfigError, match="holds 8 episodes, eef.train_tasks asks for 9"):
        expert_file.read(path, exp, 9)


def _edited(path, tmp_path, line: int, edit):
    lines = path.read_text().splitlines()
    record = json.loads(lines[line])
    edit(record)
    lines[line] = json.dumps(record)
    out = tmp_path / "edited.jsonl"
    out.write_text("\n".join(lines) + "\n")
    return out


def _step0(record, field, value):
    record["steps"][0][field] = value


@pytest.mark.parametrize("line, edit, message", [
    (0, lambda r: r["env"].update(name="bernoulli_bandit"), "written for env"),
    (0, lambda r: r["tokenizer"].update(fingerprint="0" * 64), "written with tokenizer"),
    (1, lambda r: _step0(r, "action", (r["steps"][0]["action"] + 1) % 9), "step 0: replaying"),
    (1, lambda r: _step0(r, "text", "ACTION=" + "9" * 40), "over the generation budget"),
    (1, lambda r: r["steps"].pop(), "but the replayed episode lasts"),
    (1, lambda r: r.pop("reset_key"), "malformed episode"),
])
def test_a_bad_expert_file_names_its_line_and_problem(setting, tmp_path, line, edit, message):
    from envs_jax.yaml_config import ConfigError

    exp, ctx, seeded = setting
    path = _edited(ctx.directory / "expert_episodes_seed_0.jsonl", tmp_path, line, edit)
    with pytest.raises(ConfigError, match=f"eef.expert_file.*edited.jsonl.*{message}"):
        expert_file.read(path, exp, len(seeded.tasks))
