"""Model weights on disk: Hugging Face ``google/gemma-2-*`` directories (import and export) and Orbax.

HF import checks every tensor's presence and shape before anything is loaded, then builds each parameter straight
into its target sharding: every device shard reads only its slice of the memory-mapped safetensors file(s), one
layer at a time, so the host never holds a second copy of the model.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import ml_dtypes  # registers bfloat16 with numpy, which safetensors' numpy reader needs
import numpy as np
from etils import epath
from safetensors import SafetensorError, safe_open

from jaxagent.model.config import CheckpointError, GemmaConfig
from jaxagent.model.gemma import param_shapes

DTYPE_NAMES = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
               np.dtype(ml_dtypes.bfloat16): "BF16"}
MAX_SHARD_BYTES = 4 << 30


def write_safetensors(path: Path, tensors: dict[str, tuple[tuple[int, ...], np.dtype, callable]]) -> None:
    """Write ``name -> (shape, dtype, fetch)``; ``fetch()`` is called once per tensor, in order, while writing.
    Our own writer because the library's (``safetensors.numpy.save_file``) takes every tensor in host memory at
    once: exporting a sharded model would gather a second copy of it."""
    header, offset = {}, 0
    for name, (shape, dtype, _) in tensors.items():
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": DTYPE_NAMES[np.dtype(dtype)], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name, (shape, dtype, fetch) in tensors.items():
            arr = np.ascontiguousarray(np.asarray(fetch(), dtype=dtype))
            if arr.shape != tuple(shape):
                raise ValueError(f"{path}: tensor {name} has shape {arr.shape}, expected {tuple(shape)}")
            f.write(arr.tobytes())


# Our parameter name -> (HF name pattern, read, to_hf). ``read(get, index)`` is our tensor's block ``index`` (a
# tuple of slices) built from ``get(*hf_index)``, which reads that slice of the HF tensor; ``to_hf`` maps our
# (per-layer) tensor to HF's.
def _hf_layout(cfg: GemmaConfig):
    D, H, K, hd = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

    def heads(n: slice, count: int) -> slice:
        """The rows of HF's ``[count * hd, ...]`` projection that hold heads ``n``."""
        picked = range(count)[n]
        return slice(picked.start * hd, picked.stop * hd)

    same = (lambda get, ix: get(*ix), lambda a: a)
    t = (lambda get, ix: get(ix[1], ix[0]).T, lambda a: a.T)

    def projection(count: int):  # ours [D, N, hd] <- HF [N * hd, D]
        def read(get, ix):
            d, n, h = ix
            rows = get(heads(n, count), d).T  # [D', N' * hd]
            return rows.reshape(rows.shape[0], -1, hd)[:, :, h]
        return read, lambda a: a.reshape(D, count * hd).T

    def read_output(get, ix):  # ours [H, hd, D] <- HF [D, H * hd]
        n, h, d = ix
        cols = get(d, heads(n, H)).T  # [N' * hd, D']
        return cols.reshape(-1, hd, cols.shape[1])[:, h]

    return {
        "embed": ("model.embed_tokens.weight", *same),
        "final_norm": ("model.norm.weight", *same),
        "layers/attn_norm": ("model.layers.{}.input_layernorm.weight", *same),
        "layers/post_attn_norm": ("model.layers.{}.post_attention_layernorm.weight", *same),
        "layers/ffw_norm": ("model.layers.{}.pre_feedforward_layernorm.weight", *same),
        "layers/post_ffw_norm": ("model.layers.{}.post_feedforward_layernorm.weight", *same),
        "layers/q": ("model.layers.{}.self_attn.q_proj.weight", *projection(H)),
        "layers/k": ("model.layers.{}.self_attn.k_proj.weight", *projection(K)),
        "layers/v": ("model.layers.{}.self_attn.v_proj.weight", *projection(K)),
        # ours [H, hd, D] <- HF [D, H * hd]
        "layers/o": ("model.layers.{}.self_attn.o_proj.weight", read_output, lambda a: a.reshape(H * hd, D).T),
        "layers/gate": ("model.layers.{}.mlp.gate_proj.weight", *t),
        "layers/up": ("model.layers.{}.mlp.up_proj.weight", *t),
        "layers/down": ("model.layers.{}.mlp.down_proj.weight", *t),
    }


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = v
    return out


def _unflat(flat: dict) -> dict:
    out: dict = {}
    for name, v in flat.items():
        *parents, leaf = name.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def _hf_names(cfg: GemmaConfig, ours: str, pattern: str) -> list[str]:
    return [pattern.format(i) for i in range(cfg.num_layers)] if ours.startswith("layers/") else [pattern]


def read_hf_config(path: str | Path) -> GemmaConfig:
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path}: no config.json (not a Hugging Face checkpoint directory)")
    try:
        return GemmaConfig.from_hf_config(json.loads(cfg_file.read_text()))
    except ValueError as e:
        raise CheckpointError(f"{cfg_file}: {e}") from None


def _open_file(path: Path):
    try:
        return safe_open(str(path), framework="numpy")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a complete safetensors file ({e})") from None


def _open_tensors(path: Path) -> dict[str, tuple[Path, object]]:
    """Each tensor's file and that file's open (memory-mapped) safetensors handle."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        missing = sorted(f for f in set(weight_map.values()) if not (path / f).is_file())
        if missing:
            raise CheckpointError(f"{index}: shard file {missing[0]} is missing")
        files = {f: (path / f, _open_file(path / f)) for f in sorted(set(weight_map.values()))}
        return {name: files[f] for name, f in weight_map.items()}
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(f"{path}: no *.safetensors files")
    return {name: (f, handle) for f in shards for handle in (_open_file(f),) for name in handle.keys()}


def load_hf(path: str | Path, dtype=jnp.float32, shardings=None) -> tuple[GemmaConfig, dict]:
    """Load an HF Gemma 2 directory as ``(config, params)``; ``shardings`` is a pytree of target shardings."""
    path = Path(path)
    cfg = read_hf_config(path)
    tensors = _open_tensors(path)
    layout, shapes = _hf_layout(cfg), _flat(param_shapes(cfg))
    for ours, (pattern, _, to_hf) in layout.items():
        expected = to_hf(np.empty(shapes[ours][1:] if ours.startswith("layers/") else shapes[ours])).shape
        for name in _hf_names(cfg, ours, pattern):
            if name not in tensors:
                raise CheckpointError(f"{path}: tensor {name} is missing")
            file, handle = tensors[name]
            got = tuple(handle.get_slice(name).get_shape())
            if got != expected:
                raise CheckpointError(f"{file}: tensor {name} has shape {list(got)}, expected {list(expected)}")

    def reader(name: str) -> Callable:
        file, handle = tensors[name]

        def get(*hf_index):
            try:
                return handle.get_slice(name)[hf_index]
            except (SafetensorError, TypeError) as e:
                raise CheckpointError(f"{file}: tensor {name} cannot be read ({e})") from None
        return get

    flat_shardings = _flat(shardings) if shardings is not None else {}
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    params = {}
    for ours, (pattern, read, _) in layout.items():
        names = _hf_names(cfg, ours, pattern)

        def shard(index, names=names, read=read, stacked=ours.startswith("layers/")):
            if not stacked:
                return np.asarray(read(reader(names[0]), index), dtype)
            layers = range(cfg.num_layers)[index[0]]
            return np.stack([np.asarray(read(reader(names[i]), index[1:]), dtype) for i in layers])

        params[ours] = jax.make_array_from_callback(shapes[ours], flat_shardings.get(ours, device), shard)
    return cfg, _unflat(params)


def save_hf(params: dict, cfg: GemmaConfig, path: str | Path, dtype=None) -> None:
    """Write an HF Gemma 2 directory (config.json + safetensors, sharded with an index past 4 GiB)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    flat = _flat(params)
    out_dtype = np.dtype(dtype or flat["embed"].dtype)
    tensors = {}
    for ours, (pattern, _, to_hf) in _hf_layout(cfg).items():
        for i, name in enumerate(_hf_names(cfg, ours, pattern)):
            arr = flat[ours]
            fetch = (lambda a=arr, i=i, f=to_hf: f(np.asarray(a[i]))) if ours.startswith("layers/") else \
                (lambda a=arr, f=to_hf: f(np.asarray(a)))
            shape = to_hf(np.empty(arr.shape[1:] if ours.startswith("layers/") else arr.shape)).shape
            tensors[name] = (shape, out_dtype, fetch)
    shards, size = [{}], 0
    for name, entry in tensors.items():
        nbytes = int(np.prod(entry[0])) * out_dtype.itemsize
        if shards[-1] and size + nbytes > MAX_SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = entry
        size += nbytes
    if len(shards) == 1:
        write_safetensors(path / "model.safetensors", shards[0])
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(path / fname, shard)
            weight_map.update(dict.fromkeys(shard, fname))
        (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    hf = cfg.to_hf_config()
    hf["dtype"] = {np.dtype(np.float32): "float32", np.dtype(ml_dtypes.bfloat16): "bfloat16",
                   np.dtype(np.float16): "float16"}.get(out_dtype, "float32")
    (path / "config.json").write_text(json.dumps(hf, indent=2) + "\n")


ORBAX_CONFIG = "jaxagent_model.json"


def save_orbax(params: dict, cfg: GemmaConfig, path: str | Path) -> None:
    import dataclasses
    import orbax.checkpoint as ocp

    path = epath.Path(path)  # a local path or a bucket URL (absolute already)
    path = path if path.is_absolute() else path.absolute()
    path.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path / "params", params, force=True)
    architecture = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("kernels", "compute_dtype", "remat")}
    if jax.process_index() == 0:  # every process writes its shards above; one writes the config
        (path / ORBAX_CONFIG).write_text(json.dumps(architecture, indent=2) + "\n")


def load_orbax(path: str | Path, dtype=jnp.float32, shardings=None) -> tuple[GemmaConfig, dict]:
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if not (path / ORBAX_CONFIG).is_file() or not (path / "params").is_dir():
        raise CheckpointError(f"{path}: not a jaxagent Orbax checkpoint (needs {ORBAX_CONFIG} and params/)")
    cfg = GemmaConfig(**json.loads((path / ORBAX_CONFIG).read_text()))
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(path / "params")
        tree = getattr(meta, "item_metadata", meta)
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        flat_sh = _flat(shardings) if shardings is not None else {}
        abstract = _unflat({k: jax.ShapeDtypeStruct(tuple(m.shape), dtype, sharding=flat_sh.get(k, device))
                            for k, m in _flat(dict(tree)).items()})
        params = ckptr.restore(path / "params", abstract)
    return cfg, params
