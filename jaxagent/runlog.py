"""The run directory: what produced a run (resolved config, package versions, seeds, git commit),
its TensorBoard scalars, and a progress bar for long loops.

Layout of ``runs/<name>/``: ``config.yaml`` (the resolved config), ``run.json`` (versions, seeds,
commit, command line, start times: one entry per start, so a resumed run shows each), ``tb/``
(tensorboardX event files) and, from ``checkpoint.py``, ``checkpoints/``.
"""
from __future__ import annotations

import datetime
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import yaml

from envs_jax.yaml_config import to_dict
from jaxagent import storage

PACKAGES = ("jaxagent", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "numpy", "tensorboardX")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions by distribution name (None where a package is not installed)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(path: str | Path | None = None) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git work tree holding ``path`` (this package by default), or None."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def is_main_process() -> bool:
    """True in the process that writes a run's files (logs, reports, plots): process 0 of a multi-host run."""
    import jax

    return jax.process_index() == 0


def _scalar(value: Any) -> float:
    return float(value.item() if hasattr(value, "item") else value)


class RunLog:
    """Opens (or re-opens, on resume) a run directory, records its provenance and writes scalars (in the main
    process only: the other processes of a multi-host run write nothing). A run directory mirrored from a bucket
    is copied down when opened and up by :meth:`sync` and :meth:`close`."""

    def __init__(self, directory: str | Path, config: Any, seeds: Mapping[str, int], *, flush_secs: int = 30):
        from tensorboardX import SummaryWriter

        self.directory = Path(directory)
        self._writer = None
        if not is_main_process():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self.remote = storage.url_for(self.directory)
        if self.remote:
            storage.pull(self.directory)
        resolved = to_dict(config)
        (self.directory / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        info_path = self.directory / "run.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {"starts": []}
        info["starts"].append({
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "argv": list(sys.argv), "python": platform.python_version(), "host": platform.node(),
            "packages": package_versions(), "git": git_commit(), "seeds": dict(seeds)})
        info_path.write_text(json.dumps(info, indent=2) + "\n")
        # one event file per start: two starts within a second would otherwise share a file name
        self._writer = SummaryWriter(str(self.directory / "tb"), flush_secs=flush_secs,
                                     filename_suffix=f".start{len(info['starts'])}")

    @property
    def checkpoint_dir(self) -> Path:
        return self.directory / "checkpoints"

    def scalars(self, step: int, values: Mapping[str, Any], prefix: str = "") -> None:
        """Write each value (a Python number or a one-element array) as a scalar at ``step``."""
        if self._writer is None:
            return
        for name, value in values.items():
            self._writer.add_scalar(f"{prefix}{name}", _scalar(value), global_step=int(step))

    def samples(self, step: int, phase: str, records: list[dict]) -> None:
        """Append ``records`` (rollout episodes as text), each tagged with ``step``, to ``<phase>/samples.jsonl``."""
        if self._writer is None:
            return
        path = self.directory / phase / "samples.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.writelines(json.dumps({"update": int(step), **record}) + "\n" for record in records)

    def sync(self) -> None:
        """A run directory in a bucket: its new and changed files copied up (a failure is reported, and the next
        sync tries again: the checkpoints are in the bucket already)."""
        if self._writer is not None and self.remote:
            self._writer.flush()
            self._push()

    def _push(self) -> None:
        try:
            storage.push(self.directory)
        except Exception as e:  # whatever the storage client raises
            print(f"jaxagent: copying {self.directory} to {self.remote} failed ({type(e).__name__}: "
                  f"{str(e)[:200]}); it is tried again at the next checkpoint and at the end", file=sys.stderr)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            if self.remote:
                self._push()

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(total: int, desc: str, initial: int = 0, **kwargs: Any):
    """A tqdm bar over ``total`` items, starting at ``initial`` when a run resumes.

    ``bar.update(n)`` advances it, ``bar.set_postfix(loss=...)`` shows live values; extra keyword
    arguments go to tqdm (e.g. ``disable=True``).
    """
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", not is_main_process())
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, **kwargs)
