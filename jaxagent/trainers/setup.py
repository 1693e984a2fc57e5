"""Build an experiment's parts from its config: env and instance pools, tokenizer, prompt, parser, model, loops."""
from __future__ import annotations

import dataclasses
import math
from importlib import resources
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

import envs_jax
from envs_jax import processes
from jaxagent import storage
from envs_jax.yaml_config import ConfigError
from jaxagent.experiment_config import ExperimentConfig
from jaxagent.experts import ExplorationOverride
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxagent.model import GemmaConfig, init_params, load_policy, make_mesh, param_shardings
from jaxagent.model.sharding import BATCH
from jaxagent.model.policy import DTYPES
from jaxagent.mechanisms import Inference
from jaxagent.rollout import AgentLoop
from jaxagent.env_kinds import EnvKind, kind_of, make_renderer
from jaxagent.text import PromptOptions, load_tokenizer, make_parser, shipped_tokenizer


@dataclasses.dataclass
class Experiment:
    cfg: ExperimentConfig
    mesh: Mesh
    env: Any
    tokenizer: Any
    renderer: Any
    parser: Any
    model_cfg: GemmaConfig
    init_params: Any
    train_loop: AgentLoop
    eval_loop: AgentLoop

    def pool(self, key, size: int):
        """``size`` env instances (a batched params pytree)."""
        return jax.vmap(self.env.sample_params)(jax.random.split(key, size))

    @property
    def labels(self) -> tuple[str, ...]:
        return self.renderer.labels

    @property
    def kind(self) -> EnvKind:
        """What the env's kind needs: prompt template, experts, report baselines, metrics, success predicates."""
        return kind_of(self.env)

    def batch_sharding(self) -> NamedSharding:
        """Per-episode arrays: leading axis over the mesh's ("data", "fsdp") axes."""
        return NamedSharding(self.mesh, PartitionSpec(BATCH))


def make_experiment_mesh(sizes: tuple[int, int, int]) -> Mesh:
    """The (data, fsdp, tensor) mesh of ``model.mesh``; one size may be -1 (all remaining devices)."""
    n = jax.device_count()
    known = math.prod(s for s in sizes if s != -1)
    if n % known:
        raise ConfigError(f"config key 'model.mesh': {list(sizes)} does not divide the {n} devices")
    return make_mesh(*(n // known if s == -1 else s for s in sizes))


SHIPPED = "shipped:"


def checkpoint_path(value: str, key: str = "model.checkpoint") -> Path:
    """``model.checkpoint``: a directory, or ``shipped:NAME`` for a checkpoint shipped in ``jaxagent/assets``
    (made with the shipped tokenizer)."""
    if value.startswith(SHIPPED):
        path = Path(str(resources.files("jaxagent") / "assets" / value[len(SHIPPED):]))
    elif storage.is_url(value):
        path = storage.local_copy(value)
    else:
        path = Path(value)
    if not path.is_dir():
        raise ConfigError(f"config key '{key}': directory not found: {path}")
    return path


def tokenizer_for(cfg: ExperimentConfig):
    """``model.tokenizer``: a directory, ``shipped``, or (unset) the checkpoint's own, or the shipped one."""
    m = cfg.model
    shipped_model = m.checkpoint is not None and m.checkpoint.startswith(SHIPPED)
    if m.tokenizer == "shipped" or (m.tokenizer is None and (m.checkpoint is None or shipped_model)):
        return shipped_tokenizer()
    if m.tokenizer is not None and storage.is_url(m.tokenizer):
        return load_tokenizer(storage.local_copy(m.tokenizer))
    return load_tokenizer(m.tokenizer or checkpoint_path(m.checkpoint))


def renderer_for(env, tokenizer, cfg: ExperimentConfig):
    p = cfg.prompt
    options = PromptOptions(labels=p.arm_labels, cot=p.chain_of_thought, summary=p.context_summary,
                            history_window=p.history_window, legal_actions=p.legal_actions,
                            max_len=p.max_prompt_tokens, ucb_values=p.ucb_values)
    if p.ucb_values and env.kind != "bandit":
        raise ConfigError(f"config key 'prompt.ucb_values': applies to multi-armed bandits only, not {cfg.env.name}")
    return make_renderer(env, tokenizer, options, params=env.default_params)


def _model(cfg: ExperimentConfig, vocab_size: int, mesh: Mesh):
    m = cfg.model
    if m.checkpoint is not None:
        policy = load_policy(checkpoint_path(m.checkpoint), m.master_dtype, mesh=mesh)
        model_cfg, params = policy.cfg, policy.params
    else:
        try:
            model_cfg = GemmaConfig.preset(m.preset)
        except ValueError as e:
            raise ConfigError(f"config key 'model.preset': {e}") from None
        params = init_params(model_cfg, jax.random.key(cfg.run.seed), DTYPES[m.master_dtype],
                             value_head=m.value_head)
    model_cfg = dataclasses.replace(model_cfg, kernels=m.kernels, remat=m.remat,
                                    compute_dtype=None if m.dtype == m.master_dtype else m.dtype)
    if model_cfg.vocab_size < vocab_size:
        raise ConfigError(f"config key 'model.tokenizer': the tokenizer has {vocab_size} tokens but the model's "
                          f"vocabulary only {model_cfg.vocab_size}")
    if m.value_head and "value_head" not in params:
        params = {**params, "value_head": {"w": jnp.zeros((model_cfg.d_model,), params["embed"].dtype),
                                           "b": jnp.zeros((), params["embed"].dtype)}}
    return model_cfg, jax.device_put(params, param_shardings(mesh, params))


def _exploration(env, renderer, cfg: ExperimentConfig, section: str, try_all: bool, epsilon_greedy: bool,
                 epsilon: float):
    """The try-all / ε-greedy override of the ``rollout`` (training) or ``eval`` section, or None."""
    if not (try_all or epsilon_greedy):
        return None
    if not kind_of(env).arms:
        key = f"{section}.try_all" if try_all else f"{section}.epsilon_greedy"
        raise ConfigError(f"config key '{key}': applies to bandits only, not {cfg.env.name}")
    return ExplorationOverride(renderer.tokenizer, renderer.labels, env.horizon, try_all,
                               epsilon if epsilon_greedy else 0.0)


def inference_of(section) -> Inference:
    """The inference mechanisms a ``rollout`` or ``eval`` section turns on."""
    return Inference(votes=section.self_consistency, vote=section.vote, self_correction=section.self_correction,
                     relabel=section.context_randomisation)


def build(cfg: ExperimentConfig) -> Experiment:
    if cfg.run.distributed:
        processes.join("run.", cfg.run.coordinator_address, cfg.run.num_processes, cfg.run.process_id)
    mesh = make_experiment_mesh(cfg.model.mesh)
    try:
        env = envs_jax.make_env(cfg.env.name, **cfg.env.options)
    except envs_jax.EnvError as e:
        raise ConfigError(f"config key 'env': {e}") from None
    tokenizer = tokenizer_for(cfg)
    renderer = renderer_for(env, tokenizer, cfg)
    parser = make_parser(renderer)
    model_cfg, params = _model(cfg, tokenizer.vocab_size, mesh)
    r = cfg.rollout
    exploration = _exploration(env, renderer, cfg, "rollout", r.try_all, r.epsilon_greedy, r.epsilon)
    num_steps = env.horizon if cfg.env.num_steps is None else cfg.env.num_steps
    train_loop = AgentLoop(env, renderer, parser, model_cfg, num_steps=num_steps, max_new_tokens=r.max_new_tokens,
                           stop_tokens=tokenizer.stop_ids, temperature=r.temperature, top_k=r.top_k, top_p=r.top_p,
                           invalid_penalty=r.invalid_penalty,
                           exploration_bonus=r.exploration_bonus_value if r.exploration_bonus else 0.0,
                           exploration=exploration, unroll_layers=r.unroll_layers,
                           history_segments=r.history_segments)
    # Evaluation plays the policy with the evaluation's own exploration mechanisms (none by default).
    e = cfg.eval
    for key, on in (("rollout", r.context_randomisation), ("eval", e.context_randomisation)):
        if on and env.kind != "bandit":
            raise ConfigError(f"config key '{key}.context_randomisation': applies to multi-armed bandits only, not "
                              f"{cfg.env.name}")
    eval_loop = dataclasses.replace(train_loop, temperature=e.temperature, top_k=0, top_p=1.0,
                                    inference=inference_of(e),
                                    exploration=_exploration(env, renderer, cfg, "eval", e.try_all,
                                                             e.epsilon_greedy, e.epsilon))
    return Experiment(cfg, mesh, env, tokenizer, renderer, parser, model_cfg, params, train_loop, eval_loop)
