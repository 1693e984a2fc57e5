"""Joining the processes of a multi-host job (``jax.distributed``), for sweeps and training runs alike."""
from __future__ import annotations

import os

import jax

from envs_jax.yaml_config import ConfigError


def check_keys(prefix: str, distributed: bool, coordinator_address, num_processes, process_id) -> None:
    """The coordinator, process count and index apply to multi-host jobs only, and must agree."""
    for key, value in (("coordinator_address", coordinator_address), ("num_processes", num_processes),
                       ("process_id", process_id)):
        if value is not None and not distributed:
            raise ConfigError(f"config key '{prefix}{key}': applies to multi-host runs only ({prefix}distributed: "
                              f"true), got {value!r}")
    if num_processes is not None and num_processes < 1:
        raise ConfigError(f"config key '{prefix}num_processes': must be >= 1, got {num_processes!r}")
    if process_id is not None and not 0 <= process_id < (num_processes or process_id + 1):
        raise ConfigError(f"config key '{prefix}process_id': must be in [0, {prefix}num_processes={num_processes}), "
                          f"got {process_id!r}")


def _from_environment(value, variable: str, key: str):
    """``value``, or where unset the environment's ``variable`` (a launcher's), as an int."""
    if value is not None or variable not in os.environ:
        return value
    try:
        return int(os.environ[variable])
    except ValueError:
        raise ConfigError(f"config key '{key}': unset, and the environment's {variable}="
                          f"{os.environ[variable]!r} is not a number") from None


def join(prefix: str, coordinator_address, num_processes, process_id) -> None:
    """``jax.distributed.initialize`` (once) with the config's or the launcher's coordinator, process count and
    index (JAX reads ``JAX_COORDINATOR_ADDRESS`` itself); all unset, JAX detects the cluster (TPU, SLURM, Open
    MPI). On CPU the processes' collectives go over gloo (JAX's default)."""
    if jax.distributed.is_initialized():
        return
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=_from_environment(num_processes, "JAX_NUM_PROCESSES", f"{prefix}num_processes"),
        process_id=_from_environment(process_id, "JAX_PROCESS_ID", f"{prefix}process_id"))
