"""jaxagent: tune LLMs (Gemma 2) into decision-making agents with RL fine-tuning (RLFT), in JAX."""
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so that `import jaxagent` does not import JAX.
    if name == "load_policy":
        from jaxagent.model.policy import load_policy

        return load_policy
    raise AttributeError(f"module 'jaxagent' has no attribute {name!r}")
