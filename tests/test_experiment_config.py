import pytest
import yaml

from envs_jax.yaml_config import ConfigError, to_dict
from jaxagent.experiment_config import ExperimentConfig, load_experiment


def test_defaults_are_the_paper_settings():
    cfg = load_experiment(None)
    assert cfg.rl.batch_size == 128 and cfg.rl.epsilon == 0.2 and cfg.rl.beta == 0.05
    assert cfg.optim.name == "adafactor" and cfg.optim.learning_rate == 1e-4
    assert cfg.optim.warmup_steps == 100 and cfg.optim.final_learning_rate == 1e-6 and cfg.optim.clip_norm == 1.0
    assert cfg.rollout.invalid_penalty == -5.0 and cfg.rollout.max_new_tokens == 256
    assert cfg.rollout.temperature == 1.0 and cfg.eval.temperature == 0.0
    assert cfg.prompt.max_prompt_tokens == 1792 and cfg.rollout.epsilon == 0.1
    assert cfg.rollout.exploration_bonus_value == 1.0
    assert cfg.rollout.envs_per_rollout == 16 and cfg.env.pool_size == 512 and cfg.env.num_steps is None


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"trainer": "sft_then_rlft", "rl": {"epsilon_low": 0.1, "epsilon_high": 0.28},
                                    "model": {"value_head": True}, "run": {"name": "quick"}}))
    cfg = load_experiment(path, ["rl.advantage=gae", "optim.name=adamw", "model.mesh=[4,2,1]"])
    assert cfg.trainer == "sft_then_rlft" and cfg.rl.epsilon_high == 0.28 and cfg.rl.advantage == "gae"
    assert cfg.optim.name == "adamw" and cfg.model.mesh == (4, 2, 1)
    assert str(cfg.run.directory) == "runs/quick"
    # the resolved config round-trips through a plain mapping (what a run directory records)
    assert load_experiment(None) == ExperimentConfig()
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(to_dict(cfg)))
    assert load_experiment(again) == cfg


@pytest.mark.parametrize("override,key", [
    ("rl.epsilom=0.2", "rl.epsilom"),
    ("sections.x=1", "sections"),
])
def test_unknown_key_is_named(override, key):
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
        load_experiment(None, [override])


@pytest.mark.parametrize("override,key", [
    ("rl.epsilon=1.5", "rl.epsilon"),
    ("rl.epsilon_low=0", "rl.epsilon_low"),
    ("rl.epsilon_high=-0.1", "rl.epsilon_high"),
    ("rl.beta=-1", "rl.beta"),
    ("rl.gamma=1.2", "rl.gamma"),
    ("rl.kl_estimator=k2", "rl.kl_estimator"),
    ("rl.micro_batch_size=5", "rl.micro_batch_size"),
    ("rl.batch_size=0", "rl.batch_size"),
    ("sft.micro_batch_size=3", "sft.micro_batch_size"),
    ("optim.name=sgd", "optim.name"),
    ("optim.learning_rate=0", "optim.learning_rate"),
    ("optim.final_learning_rate=0.1", "optim.final_learning_rate"),
    ("optim.clip_norm=0", "optim.clip_norm"),
    ("optim.b2=1.0", "optim.b2"),
    ("rollout.top_p=0", "rollout.top_p"),
    ("rollout.invalid_penalty=5", "rollout.invalid_penalty"),
    ("rollout.epsilon=2", "rollout.epsilon"),
    ("rollout.temperature=-1", "rollout.temperature"),
    ("rollout.max_new_tokens=abc", "rollout.max_new_tokens"),
    ("eval.num_episodes=1", "eval.num_episodes"),
    ("run.name=a/b", "run.name"),
    ("run.checkpoint_every=0", "run.checkpoint_every"),
    ("run.process_id=0", "run.process_id"),  # without run.distributed
    ("run.coordinator_address=127.0.0.1:1234", "run.coordinator_address"),
    ("model.mesh=[-1,-1,1]", "model.mesh"),
    ("model.mesh=[4,2]", "model.mesh"),
    ("model.dtype=float16", "model.dtype"),
    ("env.pool_size=0", "env.pool_size"),
    ("rl.advantage=gae", "model.value_head"),
    ("rl.group_size=0", "rl.group_size"),
    ("rl.group_size=3", "rl.group_size"),
    ("trainer=ppo", "trainer"),
])
def test_bad_value_error_names_the_key(override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_experiment(None, [override])


def test_build_hands_every_prompt_and_rollout_setting_to_the_episode():
    from jaxagent.text import PromptOptions
    from jaxagent.trainers.setup import build

    exp = build(load_experiment(None, [
        "model.preset=nano", "model.tokenizer=shipped", "env.name=bandit-bernoulli",
        "env.options={num_arms: 3, horizon: 6}", "prompt.arm_labels=numeric", "prompt.chain_of_thought=false",
        "prompt.context_summary=true", "prompt.history_window=2", "prompt.max_prompt_tokens=900",
        "rollout.max_new_tokens=20", "rollout.temperature=0.7", "rollout.top_k=5", "rollout.top_p=0.9",
        "rollout.invalid_penalty=-2.5", "rollout.exploration_bonus=true", "rollout.exploration_bonus_value=0.5",
        "rollout.unroll_layers=true", "rollout.history_segments=3", "env.num_steps=4", "eval.temperature=0.3"]))
    assert exp.renderer.options == PromptOptions(labels="numeric", cot=False, summary=True, history_window=2,
                                                 legal_actions=True, max_len=900, distribution="Bernoulli")
    train, evaluate = exp.train_loop, exp.eval_loop
    assert (train.num_steps, train.max_new_tokens, train.temperature, train.top_k, train.top_p) == (4, 20, 0.7, 5, 0.9)
    assert (train.invalid_penalty, train.exploration_bonus, train.unroll_layers) == (-2.5, 0.5, True)
    assert train.history_segments == evaluate.history_segments == 3
    assert train.stop_tokens == exp.tokenizer.stop_ids and train.exploration is None
    assert (evaluate.temperature, evaluate.top_k, evaluate.top_p) == (0.3, 0, 1.0)
    assert evaluate.invalid_penalty == -2.5 and evaluate.num_steps == 4


def test_every_trainer_and_advantage_name_the_config_accepts_has_an_implementation():
    import typing

    from jaxagent.experiment_config import TASK_METHODS, TRAINERS, RLConfig
    from jaxagent.trainers import PHASES, compare
    from jaxagent.trainers.rlft import ADVANTAGES

    assert {phase for phases in TRAINERS.values() for phase in phases} == set(PHASES) | set(TASK_METHODS)
    assert set(compare.runners(2)) == set(TASK_METHODS)
    for phases in TRAINERS.values():  # a trainer runs phases in sequence, or methods on tasks: never both
        assert set(phases) <= set(PHASES) or set(phases) <= set(TASK_METHODS)
    assert set(typing.get_args(typing.get_type_hints(RLConfig)["advantage"])) == set(ADVANTAGES)
    for name in TRAINERS:
        assert load_experiment(None, [f"trainer={name}"]).trainer == name
