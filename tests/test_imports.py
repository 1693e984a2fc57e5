"""Importing the library changes no process-wide setting: entry points that want a flag set it themselves."""
import subprocess
import sys

from cpu_devices import ROOT

_IMPORT_ALL = """
import os
import jax, jax.numpy, flax, optax, orbax.checkpoint, transformers, tensorboardX  # these set variables of their own
before = dict(os.environ)
import jaxagent, jaxagent.model, jaxagent.rollout, jaxagent.trainers, jaxagent.text, envs_jax
changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
assert not changed, changed
"""


def test_importing_the_library_leaves_the_environment_alone():
    proc = subprocess.run([sys.executable, "-c", _IMPORT_ALL], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]
