"""The env-kind table: every registered env has an entry, and the success predicates EEF/RFT rely on."""
import numpy as np
import pytest

import envs_jax
from jaxagent import metrics
from jaxagent.env_kinds import KINDS, kind_of
from jaxagent.experts import Expert, PolicyExpert
from jaxagent.text import shipped_tokenizer

OPTIONS = {"contextual-movielens": {"synthetic_users": 20, "num_users": 4}}


@pytest.mark.parametrize("name", envs_jax.registered_envs())
def test_every_registered_env_has_a_kind_entry_whose_experts_play_it(name):
    env = envs_jax.make_env(name, **OPTIONS.get(name, {}))
    kind = kind_of(env)
    assert kind is KINDS[env.kind] and kind.successes
    labels = tuple(str(i) for i in range(env.num_actions))
    for expert in kind.experts:
        made = kind.expert(env, shipped_tokenizer(), labels, expert)
        assert isinstance(made, PolicyExpert if expert in ("minimax", "linucb") else Expert)


def test_first_game_outcomes_count_only_the_first_game_of_a_row():
    # row 0: a win at step 1, then a loss; row 1: a loss at step 0, then a win; row 2: a draw; row 3: unfinished
    rewards = np.array([[0, 1, -1], [-1, 0, 1], [0, 0, 0], [0, 0, 0]], np.float32)
    dones = np.array([[0, 1, 1], [1, 0, 1], [0, 0, 1], [0, 0, 0]], bool)
    finished, total = metrics.first_episode_return(rewards, dones)
    assert np.asarray(finished).tolist() == [True, True, True, False]
    assert np.asarray(total).tolist() == [1.0, -1.0, 0.0, 0.0]
    assert np.asarray(metrics.won_first_game(rewards, dones)).tolist() == [True, False, False, False]
    assert np.asarray(metrics.did_not_lose_first_game(rewards, dones)).tolist() == [True, False, True, False]


def test_regret_below_reads_the_final_cumulative_regret():
    best = np.ones((2, 4), np.float32)
    expected = np.array([[0.0, 1.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5]], np.float32)  # regret 1.0 and 2.0
    assert np.asarray(metrics.regret_below(expected, best, 1.5)).tolist() == [True, False]
