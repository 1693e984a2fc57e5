"""Tic-tac-toe game logic: pure, jittable, two players, no opponent and no agent point of view.

Cells are numbered 0..8 row by row (``012 / 345 / 678``). Player 0 moves first. Each player's marks are a
9-bit bitboard, so the step is a handful of integer ops per game (no gathers): win = any line fully set.
An illegal move (occupied cell or outside [0, 9)) ends the game at once, the mover losing (pgx's rule).
Stepping a finished game changes nothing and gives zero rewards.

The minimax table (:func:`optimal_moves`) holds, for every board seen from the player to move, the set of
moves with the best depth-aware minimax score (win soonest, lose latest); computed once on the host.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

LINES = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6))
LINE_BITS = tuple(sum(1 << i for i in line) for line in LINES)
FULL = (1 << 9) - 1


@struct.dataclass
class GameState:
    x: jax.Array                  # i32[]: bitboard of player 0's marks (moves first)
    o: jax.Array                  # i32[]: bitboard of player 1's marks
    current_player: jax.Array     # i32[]: 0 or 1, the player to move
    winner: jax.Array             # i32[]: -1 (none or draw), 0 or 1
    terminated: jax.Array         # bool[]
    legal_action_mask: jax.Array  # bool[9]: empty cells; all False once terminated
    rewards: jax.Array            # f32[2]: the last step's reward for each player


def init() -> GameState:
    return GameState(x=jnp.int32(0), o=jnp.int32(0), current_player=jnp.int32(0), winner=jnp.int32(-1),
                     terminated=jnp.bool_(False), legal_action_mask=jnp.ones((9,), jnp.bool_),
                     rewards=jnp.zeros((2,), jnp.float32))


def has_line(bits: jax.Array) -> jax.Array:
    """True where the bitboard holds a full row, column or diagonal."""
    won = (bits & LINE_BITS[0]) == LINE_BITS[0]
    for line in LINE_BITS[1:]:
        won = won | ((bits & line) == line)
    return won


def cells(bits: jax.Array) -> jax.Array:
    """bool[9]: the cells set in a bitboard."""
    return ((bits[..., None] >> jnp.arange(9, dtype=jnp.int32)) & 1) == 1


def bits_of(cell_mask: jax.Array) -> jax.Array:
    """The bitboard of a bool[9] cell mask."""
    return jnp.sum(jnp.where(cell_mask, 1 << jnp.arange(9, dtype=jnp.int32), 0), axis=-1, dtype=jnp.int32)


def board(state: GameState) -> jax.Array:
    """i32[9]: 0 empty, 1 player 0's mark, 2 player 1's mark."""
    return board_of(state.x, state.o)


def board_of(mine: jax.Array, theirs: jax.Array) -> jax.Array:
    """i32[9] from two bitboards: 0 empty, 1 for ``mine``, 2 for ``theirs``."""
    return jnp.where(cells(mine), 1, jnp.where(cells(theirs), 2, 0)).astype(jnp.int32)


def step(state: GameState, action: jax.Array) -> GameState:
    cp = state.current_player
    live = jnp.logical_not(state.terminated)
    a = jnp.asarray(action, jnp.int32)
    in_range = jnp.logical_and(a >= 0, a < 9)
    bit = jnp.where(in_range, jnp.left_shift(jnp.int32(1), jnp.clip(a, 0, 8)), 0)
    occupied = state.x | state.o
    legal = jnp.logical_and(in_range, (occupied & bit) == 0)
    move = jnp.logical_and(legal, live)
    mine = jnp.where(cp == 0, state.x, state.o) | jnp.where(move, bit, 0)
    won = jnp.logical_and(has_line(mine), move)
    x = jnp.where(cp == 0, mine, state.x)
    o = jnp.where(cp == 0, state.o, mine)
    occupied = x | o
    illegal = jnp.logical_and(jnp.logical_not(legal), live)
    terminated = state.terminated | won | (occupied == FULL) | illegal
    new_winner = jnp.where(won, cp, jnp.where(illegal, 1 - cp, -1))
    players = jnp.arange(2, dtype=jnp.int32)
    rewards = jnp.where(new_winner < 0, 0.0, jnp.where(players == new_winner, 1.0, -1.0)).astype(jnp.float32)
    return GameState(
        x=x, o=o,
        current_player=jnp.where(live, 1 - cp, cp),
        winner=jnp.where(live, new_winner, state.winner),
        terminated=terminated,
        legal_action_mask=jnp.logical_and(jnp.logical_not(cells(occupied)), jnp.logical_not(terminated)),
        rewards=rewards,
    )


# ---------------------------------------------------------------------------------------------- minimax
_POW3 = 3 ** np.arange(9)


@functools.lru_cache(maxsize=1)
def minimax_tables() -> tuple[np.ndarray, np.ndarray]:
    """``(best_moves, score)`` over all 3**9 boards indexed by ``sum(d_i * 3**i)``, digits from the point of
    view of the player to move (0 empty, 1 own mark, 2 the other's).

    ``score`` is the depth-aware minimax value for the player to move: +(1 + empty cells at the end) for a
    forced win, minus that for a forced loss, 0 for a draw. ``best_moves`` is the 9-bit set of moves reaching
    it (the empty cells on terminal boards). Built by backward induction over the number of empty cells.
    """
    n = 3 ** 9
    idx = np.arange(n)
    digits = (idx[:, None] // _POW3[None, :]) % 3                      # [n, 9]
    own = (digits == 1)
    other = (digits == 2)
    bitw = 1 << np.arange(9)
    own_bits, other_bits = own @ bitw, other @ bitw
    empties = (digits == 0).sum(1)
    line = np.array(LINE_BITS)
    own_line = ((own_bits[:, None] & line) == line).any(1)
    other_line = ((other_bits[:, None] & line) == line).any(1)
    swap = (np.where(digits == 0, 0, 3 - digits) * _POW3).sum(1)    # the same board seen by the other player
    score = np.zeros(n, np.int32)
    best = np.zeros(n, np.int32)
    terminal = own_line | other_line | (empties == 0)
    score[terminal] = np.where(other_line, -(1 + empties), np.where(own_line, 1 + empties, 0))[terminal]
    best[terminal] = ((digits == 0) @ bitw)[terminal]
    for e in range(1, 10):
        rows = np.nonzero((empties == e) & ~terminal)[0]
        if rows.size == 0:
            continue
        child = rows[:, None] + _POW3[None, :]                          # place an own mark on each cell
        legal = digits[rows] == 0
        child_score = -score[swap[np.where(legal, child, 0)]]
        child_score = np.where(legal, child_score, np.iinfo(np.int32).min)
        top = child_score.max(1)
        score[rows] = top
        best[rows] = ((child_score == top[:, None]) & legal) @ bitw
    return best, score


@functools.lru_cache(maxsize=1)
def _base3_of_bits() -> np.ndarray:
    """i32[512]: sum over set bits i of 3**i."""
    b = np.arange(512)
    return (((b[:, None] >> np.arange(9)) & 1) * _POW3).sum(1).astype(np.int32)


def table_index(mine: jax.Array, theirs: jax.Array) -> jax.Array:
    b3 = jnp.asarray(_base3_of_bits())
    return b3[mine] + 2 * b3[theirs]


def optimal_moves(mine: jax.Array, theirs: jax.Array) -> jax.Array:
    """bool[9]: the minimax-optimal moves for the player whose marks are ``mine`` (to move)."""
    best = jnp.asarray(minimax_tables()[0])
    return cells(best[table_index(mine, theirs)])


def minimax_score(mine: jax.Array, theirs: jax.Array) -> jax.Array:
    """i32[]: the depth-aware minimax score for the player to move (> 0 win, 0 draw, < 0 loss)."""
    return jnp.asarray(minimax_tables()[1])[table_index(mine, theirs)]
