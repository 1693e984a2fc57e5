"""The RLFT paper's inference-time mechanisms that change how a turn is decoded (try-all and ε-greedy, which take
turns over, are :class:`jaxagent.experts.ExplorationOverride`):

- self-consistency: ``votes`` answers are sampled for the same prompt and parsed; the turn plays the majority
  action (ties: the lowest action index), or with ``vote="sample"`` an action drawn from the vote shares, and its
  text is the first sample that named it (the first sample where none is valid);
- self-correction: after the first answer a user turn asks the model to check it, and a second answer follows in
  the same context; the second is the turn's text and action (and what RLFT trains on, the first answer and the
  request kept as its context);
- context randomisation: every turn sees the arms under a fresh random label mapping (the history rewritten
  accordingly, :mod:`jaxagent.text.relabel`), and the label it names is mapped back to the arm.
They act where :class:`jaxagent.rollout.AgentLoop` is given them: the evaluation (``eval.*`` in a config) and RLFT's
rollouts (``rollout.*``).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxagent.text.tokenizer import END_OF_TURN, START_OF_TURN

CORRECTION = (f"\n{START_OF_TURN}user\nCheck your reasoning and your answer for mistakes, correct them if there are "
              f"any, and give your final answer in the format ACTION=X.{END_OF_TURN}\n{START_OF_TURN}model\n")


@dataclasses.dataclass(frozen=True)
class Inference:
    votes: int = 1                 # self-consistency: answers sampled per turn (1: off)
    vote: str = "majority"         # "majority", or "sample" from the vote shares
    self_correction: bool = False
    relabel: bool = False          # context randomisation


def correction_width(tokenizer, max_new_tokens: int) -> int:
    """Tokens a self-correction turn holds before its answer: the first answer, its end of turn, the request."""
    return max_new_tokens + 1 + len(tokenizer.encode(CORRECTION))


def chosen_sample(key, actions, valid, num_actions: int, vote: str):
    """Per row, the index of the sample the vote picks from ``actions``/``valid`` ``[V, B]``."""
    shares = jnp.sum(jax.nn.one_hot(actions, num_actions) * valid[..., None], axis=0)  # [B, A]
    if vote == "sample":
        winner = jax.random.categorical(key, jnp.log(shares))  # all -inf where none is valid: the row keeps sample 0
    else:
        winner = jnp.argmax(shares, axis=-1)
    named = valid & (actions == winner[None])
    return jnp.where(jnp.any(named, axis=0), jnp.argmax(named, axis=0), 0)


def correction_turn(tokenizer, generated, lengths):
    """The tokens that follow a first answer: ``<end_of_turn>`` where it did not stop on its own, then the
    correction request; ``(tokens [B, W], lengths [B])``."""
    message = jnp.asarray(tokenizer.encode(CORRECTION), jnp.int32)
    end = tokenizer.token_id(END_OF_TURN)
    last = jnp.take_along_axis(generated, jnp.maximum(lengths - 1, 0)[:, None], axis=1)[:, 0]
    closed = (lengths > 0) & (last == end)
    B, M = generated.shape[0], message.shape[0]
    opened = jnp.concatenate([jnp.full((B, 1), end, jnp.int32), jnp.broadcast_to(message, (B, M))], axis=1)
    return jnp.where(closed[:, None], jnp.roll(opened, -1, axis=1), opened), M + (~closed).astype(jnp.int32)


def joined(first, first_lengths, second, second_lengths, pad_id: int):
    """Per row, ``first[:n1] ++ second[:n2]`` then pad: ``(tokens [B, W1 + W2], lengths [B])``."""
    width = first.shape[1] + second.shape[1]

    def one(a, n1, b, n2):
        out = jnp.full((width,), pad_id, jnp.int32).at[: a.shape[0]].set(a)
        out = jax.lax.dynamic_update_slice(out, b, (n1,))
        return jnp.where(jnp.arange(width) < n1 + n2, out, pad_id)
    return jax.vmap(one)(first, first_lengths, second, second_lengths), first_lengths + second_lengths
