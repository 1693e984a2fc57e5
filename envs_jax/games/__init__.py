"""Pure two-player game logic (pgx style), apart from the single-agent wrappers in ``envs_jax``."""
