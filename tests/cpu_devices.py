"""Run Python in a subprocess with N fake CPU devices: JAX fixes its device count when it starts."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# XLA:CPU's concurrency-optimised scheduler lets one fake device run two collectives at once; with many devices on
# a small host thread pool that can starve a device and deadlock the rendezvous.
_FLAGS = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def run_on_cpu_devices(count: int, args: list[str], timeout: int = 600) -> str:
    """The stdout of ``python *args`` on ``count`` CPU devices; the calling test fails with its stderr if it fails."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count} {_FLAGS}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout
