"""The experiment config: typed sections with the RLFT paper's defaults, loaded by ``envs_jax.yaml_config``.

``load_experiment(path, overrides)`` reads a YAML file plus ``key=value`` overrides; an unknown key
or a bad value is one ``ConfigError`` naming the dotted key. Defaults follow Schmied et al. 2025:
128 step contexts per update, Adafactor at 1e-4 with 100 warm-up steps and cosine decay to 1e-6,
gradient clip 1.0, PPO ε = 0.2, KL β = 0.05, −5 for an invalid action, G = 256 generated tokens
after a 1792-token context, temperature 1.0 in training and 0 (greedy) in evaluation.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from envs_jax import processes
from jaxagent import storage
from envs_jax import yaml_config as configlib
from envs_jax.yaml_config import ConfigError

_field = dataclasses.field

# trainer -> its phases, run in order, each continuing from the last one's parameters (see jaxagent.trainers.PHASES),
# or the EEF paper's methods, each run on tasks from the same starting checkpoint (see jaxagent.trainers.expert_tasks)
TASK_METHODS = ("sft_pos", "sft_all", "rft", "rft_xN", "eef")
TRAINERS = {"sft": ("sft",), "rlft": ("rlft",), "sft_then_rlft": ("sft", "rlft"),
            "sft_pos": ("sft_pos",), "sft_all": ("sft_all",), "rft": ("rft",), "eef": ("eef",),
            "eef_comparison": TASK_METHODS}


def _require(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {rule}, got {value!r}")


def _positive(section: Any, prefix: str, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        _require(value > 0, f"{prefix}.{name}", "must be > 0", value)


def _unit_interval(section: Any, prefix: str, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        _require(0.0 <= value <= 1.0, f"{prefix}.{name}", "must be in [0, 1]", value)


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    name: str = "bandit-gaussian"          # an envs_jax.make name
    options: dict[str, Any] = _field(default_factory=lambda: {"num_arms": 5, "sigma": 1.0})
    pool_size: int = 512                   # training instances; each rollout draws from this pool
    num_steps: int | None = None           # env steps per rollout row; None = the env's horizon (games auto-reset)

    def validate(self) -> None:
        _require(bool(self.name), "env.name", "must not be empty", self.name)
        _positive(self, "env", "pool_size")
        if self.num_steps is not None:
            _positive(self, "env", "num_steps")


def _check_mechanisms(section: Any, prefix: str) -> None:
    """The inference mechanisms a ``rollout`` or ``eval`` section turns on agree with each other."""
    _positive(section, prefix, "self_consistency")
    if section.self_consistency > 1:
        _require(section.temperature > 0, f"{prefix}.temperature", f"must be > 0 with {prefix}.self_consistency > 1 "
                 "(greedy answers all agree)", section.temperature)
        _require(not section.self_correction, f"{prefix}.self_correction", "cannot be combined with "
                 f"{prefix}.self_consistency > 1", section.self_correction)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    preset: str = "tiny"                   # a jaxagent.model preset (tiny, gemma2-2b, gemma2-9b, ...)
    checkpoint: str | None = None          # local HF safetensors or Orbax directory; None = random init
    tokenizer: str | None = None           # a tokenizer directory, or "shipped"; None = the checkpoint's own
                                           # (the shipped one without a checkpoint)
    dtype: Literal["float32", "bfloat16"] = "float32"  # the dtype the model computes in
    master_dtype: Literal["float32", "bfloat16"] = "float32"  # the trained parameters' and optimizer state's: bf16
                                           # compute keeps float32 master weights, so late small updates count
    value_head: bool = False               # state-value head on the last hidden state (GAE)
    mesh: tuple[int, int, int] = (-1, 1, 1)  # (data, fsdp, tensor) sizes; -1 = the remaining devices
    kernels: Literal["auto", "cpu", "plain"] = "auto"  # decode kernels: auto = the CPU ones on CPU, plain elsewhere
    remat: Literal["dots", "full"] = "dots"  # training keeps each layer pair's weight-matmul outputs (dots) or
                                           # only its input (full: least activation memory, one more forward)

    def validate(self) -> None:
        sizes = self.mesh
        _require(all(s == -1 or s > 0 for s in sizes) and sizes.count(-1) <= 1, "model.mesh",
                 "sizes must be positive with at most one -1", list(sizes))


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    arm_labels: Literal["button", "numeric"] = "button"
    chain_of_thought: bool = True
    context_summary: bool = False          # per-arm counts and mean rewards after the history
    history_window: int | None = None      # show only the last C steps (None: all; re-prefills once exceeded)
    legal_actions: bool = True             # list the legal moves (tic-tac-toe)
    max_prompt_tokens: int = 1792
    ucb_values: bool = False               # bandits: the instruction asks for each arm's UCB value inside
                                           # <ucb_values> tags before the action (the knowing-doing analysis)

    def validate(self) -> None:
        _positive(self, "prompt", "max_prompt_tokens")
        _require(self.chain_of_thought or not self.ucb_values, "prompt.ucb_values",
                 "needs prompt.chain_of_thought: true (the values are the model's reasoning)", self.ucb_values)


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    envs_per_rollout: int = 16
    max_new_tokens: int = 256              # G, the thinking budget per step
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0                         # 0 = no top-k filter
    invalid_penalty: float = -5.0          # added to the training reward when no valid ACTION=X is parsed
    exploration_bonus: bool = False        # + exploration_bonus_value the first time an arm is tried
    exploration_bonus_value: float = 1.0
    try_all: bool = False                  # play each untried arm first, with the paper's rationale
    epsilon_greedy: bool = False
    epsilon: float = 0.1
    unroll_layers: bool = False            # unrolled decode layers: faster on CPU, compile time grows with depth
    history_segments: int | None = None    # episode parts decoded over their own cache bound; None: 8 on CPU, 1
                                           # elsewhere; each part adds to the compile time
    # RLFT rollouts with the paper's inference mechanisms (jaxagent.mechanisms), trained on what was played:
    context_randomisation: bool = False    # fresh arm labels every turn (bandits; rl.batch_unit: context)
    self_consistency: int = 1              # answers sampled per turn, the vote's answer played and trained on
    vote: Literal["majority", "sample"] = "majority"
    self_correction: bool = False          # a second answer after a request to check the first, trained on alone
                                           # with the first in its context (rl.batch_unit: context)
    log_samples: int = 0                   # RLFT: the first N episodes of each logged rollout, as text and token
                                           # ids, appended to <run>/rlft/samples.jsonl

    def validate(self) -> None:
        _positive(self, "rollout", "envs_per_rollout", "max_new_tokens")
        _check_mechanisms(self, "rollout")
        if self.history_segments is not None:
            _positive(self, "rollout", "history_segments")
        _require(self.temperature >= 0, "rollout.temperature", "must be >= 0", self.temperature)
        _require(0.0 < self.top_p <= 1.0, "rollout.top_p", "must be in (0, 1]", self.top_p)
        _require(self.top_k >= 0, "rollout.top_k", "must be >= 0", self.top_k)
        _require(self.invalid_penalty <= 0, "rollout.invalid_penalty", "must be <= 0", self.invalid_penalty)
        _require(0 <= self.log_samples <= self.envs_per_rollout, "rollout.log_samples",
                 f"must be in [0, rollout.envs_per_rollout={self.envs_per_rollout}]", self.log_samples)
        _unit_interval(self, "rollout", "epsilon")


def _check_batching(section: Any, prefix: str) -> None:
    _positive(section, prefix, "batch_size", "num_updates")
    micro = section.micro_batch_size
    if micro is not None:
        _require(micro > 0 and section.batch_size % micro == 0, f"{prefix}.micro_batch_size",
                 f"must be a positive divisor of {prefix}.batch_size={section.batch_size}", micro)


@dataclasses.dataclass(frozen=True)
class RLConfig:
    batch_size: int = 128                  # step contexts per update (accumulated over micro-batches)
    micro_batch_size: int | None = None    # None = the whole batch in one pass
    num_updates: int = 30000
    epochs: int = 1                        # passes over each rollout's contexts
    epsilon: float = 0.2                   # PPO clip; epsilon_low / epsilon_high override either side
    epsilon_low: float | None = None
    epsilon_high: float | None = None
    beta: float = 0.05                     # weight of the KL to the frozen starting policy
    kl_estimator: Literal["k1", "k3"] = "k3"
    advantage: Literal["rewards_to_go_mc", "gae"] = "rewards_to_go_mc"
    gamma: float = 1.0
    gae_lambda: float = 0.95
    group_size: int = 1                    # episodes per env instance in a rollout; > 1: each episode's MC
                                           # baseline is the mean of the others on its instance (leave-one-out)
    normalize_rewards: bool = False
    normalize_advantages: bool = False
    value_coef: float = 0.5
    value_clip: float | None = None
    learning_rate: float | None = None     # this phase's peak learning rate; None = optim.learning_rate
    batch_unit: Literal["episode", "context"] = "episode"  # a batch row: one packed episode (batch_size rounded
                                           # to whole episodes), or one step context scored alone (batch_size
                                           # exact; history windows allowed)

    def validate(self) -> None:
        _check_batching(self, "rl")
        _positive(self, "rl", "epochs", "group_size")
        for name in ("epsilon", "epsilon_low"):  # the ratio's lower bound 1 − ε must stay positive
            value = getattr(self, name)
            if value is not None:
                _require(0.0 < value < 1.0, f"rl.{name}", "must be in (0, 1)", value)
        if self.epsilon_high is not None:
            _require(self.epsilon_high > 0, "rl.epsilon_high", "must be > 0", self.epsilon_high)
        _require(self.beta >= 0, "rl.beta", "must be >= 0", self.beta)
        _unit_interval(self, "rl", "gamma", "gae_lambda")
        _require(self.value_coef >= 0, "rl.value_coef", "must be >= 0", self.value_coef)
        if self.value_clip is not None:
            _require(self.value_clip > 0, "rl.value_clip", "must be > 0", self.value_clip)


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    target: Literal["thought_cloning", "behaviour_cloning"] = "thought_cloning"
    expert: Literal["ucb", "greedy", "minimax", "linucb"] = "ucb"  # bandits: ucb or greedy (contextual: also
                                           # linucb); tic-tac-toe: minimax
    rationale_stats: bool = True           # thought cloning writes each arm's count, mean (and UCB) first
    action_noise: float = 0.0              # chance a random arm is played instead of the expert's (still labelled
                                           # with the expert's text for that state)
    batch_size: int = 128                  # step contexts per update; fresh expert episodes every update
    micro_batch_size: int | None = None
    num_updates: int = 1000
    learning_rate: float | None = None     # this phase's peak learning rate; None = optim.learning_rate

    def validate(self) -> None:
        _check_batching(self, "sft")
        _unit_interval(self, "sft", "action_noise")


@dataclasses.dataclass(frozen=True)
class EEFConfig:
    """Tasks, the expert and the iterations of the EEF paper's methods (SFT-POS, SFT-ALL, RFT, RFT×N, EEF)."""
    success: str = "win"                   # the env kind's success predicate (win, not_lose; regret_below)
    success_threshold: float | None = None  # regret_below: success = final cumulative regret below this
    train_tasks: int = 128                 # training tasks (initial states with the agent to move)
    eval_tasks: int = 128                  # held-out tasks, the same for every method and seed
    opening_plies: tuple[int, ...] = (0,)  # random moves (games: with the opponent's replies) before a task starts
    expert: str = "minimax"                # an expert of the env's kind (minimax; ucb, greedy)
    expert_blunder: float = 0.0            # the expert's chance of a random action per turn
    expert_checkpoint: str | None = None   # instead: this policy (a directory or shipped:NAME), played greedily
    expert_file: str | None = None         # instead: tasks and expert episodes from this file (docs/eef.md)
    num_restarts: int = 5                  # M: restarts along each failed expert episode, every ⌊n / (M+1)⌋ steps
    iterations: int = 3                    # exploration + fine-tuning rounds after SFT-POS
    rollouts_per_task: int = 1             # RFT: policy episodes per task per iteration
    finetune_from: Literal["continue", "sft_pos"] = "continue"  # each iteration's starting parameters
    initial_states: bool = True            # EEF trains on the initial states' trajectories (D_s0)
    recover_states: bool = True            # EEF trains on the need-recover states' trajectories (D_r)
    sft_updates: int = 100                 # SFT-POS / SFT-ALL updates
    updates_per_iteration: int = 50
    batch_size: int = 32                   # episodes per update (one packed episode per row)
    learning_rate: float | None = None     # peak learning rate; None = optim.learning_rate
    seeds: tuple[int, ...] = (0,)          # one run of each method per seed (tasks, expert episodes, sampling)
    rollout_chunk: int = 64                # rows per compiled rollout call

    def validate(self) -> None:
        _positive(self, "eef", "train_tasks", "eval_tasks", "num_restarts", "iterations", "rollouts_per_task",
                  "sft_updates", "updates_per_iteration", "batch_size", "rollout_chunk")
        _require(all(p >= 0 for p in self.opening_plies) and bool(self.opening_plies), "eef.opening_plies",
                 "must be a non-empty list of numbers >= 0", list(self.opening_plies))
        _unit_interval(self, "eef", "expert_blunder")
        _require(self.expert_file is None or self.expert_checkpoint is None, "eef.expert_file",
                 "cannot be set with eef.expert_checkpoint (one expert per run)", self.expert_file)
        _require(bool(self.seeds) and len(set(self.seeds)) == len(self.seeds), "eef.seeds",
                 "must be a non-empty list of distinct seeds", list(self.seeds))


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    name: Literal["adafactor", "adamw"] = "adafactor"
    learning_rate: float = 1e-4
    warmup_steps: int = 100                # linear from 0 to learning_rate
    final_learning_rate: float = 1e-6      # cosine decay reaches it at the last update
    clip_norm: float | None = 1.0          # global gradient-norm clip; null = off
    weight_decay: float = 0.0
    b1: float = 0.9                        # AdamW moments
    b2: float = 0.999
    adafactor_decay_rate: float = 0.8
    adafactor_param_scale: bool = False    # True = Adafactor's relative step (lr × parameter RMS)

    def validate(self) -> None:
        _positive(self, "optim", "learning_rate")
        _require(self.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0", self.warmup_steps)
        _require(0 <= self.final_learning_rate <= self.learning_rate, "optim.final_learning_rate",
                 f"must be in [0, optim.learning_rate={self.learning_rate}]", self.final_learning_rate)
        if self.clip_norm is not None:
            _require(self.clip_norm > 0, "optim.clip_norm", "must be > 0 (or null for no clipping)", self.clip_norm)
        _require(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0", self.weight_decay)
        for name in ("b1", "b2", "adafactor_decay_rate"):
            value = getattr(self, name)
            _require(0.0 <= value < 1.0, f"optim.{name}", "must be in [0, 1)", value)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    every: int = 10000                     # updates between greedy evaluations
    num_episodes: int = 64                 # held-out instances, the same for every method
    seed: int = 1234                       # keys of the held-out instances and of their env noise
    temperature: float = 0.0
    # Inference-time mechanisms (jaxagent.mechanisms); the evaluated policy's methods are then named with them,
    # e.g. "rlft+try_all" or "policy+self_consistency16"
    try_all: bool = False                  # as rollout.try_all / epsilon_greedy / epsilon
    epsilon_greedy: bool = False
    epsilon: float = 0.1
    self_consistency: int = 1              # answers sampled per turn, the majority played (1: off)
    vote: Literal["majority", "sample"] = "majority"  # or an action drawn from the vote shares
    self_correction: bool = False          # a second answer after a request to check the first
    context_randomisation: bool = False    # fresh arm labels every turn (bandits)

    @property
    def mechanisms(self) -> str:
        """The suffix naming the evaluation's mechanisms, "" without any."""
        names = [name for name in ("try_all", "epsilon_greedy", "self_correction", "context_randomisation")
                 if getattr(self, name)]
        if self.self_consistency > 1:
            names.append(f"self_consistency{self.self_consistency}" + ("_sampled" if self.vote == "sample" else ""))
        return "".join(f"+{name}" for name in names)

    def validate(self) -> None:
        _positive(self, "eval", "every")
        _check_mechanisms(self, "eval")
        _unit_interval(self, "eval", "epsilon")
        _require(self.num_episodes >= 2, "eval.num_episodes", "must be >= 2 (for a confidence interval)",
                 self.num_episodes)
        _require(self.temperature >= 0, "eval.temperature", "must be >= 0", self.temperature)


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
    """The frequency-bias analysis (``jaxagent eval … analysis=frequency-bias``; knowing-doing uses ``eval``)."""
    histories: int = 16                    # random-policy histories, each shown at every repetition count
    prefix_steps: tuple[int, int] = (2, 10)  # their length range before the repeated action
    repetitions: tuple[int, ...] = (0, 5, 10, 45, 50, 55, 90, 95, 100)  # pulls of the repeated action
    method: Literal["auto", "score", "sample"] = "auto"  # the action distribution: the probability of each
                                           # ACTION=<label> answer (score) or parsed samples; auto: score without
                                           # chain of thought, sample with it
    samples: int = 16                      # sample: answers per context, at temperature 1
    batch: int = 16                        # contexts per compiled call
    seed: int = 0

    def validate(self) -> None:
        _positive(self, "analysis", "histories", "samples", "batch")
        low, high = self.prefix_steps
        _require(1 <= low <= high, "analysis.prefix_steps", "must be [low, high] with 1 <= low <= high",
                 list(self.prefix_steps))
        _require(bool(self.repetitions) and min(self.repetitions) >= 0, "analysis.repetitions",
                 "must be a non-empty list of counts >= 0", list(self.repetitions))


@dataclasses.dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    output_dir: str = "runs"               # the run directory is output_dir/name
    seed: int = 0
    seeds: tuple[int, ...] = ()            # several: one run per seed (output_dir/name/seed_S), then summary.json
                                           # over seeds (mean and 95% CI over the seeds' means, as the paper)
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    resume: bool = True                    # continue from the run directory's last checkpoint
    distributed: bool = False              # multi-host: join the run's processes (jax.distributed) first
    coordinator_address: str | None = None  # HOST:PORT of process 0; these three: null = JAX's auto-detection
    num_processes: int | None = None       # (TPU pods, SLURM, Open MPI) or the JAX_COORDINATOR_ADDRESS,
    process_id: int | None = None          # JAX_NUM_PROCESSES and JAX_PROCESS_ID environment variables

    def validate(self) -> None:
        _require(bool(self.name) and "/" not in self.name, "run.name", "must be a non-empty name without '/'",
                 self.name)
        _positive(self, "run", "checkpoint_every", "keep_checkpoints", "log_every")
        _require(not self.seeds or (len(self.seeds) >= 2 and len(set(self.seeds)) == len(self.seeds)), "run.seeds",
                 "must be empty or list at least 2 distinct seeds (for a confidence interval)", list(self.seeds))
        processes.check_keys("run.", self.distributed, self.coordinator_address, self.num_processes,
                             self.process_id)

    @property
    def directory(self) -> Path:
        """The run directory; for a bucket ``output_dir``, its local mirror (see :mod:`jaxagent.storage`)."""
        root = storage.local_for(self.output_dir) if storage.is_url(self.output_dir) else Path(self.output_dir)
        return root / self.name


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    trainer: str = "rlft"                  # a TRAINERS name
    env: EnvConfig = _field(default_factory=EnvConfig)
    model: ModelConfig = _field(default_factory=ModelConfig)
    prompt: PromptConfig = _field(default_factory=PromptConfig)
    rollout: RolloutConfig = _field(default_factory=RolloutConfig)
    rl: RLConfig = _field(default_factory=RLConfig)
    sft: SFTConfig = _field(default_factory=SFTConfig)
    eef: EEFConfig = _field(default_factory=EEFConfig)
    optim: OptimConfig = _field(default_factory=OptimConfig)
    eval: EvalConfig = _field(default_factory=EvalConfig)
    analysis: AnalysisConfig = _field(default_factory=AnalysisConfig)
    run: RunConfig = _field(default_factory=RunConfig)

    def validate(self) -> None:
        _require(self.trainer in TRAINERS, "trainer", f"must be one of {', '.join(TRAINERS)}", self.trainer)
        _require(not self.run.seeds or not set(TRAINERS[self.trainer]) <= set(TASK_METHODS), "run.seeds",
                 "applies to the sft / rlft trainers (the EEF paper's methods take eef.seeds)", list(self.run.seeds))
        if self.rl.advantage == "gae":
            _require(self.model.value_head, "model.value_head", "must be true when rl.advantage is 'gae'",
                     self.model.value_head)
        _require(self.rollout.envs_per_rollout % self.rl.group_size == 0, "rl.group_size",
                 f"must divide rollout.envs_per_rollout ({self.rollout.envs_per_rollout})", self.rl.group_size)
        for key, why in (("context_randomisation", "each turn's prompt relabels the whole history"),
                         ("self_correction", "each turn's answer follows its first answer")):
            _require(not getattr(self.rollout, key) or self.rl.batch_unit == "context", f"rollout.{key}",
                     f"needs rl.batch_unit: context ({why}, so episodes do not pack)", getattr(self.rollout, key))
        _require(not (self.rollout.self_correction and self.rl.advantage == "gae"), "rollout.self_correction",
                 "cannot be combined with rl.advantage: gae (a corrected turn's value is read after its first "
                 "answer, an unfinished episode's bootstrap before one)", self.rollout.self_correction)
        _require(self.rl.group_size == 1 or self.rl.advantage == "rewards_to_go_mc", "rl.group_size",
                 "applies to rl.advantage 'rewards_to_go_mc' only (must be 1 with 'gae')", self.rl.group_size)


def load_experiment(path: str | Path | None, overrides: list[str] = ()) -> ExperimentConfig:
    """The experiment config from a YAML file (or the defaults when ``path`` is None) plus overrides."""
    return configlib.load(ExperimentConfig, path, overrides)
