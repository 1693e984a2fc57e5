"""jaxagent: tune LLMs (Gemma 2) into decision-making agents with RLFT and EEF, in JAX."""

__version__ = "0.1.0"
