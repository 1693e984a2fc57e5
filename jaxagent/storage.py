"""Run directories and model checkpoints in a bucket (``gs://``, ``s3://``), through etils ``epath`` (gcsfs for
``gs://``) and Orbax, which read and write those paths themselves.

A run whose ``run.output_dir`` is a bucket URL keeps its Orbax directories there: the training checkpoints and the
final ``policy/``, written by every process of a multi-host run (what a TPU pod needs: one storage all hosts
share). Its other files (``run.json``, TensorBoard events, summaries, figures, samples), written by process 0 alone,
live in a local mirror of the run directory that is copied up after every checkpoint and at the end, and copied
down when the run starts, so that the same command resumes it on a fresh machine. A bucket ``model.checkpoint`` is
copied down once into the mirror.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from etils import epath

SCHEMES = ("gs://", "s3://")
REMOTE_ONLY = ("checkpoints", "policy")  # Orbax directories: written and read in the bucket itself
_pushed: dict[Path, tuple[int, int]] = {}  # local file -> (size, mtime) when last copied up


def is_url(path) -> bool:
    return str(path).startswith(SCHEMES)


def mirror_root() -> Path:
    """Where bucket paths are mirrored on this machine: ``$JAXAGENT_MIRROR``, or ``~/.cache/jaxagent/mirror``."""
    root = os.environ.get("JAXAGENT_MIRROR") or Path(os.path.expanduser("~")) / ".cache" / "jaxagent" / "mirror"
    return Path(root).absolute()


def local_for(url: str) -> Path:
    """The local mirror of a bucket URL: ``gs://b/runs/x`` -> ``<mirror root>/gs/b/runs/x``."""
    scheme, rest = str(url).split("://", 1)
    return mirror_root() / scheme / rest.strip("/")


def url_for(path) -> str | None:
    """The bucket URL a local mirror path stands for; None for a path outside the mirror."""
    try:
        scheme, *rest = Path(path).absolute().relative_to(mirror_root()).parts
    except ValueError:
        return None
    return f"{scheme}://" + "/".join(rest)


def durable(path) -> epath.Path:
    """Where Orbax writes what belongs under ``path``: the bucket for a mirror path or a URL, else ``path``."""
    url = str(path) if is_url(path) else url_for(path)
    return epath.Path(url) if url else epath.Path(Path(path).absolute())


def _files(root: epath.Path, skip: tuple[str, ...]):
    """The files under ``root``, leaving out directories named in ``skip`` at any depth."""
    for entry in root.iterdir():
        if entry.is_dir():
            if entry.name not in skip:
                yield from _files(entry, skip)
        else:
            yield entry


def _copy(src, dst) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with src.open("rb") as f, dst.open("wb") as g:
        shutil.copyfileobj(f, g, 1 << 24)


def pull(local: Path) -> None:
    """Copy the bucket's files of a mirrored directory down (its Orbax directories excepted)."""
    remote = epath.Path(url_for(local))
    if not remote.is_dir():
        return
    for src in _files(remote, REMOTE_ONLY):
        dst = local / src.relative_to(remote)
        _copy(src, epath.Path(dst))
        _pushed[dst] = _signature(dst)


def _signature(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def publish(local: Path) -> None:
    """:func:`push` a directory written by process 0, where it mirrors a bucket's (else nothing)."""
    import jax

    if url_for(local) and jax.process_index() == 0:
        push(local)


def push(local: Path) -> None:
    """Copy a mirrored directory's new and changed files up to its bucket."""
    remote = epath.Path(url_for(local))
    for src in _files(epath.Path(local), REMOTE_ONLY):
        path = Path(src)
        if _pushed.get(path) != _signature(path):
            _copy(src, remote / path.relative_to(local))
            _pushed[path] = _signature(path)


def _listing(remote: epath.Path) -> dict[str, int]:
    """Each file under ``remote`` and its size in bytes."""
    return {str(f.relative_to(remote)): int(f.stat().length) for f in _files(remote, ())}


def local_copy(url: str) -> Path:
    """A bucket directory (e.g. an HF Gemma 2 checkpoint) copied down into the mirror, again only where the bucket's
    files (names and sizes) changed since; processes sharing a machine each copy it, the first to finish keeps its
    copy."""
    local, remote = local_for(url), epath.Path(url)
    if not remote.is_dir():
        raise FileNotFoundError(f"{url}: no such directory")
    listing = json.dumps(_listing(remote), sort_keys=True)
    marker = local / ".copied"
    if marker.is_file() and marker.read_text() == listing:
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    part = Path(tempfile.mkdtemp(prefix=f"{local.name}.part", dir=local.parent))
    for src in _files(remote, ()):
        _copy(src, epath.Path(part / src.relative_to(remote)))
    (part / ".copied").write_text(listing)
    if marker.is_file():  # an older copy: set aside, then replaced
        stale = Path(tempfile.mkdtemp(prefix=f"{local.name}.stale", dir=local.parent))
        local.rename(stale / local.name)
        shutil.rmtree(stale)
    try:
        part.rename(local)
    except OSError:  # another process finished first, or an earlier copy was cut short
        shutil.rmtree(part)
        if not marker.is_file():
            raise
    return local
