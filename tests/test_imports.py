"""Importing the library changes no process-wide setting: entry points that want a flag set it themselves. The
env package stands alone: none of its modules imports the LLM package."""
import ast
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


def _imported_names(path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module


def test_no_envs_jax_module_imports_jaxagent():
    sources = sorted((ROOT / "envs_jax").rglob("*.py"))
    for path in sources:
        assert not [n for n in _imported_names(path) if n.split(".")[0] == "jaxagent"], path
    modules = [".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in sources]
    code = f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\nprint('jaxagent' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(modules) > 10 and proc.stdout.strip() == "False"
