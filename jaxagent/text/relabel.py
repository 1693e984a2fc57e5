"""Context randomisation: a fresh random arm -> label mapping every step (the paper's exploration mechanism).

The prompt lists the same labels, but the history (and summary) are rewritten under the new mapping, so the
arm behind a label changes from step to step; the parsed label is mapped back to an arm. Because every
history line can change, a relabelled prompt cannot reuse the previous step's KV cache: the agent loop must
re-prefill ``render(relabel_state(state, perm), params)`` each step instead of appending one history line.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def random_relabelling(key, num_arms: int) -> jnp.ndarray:
    """``perm[arm]`` = index of the label that names ``arm`` this step."""
    return jax.random.permutation(key, num_arms).astype(jnp.int32)


def relabel_state(state, perm):
    """The state as the prompt should show it under ``perm`` (bandit and contextual states)."""
    inverse = jnp.argsort(perm)
    actions = jnp.where(state.actions >= 0, perm[jnp.maximum(state.actions, 0)], state.actions)
    return state.replace(actions=actions, counts=state.counts[inverse], reward_sums=state.reward_sums[inverse])


def unrelabel_action(perm, label_index):
    """The arm named by ``label_index`` under ``perm`` (invalid parses, -1, stay -1)."""
    return jnp.where(label_index >= 0, jnp.argsort(perm)[jnp.maximum(label_index, 0)], label_index)
