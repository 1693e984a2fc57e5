"""End-to-end trainer behaviour on a tiny set-up: exact resume after an interruption, clear errors, two devices."""
import dataclasses
import json
import shutil
import sys
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpu_devices import run_on_cpu_devices
from fixtures.make_gemma2_fixture import FIXTURE_DIR

from envs_jax.yaml_config import ConfigError
from jaxagent.experiment_config import load_experiment
from jaxagent.model.config import CheckpointError
from jaxagent.runlog import RunLog
from jaxagent.trainers import loop, rlft, sft
from jaxagent.trainers.setup import build

TINY = ["model.preset=nano", "model.tokenizer=shipped", "env.options={num_arms: 3, horizon: 3}", "env.pool_size=8",
        "rollout.max_new_tokens=24", "sft.expert=ucb", "sft.rationale_stats=false", "sft.batch_size=6",
        "sft.num_updates=4", "optim.name=adamw", "optim.learning_rate=0.01", "optim.warmup_steps=1",
        "run.checkpoint_every=2", "run.log_every=1", "rollout.history_segments=1"]


def _train(tmp_path, name):
    cfg = load_experiment(None, TINY + [f"run.output_dir={tmp_path}", f"run.name={name}"])
    exp = build(cfg)
    with RunLog(cfg.run.directory, cfg, {"run": 0}) as log:
        return sft.train(exp, exp.init_params, cfg.run.directory / "sft", log)


def _fingerprint(batch) -> int:
    return zlib.crc32(b"".join(np.asarray(x).tobytes() for x in jax.tree.leaves(batch)))


def _watch_steps(monkeypatch):
    """(step, batch fingerprint) of every update the phases run from now on (a list that grows)."""
    seen, real_fit = [], loop.fit

    def fit(*args, train_step, **kw):
        def step(state, batch):
            seen.append((int(state.step), _fingerprint(batch)))
            return train_step(state, batch)
        return real_fit(*args, train_step=step, **kw)
    monkeypatch.setattr(loop, "fit", fit)
    return seen


def _run_phase(exp, train, directory):
    with RunLog(directory, exp.cfg, {"run": 0}) as log:
        return train(exp, exp.init_params, directory / "phase", log)


def _killed_and_resumed(exp, train, tmp_path, monkeypatch, checkpoint):
    """A phase of ``exp`` killed after its checkpoint of update ``checkpoint`` (the run directory as the
    uninterrupted run left it then: later checkpoints absent) and started again resumes from that checkpoint (same
    updates on the same batches) and ends with the parameters of the uninterrupted run, bit for bit. Returns the
    uninterrupted run's (step, batch fingerprint) list."""
    every_step = _watch_steps(monkeypatch)
    straight = _run_phase(exp, train, tmp_path / "straight")
    monkeypatch.undo()
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    later = [d for d in (tmp_path / "resumed" / "phase" / "checkpoints").iterdir() if int(d.name) > checkpoint]
    assert later and all(shutil.rmtree(d) is None for d in later)
    seen = _watch_steps(monkeypatch)
    resumed = _run_phase(exp, train, tmp_path / "resumed")
    assert seen == every_step[checkpoint:]
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(exp.init_params)))
    return every_step


def test_interrupted_sft_resumes_to_the_same_parameters(tmp_path, monkeypatch):
    exp = build(load_experiment(None, TINY))  # 4 updates, checkpoints every 2
    _killed_and_resumed(exp, sft.train, tmp_path, monkeypatch, checkpoint=2)


def test_interrupted_rlft_resumes_to_the_same_parameters(tmp_path, monkeypatch):
    # one 3-step episode an update, rollouts of 2 episodes, 2 epochs: 4 updates a rollout, its 2 batches twice in
    # order; killed in the 2nd rollout, whose start is the last checkpoint
    exp = build(load_experiment(None, TINY + ["rollout.max_new_tokens=8", "rollout.envs_per_rollout=2",
                                              "rl.batch_size=3", "rl.epochs=2", "rl.num_updates=8"]))
    every_step = _killed_and_resumed(exp, rlft.train, tmp_path, monkeypatch, checkpoint=4)
    batches = [fingerprint for _, fingerprint in every_step]
    assert batches[:4] == batches[:2] * 2 and batches[4:] == batches[4:6] * 2
    assert len(set(batches)) == 4  # two rollouts, two distinct batches each


def test_sigterm_checkpoints_the_iteration_under_way_and_the_same_command_resumes_exactly(tmp_path, monkeypatch,
                                                                                          capsys):
    """Preemption: SIGTERM during update 1 of 4 saves a checkpoint at update 1 (not one of the every-2 schedule)
    and stops; the command line exits 143 with one line; started again, the run ends with the uninterrupted run's
    parameters, bit for bit."""
    import os
    import signal
    from jaxagent import cli
    exp = build(load_experiment(None, TINY))
    straight = _run_phase(exp, sft.train, tmp_path / "straight")
    real_fit = loop.fit

    def fit(*args, train_step, **kw):
        def step(state, batch):
            if int(state.step) == 0:
                os.kill(os.getpid(), signal.SIGTERM)
            return train_step(state, batch)
        return real_fit(*args, train_step=step, **kw)
    monkeypatch.setattr(loop, "fit", fit)
    monkeypatch.setattr(cli, "_cmd_run", lambda args: _run_phase(exp, sft.train, tmp_path / "killed"))
    with pytest.raises(SystemExit) as stopped:
        cli.main(["train", "unused.yaml"])
    assert stopped.value.code == 143
    message = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
    assert message.startswith("jaxagent: stopped by SIGTERM after update 1 of sft") and "resumes" in message
    monkeypatch.undo()
    checkpoints = tmp_path / "killed" / "phase" / "checkpoints"
    assert sorted(int(d.name) for d in checkpoints.iterdir() if d.name.isdigit()) == [1]
    resumed = _run_phase(exp, sft.train, tmp_path / "killed")
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("override, fragment", [
    ("model.checkpoint=/nonexistent/gemma", "model.checkpoint"),
    ("model.checkpoint=shipped:no-such-model", "model.checkpoint"),
    ("env.name=bandit-gaussianx", "env"),
    ("model.preset=gemma2-3b", "model.preset"),
    ("model.mesh=[3,1,1]", "model.mesh"),
])
def test_bad_experiment_settings_fail_at_set_up_naming_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        build(load_experiment(None, TINY + [override]))


@pytest.mark.parametrize("train", [sft.train, rlft.train])
def test_training_with_a_history_window_fails_naming_the_key(tmp_path, train):
    cfg = load_experiment(None, TINY + ["prompt.history_window=2", f"run.output_dir={tmp_path}"])
    exp = build(cfg)
    with pytest.raises(ConfigError, match=r"prompt\.history_window.*window of 2 of the 3 steps"):
        train(exp, exp.init_params, tmp_path / "phase", None)
    assert not (tmp_path / "phase").exists()


TICTACTOE = TINY + ["env.name=tictactoe", "env.options={opponent: random}"]


def _one_line_naming(error, key):
    message = str(error.value)
    assert "\n" not in message and f"'{key}'" in message, message


@pytest.mark.parametrize("overrides, train, key", [
    # 2 episodes of 3 steps an update, 2 updates a rollout of 4 episodes
    pytest.param(TINY + ["rollout.envs_per_rollout=4", "rl.batch_size=6", "rl.num_updates=3"], rlft.train,
                 "rl.num_updates", id="rl.num_updates"),
    # 3 episodes an update, micro-batches of 2
    pytest.param(TINY + ["rollout.envs_per_rollout=6", "rl.batch_size=10", "rl.micro_batch_size=5"],
                 rlft.train, "rl.micro_batch_size", id="rl.micro_batch_size"),
    pytest.param(TINY + ["sft.batch_size=10", "sft.micro_batch_size=5"], sft.train, "sft.micro_batch_size",
                 id="sft.micro_batch_size"),
    pytest.param(TINY + ["sft.expert=minimax"], sft.train, "sft.expert", id="sft.expert-bandit"),
    pytest.param(TICTACTOE + ["sft.expert=ucb"], sft.train, "sft.expert", id="sft.expert-tictactoe"),
    pytest.param(TICTACTOE + ["sft.expert=minimax", "sft.action_noise=0.25"], sft.train, "sft.action_noise",
                 id="sft.action_noise"),
])
def test_a_setting_the_phase_cannot_use_fails_in_one_line_naming_its_key(tmp_path, overrides, train, key):
    exp = build(load_experiment(None, overrides))
    with pytest.raises(ConfigError) as error:
        train(exp, exp.init_params, tmp_path / "phase", None)
    _one_line_naming(error, key)
    assert not (tmp_path / "phase").exists()  # refused before anything is written


@pytest.mark.parametrize("overrides, key", [
    pytest.param(TICTACTOE + ["rollout.try_all=true"], "rollout.try_all", id="rollout.try_all"),
    pytest.param(TICTACTOE + ["rollout.epsilon_greedy=true"], "rollout.epsilon_greedy", id="rollout.epsilon_greedy"),
    pytest.param(TICTACTOE + ["eval.try_all=true"], "eval.try_all", id="eval.try_all"),
    pytest.param(TICTACTOE + ["eval.context_randomisation=true"], "eval.context_randomisation",
                 id="eval.context_randomisation"),
    pytest.param(TICTACTOE + ["prompt.ucb_values=true"], "prompt.ucb_values", id="prompt.ucb_values"),
    pytest.param(TINY + ["prompt.ucb_values=true", "prompt.chain_of_thought=false"], "prompt.ucb_values",
                 id="prompt.ucb_values-no-cot"),
    pytest.param(TINY + ["eval.self_consistency=4"], "eval.temperature", id="eval.self_consistency"),
    pytest.param(TINY + ["eval.self_consistency=4", "eval.temperature=1", "eval.self_correction=true"],
                 "eval.self_correction", id="eval.self_correction"),
    # the test fixture's vocabulary has 128 tokens, the shipped tokenizer 2048
    pytest.param(TINY + [f"model.checkpoint={FIXTURE_DIR}"], "model.tokenizer", id="model.tokenizer"),
])
def test_a_setting_the_experiment_cannot_use_fails_in_one_line_naming_its_key(overrides, key):
    with pytest.raises(ConfigError) as error:
        build(load_experiment(None, overrides))
    _one_line_naming(error, key)


def test_tictactoe_sft_on_minimax_reports_win_draw_loss(tmp_path):
    from jaxagent.trainers import train_from_config
    # Two evaluation rows of 5 steps: the agent moves first, so each row finishes at least its first game.
    summary = train_from_config(None, [
        "trainer=sft", "env.name=tictactoe", "env.options={opponent: random}", "env.pool_size=8", "env.num_steps=5",
        "model.preset=nano", "model.tokenizer=shipped", "rollout.max_new_tokens=32", "sft.expert=minimax",
        "sft.batch_size=10", "sft.num_updates=2", "optim.name=adamw", "optim.warmup_steps=1", "eval.every=100",
        "eval.num_episodes=2", "rollout.history_segments=1", f"run.output_dir={tmp_path}", "run.name=ttt"])
    assert set(summary) == {"minimax", "sft"}
    for row in summary.values():
        assert abs(row["win"]["mean"] + row["draw"]["mean"] + row["loss"]["mean"] - 1.0) < 1e-6
        assert row["win"]["games"] >= 2
    # minimax never loses to the random opponent and never plays an illegal move
    assert summary["minimax"]["loss"]["mean"] == 0.0 and summary["minimax"]["invalid"]["mean"] == 0.0
    assert (tmp_path / "ttt" / "return.png").exists()


def test_minimax_expert_text_parses_back_to_its_move():
    import envs_jax
    from jaxagent.experts import PolicyExpert
    from jaxagent.env_kinds import make_renderer
    from jaxagent.text import make_parser
    from jaxagent.text.tokenizer import shipped_tokenizer
    env = envs_jax.make_env("tictactoe", opponent="random")
    tok = shipped_tokenizer()
    renderer = make_renderer(env, tok)
    parser = make_parser(renderer)
    expert = PolicyExpert("minimax", env, tok, renderer.labels)
    params = env.sample_params(jax.random.key(0))
    _, state = env.reset(jax.random.key(1), params)
    for t in range(3):
        action, (tokens, length) = expert.act(jax.random.key(t), state, params)
        text = tok.decode(tokens[:length])
        assert text == f"Square {int(action)} is a minimax move (win soonest, lose latest).\nACTION={int(action)}<end_of_turn>"
        assert tokens[:length].tolist() == tok.encode(text)
        assert parser.parse_reference(tokens[:length].tolist()) == int(action)
        _, state, _, done, _, _ = env.step(jax.random.key(10 + t), state, action, params)
        if done:
            break


def test_bandit_evaluation_reports_the_greedy_action_rate():
    from jaxagent.experts import Expert
    from jaxagent.trainers.evaluate import Evaluator, summarise
    exp = build(load_experiment(None, TINY + ["env.options={num_arms: 3, horizon: 12}"]))
    evaluator = Evaluator(exp, 16, seed=3)
    rate = {kind: summarise(evaluator.expert(Expert(kind, exp.tokenizer, exp.labels, exp.env.horizon, stats=False)))
            ["greedy"]["mean"] for kind in ("greedy", "ucb", "random")}
    assert rate["greedy"] == 1.0
    assert rate["random"] < rate["ucb"] < 1.0


def test_evaluating_the_same_parameters_again_reuses_the_curves():
    from jaxagent.trainers.evaluate import Evaluator
    exp = build(load_experiment(None, TINY))
    evaluator = Evaluator(exp, 4, seed=3)
    first = evaluator.model(exp.init_params)
    assert evaluator.model(exp.init_params) is first
    copy = jax.tree.map(lambda x: x + 0, exp.init_params)
    again = evaluator.model(copy)
    assert again is not first
    for name in first:
        np.testing.assert_array_equal(again[name], first[name])


def test_exploration_mechanisms_act_where_their_section_says():
    exp = build(load_experiment(None, TINY + ["rollout.epsilon_greedy=true", "rollout.try_all=true"]))
    assert exp.train_loop.exploration is not None and exp.eval_loop.exploration is None
    assert exp.eval_loop.temperature == 0.0
    cfg = load_experiment(None, TINY + ["eval.try_all=true"])
    exp = build(cfg)
    assert exp.train_loop.exploration is None and cfg.eval.mechanisms == "+try_all"
    from jaxagent.trainers.evaluate import Evaluator
    evaluator = Evaluator(exp, 4, 0)
    curves = evaluator.model(exp.init_params)  # 3 arms, 3 steps: try-all plays each arm once
    np.testing.assert_array_equal(curves["coverage"][:, -1], 1.0)
    assert evaluator.expert(exp.kind.expert(exp.env, exp.tokenizer, exp.labels, "greedy"))["coverage"][:, -1].max() < 1


def test_grouped_draw_repeats_each_instance_in_consecutive_rows():
    pool = {"means": np.arange(20.0).reshape(10, 2)}
    drawn = np.asarray(loop.draw(pool, jax.random.key(3), 8, group_size=4)["means"])
    assert drawn.shape == (8, 2)
    for group in drawn.reshape(2, 4, 2):
        assert (group == group[0]).all()
    assert not (drawn[0] == drawn[4]).all()  # two distinct instances (drawn without replacement)


def test_a_training_checkpoint_evaluates_and_exports_the_parameters_it_holds(tmp_path):
    from jaxagent.model import load_policy
    from jaxagent.trainers import eval_from_config, export_from_config
    trained = _train(tmp_path, "run")  # 4 updates, checkpoints at 2 and 4
    step_dir = tmp_path / "run" / "sft" / "checkpoints" / "4"
    summary = eval_from_config(None, TINY + ["eval.num_episodes=4", f"checkpoint={step_dir}"])
    assert set(summary) == {"random", "ucb", "greedy_expert", "policy"}
    assert (tmp_path / "run" / "sft" / "eval_4" / "summary.json").is_file()
    export_from_config(None, TINY + [f"checkpoint={step_dir}", f"out={tmp_path / 'hf'}"])
    jax.tree.map(np.testing.assert_array_equal, trained, load_policy(tmp_path / "hf").params)
    wrong_model = r"parameter \['embed'\] is stored with shape \(2048, 128\), the model wants \(2048, 256\)"
    with pytest.raises(CheckpointError, match=wrong_model):
        export_from_config(None, TINY + ["model.preset=tiny", f"checkpoint={step_dir}", f"out={tmp_path}/x"])


@pytest.mark.parametrize("where, message", [
    ("missing", "checkpoint directory not found: {}"),
    ("empty", "{}: neither a Hugging Face directory (config.json) nor a jaxagent Orbax checkpoint"),
])
def test_the_command_line_names_a_bad_checkpoint_in_one_line(tmp_path, capsys, where, message):
    from jaxagent import cli
    checkpoint = tmp_path / where
    if where == "empty":
        checkpoint.mkdir()
    config = Path(__file__).parents[1] / "configs" / "quickstart.yaml"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", str(config), f"checkpoint={checkpoint}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("jaxagent: error: " + message.format(checkpoint))


def test_the_quickstart_starts_from_the_shipped_nano_base_with_the_shipped_tokenizer():
    from jaxagent.model import GemmaConfig, load_policy
    from jaxagent.text import shipped_tokenizer
    from jaxagent.trainers.setup import tokenizer_for, checkpoint_path

    cfg = load_experiment(Path(__file__).parents[1] / "configs" / "quickstart.yaml", [])
    assert cfg.model.checkpoint == "shipped:nano-greedy-base"
    policy = load_policy(checkpoint_path(cfg.model.checkpoint))
    assert policy.cfg == GemmaConfig.preset("nano")
    assert tokenizer_for(load_experiment(None, ["model.checkpoint=shipped:nano-greedy-base"])) is shipped_tokenizer()


def _per_device_rollout_against_one_device_each(exp):
    """``rollout_per_device`` plays each device's rows as ``rollout`` alone would with that device's folded key;
    both devices get the same two env instances, so only their keys differ. Greedy (temperature 0), as the
    token-exact comparison is between two programs."""
    from jaxagent.model import init_params

    loop = dataclasses.replace(exp.eval_loop, max_new_tokens=8)
    assert loop.temperature == 0.0
    rows = exp.pool(jax.random.key(1), 2)
    pool = jax.tree.map(lambda a: jnp.concatenate([a, a]), rows)
    # large weights keep the greedy tokens clear of near-ties
    params, key = init_params(exp.model_cfg, jax.random.key(0), std=0.5), jax.random.key(5)
    got = loop.rollout_per_device(exp.mesh)(params, pool, key)
    steps = loop.num_steps
    assert [s.data.shape for s in got.tokens.addressable_shards] == [(2, steps, 8)] * 2
    play = jax.jit(loop.rollout)
    for i in range(2):
        want = play(params, rows, jax.random.fold_in(key, i))
        np.testing.assert_array_equal(got.tokens[2 * i:2 * i + 2], want.tokens)
        np.testing.assert_array_equal(got.lengths[2 * i:2 * i + 2], want.lengths)
        np.testing.assert_array_equal(got.actions[2 * i:2 * i + 2], want.actions)
        np.testing.assert_allclose(got.logprobs[2 * i:2 * i + 2], want.logprobs, atol=1e-5)
        np.testing.assert_allclose(got.env_rewards[2 * i:2 * i + 2], want.env_rewards, atol=1e-5)
    assert int(got.prefix_length) == loop.renderer.prefix[1]
    assert not np.array_equal(got.env_rewards[:2], got.env_rewards[2:])  # the Gaussian rewards follow the keys


def _rlft_on_two_devices(output_dir):
    """(Run with 2 CPU devices.) On a (2, 1, 1) mesh: rollouts run one call per device, batches that do not split
    over the devices are refused, and two RLFT updates train."""
    assert jax.device_count() == 2
    two = TINY + ["model.mesh=[2,1,1]", "rollout.envs_per_rollout=4"]
    cfg = load_experiment(None, two + ["rl.batch_size=12", "rl.num_updates=2", f"run.output_dir={output_dir}",
                                       "run.name=two"])
    exp = build(cfg)
    assert exp.train_loop.rollout_on(exp.mesh) != exp.train_loop.rollout
    _per_device_rollout_against_one_device_each(exp)
    # one 3-step episode an update
    for overrides, train, key in ((["rl.batch_size=3"], rlft.train, "rl.batch_size"),
                                  (["sft.batch_size=3"], sft.train, "sft.batch_size")):
        odd = build(load_experiment(None, two + overrides))
        with pytest.raises(ConfigError) as error:
            train(odd, odd.init_params, Path(output_dir) / "odd", None)
        _one_line_naming(error, key)
    with RunLog(cfg.run.directory, cfg, {"run": 0}) as log:
        tuned = rlft.train(exp, exp.init_params, cfg.run.directory / "rlft", log)
    leaves = [np.asarray(a) for a in jax.tree.leaves(tuned)]
    assert all(np.isfinite(a).all() for a in leaves)
    assert any(not np.allclose(a, np.asarray(b)) for a, b in zip(leaves, jax.tree.leaves(exp.init_params)))
    print("ok")


def test_two_device_row_mesh_plays_per_device_refuses_odd_batches_and_updates(tmp_path):
    assert run_on_cpu_devices(2, [__file__, "--two-devices", str(tmp_path)]).strip().endswith("ok")


if __name__ == "__main__" and "--two-devices" in sys.argv:
    _rlft_on_two_devices(sys.argv[-1])


def test_a_run_over_seeds_reports_the_mean_and_ci_over_the_seeds(tmp_path):
    from jaxagent.trainers import train_from_config
    summary = train_from_config(None, TINY + ["trainer=sft", "sft.num_updates=2", "eval.num_episodes=2",
                                              "run.seeds=[3, 5]", f"run.output_dir={tmp_path}", "run.name=seeds"])
    per_seed = [json.loads((tmp_path / "seeds" / f"seed_{s}" / "summary.json").read_text()) for s in (3, 5)]
    assert load_experiment(tmp_path / "seeds" / "seed_5" / "config.yaml").run.seed == 5
    for method in ("random", "sft"):
        values = [s[method]["regret"]["mean"] for s in per_seed]
        row = summary[method]["regret"]
        assert row["per_seed"] == pytest.approx(values)
        assert row["mean"] == pytest.approx(np.mean(values))
        assert row["ci95"] == pytest.approx(12.706 * np.std(values, ddof=1) / np.sqrt(2), rel=1e-3)
    assert json.loads((tmp_path / "seeds" / "summary.json").read_text()) == summary
    assert (tmp_path / "seeds" / "regret.png").is_file()


def test_a_damaged_checkpoint_is_reported_set_aside_and_the_one_before_used(tmp_path, capsys):
    """Update 4's parameter files truncated on disk: resuming reports it in one line, keeps it as 4.unreadable,
    restarts from update 2 and ends with the undamaged run's parameters, bit for bit."""
    exp = build(load_experiment(None, TINY))  # 4 updates, checkpoints every 2
    straight = _run_phase(exp, sft.train, tmp_path / "straight")
    shutil.copytree(tmp_path / "straight", tmp_path / "damaged")
    checkpoints = tmp_path / "damaged" / "phase" / "checkpoints"
    for path in (checkpoints / "4" / "params").rglob("d/*"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    resumed = _run_phase(exp, sft.train, tmp_path / "damaged")
    message = [line for line in capsys.readouterr().err.splitlines() if "unreadable" in line]
    assert len(message) == 1 and "checkpoint of update 4" in message[0] and "resuming from update 2" in message[0]
    assert (checkpoints / "4.unreadable").is_dir() and (checkpoints / "4").is_dir()  # kept; 4 written again
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bfloat16_compute_trains_float32_master_weights_whose_small_updates_count(tmp_path):
    """bf16 compute keeps float32 parameters and optimizer state: updates of about the learning rate (1e-6 here)
    move nearly every weight, where bf16 master weights round most of the same updates away."""
    settings = TINY + ["model.dtype=bfloat16", "sft.num_updates=2", "optim.learning_rate=1e-6", "optim.warmup_steps=0",
                       "optim.final_learning_rate=1e-6", "run.checkpoint_every=2", f"run.output_dir={tmp_path}"]
    moved = {}
    for master in ("float32", "bfloat16"):
        cfg = load_experiment(None, settings + [f"model.master_dtype={master}", f"run.name={master}"])
        exp = build(cfg)
        assert {x.dtype for x in jax.tree.leaves(exp.init_params)} == {np.dtype(master)}
        assert exp.model_cfg.compute_dtype == (None if master == "bfloat16" else "bfloat16")
        with RunLog(cfg.run.directory, cfg, {"run": 0}) as log:
            trained = sft.train(exp, exp.init_params, cfg.run.directory / "sft", log)
        assert {x.dtype for x in jax.tree.leaves(trained)} == {np.dtype(master)}
        changed = [np.asarray(a) != np.asarray(b) for a, b in zip(jax.tree.leaves(trained),
                                                                   jax.tree.leaves(exp.init_params))]
        moved[master] = sum(c.sum() for c in changed) / sum(c.size for c in changed)
    assert moved["float32"] > 0.9 and moved["bfloat16"] < 0.5  # seen: 0.99999 and 0.021
