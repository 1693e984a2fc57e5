"""The RLFT paper's analyses: frequency bias and the knowing-doing gap, on scripted policies whose answers are known,
then through the command line on the shipped base model."""
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs_jax
from jaxagent import metrics
from jaxagent.analyses import frequency_bias, knowing_doing
from jaxagent.text.parse import parse_ucb_values

LABELS = ("blue", "green", "red", "yellow")
REPETITIONS = (0, 3, 10, 50, 100)


def _ucb_by_hand(actions, rewards, arms):
    """UCB written apart from the code under test: mean + sqrt(1/n) per arm, None for an untried arm."""
    counts, sums = [0] * arms, [0.0] * arms
    for a, r in zip(actions, rewards):
        counts[a] += 1
        sums[a] += float(r)
    return [sums[a] / counts[a] + math.sqrt(1.0 / counts[a]) if counts[a] else None for a in range(arms)]


@pytest.fixture(scope="module")
def contexts():
    env = envs_jax.make_env("bandit-gaussian", num_arms=4, horizon=10 + max(REPETITIONS))
    return frequency_bias.build_contexts(env, jax.random.key(3), 6, (2, 10), REPETITIONS)


def test_frequency_contexts_repeat_one_arm_that_never_is_the_greedy_one(contexts):
    s = contexts.states
    assert len(contexts.repetitions) == 6 * len(REPETITIONS)
    for i in range(len(contexts.repetitions)):
        t, r = int(s.t[i]), int(contexts.repetitions[i])
        actions, rewards = np.asarray(s.actions[i, :t]), np.asarray(s.rewards[i, :t])
        assert 2 <= t - r <= 10 and np.all(np.asarray(s.actions[i, t:]) == -1)
        assert np.all(actions[t - r:] == actions[-1]) if r else True
        counts = np.bincount(actions, minlength=4)
        np.testing.assert_array_equal(counts, s.counts[i])
        means = [rewards[actions == a].mean() if counts[a] else -np.inf for a in range(4)]
        assert contexts.greedy[i] == int(np.argmax(means))
        assert counts[contexts.frequent[i]] == counts.max()
        if r:
            assert contexts.frequent[i] == actions[-1] != contexts.greedy[i]


@pytest.mark.parametrize("picks", ["frequent", "greedy"])
def test_a_policy_that_always_picks_one_kind_scores_one_on_that_fraction(contexts, picks):
    s = contexts.states
    choice = []
    for i in range(len(contexts.repetitions)):  # the test's own most-pulled (last-repeated on ties) / best-mean arm
        t = int(s.t[i])
        actions, rewards = np.asarray(s.actions[i, :t]), np.asarray(s.rewards[i, :t])
        counts = np.bincount(actions, minlength=4)
        if picks == "frequent":
            top = np.flatnonzero(counts == counts.max())
            choice.append(actions[-1] if contexts.repetitions[i] and actions[-1] in top else top[0])
        else:
            choice.append(max((a for a in range(4) if counts[a]), key=lambda a: rewards[actions == a].mean()))
    probs = np.eye(4)[choice]
    summary = frequency_bias.summarise(contexts, probs, np.ones(len(choice), bool))
    repeated = ("45-55", "90-100")
    for bucket in repeated:
        assert summary["buckets"][bucket][picks]["mean"] == 1.0
        assert summary["buckets"][bucket]["entropy"]["mean"] == 0.0


def test_entropy_falls_as_a_policy_follows_repetitions(contexts):
    """A policy that puts weight r / (r + 3) on the most frequent arm and spreads the rest over the other three:
    log 3 nats without repetitions, falling with r."""
    r = contexts.repetitions.astype(float)
    share = r / (r + 3.0)
    probs = np.where(np.eye(4)[contexts.frequent] > 0, share[:, None], ((1 - share) / 3)[:, None])
    summary = frequency_bias.summarise(contexts, probs, np.ones(len(r), bool))
    assert summary["entropy_repetition_correlation"] < -0.5
    np.testing.assert_allclose(summary["by_repetition"][0]["entropy"]["mean"], math.log(3), rtol=1e-5)


def test_ucb_values_parse_from_tags_from_rationale_lines_and_never_from_noise():
    assert np.array_equal(parse_ucb_values("<ucb_values>blue: 1.5, green: -0.25\nred: 3\nyellow: untried"
                                           "</ucb_values> ACTION=red", LABELS), [1.5, -0.25, 3, np.inf])
    rationale = ("Counts and average rewards so far:\nblue: count=2, average reward=0.41, UCB = 0.41 + sqrt(1/2) "
                 "= 1.12\ngreen: count=0, not tried yet\nWe select ACTION=blue")
    np.testing.assert_array_equal(parse_ucb_values(rationale, LABELS), np.float32([1.12, np.inf, np.nan, np.nan]))
    rng = np.random.default_rng(0)
    alphabet = list("blue:green=0.5 \n<ucb_values>/ACTION") + ["red", "yellow", "1.2"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet, size=rng.integers(0, 80)))
        values = parse_ucb_values(text, LABELS)
        assert values.shape == (4,) and values.dtype == np.float32


def _scripted_episodes(rng, rule, episodes=5, steps=12, arms=4):
    """Histories, texts and actions of a scripted policy writing the tagged UCB values (the test's own UCB)."""
    actions, rewards, texts = np.zeros((episodes, steps), np.int32), np.zeros((episodes, steps)), []
    means = rng.normal(size=(episodes, arms))
    for b in range(episodes):
        for t in range(steps):
            ucb = _ucb_by_hand(actions[b, :t], rewards[b, :t], arms)
            lines = [f"{LABELS[a]}: {'untried' if u is None else f'{u:.2f}'}" for a, u in enumerate(ucb)]
            texts.append("<ucb_values>" + "\n".join(lines) + "</ucb_values>")
            untried = [a for a in range(arms) if ucb[a] is None]
            if rule == "ucb":
                a = untried[0] if untried else int(np.argmax(ucb))
            else:  # exploit: the best tried arm while others are untried
                tried = [a for a in range(arms) if ucb[a] is not None]
                a = max(tried, key=lambda i: ucb[i]) if tried else 0
            actions[b, t], rewards[b, t] = a, means[b, a] + 0.3 * rng.normal()
    onehot = (actions[..., None] == np.arange(arms))
    before = np.cumsum(onehot, axis=1) - onehot
    sums = np.cumsum(onehot * rewards[..., None], axis=1) - onehot * rewards[..., None]
    stated = np.stack([parse_ucb_values(text, LABELS) for text in texts]).reshape(episodes, steps, arms)
    return stated, before, sums.astype(np.float32), actions


def test_a_policy_that_computes_ucb_exactly_knows_and_does_the_optimal_action():
    stated, counts, sums, actions = _scripted_episodes(np.random.default_rng(1), "ucb")
    out = knowing_doing.table(stated, counts, sums, actions)
    assert out["parse_rate"] == 1.0 and out["knowing_when_parsed"] == 1.0
    assert out["table"]["correct/optimal"]["mean"] == pytest.approx(1.0)
    assert out["doing"] == {"optimal": 1.0, "greedy": 0.0, "other": 0.0}


def test_a_policy_that_knows_but_exploits_early_is_counted_greedy():
    stated, counts, sums, actions = _scripted_episodes(np.random.default_rng(2), "exploit")
    out = knowing_doing.table(stated, counts, sums, actions)
    assert out["knowing_when_parsed"] == 1.0 and out["doing"]["greedy"] > 0.5
    cells = sum(cell["mean"] for cell in out["table"].values())
    assert cells == pytest.approx(1.0, abs=1e-6)


def test_knowing_doing_metric_on_a_hand_made_step():
    counts, sums = jnp.array([2, 1, 0]), jnp.array([1.0, 0.8, 0.0])  # UCB: 1.207, 1.8, untried
    parsed, knows, doing = metrics.knowing_doing(jnp.array([1.2, 1.8, jnp.inf]), counts, sums, jnp.array(1))
    assert bool(parsed) and bool(knows) and int(doing) == 1  # knows the untried arm is best, exploits arm 1
    parsed, knows, doing = metrics.knowing_doing(jnp.array([1.2, jnp.nan, jnp.inf]), counts, sums, jnp.array(2))
    assert not bool(parsed) and not bool(knows) and int(doing) == 0


def test_both_analyses_run_from_the_command_line_on_the_shipped_base(tmp_path):
    """The shipped greedy base never writes UCB values (parse rate 0) and, sampled, answers every context."""
    from jaxagent.trainers import eval_from_config
    root = Path(__file__).parents[1]
    args = ["checkpoint=shipped:nano-greedy-base", f"run.output_dir={tmp_path}",
            "run.name=a", "env.options={num_arms: 5, sigma: 0.1, mean_std: 1.0, horizon: 6}",
            "analysis.histories=2", "analysis.repetitions=[0, 12]", "analysis.prefix_steps=[2, 4]",
            "analysis.samples=2", "analysis.batch=4", "eval.num_episodes=4", "rollout.history_segments=1"]
    config = str(root / "configs" / "quickstart.yaml")
    bias = eval_from_config(config, args + ["analysis=frequency-bias"])
    assert bias["method"] == "sample" and bias["answered"] == 1.0
    for row in bias["by_repetition"].values():
        assert sum(row[k]["mean"] for k in frequency_bias.FRACTIONS) == pytest.approx(1.0, abs=1e-5)
    gap = eval_from_config(config, args + ["analysis=knowing-doing"])
    assert gap["parse_rate"] == 0.0 and sum(gap["doing"].values()) == pytest.approx(1.0)
    directory = tmp_path / "a" / "analyses"
    assert json.loads((directory / "knowing_doing.json").read_text()) == gap
    assert (directory / "frequency_bias.png").stat().st_size > 0 and (directory / "knowing_doing.png").is_file()
