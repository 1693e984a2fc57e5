"""Multi-armed bandit prompts (BanditBench wording): button (colour) or numeric arm labels.

History line: ``Step=3 Action=green Reward=-0.35``. Optional summary in the tail, one line per arm:
``green: count=2, average reward=0.41`` (``n/a`` before the arm's first pull).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxagent.text import numbers
from jaxagent.text.fragments import Table, constant
from jaxagent.text.render import HISTORY_HEADER, QUESTION, PromptOptions, Renderer, output_instruction
from jaxagent.text.states import random_bandit
from jaxagent.text.tokenizer import TextError, TextTokenizer, model_turn_open, user_turn_open

BUTTON_COLOURS = ("blue", "green", "red", "yellow", "orange", "purple", "pink", "brown", "black", "white",
                  "gray", "cyan", "magenta", "maroon", "olive", "lime", "teal", "navy", "indigo", "violet")
SUMMARY_HEADER = "Summary so far:\n"
UNTRIED = "n/a"


def arm_labels(kind: str, num_arms: int) -> tuple[str, ...]:
    if kind == "numeric":
        return tuple(str(i) for i in range(num_arms))
    if kind != "button":
        raise TextError(f"arm labels {kind!r}: expected 'button' or 'numeric'")
    if num_arms > len(BUTTON_COLOURS):
        raise TextError(f"button labels name at most {len(BUTTON_COLOURS)} arms, got {num_arms}")
    return BUTTON_COLOURS[:num_arms]


def scenario(kind: str, labels, horizon: int, distribution: str) -> str:
    names = ", ".join(labels)
    noun, verb = ("button", "press") if kind == "button" else ("arm", "pull")
    opening = (f"You are a bandit algorithm in a room with {len(labels)} buttons labeled {names}."
               if kind == "button" else
               f"You are a bandit algorithm and interact with {len(labels)} arms labeled {names}.")
    return (f"{opening} Each {noun} is associated with a {distribution} distribution with a fixed but unknown "
            f"mean; the means for the {noun}s could be different. For each {noun}, when you {verb} it, you will "
            f"get a reward that is sampled from the {noun}'s associated distribution. You have {horizon} time "
            f"steps and, on each time step, you MUST choose one of the {noun}s and receive the reward. Your goal "
            f"is to maximize the total reward over the {horizon} time steps.")


class BanditRenderer(Renderer):
    template = "bandit"

    def __init__(self, num_arms: int, horizon: int, tokenizer: TextTokenizer, options: PromptOptions = PromptOptions(),
                 labels: tuple[str, ...] | None = None):
        super().__init__(tokenizer, horizon, options)
        self.num_arms = int(num_arms)
        self.labels = labels if labels is not None else arm_labels(options.labels, self.num_arms)
        values = numbers.all_values()
        self.step_table = Table(tokenizer, [f"Step={t}" for t in range(self.horizon)], "step")
        self.action_table = Table(tokenizer, [f" Action={a}" for a in self.labels], "action")
        self.reward_table = Table(tokenizer, [f" Reward={v}\n" for v in values], "reward")
        if options.summary:
            self.summary_header = constant(tokenizer, SUMMARY_HEADER, "summary header")
            self.arm_table = Table(tokenizer, [f"{a}:" for a in self.labels], "summary arm")
            self.count_table = Table(tokenizer, [f" count={n}," for n in range(self.horizon + 1)], "summary count")
            self.mean_table = Table(tokenizer, [f" average reward={v}\n" for v in values + [UNTRIED]], "summary mean")
        self.question = constant(tokenizer, QUESTION + model_turn_open(), "question")
        self._finish_setup()

    def prefix_text(self) -> str:
        choices = "buttons listed above" if self.options.labels == "button" else "arms listed above"
        instruction = output_instruction(self.options.cot, choices, self.options.ucb_values)
        return (user_turn_open() + scenario(self.options.labels, self.labels, self.horizon, self.options.distribution)
                + "\n" + instruction + "\n" + HISTORY_HEADER)

    # host
    def history_line_text(self, state, params, t: int) -> str:
        label = self.labels[int(state.actions[t])]
        return f"Step={t} Action={label} Reward={numbers.format_value(state.rewards[t])}\n"

    def summary_text(self, counts, reward_sums) -> str:
        lines = [SUMMARY_HEADER]
        for a, label in enumerate(self.labels):
            n = int(counts[a])
            mean = numbers.format_value(np.float32(reward_sums[a]) / np.float32(n)) if n else UNTRIED
            lines.append(f"{label}: count={n}, average reward={mean}\n")
        return "".join(lines)

    def tail_text(self, state, params) -> str:
        summary = self.summary_text(state.counts, state.reward_sums) if self.options.summary else ""
        return summary + QUESTION + model_turn_open()

    # jit
    def _line_pieces(self, state, params, t):
        return [self.step_table(t), self.action_table(state.actions[t]),
                self.reward_table(numbers.value_index(state.rewards[t]))]

    def summary_pieces(self, counts, reward_sums):
        pieces = [self.summary_header(0)]
        n = jnp.asarray(counts, jnp.int32)
        means = jnp.asarray(reward_sums, jnp.float32) / jnp.maximum(n, 1).astype(jnp.float32)
        mean_index = jnp.where(n > 0, numbers.value_index(means), numbers.NUM_HUNDREDTHS)
        for a in range(self.num_arms):
            pieces += [self.arm_table(a), self.count_table(n[a]), self.mean_table(mean_index[a])]
        return pieces

    def _tail_pieces(self, state, params):
        summary = self.summary_pieces(state.counts, state.reward_sums) if self.options.summary else []
        return summary + [self.question(0)]

    def sample(self, rng, n):
        return random_bandit(rng, n, self.num_arms, self.horizon)
