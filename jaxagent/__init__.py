"""jaxagent: tune LLMs (Gemma 2) into decision-making agents with RL fine-tuning (RLFT), in JAX."""
import os

__version__ = "0.1.0"

# XLA:CPU's YNNPACK fusions run this package's small decode matmuls and attention reductions 1.4-2x slower than
# XLA's own kernels; they are turned off unless XLA_FLAGS already chooses. This only takes effect when jaxagent is
# imported before JAX starts its CPU backend, and has no effect on GPU or TPU.
_YNN = "xla_cpu_experimental_ynn_fusion_type"
if _YNN not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --{_YNN}=".strip()


def __getattr__(name: str):
    # Lazy, so that `import jaxagent` does not import JAX.
    if name == "load_policy":
        from jaxagent.model.policy import load_policy

        return load_policy
    raise AttributeError(f"module 'jaxagent' has no attribute {name!r}")
