"""What jaxagent does differently for each kind of env, in one table looked up through ``env.kind``.

An entry gives the kind's prompt template, its experts (with rationales) for cloning, the reference players a
report shows, whether its episodes are games (win / draw / loss, legal moves) or bandits (arms that exploration
mechanisms act on), and its success predicates. Code asks the table, never the env's name.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from jaxagent import metrics
from jaxagent.experts import REASONS, Expert, PolicyExpert
from jaxagent.text import (BanditRenderer, ContextualRenderer, PromptOptions, TextError, TicTacToeRenderer,
                           needs_self_check)


@dataclasses.dataclass(frozen=True)
class EnvKind:
    renderer: Callable[..., Any]  # (env, tokenizer, options, params) -> the prompt renderer
    experts: tuple[str, ...]      # the experts ``sft.expert`` may name
    games: bool                   # episodes end in a win, a draw or a loss; states carry ``legal_mask`` (else: a
                                  # bandit, whose per-arm counts exploration mechanisms and greediness read)
    baselines: Mapping[str, str]  # report name -> expert, played with the kind's report settings
    successes: Mapping[str, Callable[..., Any]]  # name -> success(traj, threshold) -> bool [B]

    @property
    def arms(self) -> bool:
        return not self.games

    def expert(self, env, tokenizer, labels, name: str, reasoning: bool = True, stats: bool = True,
               blunder: float = 0.0):
        """The expert ``name`` (one of ``experts`` or ``baselines``' values) writing ``rationale + ACTION=X``
        (``reasoning``) or the action alone; ``blunder``: its chance of a random action per turn."""
        if name in REASONS:
            return PolicyExpert(name, env, tokenizer, labels, reasoning, blunder=blunder)
        return Expert(name, tokenizer, labels, env.horizon, stats=stats, reasoning=reasoning, blunder=blunder)

    def baseline_experts(self, env, tokenizer, labels) -> dict:
        """The reference players of reports: bandit experts with their rationale, minimax with the action alone."""
        return {report: self.expert(env, tokenizer, labels, name, reasoning=self.arms, stats=False)
                for report, name in self.baselines.items()}


def _bandit_renderer(env, tokenizer, options, params):
    options = dataclasses.replace(options, distribution=env.reward_distribution)
    return BanditRenderer(env.num_arms, env.horizon, tokenizer, options)


def _contextual_renderer(env, tokenizer, options, params):
    pref_dim = getattr(env, "feature_dim", None) or (None if params is None else params.user_prefs.shape[-1])
    if pref_dim is None:
        raise TextError(f"env {env.name!r}: the contextual template needs the env params (preference length)")
    return ContextualRenderer(env.movie_titles, env.occupations, env.locations, int(pref_dim), env.horizon,
                              tokenizer, options)


def _tictactoe_renderer(env, tokenizer, options, params):
    return TicTacToeRenderer(tokenizer, options, horizon=env.horizon)


_REGRET = {"regret_below": lambda traj, threshold: metrics.regret_below(traj.expected_reward,
                                                                         traj.best_expected_reward, threshold)}
_BANDIT_BASELINES = {"random": "random", "ucb": "ucb", "greedy_expert": "greedy"}

KINDS: dict[str, EnvKind] = {
    "bandit": EnvKind(_bandit_renderer, experts=("ucb", "greedy"), games=False, baselines=_BANDIT_BASELINES,
                      successes=_REGRET),
    "contextual_bandit": EnvKind(_contextual_renderer, experts=("ucb", "greedy", "linucb"), games=False,
                                 baselines={**_BANDIT_BASELINES, "linucb": "linucb"}, successes=_REGRET),
    "game": EnvKind(_tictactoe_renderer, experts=("minimax",), games=True, baselines={"minimax": "minimax"},
                    successes={"win": lambda traj, threshold=None: metrics.won_first_game(traj.env_rewards, traj.done),
                               "not_lose": lambda traj, threshold=None: metrics.did_not_lose_first_game(
                                   traj.env_rewards, traj.done)}),
}


def kind_of(env) -> EnvKind:
    kind = getattr(env, "kind", None)  # anything env-like may arrive here; say what it lacks
    if kind not in KINDS:
        raise TextError(f"env {getattr(env, 'name', env)!r} has kind {kind!r}, which has no prompt template "
                        f"(kinds: {', '.join(KINDS)})")
    return KINDS[kind]


def make_renderer(env, tokenizer, options: PromptOptions = PromptOptions(), params=None, check: bool = True):
    """The prompt renderer of ``env``'s kind. ``params`` (the env's default params) gives the contextual
    preference-vector length when the env has no ``feature_dim``. A tokenizer other than the shipped one is
    self-checked: set-up fails with a :class:`TextError` if it is not token-exact."""
    renderer = kind_of(env).renderer(env, tokenizer, options, params)
    if check and needs_self_check(tokenizer):
        renderer.self_check()
    return renderer
