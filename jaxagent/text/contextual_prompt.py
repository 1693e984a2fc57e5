"""Contextual bandit prompts (MovieLens recommender, BanditBench wording): movies are the arms.

Each history line and the tail describe a user: ``This person is a 28-year-old man, working as an
administrator and living in Santa Clara county, CA. The user has some numerical values that represent their
true implicit preference or taste for all movies: [-0.04, 0.02].`` History line:
``Step=4 <user> Action=<title> Reward=3.20``. A history window keeps long histories inside ``max_len``.
"""
from __future__ import annotations

from jaxagent.text import numbers
from jaxagent.text.fragments import Table, constant
from jaxagent.text.render import HISTORY_HEADER, QUESTION, PromptOptions, Renderer, output_instruction
from jaxagent.text.states import random_contextual
from jaxagent.text.tokenizer import TextError, TextTokenizer, model_turn_open, user_turn_open

MAX_AGE = 120
PREFERENCE_INTRO = (" The user has some numerical values that represent their true implicit preference or taste "
                    "for all movies:")
GENDERS = ("woman", "man")  # params.user_gender: 0 female, 1 male


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def scenario(titles) -> str:
    return ("You are an AI movie recommendation assistant for a streaming platform powered by a bandit algorithm "
            "that offers a wide variety of films from different studios and genres. There are "
            f"{len(titles)} unique movies you can recommend, named {', '.join(titles)}. When a user visits the "
            "streaming platform, you assess their demographic description to choose a movie to suggest. You aim "
            "to match the user with movies they are most likely to watch and enjoy. The reward is how much the "
            "user liked the recommended movie.")


class ContextualRenderer(Renderer):
    template = "contextual"

    def __init__(self, movie_titles, occupations, locations, pref_dim: int, horizon: int, tokenizer: TextTokenizer,
                 options: PromptOptions = PromptOptions()):
        super().__init__(tokenizer, horizon, options)
        self.labels, self.occupations, self.locations = tuple(movie_titles), tuple(occupations), tuple(locations)
        self.num_arms, self.pref_dim = len(self.labels), int(pref_dim)
        for kind, names in (("movie title", self.labels), ("occupation", self.occupations),
                            ("location", self.locations)):
            for name in names:
                if not name or name != name.strip() or "\n" in name:
                    raise TextError(f"{kind} {name!r} must be non-empty one-line text without edge spaces")
        if self.pref_dim < 1:
            raise TextError(f"template contextual: preference dimension {pref_dim} must be >= 1")
        values = numbers.all_values()
        self.step_table = Table(tokenizer, [f"Step={t}" for t in range(self.horizon)], "step")
        self.age_table = Table(tokenizer, [f" This person is a {a}-year-old" for a in range(MAX_AGE + 1)], "age")
        self.gender_table = Table(tokenizer, [f" {g}," for g in GENDERS], "gender")
        self.occupation_table = Table(tokenizer, [f" working as {article(o)} {o}" for o in self.occupations],
                                      "occupation")
        self.location_table = Table(tokenizer, [f" and living in {loc}." for loc in self.locations], "location")
        self.intro = constant(tokenizer, PREFERENCE_INTRO, "preference intro")
        # The vector closes the user description: "]." before " Action=" in a line, "].\n" in the tail.
        if self.pref_dim == 1:
            self.vector_tables = {end: [Table(tokenizer, [f" [{v}].{end}" for v in values], "preference")]
                                  for end in ("", "\n")}
        else:
            first = Table(tokenizer, [f" [{v}," for v in values], "first preference")
            middle = Table(tokenizer, [f" {v}," for v in values], "preference")
            self.vector_tables = {end: [first, middle, Table(tokenizer, [f" {v}].{end}" for v in values],
                                                             "last preference")] for end in ("", "\n")}
        self.action_table = Table(tokenizer, [f" Action={title}" for title in self.labels], "action")
        self.reward_table = Table(tokenizer, [f" Reward={v}\n" for v in values], "reward")
        self.current = constant(tokenizer, "Current user:", "current user")
        self.question = constant(tokenizer, QUESTION + model_turn_open(), "question")
        self._finish_setup()

    def prefix_text(self) -> str:
        return (user_turn_open() + scenario(self.labels) + "\n"
                + output_instruction(self.options.cot, "movies listed above") + "\n" + HISTORY_HEADER)

    def user_text(self, params, user: int) -> str:
        gender = GENDERS[int(params.user_gender[user])]
        occupation = self.occupations[int(params.user_occupation[user])]
        location = self.locations[int(params.user_location[user])]
        prefs = ", ".join(numbers.format_value(v) for v in params.user_prefs[user])
        age = min(max(int(params.user_age[user]), 0), MAX_AGE)
        return (f" This person is a {age}-year-old {gender}, working as {article(occupation)} {occupation} "
                f"and living in {location}.{PREFERENCE_INTRO} [{prefs}].")

    def history_line_text(self, state, params, t: int) -> str:
        title = self.labels[int(state.actions[t])]
        return (f"Step={t}{self.user_text(params, int(state.users[t]))} Action={title} "
                f"Reward={numbers.format_value(state.rewards[t])}\n")

    def tail_text(self, state, params) -> str:
        return "Current user:" + self.user_text(params, int(state.user)) + "\n" + QUESTION + model_turn_open()

    def _user_pieces(self, params, user, end: str):
        prefs = numbers.value_index(params.user_prefs[user])
        pieces = [self.age_table(params.user_age[user]), self.gender_table(params.user_gender[user]),
                  self.occupation_table(params.user_occupation[user]),
                  self.location_table(params.user_location[user]), self.intro(0)]
        vector = self.vector_tables[end]
        if self.pref_dim == 1:
            return pieces + [vector[0](prefs[0])]
        return pieces + [vector[0](prefs[0])] + [vector[1](prefs[i]) for i in range(1, self.pref_dim - 1)] \
            + [vector[2](prefs[-1])]

    def _line_pieces(self, state, params, t):
        return ([self.step_table(t)] + self._user_pieces(params, state.users[t], "")
                + [self.action_table(state.actions[t]), self.reward_table(numbers.value_index(state.rewards[t]))])

    def _tail_pieces(self, state, params):
        return [self.current(0)] + self._user_pieces(params, state.user, "\n") + [self.question(0)]

    def sample(self, rng, n):
        return random_contextual(rng, n, self.num_arms, self.horizon, num_users=7, pref_dim=self.pref_dim,
                                 num_occupations=len(self.occupations), num_locations=len(self.locations))
