"""Run Python in a subprocess with N fake CPU devices: JAX fixes its device count when it starts."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# XLA:CPU's concurrency-optimised scheduler lets one fake device run two collectives at once; with many devices on
# a small host thread pool that can starve a device and deadlock the rendezvous.
FLAGS = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def run_on_cpu_devices(count: int, args: list[str], timeout: int = 600, optimised: bool = False) -> str:
    """The stdout of ``python *args`` on ``count`` CPU devices; the calling test fails with its stderr if it fails.
    ``optimised``: LLVM optimisation level 1 instead of the suite's 0, for children that run longer than they
    compile."""
    flags = os.environ.get("XLA_FLAGS", "")
    if optimised:
        flags = re.sub(r"--xla_backend_optimization_level=\d+", "--xla_backend_optimization_level=1", flags)
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={count} {FLAGS}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout
