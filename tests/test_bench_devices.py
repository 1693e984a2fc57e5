"""``jaxagent.bench.over_devices``: with N CPU devices the benchmarks split their rows over a data mesh."""
import os
import subprocess
import sys

from cpu_devices import ROOT, run_on_cpu_devices

SCRIPT = """
import jax, jax.numpy as jnp
from jaxagent.bench import over_devices

assert jax.device_count() == 2
params = {"embed": jnp.ones((16, 4)), "layers": {"q": jnp.ones((2, 4, 2, 2))}}
params, (rows, lengths) = over_devices(params, (jnp.ones((6, 3)), jnp.arange(6)))
assert [s.data.shape for s in lengths.addressable_shards] == [(3,), (3,)]
assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(params))
assert [s.data.shape for s in rows.addressable_shards] == [(3, 3), (3, 3)]
odd, = over_devices({}, (jnp.ones((5, 2)),))[1]  # rows that do not divide evenly stay whole
assert odd.sharding.is_fully_replicated
print("ok")
"""


def test_rows_split_over_two_cpu_devices_and_parameters_replicated():
    assert run_on_cpu_devices(2, ["-c", SCRIPT], timeout=300).strip() == "ok"


def _device_count_after_host_devices(count: int, xla_flags: str) -> int:
    env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    script = f"from jaxagent.cli import _host_devices; _host_devices({count}); import jax; print(jax.device_count())"
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return int(proc.stdout.strip())


def test_bench_command_makes_one_cpu_device_per_core_unless_xla_flags_say_otherwise():
    assert _device_count_after_host_devices(3, "") == 3
    assert _device_count_after_host_devices(1, "") == 1
    assert _device_count_after_host_devices(3, "--xla_force_host_platform_device_count=2") == 2
