import os
from pathlib import Path

from jaxagent.cli import turn_ynn_fusions_off

# A persistent compilation cache keeps repeated test runs fast; tiny shapes keep first runs fast.
_CACHE = Path(__file__).resolve().parent.parent / ".jax_cache"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compilation dominates a fresh run (the test programs are small and run briefly): skipping LLVM's optimisations
# and XLA's constant folding of the large token tables cuts compile times about threefold, and XLA:CPU's older
# loop emitters in place of its MLIR fusion emitters by another third (test_model_sampler.py from a cold cache:
# 129 s -> 87 s, Zen 1). Subprocesses inherit it.
_FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_disable_hlo_passes=constant_folding "
                 "--xla_cpu_use_fusion_emitters=false")
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()
# The command line's CPU setting (YNNPACK fusions off), so that tests run what the command line runs.
turn_ynn_fusions_off()
# On GPUs, XLA multiplies float32 matrices in TF32 by default; the parity tests compare float32 to float32.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

# The longest files first: `make test` hands whole files to two processes, which then finish close together.
_LONGEST_FIRST = ("test_trainers.py", "test_rlft_learns.py", "test_multihost.py", "test_model_sampler.py", "test_episode.py",
                  "test_text_render.py", "test_objectives.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
