"""Tic-tac-toe: the game core against pgx's rules and a plain-Python reference; the single-agent wrapper
step for step against a Python reference on shared random streams; known statistics; minimax."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs_jax
from envs_jax.core import uniforms
from envs_jax.games import tictactoe as game

LINES = [(0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6)]


def py_winner(board):
    """0 none, else the mark (1 or 2) with three in a row."""
    for a, b, c in LINES:
        if board[a] != 0 and board[a] == board[b] == board[c]:
            return board[a]
    return 0


# --------------------------------------------------------------------------------------------- game core
def _random_games(n, seed, illegal_rate=0.0):
    """Action sequences of 9 moves: a random permutation of the cells (always legal) with, optionally, some
    moves replaced by an occupied cell or an out-of-range index."""
    rng = np.random.default_rng(seed)
    acts = np.argsort(rng.random((n, 9)), axis=1)
    if illegal_rate:
        bad = rng.random((n, 9)) < illegal_rate
        repl = np.where(rng.random((n, 9)) < 0.5, np.roll(acts, 1, axis=1), rng.choice([-1, 9, 100], (n, 9)))
        bad[:, 0] = False
        acts = np.where(bad, repl, acts)
    return acts.astype(np.int32)


@pytest.mark.parametrize("illegal_rate", [0.0, 0.15])
def test_game_core_agrees_with_pgx_on_10000_random_games(illegal_rate):
    pgx = pytest.importorskip("pgx")
    n = 10_000
    acts = jnp.asarray(_random_games(n, seed=1 if illegal_rate else 0, illegal_rate=illegal_rate))
    penv = pgx.make("tic_tac_toe")
    pstate = jax.jit(jax.vmap(penv.init))(jax.random.split(jax.random.key(0), n))
    first_player = np.asarray(pstate.current_player)       # pgx's id of the player who moves first (X)
    ours = jax.vmap(lambda _: game.init())(jnp.arange(n))
    pstep = jax.jit(jax.vmap(penv.step))
    ostep = jax.jit(jax.vmap(game.step))
    checked = 0
    for t in range(9):
        a = acts[:, t]
        live = ~np.asarray(ours.terminated)
        # pgx indexes its mask with the action, so an out-of-range move becomes an occupied-cell move for both
        # (out-of-range moves are checked against the Python reference below)
        a = jnp.where((a < 0) | (a > 8), _occupied_cell(ours), a)
        pstate = pstep(pstate, a)
        ours = ostep(ours, a)
        term = np.asarray(ours.terminated)
        np.testing.assert_array_equal(term, np.asarray(pstate.terminated))
        # legal moves agree while the game goes on (pgx marks all moves legal once it is over)
        np.testing.assert_array_equal(np.asarray(ours.legal_action_mask)[~term],
                                      np.asarray(pstate.legal_action_mask)[~term])
        # winner by colour (0 = first mover) and rewards of this step per colour
        if not illegal_rate:
            np.testing.assert_array_equal(np.asarray(ours.winner)[term & live],
                                          np.asarray(pstate._x.winner)[term & live])
        p_rewards = np.asarray(pstate.rewards)
        by_colour = np.stack([p_rewards[np.arange(n), first_player], p_rewards[np.arange(n), 1 - first_player]], 1)
        np.testing.assert_array_equal(np.asarray(ours.rewards), by_colour)
        checked += int(live.sum())
    assert checked > 5 * n
    assert np.asarray(ours.terminated).all()


def _occupied_cell(state):
    """An occupied cell where there is one (else 0): makes an out-of-range move an occupied-cell move, which
    pgx can represent (pgx indexes its mask with the action and cannot take -1 or 9)."""
    occ = np.asarray(game.cells(state.x | state.o))
    return jnp.asarray(np.where(occ.any(1), occ.argmax(1), 0), jnp.int32)


def test_game_core_against_python_reference_including_out_of_range():
    rng = np.random.default_rng(5)
    step = jax.jit(game.step)
    for _ in range(300):
        board, player, done = [0] * 9, 0, False
        s = game.init()
        for _ in range(11):
            a = int(rng.choice([-1, 9] + list(range(9)), p=[0.03, 0.03] + [0.94 / 9] * 9))
            s = step(s, a)
            if done:
                rewards = [0, 0]
            elif not (0 <= a < 9) or board[a] != 0:
                done, rewards = True, [0, 0]
                rewards[player], rewards[1 - player] = -1, 1
            else:
                board[a] = player + 1
                w = py_winner(board)
                rewards = [0, 0]
                if w:
                    rewards[player], rewards[1 - player] = 1, -1
                done = bool(w) or all(board)
                player = 1 - player
            assert np.asarray(game.board(s)).tolist() == board
            assert bool(s.terminated) == done
            assert np.asarray(s.rewards).tolist() == rewards
            assert np.asarray(s.legal_action_mask).tolist() == [(c == 0 and not done) for c in board]


# ---------------------------------------------------------------------------------------- minimax table
@functools.lru_cache(maxsize=None)
def negamax(board):
    """Plain recursive minimax over tuples (1 = player to move, 2 = other): +1 win, 0 draw, -1 loss."""
    if py_winner(list(board)) == 2:
        return -1
    if all(board):
        return 0
    best = -2
    for i in range(9):
        if board[i] == 0:
            child = list(board)
            child[i] = 1
            swapped = tuple(0 if c == 0 else 3 - c for c in child)
            best = max(best, -negamax(swapped))
    return best


def _reachable():
    seen, frontier = set(), [tuple([0] * 9)]
    while frontier:
        b = frontier.pop()
        if b in seen:
            continue
        seen.add(b)
        if py_winner(list(b)) or all(b):
            continue
        for i in range(9):
            if b[i] == 0:
                c = list(b)
                c[i] = 1
                frontier.append(tuple(0 if x == 0 else 3 - x for x in c))
    return seen


def test_minimax_table_matches_plain_recursive_minimax_on_all_reachable_boards():
    best, score = game.minimax_tables()
    boards = _reachable()
    assert len(boards) > 4000
    pow3 = 3 ** np.arange(9)
    for b in boards:
        idx = int(np.dot(b, pow3))
        v = negamax(b)
        assert np.sign(score[idx]) == v
        if py_winner(list(b)) or all(b):
            continue
        moves = [i for i in range(9) if best[idx] >> i & 1]
        assert moves and all(b[i] == 0 for i in moves)
        for i in moves:   # every move in the table keeps the game value
            c = list(b)
            c[i] = 1
            assert -negamax(tuple(0 if x == 0 else 3 - x for x in c)) == v


# ------------------------------------------------------------------------------------ single-agent wrapper
def _ref_pick(u, mask):
    idx = [i for i in range(9) if mask[i]]
    return idx[min(int(u * len(idx)), len(idx) - 1)] if idx else 0


def _ref_best(board_opp_view):
    best, _ = game.minimax_tables()
    idx = int(np.dot(board_opp_view, 3 ** np.arange(9)))
    return [bool(best[idx] >> i & 1) for i in range(9)]


def ref_step(board, action, u, random_prob, illegal):
    """Python reference of one env step (agent = 1, opponent = 2), from the step's four uniforms."""
    legal = [c == 0 for c in board]
    invalid = not (0 <= action < 9) or not legal[action]
    if invalid and illegal == "lose":
        return board, -1.0, True, 2, invalid, -1
    if invalid:
        action = _ref_pick(u[3], legal)
    board = list(board)
    board[action] = 1
    if py_winner(board) == 1:
        return board, 1.0, True, 1, invalid, -1
    if all(board):
        return board, 0.0, True, 0, invalid, -1
    legal = [c == 0 for c in board]
    opp_view = [0 if c == 0 else 3 - c for c in board]
    best = [b and l for b, l in zip(_ref_best(opp_view), legal)]
    move = _ref_pick(u[1], legal) if u[0] < random_prob else _ref_pick(u[2], best)
    board[move] = 2
    if py_winner(board) == 2:
        return board, -1.0, True, 2, invalid, move
    return board, 0.0, all(board), 0, invalid, move


@pytest.mark.parametrize("opponent,illegal", [("random", "random"), ("optimal", "random"),
                                              ("noisy-optimal", "lose")])
def test_wrapper_step_for_step_against_python_reference(opponent, illegal):
    env, params = envs_jax.make("tictactoe", opponent=opponent, illegal=illegal)
    rng = np.random.default_rng(3)
    step = jax.jit(env.step)
    u_of = jax.jit(lambda k: uniforms(k, 4))
    for episode in range(60):
        _, state = env.reset(jax.random.key(episode), params)
        board, done, t = [0] * 9, False, 0
        boards_ref = []
        while not done:
            action = int(rng.integers(-1, 10)) if rng.random() < 0.2 else int(rng.choice(np.flatnonzero(
                np.asarray(state.legal_mask))))
            key = jax.random.key(10_000 * episode + t)
            u = np.asarray(u_of(key), np.float64)
            boards_ref.append(board)
            new_board, r, done, winner, invalid, opp = ref_step(board, action, u, float(params.opponent_random_prob),
                                                                illegal)
            _, state, reward, term, _, info = step(key, state, action, params)
            assert np.asarray(state.board).tolist() == list(new_board)
            assert float(reward) == r and bool(term) == done
            assert int(info["winner"]) == winner and bool(info["invalid"]) == invalid
            assert int(info["opponent_action"]) == opp
            assert np.asarray(state.boards[t]).tolist() == list(board)
            board = list(new_board)
            t += 1
        assert int(state.t) == t and bool(state.terminated)
        assert np.asarray(state.legal_mask).sum() == 0


@functools.lru_cache(maxsize=None)
def _player(policy_name, n):
    """jit(params, key) -> (winner, terminated, return) over n games; the opponent and who moves first are
    params, so one compile serves every opponent."""
    env = envs_jax.make_env("tictactoe")
    policy = envs_jax.baselines.make(policy_name, env)

    def episode(key, params):
        k0, k1 = jax.random.split(key)
        _, s = env.reset(k0, params)

        def body(s, k):
            ka, ks = jax.random.split(k)
            _, s, r, *_ = env.step(ks, s, policy(ka, s, params), params)
            return s, r
        s, rs = jax.lax.scan(body, s, jax.random.split(k1, env.horizon))
        return s.winner, s.terminated, rs.sum()
    return jax.jit(lambda params, key: jax.vmap(episode, (0, None))(jax.random.split(key, n), params))


def _play(opponent, agent_first, policy_name, n, seed):
    _, params = envs_jax.make("tictactoe", opponent=opponent, agent_first=agent_first)
    return [np.asarray(x) for x in _player(policy_name, n)(params, jax.random.key(seed))]


def test_random_vs_random_statistics():
    """First player wins ~58.5%, loses ~28.8%, draws ~12.7% (±1.5 points over >= 20,000 games)."""
    winner, done, ret = _play("random", True, "random", 30_000, seed=0)
    assert done.all()
    assert abs((winner == 1).mean() - 0.585) < 0.015
    assert abs((winner == 2).mean() - 0.288) < 0.015
    assert abs((winner == 0).mean() - 0.127) < 0.015
    np.testing.assert_array_equal(ret, np.where(winner == 1, 1.0, np.where(winner == 2, -1.0, 0.0)))
    # moving second against random swaps the roles
    winner, done, _ = _play("random", False, "random", 30_000, seed=1)
    assert abs((winner == 2).mean() - 0.585) < 0.015 and abs((winner == 1).mean() - 0.288) < 0.015


@pytest.mark.parametrize("agent_first", [True, False])
def test_optimal_opponent_never_loses(agent_first):
    winner, done, _ = _play("optimal", agent_first, "random", 5000, seed=2)
    assert done.all() and (winner != 1).all()          # never loses to random ...
    assert (winner == 2).mean() > 0.7                   # ... and usually wins
    winner, done, _ = _play("optimal", agent_first, "minimax", 2000, seed=3)
    assert done.all() and (winner == 0).all()           # optimal vs itself: always a draw


def test_noisy_optimal_is_between_random_and_optimal():
    rates = {opp: (_play(opp, True, "random", 5000, seed=4)[0] == 1).mean()
             for opp in ("random", "noisy-optimal", "optimal")}
    assert rates["random"] > rates["noisy-optimal"] + 0.1 > rates["optimal"] + 0.1


def test_agent_second_starts_after_the_opponent_and_history_is_kept():
    env, params = envs_jax.make("tictactoe", opponent="random", agent_first=False)
    _, s = env.reset(jax.random.key(0), params)
    b = np.asarray(s.board)
    assert (b == 2).sum() == 1 and (b == 1).sum() == 0 and np.asarray(s.legal_mask).sum() == 8
    a = int(np.flatnonzero(np.asarray(s.legal_mask))[0])
    _, s2, *_ = env.step(jax.random.key(1), s, a, params)
    assert np.asarray(s2.boards[0]).tolist() == b.tolist()
    assert int(s2.actions[0]) == a and int(s2.actions[1]) == -1
    assert (np.asarray(s2.board) == 1).sum() == 1 and (np.asarray(s2.board) == 2).sum() == 2


def test_illegal_rules():
    env, params = envs_jax.make("tictactoe", illegal="lose")
    _, s = env.reset(jax.random.key(0), params)
    _, s, *_ = env.step(jax.random.key(1), s, 4, params)
    occupied = int(np.flatnonzero(np.asarray(s.board) != 0)[0])
    _, s2, r, term, _, info = env.step(jax.random.key(2), s, occupied, params)
    assert bool(term) and float(r) == -1.0 and int(info["winner"]) == 2 and bool(info["invalid"])
    assert np.asarray(s2.board).tolist() == np.asarray(s.board).tolist()
    env, params = envs_jax.make("tictactoe", illegal="random")
    _, s = env.reset(jax.random.key(0), params)
    _, s2, r, term, _, info = env.step(jax.random.key(2), s, 9, params)
    assert bool(info["invalid"]) and not bool(term)
    played = int(s2.actions[0])
    assert 0 <= played < 9 and int(s2.board[played]) == 1
