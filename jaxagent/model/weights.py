"""Model weights on disk: Hugging Face ``google/gemma-2-*`` directories (import and export) and Orbax.

HF import checks every tensor's presence, shape and file extent before anything is loaded, then builds each
parameter straight into its target sharding: every device shard is read from the memory-mapped safetensors
file(s) one layer at a time, so the host never holds a second copy of the model.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jaxagent.model.config import CheckpointError, GemmaConfig
from jaxagent.model.gemma import param_shapes

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
DTYPE_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
MAX_SHARD_BYTES = 4 << 30


class SafetensorsFile:
    """A memory-mapped ``.safetensors`` file: header checked on open, tensors read lazily as numpy views."""

    def __init__(self, path: Path):
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{self.path}: truncated safetensors file (no header)")
            (n,) = struct.unpack("<Q", head)
            if 8 + n > size:
                raise CheckpointError(f"{self.path}: truncated safetensors file (header of {n} bytes, file {size})")
            try:
                header = json.loads(f.read(n))
            except ValueError as e:
                raise CheckpointError(f"{self.path}: unreadable safetensors header ({e})") from None
        header.pop("__metadata__", None)
        self.base = 8 + n
        self.entries = header
        for name, e in header.items():
            if e["dtype"] not in DTYPES:
                raise CheckpointError(f"{self.path}: tensor {name} has unsupported dtype {e['dtype']}")
            if self.base + e["data_offsets"][1] > size:
                raise CheckpointError(f"{self.path}: truncated: tensor {name} needs bytes up to "
                                      f"{self.base + e['data_offsets'][1]}, the file has {size}")
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r") if size else None

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        e = self.entries[name]
        start, stop = e["data_offsets"]
        raw = self._map[self.base + start:self.base + stop]
        return raw.view(DTYPES[e["dtype"]]).reshape(e["shape"])


def write_safetensors(path: Path, tensors: dict[str, tuple[tuple[int, ...], np.dtype, callable]]) -> None:
    """Write ``name -> (shape, dtype, fetch)``; ``fetch()`` is called once per tensor, in order, while writing."""
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


# Our parameter name -> (HF name pattern, HF tensor -> our layout, our layout -> HF tensor).
def _hf_layout(cfg: GemmaConfig):
    D, H, K, hd = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    same = (lambda a: a, lambda a: a)
    t = (lambda a: a.T, lambda a: a.T)
    return {
        "embed": ("model.embed_tokens.weight", *same),
        "final_norm": ("model.norm.weight", *same),
        "layers/attn_norm": ("model.layers.{}.input_layernorm.weight", *same),
        "layers/post_attn_norm": ("model.layers.{}.post_attention_layernorm.weight", *same),
        "layers/ffw_norm": ("model.layers.{}.pre_feedforward_layernorm.weight", *same),
        "layers/post_ffw_norm": ("model.layers.{}.post_feedforward_layernorm.weight", *same),
        "layers/q": ("model.layers.{}.self_attn.q_proj.weight", lambda a: a.T.reshape(D, H, hd),
                     lambda a: a.reshape(D, H * hd).T),
        "layers/k": ("model.layers.{}.self_attn.k_proj.weight", lambda a: a.T.reshape(D, K, hd),
                     lambda a: a.reshape(D, K * hd).T),
        "layers/v": ("model.layers.{}.self_attn.v_proj.weight", lambda a: a.T.reshape(D, K, hd),
                     lambda a: a.reshape(D, K * hd).T),
        "layers/o": ("model.layers.{}.self_attn.o_proj.weight", lambda a: a.T.reshape(H, hd, D),
                     lambda a: a.reshape(H * hd, D).T),
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


def _open_tensors(path: Path) -> dict[str, SafetensorsFile]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = {f: SafetensorsFile(path / f) for f in sorted(set(weight_map.values())) if (path / f).is_file()}
        missing = sorted(set(weight_map.values()) - set(files))
        if missing:
            raise CheckpointError(f"{index}: shard file {missing[0]} is missing")
        return {name: files[f] for name, f in weight_map.items()}
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(f"{path}: no *.safetensors files")
    return {name: f for f in map(SafetensorsFile, shards) for name in f.entries}


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
            got = tensors[name].shape(name)
            if got != expected:
                raise CheckpointError(f"{tensors[name].path}: tensor {name} has shape {list(got)}, "
                                      f"expected {list(expected)}")
    flat_shardings = _flat(shardings) if shardings is not None else {}
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    params = {}
    for ours, (pattern, from_hf, _) in layout.items():
        names = _hf_names(cfg, ours, pattern)
        stacked = ours.startswith("layers/")

        def shard(index, names=names, stacked=stacked, from_hf=from_hf):
            if not stacked:
                return np.asarray(from_hf(tensors[names[0]].get(names[0]))[index], dtype)
            rows = range(cfg.num_layers)[index[0]]
            return np.stack([np.asarray(from_hf(tensors[names[i]].get(names[i]))[index[1:]], dtype) for i in rows])

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

    path = Path(path).absolute()
    path.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path / "params", params, force=True)
    architecture = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "kernels"}
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
