"""Expert episodes as a file of text trajectories (``eef.expert_file``), e.g. from an LLM expert run elsewhere.

JSON Lines. The first line describes what the episodes were played in::

    {"format": "jaxagent.expert_episodes", "version": 1, "prng": "threefry2x32",
     "env": {"name": "tictactoe", "options": {...}}, "tokenizer": {"name": "...", "fingerprint": "<sha256>"}}

``env`` is the config's env section as the writer had it, ``tokenizer.fingerprint`` the SHA-256 of its vocabulary
(:attr:`jaxagent.text.tokenizer.TextTokenizer.fingerprint`). Every further line is one episode::

    {"params": {"<env params field>": value, ...},
     "reset_key": [u32, ...], "opening": [{"action": 4, "key": [u32, ...]}, ...],
     "steps": [{"action": 2, "key": [u32, ...], "text": "... ACTION=3"}, ...]}

The task is the env instance ``params``, reset with ``reset_key``, then the ``opening`` moves stepped with their
keys. ``steps`` are the expert's turns from there to the episode's end: its text (reasoning and ``ACTION=<label>``)
and the key of the env step that followed (keys as ``jax.random.key_data`` gives them). Reading replays every
episode through the same parser and env step as a played turn, so the env state before each turn is exact and
EEF can restart from it; a turn whose replayed action is not the recorded one is an error, as is a file from
another env, tokenizer or PRNG. Every run of the EEF methods writes its expert's episodes in this format.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from envs_jax.yaml_config import ConfigError
from jaxagent.trainers.expert_tasks import Tasks, play_opening, write_text

FORMAT, VERSION = "jaxagent.expert_episodes", 1


def _header(exp) -> dict:
    env = exp.cfg.env
    return {"format": FORMAT, "version": VERSION, "prng": jax.config.jax_default_prng_impl,
            "env": {"name": env.name, "options": json.loads(json.dumps(dict(env.options)))},
            "tokenizer": {"name": exp.tokenizer.name, "fingerprint": exp.tokenizer.fingerprint}}


def write(path: Path, exp, tasks: Tasks, traj, env_keys) -> None:
    """Write the episodes ``traj`` ([N, T], played from ``tasks``, whose openings are recorded) with their env
    step keys ``env_keys [N, T]``, atomically."""
    tok = exp.tokenizer
    host = jax.tree.map(np.asarray, (tasks.params, tasks.opening.actions, traj.tokens, traj.lengths, traj.actions,
                                     traj.active))
    params, opening, tokens, lengths, actions, active = host
    reset_keys, opening_keys, step_keys = (np.asarray(jax.random.key_data(k)) for k in
                                           (tasks.opening.reset_keys, tasks.opening.keys, env_keys))
    lines = [json.dumps(_header(exp))]
    for i in range(len(tasks)):
        lines.append(json.dumps({
            "params": {f.name: getattr(params, f.name)[i].tolist() for f in dataclasses.fields(params)},
            "reset_key": reset_keys[i].tolist(),
            "opening": [{"action": int(a), "key": opening_keys[i, p].tolist()}
                        for p, a in enumerate(opening[i]) if a >= 0],
            "steps": [{"action": int(actions[i, t]), "key": step_keys[i, t].tolist(),
                       "text": tok.decode(tokens[i, t, :lengths[i, t]])} for t in np.flatnonzero(active[i])]}))
    write_text(path, "\n".join(lines) + "\n")


class _Reader:
    def __init__(self, path: Path):
        self.path = path

    def error(self, where: str, what: str) -> ConfigError:
        return ConfigError(f"config key 'eef.expert_file': {self.path}{where}: {what}")

    def lines(self, n: int) -> tuple[dict, list[dict]]:
        try:
            text = self.path.read_text()
        except OSError as e:
            raise self.error("", f"cannot be read ({e.strerror})") from None
        records = []
        for number, line in enumerate(text.splitlines()[:n + 1], start=1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise self.error(f" line {number}", f"not JSON ({e.msg})") from None
        if not records or not isinstance(records[0], dict) or records[0].get("format") != FORMAT:
            raise self.error(" line 1", f"not a {FORMAT} header")
        if len(records) - 1 < n:
            raise self.error("", f"holds {len(records) - 1} episodes, eef.train_tasks asks for {n}")
        return records[0], records[1:]

    def check_header(self, header: dict, exp) -> None:
        mine = _header(exp)
        if header.get("version") != VERSION:
            raise self.error(" line 1", f"format version {header.get('version')!r}; this reader knows {VERSION}")
        if header.get("env") != mine["env"]:
            raise self.error(" line 1", f"written for env {header.get('env')}, the config's is {mine['env']}")
        theirs = (header.get("tokenizer") or {}).get("fingerprint")
        if theirs != mine["tokenizer"]["fingerprint"]:
            raise self.error(" line 1", f"written with tokenizer {(header.get('tokenizer') or {}).get('name')!r} "
                                        f"(vocabulary {theirs}), the config's is {exp.tokenizer.name!r} "
                                        f"(vocabulary {mine['tokenizer']['fingerprint']})")
        if header.get("prng") != mine["prng"]:
            raise self.error(" line 1", f"keys from PRNG {header.get('prng')!r}, this run uses {mine['prng']!r}")


def read(path: str | Path, exp, n: int):
    """``(tasks, episodes, env_keys)``: the first ``n`` episodes of the file at ``path`` replayed (see the module
    docstring), with their tasks' openings recorded."""
    reader = _Reader(Path(path))
    header, episodes = reader.lines(n)
    reader.check_header(header, exp)
    loop = dataclasses.replace(exp.train_loop, exploration=None)
    T, G, tok = loop.num_steps, loop.max_new_tokens, exp.tokenizer
    like = exp.env.sample_params(jax.random.key(0))
    fields = [f.name for f in dataclasses.fields(like)]
    P = max(len(e.get("opening", [])) if isinstance(e, dict) else 0 for e in episodes)
    columns = {f: [] for f in fields}
    reset_keys, opening_actions, opening_keys = [], np.full((n, P), -1, np.int32), []
    tokens, lengths = np.full((n, T, G), tok.pad_id, np.int32), np.zeros((n, T), np.int32)
    actions, step_keys, counts = np.full((n, T), -1, np.int32), [], np.zeros(n, np.int32)
    key_width = jax.random.key_data(jax.random.key(0)).shape[-1]
    blank = [0] * key_width
    for i, episode in enumerate(episodes):
        where = f" line {i + 2}"
        try:
            for f in fields:
                value = np.asarray(episode["params"][f], getattr(like, f).dtype)
                if value.shape != getattr(like, f).shape:
                    raise reader.error(where, f"params.{f} has shape {value.shape}, the env's is "
                                              f"{getattr(like, f).shape}")
                columns[f].append(value)
            reset_keys.append(episode["reset_key"])
            opening = episode.get("opening", [])
            opening_actions[i, :len(opening)] = [move["action"] for move in opening]
            opening_keys.append([move["key"] for move in opening] + [blank] * (P - len(opening)))
            steps = episode["steps"]
            if not 0 < len(steps) <= T:
                raise reader.error(where, f"{len(steps)} steps; an episode of this env has 1 to {T}")
            counts[i] = len(steps)
            for t, step in enumerate(steps):
                ids = tok.encode(step["text"])
                if len(ids) > G:
                    raise reader.error(where, f"step {t}'s text is {len(ids)} tokens, over the generation budget "
                                              f"rollout.max_new_tokens={G}")
                tokens[i, t, :len(ids)], lengths[i, t], actions[i, t] = ids, len(ids), step["action"]
            step_keys.append([step["key"] for step in steps] + [blank] * (T - len(steps)))
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise reader.error(where, f"malformed episode ({type(e).__name__}: {e})") from None
    wrap = lambda keys, *shape: jax.random.wrap_key_data(np.asarray(keys, np.uint32).reshape(*shape, key_width))
    params = like.replace(**{f: jnp.stack(columns[f]) for f in fields})
    opening_actions, opening_keys = jnp.asarray(opening_actions), wrap(opening_keys, n, P)
    states, ended, opening = play_opening(exp.env, params, wrap(reset_keys, n), opening_keys,
                                          lambda ply, states: opening_actions[:, ply])
    if bool(jnp.any(ended)):
        raise reader.error(f" line {int(np.argmax(np.asarray(ended))) + 2}", "the opening ends the episode")
    env_keys = wrap(step_keys, n, T)
    traj = jax.jit(loop.replay)(params, states, jnp.asarray(tokens), jnp.asarray(lengths), env_keys)
    _check_replay(reader, traj, actions, counts)
    return Tasks(params, states, opening), traj, env_keys


def _check_replay(reader: _Reader, traj, actions: np.ndarray, counts: np.ndarray) -> None:
    played, active = np.asarray(traj.actions), np.asarray(traj.active)
    for i in range(actions.shape[0]):
        n, lasts = int(counts[i]), int(active[i].sum())
        wrong = np.flatnonzero(played[i, :min(n, lasts)] != actions[i, :min(n, lasts)])
        if wrong.size:
            t = int(wrong[0])
            raise reader.error(f" line {i + 2}", f"step {t}: replaying its text and key plays action "
                                                 f"{int(played[i, t])}, the file records {int(actions[i, t])}")
        if lasts != n:
            raise reader.error(f" line {i + 2}", f"{n} steps, but the replayed episode lasts {lasts}")
