"""The agent episode as one jitted function: render → sample → parse → env step, a ``lax.scan`` over steps.

Per step and per row (all rows at once, no host round-trip)::

    cache = rewind(cache, end_of_history)          # drop last step's tail and generated tokens
    cache = append(cache, history_line(t-1) ++ tail(state))
    z, logp = sample(cache)                        # temperature / top-k / top-p, stop tokens, budget G
    action, valid = parse(z)                       # last ACTION=<label>; illegal moves are invalid too
    action = valid ? action : random legal action  # what the env executes and the next prompt shows
    state, r = env.step(state, action)
    r_train = r + exploration bonus + invalid_penalty * (1 - valid)   # shaping reaches the loss only

When an episode ends (tic-tac-toe) the row's env auto-resets and its cache rewinds to the end of the prefix,
so every row keeps playing for ``num_steps`` steps. With a history window shorter than the horizon the oldest
line leaves the prompt each step, so the prompt is re-prefilled from the start instead.

An episode can also start from given env states (a step of a recorded trajectory, an expert's state, a task's
opening position): the prompt then holds that state's history, put in the cache before the first step, and each
row plays that one episode; its steps after the episode ends are inactive (no reset, no reward, no loss).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs_jax.yaml_config import ConfigError
from jaxagent import mechanisms
from jaxagent.env_kinds import kind_of
from jaxagent.model import cpu_kernels, sampler
from jaxagent.model.config import GemmaConfig
from jaxagent.model.kv_cache import KVCache, rewind
from jaxagent.model.sharding import BATCH, rows_per_device
from jaxagent.text.fragments import join
from jaxagent.text.relabel import random_relabelling, relabel_state, unrelabel_action


@struct.dataclass
class Trajectory:
    """Everything losses, metrics and EEF need; arrays are ``[B, T, ...]`` for ``T = num_steps``."""
    line_tokens: jax.Array  # [B, T, Lh] history line appended at this step (the previous step's), pad after
    line_lengths: jax.Array  # [B, T] 0 at an episode's first step
    tail_tokens: jax.Array  # [B, T, Lt]
    tail_lengths: jax.Array  # [B, T]
    tokens: jax.Array  # [B, T, G] generated tokens
    logprobs: jax.Array  # [B, T, G] behaviour log-probs of the generated tokens (0 past the length)
    lengths: jax.Array  # [B, T] generated length
    actions: jax.Array  # [B, T] executed action
    valid: jax.Array  # [B, T] the model's output named a legal action
    env_rewards: jax.Array  # [B, T]
    train_rewards: jax.Array  # [B, T] env reward + shaping
    first: jax.Array  # [B, T] this step starts an episode (its prompt has no history)
    active: jax.Array  # [B, T] the step belongs to an episode (False after a started row's episode ended)
    forced: jax.Array  # [B, T] an exploration mechanism wrote this turn (its logprobs are not the model's)
    done: jax.Array  # [B, T] the episode ended with this step
    expected_reward: jax.Array  # [B, T] (bandits; 0 elsewhere)
    best_expected_reward: jax.Array  # [B, T]
    states: Any  # env state before the step, [B, T, ...] — EEF restarts from these
    start_tokens: jax.Array  # [B, S0] a started row's history before its first step's line (S0 = 0 for resets)
    start_lengths: jax.Array  # [B]
    prefix_length: jax.Array  # [] shared prompt prefix length
    relabelling: Any = None  # [B, T, K] the arm labels each turn was shown (context randomisation), else None
    preamble: Any = None  # (tokens [B, T, W], lengths [B, T]): a self-correction turn's first answer and request
    final_states: Any = None  # [B, ...] env state after the last step (an unfinished episode's value bootstraps)


@dataclasses.dataclass(frozen=True)
class AgentLoop:
    """The static pieces of an episode: env, prompt renderer, action parser, model config, sampling settings."""
    env: Any
    renderer: Any
    parser: Any
    model_cfg: GemmaConfig
    num_steps: int
    max_new_tokens: int
    stop_tokens: tuple[int, ...]
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    invalid_penalty: float = -5.0  # added to the training reward of a turn with no valid action
    exploration_bonus: float = 0.0
    exploration: Any = None  # an experts.ExplorationOverride (try-all / ε-greedy), or None
    unroll_layers: bool = False  # see jaxagent.model.sampler.sample
    history_segments: int | None = None  # see _segments; None: 8 on CPU, 1 elsewhere
    inference: mechanisms.Inference = mechanisms.Inference()  # self-consistency, self-correction, relabelling

    @property
    def rewinds(self) -> bool:
        """True when the history only grows, so the cache can be rewound to the end of the history."""
        return self.renderer.window >= self.renderer.horizon and not self.inference.relabel

    @property
    def cache_len(self) -> int:
        r = self.renderer
        body = r.width  # the longest prompt
        return int(body + self.max_new_tokens + self._correction_width)

    @property
    def _correction_width(self) -> int:
        """Cache slots a self-correction turn adds: the first answer and the request after it."""
        if not self.inference.self_correction:
            return 0
        return mechanisms.correction_width(self.renderer.tokenizer, self.max_new_tokens)

    def __post_init__(self):
        if self.exploration is not None:
            _check_budget(self.exploration.width, self.max_new_tokens, "the exploration rationale")

    def legal_mask(self, state):
        """The state's legal moves, or None where every action is legal."""
        return state.legal_mask if kind_of(self.env).games else None

    def random_legal_action(self, key, state):
        mask = self.legal_mask(state)
        if mask is None:
            return jax.random.randint(key, (), 0, self.env.num_actions)
        return jax.random.categorical(key, jnp.where(mask, 0.0, -jnp.inf))

    def _env_step(self, key, state, generated, length, env_params, labels=None, auto_reset: bool = True):
        """Parse, replace invalid outputs by a random legal action, step (auto-resetting), shape the reward.
        ``labels``: the turn's arm -> label mapping (context randomisation), or None."""
        k_random, k_step, k_reset = jax.random.split(key, 3)
        action, valid = self.parser.parse(generated, length, self.legal_mask(state))
        if labels is not None:
            action = unrelabel_action(labels, action)
        executed = jnp.where(valid, action, self.random_legal_action(k_random, state))
        _, next_state, reward, terminated, truncated, info = self.env.step(k_step, state, executed, env_params)
        done = terminated | truncated
        if auto_reset:
            _, fresh = self.env.reset(k_reset, env_params)
            next_state = jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, next_state)
        bonus = 0.0
        if self.exploration_bonus and kind_of(self.env).arms:
            bonus = self.exploration_bonus * (state.counts[executed] == 0)
        train_reward = reward + bonus + self.invalid_penalty * (1.0 - valid)
        expected = info.get("expected_reward", jnp.float32(0))
        best = info.get("best_expected_reward", jnp.float32(0))
        return next_state, (executed, valid, reward, train_reward, done, expected, best)

    def _prompt_pieces(self, state, env_params):
        r = self.renderer
        first = state.t == 0
        line, line_len = r.history_line(state, env_params, jnp.maximum(state.t - 1, 0))
        line_len = jnp.where(first, 0, line_len)
        tail, tail_len = r.tail(state, env_params)
        return first, (line, line_len), (tail, tail_len)

    def _segments(self) -> list[tuple[int, int, int | None]]:
        """``(first step, end step, history_len)`` parts of the episode. With a growing history, a part's steps
        decode over only the cache slots its longest history can fill (a static bound, so each part is compiled
        once). A 50-step bandit episode then reads 7% more slots than its histories hold over eight parts, against
        15% over four and 64% over one; each part adds to the compile time. That pays on CPU, where decoding
        reads the cache slot by slot; on an H200 the one-part episode measured 7-11% faster."""
        if not self.rewinds:
            return [(0, self.num_steps, None)]
        r = self.renderer
        parts = self.history_segments or (cpu_kernels.HISTORY_SEGMENTS if cpu_kernels.active(self.model_cfg) else 1)
        bounds = np.linspace(0, self.num_steps, min(parts, self.num_steps) + 1).astype(int)
        return [(int(a), int(b), r.prefix[1] + (int(b) - 1) * r.line_width + r.tail_width)
                for a, b in zip(bounds[:-1], bounds[1:])]

    def start_history(self, state, env_params) -> tuple[jax.Array, jax.Array]:
        """A started row's history before its first step's line: lines ``0 … t−2`` of ``state`` (none for a fresh
        episode, or with a history window, whose prompts are rendered whole at every step)."""
        if not self.rewinds:
            return jnp.zeros((0,), jnp.int32), jnp.int32(0)
        return self.renderer.history(state, env_params, state.t - 1)

    def _play(self, env_params, key, generate, extra, segments, start=None, env_keys=None):
        """The episode scan shared by the model and the experts: ``generate(extra, key, state, first, line,
        tail, history_len) -> (extra, tokens[B, G], logprobs[B, G], lengths[B], preamble)`` writes each step's output
        (``preamble``: what the turn's context holds between the prompt and the output, or None);
        ``history_len`` bounds every row's cache end at that step (static), per ``segments`` (see ``_segments``).
        ``start``: the rows' first env states (one episode each) instead of a reset. ``env_keys`` ``[B, T]``: each
        row's key for each env step (parse fallback, step, reset) instead of keys drawn from ``key``."""
        B = jax.tree.leaves(env_params)[0].shape[0]
        k_reset, k_steps = jax.random.split(key)
        if start is None:
            _, state = jax.vmap(self.env.reset)(jax.random.split(k_reset, B), env_params)
            start_tokens, start_lengths = jnp.zeros((B, 0), jnp.int32), jnp.zeros((B,), jnp.int32)
        else:
            state = start
            start_tokens, start_lengths = jax.vmap(self.start_history)(start, env_params)
        env_step = functools.partial(self._env_step, auto_reset=start is None)

        def step(history_len, carry, keys):
            state, live, extra = carry
            key, row_keys = keys
            k_gen, k_env = jax.random.split(key)
            if row_keys is None:
                row_keys = jax.random.split(k_env, B)
            shown, labels = state, None
            if self.inference.relabel:  # the turn sees the arms under fresh labels
                k_gen, k_labels = jax.random.split(k_gen)
                labels = jax.vmap(random_relabelling, (0, None))(jax.random.split(k_labels, B), self.env.num_actions)
                shown = jax.vmap(relabel_state)(state, labels)
            first, line, tail = jax.vmap(self._prompt_pieces)(shown, env_params)
            line = (line[0], jnp.where(live, line[1], 0))  # an ended episode's prompt gains no line
            extra, gen, logp, gen_len, preamble = generate(extra, k_gen, shown, first, line, tail, history_len)
            forced = jnp.zeros((B,), bool)
            if self.exploration is not None:
                forced, (tokens, lengths) = jax.vmap(self.exploration)(jax.random.split(k_gen, B), shown)
                tokens = _fit(tokens, gen.shape[1], self.renderer.pad_id)
                gen = jnp.where(forced[:, None], tokens, gen)
                gen_len = jnp.where(forced, lengths, gen_len)
                logp = jnp.where(forced[:, None], 0.0, logp)
            next_state, outs = jax.vmap(env_step)(row_keys, state, gen, gen_len, env_params, labels)
            executed, valid, reward, train_reward, done, expected, best = outs
            reward, train_reward, done = reward * live, train_reward * live, done & live
            expected, best = expected * live, best * live  # no regret after a started row's episode
            record = (line[0], line[1], tail[0], tail[1], gen, logp, gen_len, executed, valid, reward, train_reward,
                      first, live, forced, done, expected, best, state, labels, preamble)
            next_live = live if start is None else live & ~done
            return (next_state, next_live, extra), record

        carry, parts = (state, jnp.ones((B,), bool), extra), []
        keys = jax.random.split(k_steps, self.num_steps)
        row_keys = None if env_keys is None else jnp.swapaxes(env_keys, 0, 1)
        for first_step, end_step, history_len in segments:
            part = (keys[first_step:end_step], None if row_keys is None else row_keys[first_step:end_step])
            carry, records = jax.lax.scan(functools.partial(step, history_len), carry, part)
            parts.append(records)
        records = jax.tree.map(lambda *xs: jnp.swapaxes(jnp.concatenate(xs), 0, 1), *parts)  # batch-major
        *records, relabelling, preamble = records
        return Trajectory(*records, start_tokens=start_tokens, start_lengths=start_lengths,
                          prefix_length=jnp.int32(self.renderer.prefix[1]), relabelling=relabelling,
                          preamble=preamble, final_states=carry[0])

    def rollout(self, model_params, env_params, key, start=None, env_keys=None) -> Trajectory:
        """Play ``num_steps`` steps with the model in each of the ``B`` env instances of ``env_params``, from a
        reset or, with ``start`` (env states batched like ``env_params``), from those states, one episode each;
        ``env_keys`` as in ``_play``."""
        r, cfg = self.renderer, self.model_cfg
        B = jax.tree.leaves(env_params)[0].shape[0]
        model_params = cfg.compute_params(model_params)
        if self.unroll_layers:
            model_params = sampler.unrolled(model_params)
        prefix_tokens, prefix_len = r.prefix
        # Every episode starts with the same prefix: computed once, its keys/values are copied into every row,
        # and (while the history only grows) attention reads them from one row for all rows.
        cache, _ = sampler.prefill(model_params, cfg, prefix_tokens[None], jnp.full((1,), prefix_len), self.cache_len)
        cache = KVCache(jnp.repeat(cache.k, B, 1), jnp.repeat(cache.v, B, 1), jnp.repeat(cache.end, B))
        shared = prefix_len if self.rewinds else 0
        end_of_history = jnp.full((B,), prefix_len, jnp.int32)
        segments = self._segments()
        if start is not None and self.rewinds:
            # A started row's earlier history goes into its cache now; its histories then outgrow the bounds of
            # the segments, which count from an empty history, so the episode decodes over the whole cache.
            history, history_len = jax.vmap(self.start_history)(start, env_params)
            cache, _ = sampler.append(model_params, cfg, cache, history, history_len, None, self.unroll_layers,
                                      shared)
            end_of_history = end_of_history + history_len
            segments = [(0, self.num_steps, None)]

        def generate(extra, key, state, first, line, tail, history_len):
            cache, end_of_history = extra
            if self.rewinds:
                start = jnp.where(first, prefix_len, end_of_history)
                new, new_len = jax.vmap(lambda l, ll, t, tl: join([(l, ll), (t, tl)], r.pad_id))(*line, *tail)
                cache = rewind(cache, start)
                end_of_history = start + line[1]
            else:
                new, new_len = jax.vmap(r.render)(state, env_params)
                cache = rewind(cache, jnp.zeros((B,), jnp.int32))
            # The history before this step's append is at most as long as the bound after it.
            cache, logits = sampler.append(model_params, cfg, cache, new, new_len, history_len, self.unroll_layers,
                                           shared)
            decode = functools.partial(sampler.sample, model_params, cfg, max_new_tokens=self.max_new_tokens,
                                       temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                                       stop_tokens=self.stop_tokens, unroll_layers=self.unroll_layers,
                                       shared_prefix=shared)
            inference, preamble = self.inference, None
            if inference.votes > 1:  # the cache is rewound past the answers next step: keep it as appended
                k_samples, k_vote = jax.random.split(key)
                gens, logps, lengths = jax.lax.map(lambda k: decode(cache, logits, k, history_len=history_len)[1:],
                                                   jax.random.split(k_samples, inference.votes))
                legal = self.legal_mask(state)
                parse = jax.vmap(self.parser.parse)
                actions, valid = jax.vmap(lambda g, n: parse(g, n) if legal is None else parse(g, n, legal))(
                    gens, lengths)
                pick = mechanisms.chosen_sample(k_vote, actions, valid, self.env.num_actions, inference.vote)
                gen, logp, gen_len = (x[pick, jnp.arange(B)] for x in (gens, logps, lengths))
            elif inference.self_correction:
                k_first, key = jax.random.split(key)
                cache, first_answer, _, first_length = decode(cache, logits, k_first, history_len=history_len)
                request, request_len = mechanisms.correction_turn(r.tokenizer, first_answer, first_length)
                bound = None if history_len is None else history_len + self._correction_width
                cache, logits = sampler.append(model_params, cfg, cache, request, request_len, bound,
                                               self.unroll_layers, shared)
                cache, gen, logp, gen_len = decode(cache, logits, key, history_len=bound)
                preamble = mechanisms.joined(first_answer, first_length, request, request_len, r.pad_id)
            else:
                cache, gen, logp, gen_len = decode(cache, logits, key, history_len=history_len)
            return (cache, end_of_history), gen, logp, gen_len, preamble

        return self._play(env_params, key, generate, (cache, end_of_history), segments, start, env_keys)

    def rollout_per_device(self, mesh) -> Callable:
        """``rollout`` jitted as independent episodes on each device of ``mesh``'s batch axes (see
        :func:`jaxagent.model.sharding.rows_per_device`): model parameters replicated, env instances split,
        device ``i`` sampling with ``fold_in(key, i)``. The same call signature as ``rollout``."""
        def local(model_params, env_params, key, start=None):
            key = jax.random.fold_in(key, jax.lax.axis_index(BATCH))
            return self.rollout(model_params, env_params, key, start)
        return rows_per_device(local, mesh, (False, True, False, True))

    def rollout_on(self, mesh) -> Callable:
        """``rollout`` for a mesh: :meth:`rollout_per_device` (jitted) where the mesh only splits rows
        (parameters replicated over several devices), else ``rollout`` itself, for the caller to jit (``jit`` then
        partitions it)."""
        if mesh.size > 1 and mesh.shape["fsdp"] * mesh.shape["tensor"] == 1:
            return self.rollout_per_device(mesh)
        return self.rollout

    def expert_rollout(self, expert, env_params, key, start=None, env_keys=None) -> Trajectory:
        """Play with an :class:`jaxagent.experts.Expert`; its reasoning tokens stand where the model's would.
        ``start`` and ``env_keys`` as in :meth:`rollout`."""
        _check_budget(expert.width, self.max_new_tokens, "expert reasoning")
        B = jax.tree.leaves(env_params)[0].shape[0]
        G, pad = self.max_new_tokens, self.renderer.pad_id

        def generate(extra, key, state, first, line, tail, history_len):
            _, (tokens, lengths) = jax.vmap(expert.act)(jax.random.split(key, B), state, env_params)
            tokens = _fit(tokens, G, pad)
            return extra, tokens, jnp.zeros(tokens.shape, jnp.float32), lengths, None

        return self._play(env_params, key, generate, (), [(0, self.num_steps, None)], start, env_keys)

    def replay(self, env_params, start, tokens, lengths, env_keys) -> Trajectory:
        """The episodes whose turns were ``tokens [B, T, G]`` / ``lengths [B, T]`` (a recorded expert's text, pad
        after), from ``start`` with the recorded ``env_keys [B, T]``: parsed and stepped as a played turn is."""
        def generate(step, key, state, first, line, tail, history_len):
            turn = tokens[:, step]
            return step + 1, turn, jnp.zeros(turn.shape, jnp.float32), lengths[:, step], None

        return self._play(env_params, jax.random.key(0), generate, jnp.int32(0), [(0, self.num_steps, None)], start,
                          env_keys)

    def jitted(self) -> Callable:
        return jax.jit(self.rollout)


def _check_budget(width: int, budget: int, what: str) -> None:
    if width > budget:
        raise ConfigError(f"config key 'rollout.max_new_tokens': {what} needs up to {width} tokens, over the "
                          f"generation budget of {budget}")


def _fit(tokens, width: int, pad_id: int):
    """Pad ``tokens [B, w]`` (w <= width, checked at set-up) to ``[B, width]``."""
    return jnp.pad(tokens, ((0, 0), (0, width - tokens.shape[1])), constant_values=pad_id)
