"""Tic-tac-toe prompts: the board as nine digits (``State=102010002``), an optional legal-actions line.

History line: ``Step=1 State=100020000 Action=4 Reward=0.00`` (the board before the agent's move).
Tail: ``Current State=…``, ``Legal actions: 2, 3, 5`` (the paper finds this line essential), the question.
"""
from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np

from jaxagent.text import numbers
from jaxagent.text.fragments import Table, constant
from jaxagent.text.render import HISTORY_HEADER, QUESTION, PromptOptions, Renderer, output_instruction
from jaxagent.text.states import random_tictactoe
from jaxagent.text.tokenizer import TextTokenizer, model_turn_open, user_turn_open

SQUARES = tuple(str(i) for i in range(9))
SCENARIO = (
    "You are playing tic-tac-toe as player 1 against an opponent who is player 2. The board is a string of 9 "
    "digits, one per square in row order (squares 012 / 345 / 678): 0 is an empty square, 1 is your mark and 2 "
    "is the opponent's mark. On each turn you MUST put your mark on an empty square, named by its number 0-8. "
    "Three marks in a row, column or diagonal win. The reward is 1 for a win, 0 for a draw and -1 for a loss.")
# numpy, not jax: importing the package must not start JAX's backend (jax.distributed.initialize comes first)
_POWERS = np.asarray([3 ** (8 - i) for i in range(9)], np.int32)
_BITS = np.asarray([1 << i for i in range(9)], np.int32)


def board_string(board) -> str:
    return "".join(str(int(v)) for v in board)


def legal_line(legal) -> str:
    squares = ", ".join(str(i) for i in range(9) if legal[i])
    return f"Legal actions: {squares or 'none'}\n"


class TicTacToeRenderer(Renderer):
    template = "tictactoe"
    labels = SQUARES

    def __init__(self, tokenizer: TextTokenizer, options: PromptOptions = PromptOptions(), horizon: int = 5):
        super().__init__(tokenizer, horizon, options)
        boards = ["".join(b) for b in itertools.product("012", repeat=9)]
        values = numbers.all_values()
        self.step_table = Table(tokenizer, [f"Step={t}" for t in range(self.horizon)], "step")
        self.board_table = Table(tokenizer, [f" State={b}" for b in boards], "board")
        self.action_table = Table(tokenizer, [f" Action={s}" for s in SQUARES], "action")
        self.reward_table = Table(tokenizer, [f" Reward={v}\n" for v in values], "reward")
        self.current = constant(tokenizer, "Current", "current")
        self.current_board_table = Table(tokenizer, [f" State={b}\n" for b in boards], "current board")
        if options.legal_actions:
            masks = [[(m >> i) & 1 for i in range(9)] for m in range(512)]
            self.legal_table = Table(tokenizer, [legal_line(m) for m in masks], "legal actions")
        self.question = constant(tokenizer, QUESTION + model_turn_open(), "question")
        self._finish_setup()

    def prefix_text(self) -> str:
        return (user_turn_open() + SCENARIO + "\n" + output_instruction(self.options.cot, "legal actions")
                + "\n" + HISTORY_HEADER)

    def history_line_text(self, state, params, t: int) -> str:
        return (f"Step={t} State={board_string(state.boards[t])} Action={int(state.actions[t])} "
                f"Reward={numbers.format_value(state.rewards[t])}\n")

    def tail_text(self, state, params) -> str:
        legal = legal_line(state.legal_mask) if self.options.legal_actions else ""
        return f"Current State={board_string(state.board)}\n" + legal + QUESTION + model_turn_open()

    def _line_pieces(self, state, params, t):
        board = jnp.dot(state.boards[t].astype(jnp.int32), _POWERS)
        return [self.step_table(t), self.board_table(board), self.action_table(state.actions[t]),
                self.reward_table(numbers.value_index(state.rewards[t]))]

    def _tail_pieces(self, state, params):
        pieces = [self.current(0), self.current_board_table(jnp.dot(state.board.astype(jnp.int32), _POWERS))]
        if self.options.legal_actions:
            pieces.append(self.legal_table(jnp.dot(state.legal_mask.astype(jnp.int32), _BITS)))
        return pieces + [self.question(0)]

    def sample(self, rng, n):
        return random_tictactoe(rng, n, self.horizon)
