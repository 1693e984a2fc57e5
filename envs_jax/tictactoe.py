"""``"tictactoe"``: single-agent tic-tac-toe against a built-in opponent (the RLFT paper's setting).

One env step = the agent's move plus the opponent's reply. The agent is player 1 in the paper's ``State=``
digits: ``board`` is from the agent's point of view (0 empty, 1 agent, 2 opponent). Reward +1 win, 0 draw
or not yet over, -1 loss. Opponents: ``"random"`` (uniform legal move), ``"optimal"`` (minimax; never loses)
and ``"noisy-optimal"`` (a random move with probability ``noise``, 0.5 by default, else minimax). The opponent
is data (``params.opponent_random_prob``: 1 random, 0 optimal), so one compiled step serves every opponent.

Illegal moves (an occupied cell, or outside [0, 9)) follow ``illegal``: ``"random"`` plays a uniformly random
legal move instead and sets ``info["invalid"]``; ``"lose"`` ends the game with -1 (pgx's rule). The −5
training penalty of the paper belongs to the agent loop, not here.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from envs_jax.core import EnvError, Environment, as_action, check_choice, check_float, random_true_index, uniforms
from envs_jax.games import tictactoe as game

HORIZON = 5  # the agent moves at most 5 times


@struct.dataclass
class TicTacToeParams:
    opponent_random_prob: jax.Array  # f32[]: probability that the opponent plays a random legal move
    agent_first: jax.Array           # bool[]: the agent moves first


@struct.dataclass
class TicTacToeState:
    board: jax.Array       # i32[9]: 0 empty, 1 agent, 2 opponent
    legal_mask: jax.Array  # bool[9]: the agent's legal moves (all False once the game is over)
    t: jax.Array           # i32[]: agent moves so far
    actions: jax.Array     # i32[H]: the agent's executed move at step i; -1 where not yet
    rewards: jax.Array     # f32[H]: env reward at step i
    boards: jax.Array      # i32[H, 9]: the board before the agent's move at step i (0 where not yet)
    winner: jax.Array      # i32[]: 0 none (ongoing or draw), 1 agent, 2 opponent
    terminated: jax.Array  # bool[]
    agent_player: jax.Array  # i32[]: the agent's player index in the game core (0 moves first)
    game: game.GameState   # the game core's state


class TicTacToe(Environment):
    name = "tictactoe"
    kind = "game"
    version = "v0"
    num_actions = 9
    horizon = HORIZON

    def __init__(self, opponent: str = "random", noise: float = 0.5, agent_first: bool = True,
                 illegal: str = "random"):
        self.opponent = check_choice("opponent", opponent, ("random", "optimal", "noisy-optimal"))
        self.noise = check_float("noise", noise, 0.0, 1.0)
        if not isinstance(agent_first, bool):
            raise EnvError(f"option 'agent_first' must be true or false, got {agent_first!r}")
        self.agent_first = agent_first
        self.illegal = check_choice("illegal", illegal, ("random", "lose"))
        self.static_options = (("illegal", self.illegal),)
        game.minimax_tables()  # build the host table once, outside any trace

    @property
    def opponent_random_prob(self) -> float:
        return {"random": 1.0, "optimal": 0.0, "noisy-optimal": self.noise}[self.opponent]

    @property
    def default_params(self) -> TicTacToeParams:
        return TicTacToeParams(opponent_random_prob=jnp.float32(self.opponent_random_prob),
                               agent_first=jnp.bool_(self.agent_first))

    def sample_params(self, key) -> TicTacToeParams:
        return self.default_params

    # ------------------------------------------------------------------------------------------------
    @staticmethod
    def _sides(g: game.GameState, agent_player: jax.Array):
        agent = jnp.where(agent_player == 0, g.x, g.o)
        opp = jnp.where(agent_player == 0, g.o, g.x)
        return agent, opp

    def _opponent_move(self, u: jax.Array, g: game.GameState, agent_player, params) -> tuple:
        """Opponent's reply from three U[0,1) floats: coin (random vs minimax), random cell, tie-break."""
        agent, opp = self._sides(g, agent_player)
        legal = g.legal_action_mask
        best = jnp.logical_and(game.optimal_moves(opp, agent), legal)
        use_random = u[0] < params.opponent_random_prob
        move = jnp.where(use_random, random_true_index(u[1], legal), random_true_index(u[2], best))
        return move

    def _finish(self, g: game.GameState, agent_player):
        agent, opp = self._sides(g, agent_player)
        winner = jnp.where(g.winner < 0, 0, jnp.where(g.winner == agent_player, 1, 2)).astype(jnp.int32)
        return game.board_of(agent, opp), winner

    def reset(self, key, params: TicTacToeParams):
        agent_player = jnp.where(params.agent_first, 0, 1).astype(jnp.int32)
        g = game.init()
        u = uniforms(key, 4)
        opp_move = self._opponent_move(u[:3], g, agent_player, params)
        g = jax.tree.map(lambda a, b: jnp.where(params.agent_first, a, b), g, game.step(g, opp_move))
        board, winner = self._finish(g, agent_player)
        state = TicTacToeState(
            board=board, legal_mask=g.legal_action_mask, t=jnp.int32(0),
            actions=jnp.full((HORIZON,), -1, jnp.int32), rewards=jnp.zeros((HORIZON,), jnp.float32),
            boards=jnp.zeros((HORIZON, 9), jnp.int32), winner=winner, terminated=g.terminated,
            agent_player=agent_player, game=g)
        return self.observation(state, params), state

    def observation(self, state: TicTacToeState, params) -> jax.Array:
        """bool[3, 3, 2]: the agent's marks and the opponent's marks."""
        return jnp.stack([state.board == 1, state.board == 2], -1).reshape(3, 3, 2)

    def step(self, key, state: TicTacToeState, action, params: TicTacToeParams):
        u = uniforms(key, 4)
        a = as_action(action)
        live = jnp.logical_not(state.terminated)
        in_range = jnp.logical_and(a >= 0, a < 9)
        legal = jnp.logical_and(in_range, jnp.any(jnp.logical_and(jnp.arange(9) == a, state.legal_mask)))
        invalid = jnp.logical_and(jnp.logical_not(legal), live)
        if self.illegal == "random":
            a = jnp.where(invalid, random_true_index(u[3], state.legal_mask), a)
            recorded = a
        else:
            recorded = jnp.where(in_range, a, -1)
        g1 = game.step(state.game, a)
        opp_move = self._opponent_move(u[:3], g1, state.agent_player, params)
        opp_live = jnp.logical_not(g1.terminated)
        g2 = game.step(g1, opp_move)
        me = state.agent_player
        reward = jnp.where(me == 0, g1.rewards[0] + g2.rewards[0], g1.rewards[1] + g2.rewards[1])
        reward = jnp.where(live, reward, 0.0)
        board, winner = self._finish(g2, me)
        at = jnp.where(live, state.t, HORIZON)  # out of range: a finished game's history is left alone
        new = TicTacToeState(
            board=board, legal_mask=g2.legal_action_mask, t=state.t + live.astype(jnp.int32),
            actions=state.actions.at[at].set(recorded, mode="drop"),
            rewards=state.rewards.at[at].set(reward, mode="drop"),
            boards=state.boards.at[at].set(state.board, mode="drop"),
            winner=winner, terminated=g2.terminated, agent_player=me, game=g2)
        new = jax.tree.map(lambda x, y: jnp.where(live, x, y), new, state)  # a finished game stays as it is
        info = {"invalid": invalid, "winner": winner,
                "opponent_action": jnp.where(jnp.logical_and(live, opp_live), opp_move, -1)}
        return self.observation(new, params), new, reward, new.terminated, jnp.bool_(False), info
