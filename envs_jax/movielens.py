"""MovieLens data for the contextual bandit: a loader for the real ml-100k / ml-1m files and a synthetic
generator with the same structure. Host-side numpy; the env turns the result into ``params``.

As in BanditBench: keep the ``num_arms`` most-rated movies, build the users x movies rating matrix (0 where
unrated), take its rank-``min(rank, K)`` SVD ``U S V^T``; a user's preference vector is their row of ``U``
(the "true implicit preference" numbers shown in the prompt) and the expected reward of movie k for user u is
``(U S V^T)[u, k]``. Users are shuffled with ``seed``.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np

from envs_jax.core import EnvError

OCCUPATIONS_100K = ("administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
                    "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
                    "retired", "salesman", "scientist", "student", "technician", "writer")
OCCUPATIONS_1M = ("other", "academic/educator", "artist", "clerical/admin", "college/grad student",
                  "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
                  "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
                  "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer")
# The most-rated ml-100k titles, used to name the synthetic generator's movies.
POPULAR_TITLES = ("Star Wars (1977)", "Contact (1997)", "Fargo (1996)", "Return of the Jedi (1983)",
                  "Liar Liar (1997)", "The English Patient (1996)", "Scream (1996)", "Toy Story (1995)",
                  "Air Force One (1997)", "Independence Day (ID4) (1996)", "Raiders of the Lost Ark (1981)",
                  "The Godfather (1972)", "Pulp Fiction (1994)", "Twelve Monkeys (1995)",
                  "The Silence of the Lambs (1991)", "Jerry Maguire (1996)", "Chasing Amy (1997)",
                  "The Rock (1996)", "The Empire Strikes Back (1980)", "Star Trek: First Contact (1996)")
SYNTHETIC_LOCATIONS = ("Santa Clara county, CA", "Hennepin county, MN", "Cook county, IL", "King county, WA",
                       "Middlesex county, MA", "Travis county, TX", "New York county, NY",
                       "Los Angeles county, CA", "Maricopa county, AZ", "Fulton county, GA",
                       "Allegheny county, PA", "Denver county, CO", "Multnomah county, OR",
                       "Miami-Dade county, FL", "Wayne county, MI", "Orange county, CA")


@dataclasses.dataclass(frozen=True)
class MovieLensData:
    user_gender: np.ndarray       # i32[N]: 0 female, 1 male
    user_age: np.ndarray          # i32[N]: years (ml-1m: the lower bound of the age bucket)
    user_occupation: np.ndarray   # i32[N]: index into occupations
    user_location: np.ndarray     # i32[N]: index into locations
    user_prefs: np.ndarray        # f32[N, D]: the user's row of U (SVD)
    expected_rewards: np.ndarray  # f32[N, K]: low-rank reconstruction of the ratings
    movie_titles: tuple
    occupations: tuple
    locations: tuple
    source: str

    @property
    def num_users(self) -> int:
        return int(self.user_prefs.shape[0])


def low_rank_model(ratings: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """``(prefs, expected)``: the rank-``rank`` SVD of a users x movies rating matrix."""
    u, s, vh = np.linalg.svd(ratings.astype(np.float64), full_matrices=False)
    r = min(rank, ratings.shape[1])
    prefs = u[:, :r]
    expected = (prefs * s[:r]) @ vh[:r]
    return prefs.astype(np.float32), expected.astype(np.float32)


def _display_title(title: str) -> str:
    """'Empire Strikes Back, The (1980)' -> 'The Empire Strikes Back (1980)' (as BanditBench shows titles)."""
    title = title.strip()
    for article in ("The", "A", "An"):
        tag = f", {article} ("
        if tag in title:
            head, tail = title.split(tag, 1)
            return f"{article} {head} ({tail}"
        if title.endswith(f", {article}"):
            return f"{article} {title[: -len(article) - 2]}"
    return title


def zip_to_location(zip_code: str) -> str:
    """'95050' -> 'Santa Clara county, CA' when the ``zipcodes`` package is installed, else the zip code."""
    try:
        import zipcodes  # optional: ships its own offline table
    except ImportError:
        return zip_code
    try:
        match = zipcodes.matching(zip_code)
    except Exception:  # non-US codes such as 'T8H1N' are rejected by the package
        return zip_code
    if not match or not match[0].get("county") or not match[0].get("state"):
        return zip_code
    county = match[0]["county"]
    if county.endswith(" County"):
        county = county[: -len(" County")]
    return f"{county} county, {match[0]['state']}"


# ------------------------------------------------------------------------------------------------ files
def _read_rows(path: Path, sep: str, ncols: int, encoding: str = "latin-1", min_cols: int | None = None):
    if not path.is_file():
        raise EnvError(f"MovieLens file not found: {path}")
    rows = []
    with open(path, encoding=encoding, newline="") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split(sep)
            if len(parts) < (min_cols or ncols) or (min_cols is None and len(parts) != ncols):
                raise EnvError(f"malformed MovieLens file {path}, line {lineno}: expected {ncols} fields "
                               f"separated by {sep!r}, got {len(parts)}: {line[:80]!r}")
            rows.append((lineno, parts))
    if not rows:
        raise EnvError(f"malformed MovieLens file {path}: it is empty")
    return rows


def _int(path: Path, lineno: int, what: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise EnvError(f"malformed MovieLens file {path}, line {lineno}: {what} {value!r} is not an integer") \
            from None


def _ratings(path: Path, sep: str) -> np.ndarray:
    rows = _read_rows(path, sep, 4)
    out = np.empty((len(rows), 3), np.int64)
    for i, (lineno, p) in enumerate(rows):
        out[i] = (_int(path, lineno, "user id", p[0]), _int(path, lineno, "movie id", p[1]),
                  _int(path, lineno, "rating", p[2]))
        if not 1 <= out[i, 2] <= 5:
            raise EnvError(f"malformed MovieLens file {path}, line {lineno}: rating {p[2]!r} is not in 1..5")
    return out


def detect_format(directory: Path) -> str:
    if (directory / "u.data").exists() or (directory / "u.user").exists():
        return "ml-100k"
    if (directory / "ratings.dat").exists() or (directory / "users.dat").exists():
        return "ml-1m"
    raise EnvError(f"MovieLens directory {directory} holds neither ml-100k files (u.data, u.user, u.item) "
                   f"nor ml-1m files (ratings.dat, users.dat, movies.dat)")


def load_movielens(data_dir: str | Path, num_arms: int, rank: int = 10, seed: int = 0) -> MovieLensData:
    """Read a local ml-100k or ml-1m directory (format detected from its files); cached while the files are
    unchanged, so a sweep over many cells parses them once."""
    directory = Path(data_dir).expanduser()
    if not directory.is_dir():
        raise EnvError(f"option 'data_dir': MovieLens directory not found: {directory}")
    stamp = tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in directory.iterdir() if p.is_file()))
    return _load_cached(directory.resolve(), num_arms, rank, seed, stamp)


@functools.lru_cache(maxsize=8)
def _load_cached(directory: Path, num_arms: int, rank: int, seed: int, stamp: tuple) -> MovieLensData:
    fmt = detect_format(directory)
    if fmt == "ml-100k":
        ratings = _ratings(directory / "u.data", "\t")
        user_rows = _read_rows(directory / "u.user", "|", 5)
        item_rows = _read_rows(directory / "u.item", "|", 24, min_cols=3)
        users = {}
        for lineno, p in user_rows:
            path = directory / "u.user"
            gender = p[2].strip().upper()
            if gender not in ("M", "F"):
                raise EnvError(f"malformed MovieLens file {path}, line {lineno}: gender {p[2]!r} is not M or F")
            users[_int(path, lineno, "user id", p[0])] = (gender == "M", _int(path, lineno, "age", p[1]),
                                                          p[3].strip(), p[4].strip())
        titles = {_int(directory / "u.item", ln, "movie id", p[0]): p[1] for ln, p in item_rows}
        occupations_known = OCCUPATIONS_100K
    else:
        ratings = _ratings(directory / "ratings.dat", "::")
        user_rows = _read_rows(directory / "users.dat", "::", 5)
        movie_rows = _read_rows(directory / "movies.dat", "::", 3)
        users = {}
        path = directory / "users.dat"
        for lineno, p in user_rows:
            gender = p[1].strip().upper()
            if gender not in ("M", "F"):
                raise EnvError(f"malformed MovieLens file {path}, line {lineno}: gender {p[1]!r} is not M or F")
            occ = _int(path, lineno, "occupation", p[3])
            if not 0 <= occ < len(OCCUPATIONS_1M):
                raise EnvError(f"malformed MovieLens file {path}, line {lineno}: occupation code {occ} "
                               f"is not in 0..{len(OCCUPATIONS_1M) - 1}")
            users[_int(path, lineno, "user id", p[0])] = (gender == "M", _int(path, lineno, "age", p[2]),
                                                          OCCUPATIONS_1M[occ], p[4].strip())
        titles = {_int(directory / "movies.dat", ln, "movie id", p[0]): p[1] for ln, p in movie_rows}
        occupations_known = OCCUPATIONS_1M

    movie_ids, counts = np.unique(ratings[:, 1], return_counts=True)
    if len(movie_ids) < num_arms:
        raise EnvError(f"option 'num_arms': {num_arms} movies asked for but {directory} has ratings for only "
                       f"{len(movie_ids)}")
    order = np.lexsort((movie_ids, -counts))  # most rated first, ties by id
    top = movie_ids[order[:num_arms]]
    missing = [int(m) for m in top if int(m) not in titles]
    if missing:
        raise EnvError(f"malformed MovieLens directory {directory}: movie ids {missing[:5]} are rated but have "
                       f"no title")
    user_ids = np.array(sorted(users))
    unknown = np.setdiff1d(np.unique(ratings[:, 0]), user_ids)
    if unknown.size:
        raise EnvError(f"malformed MovieLens directory {directory}: user ids {unknown[:5].tolist()} are rated "
                       f"but missing from the users file")
    np.random.RandomState(seed).shuffle(user_ids)  # BanditBench shuffles users before the train/eval split
    row_of_sorted = np.argsort(user_ids)                 # user id -> row after the shuffle
    rows = row_of_sorted[np.searchsorted(user_ids[row_of_sorted], ratings[:, 0])]
    col_order = np.argsort(top)
    pos = np.searchsorted(top[col_order], ratings[:, 1])
    hit = (pos < num_arms) & (top[col_order][np.minimum(pos, num_arms - 1)] == ratings[:, 1])
    matrix = np.zeros((len(user_ids), num_arms), np.float64)
    matrix[rows[hit], col_order[pos[hit]]] = ratings[hit, 2]   # a repeated (user, movie) keeps the last rating
    prefs, expected = low_rank_model(matrix, rank)

    occupations = list(occupations_known)
    location_of_zip: dict[str, str] = {}
    locations: list[str] = []
    gender, age, occ, loc = (np.zeros(len(user_ids), np.int32) for _ in range(4))
    for i, u in enumerate(user_ids):
        is_male, a, o, z = users[int(u)]
        if o not in occupations:
            occupations.append(o)
        if z not in location_of_zip:
            location_of_zip[z] = zip_to_location(z)
        place = location_of_zip[z]
        if place not in locations:
            locations.append(place)
        gender[i], age[i], occ[i], loc[i] = int(is_male), a, occupations.index(o), locations.index(place)
    return MovieLensData(user_gender=gender, user_age=age, user_occupation=occ, user_location=loc,
                         user_prefs=prefs, expected_rewards=expected,
                         movie_titles=tuple(_display_title(titles[int(m)]) for m in top),
                         occupations=tuple(occupations), locations=tuple(locations), source=str(directory))


def synthetic_movielens(num_arms: int, num_users: int = 1000, rank: int = 10, seed: int = 0,
                        density: float = 0.5) -> MovieLensData:
    """A MovieLens-shaped population: demographics drive latent tastes, sparse 1..5 ratings, then the same
    SVD model as the real loader."""
    rng = np.random.default_rng(seed)
    n, k, d = num_users, num_arms, 4
    gender = (rng.random(n) < 0.7).astype(np.int32)
    age = np.clip(np.round(rng.gamma(6.0, 5.5, n) + 7), 7, 73).astype(np.int32)
    occ = rng.integers(0, len(OCCUPATIONS_100K), n).astype(np.int32)
    loc = rng.integers(0, len(SYNTHETIC_LOCATIONS), n).astype(np.int32)
    # Latent tastes: a demographic part (gender, age, occupation) plus an individual part.
    occ_effect = rng.normal(0, 0.6, (len(OCCUPATIONS_100K), d))
    taste = (0.8 * (2 * gender[:, None] - 1) * rng.normal(0, 1, d)[None]
             + ((age[:, None] - 33) / 15.0) * rng.normal(0, 0.7, d)[None]
             + occ_effect[occ] + rng.normal(0, 1, (n, d)))
    movie_factor = rng.normal(0, 0.5, (k, d))
    quality = rng.normal(3.6, 0.4, k)
    ratings = np.clip(np.round(quality[None] + taste @ movie_factor.T + rng.normal(0, 0.7, (n, k))), 1, 5)
    popularity = np.linspace(1.0, 0.4, k)  # the top movies are rated by most users, like the real data
    seen = rng.random((n, k)) < np.clip(density * 2 * popularity[None], 0, 1)
    prefs, expected = low_rank_model(np.where(seen, ratings, 0.0), rank)
    titles = tuple(POPULAR_TITLES[i] if i < len(POPULAR_TITLES) else f"Movie {i + 1}" for i in range(k))
    return MovieLensData(user_gender=gender, user_age=age, user_occupation=occ, user_location=loc,
                         user_prefs=prefs, expected_rewards=expected, movie_titles=titles,
                         occupations=OCCUPATIONS_100K, locations=SYNTHETIC_LOCATIONS, source="synthetic")
