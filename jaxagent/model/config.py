"""Gemma 2 hyper-parameters: presets for the released sizes, tiny test sizes, and the HF ``config.json`` mapping."""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


KERNELS = ("auto", "cpu", "plain")
REMAT = ("dots", "full")


class CheckpointError(ValueError):
    """A checkpoint or config that cannot be loaded; the message names the file, tensor or key."""


def layer_types_of(num_layers: int) -> list[str]:
    """Gemma 2's attention per layer: sliding-window on even layers, global on odd ones (any count, odd included)."""
    return [("sliding_attention", "full_attention")[i % 2] for i in range(num_layers)]


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    vocab_size: int
    num_layers: int
    d_model: int
    ffw_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    sliding_window: int
    query_pre_attn_scalar: float
    attn_logit_softcap: float | None = 50.0
    final_logit_softcap: float | None = 30.0
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    pad_id: int = 0
    eos_id: int = 1
    bos_id: int = 2
    # Not the architecture: how this process runs it ("auto", "cpu" or "plain"; see jaxagent.model.cpu_kernels),
    # and the dtype it computes in where that differs from the parameters' (e.g. bfloat16 compute from float32
    # master weights: see compute_params). Checkpoints store neither.
    kernels: str = "auto"
    compute_dtype: str | None = None
    remat: str = "dots"  # what training keeps of a layer pair for the backward pass: "dots" (the weight matmuls'
                         # outputs; attention scores are recomputed) or "full" (only its input: least memory)

    def __post_init__(self):
        if self.remat not in REMAT:
            raise ValueError(f"GemmaConfig: remat must be one of {REMAT}, got {self.remat!r}")
        if self.kernels not in KERNELS:
            raise ValueError(f"GemmaConfig: kernels must be one of {KERNELS}, got {self.kernels!r}")
        if self.num_layers < 1:
            raise ValueError(f"GemmaConfig: num_layers must be at least 1, got {self.num_layers}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"GemmaConfig: num_heads {self.num_heads} is not a multiple of "
                             f"num_kv_heads {self.num_kv_heads}")

    def compute_params(self, params):
        """``params`` with their floating arrays cast to ``compute_dtype`` (unchanged without one): applied where a
        model call starts (a rollout, a scoring pass, a generation), outside its loops, so that gradients reach the
        master weights in their own precision."""
        if self.compute_dtype is None:
            return params
        dtype = jnp.dtype(self.compute_dtype)
        return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)

    @property
    def query_scale(self) -> float:
        return 1.0 / math.sqrt(self.query_pre_attn_scalar)

    @property
    def num_params(self) -> int:
        attn = self.d_model * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        layer = attn + 3 * self.d_model * self.ffw_dim + 4 * self.d_model
        return self.vocab_size * self.d_model + self.num_layers * layer + self.d_model

    @classmethod
    def preset(cls, name: str) -> "GemmaConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown Gemma preset {name!r}; known: {sorted(PRESETS)}")
        return PRESETS[name]

    @classmethod
    def from_hf_config(cls, hf: dict) -> "GemmaConfig":
        """Map a Hugging Face Gemma2 ``config.json`` dict; anything that is not Gemma 2 is refused."""
        arch = hf.get("model_type")
        if arch != "gemma2":
            raise CheckpointError(f"config.json: model_type {arch!r} is not 'gemma2' (architectures="
                                  f"{hf.get('architectures')}); only Gemma 2 checkpoints are supported")
        layer_types = hf.get("layer_types")
        n = hf["num_hidden_layers"]
        if layer_types is not None and list(layer_types) != layer_types_of(n):
            raise CheckpointError(f"config.json: layer_types {layer_types} are not Gemma 2's sliding/full "
                                  f"alternation starting with sliding ({layer_types_of(n)}), the only pattern "
                                  f"supported")
        act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
        if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
            raise CheckpointError(f"config.json: hidden_activation {act!r} is not supported (gelu_pytorch_tanh)")
        rope = hf.get("rope_parameters") or {}
        if rope.get("rope_type", "default") != "default":
            raise CheckpointError(f"config.json: rope_type {rope['rope_type']!r} is not supported")
        eos = hf.get("eos_token_id", 1)
        try:
            return cls(
                vocab_size=hf["vocab_size"], num_layers=n, d_model=hf["hidden_size"],
                ffw_dim=hf["intermediate_size"], num_heads=hf["num_attention_heads"],
                num_kv_heads=hf["num_key_value_heads"], head_dim=hf["head_dim"],
                sliding_window=hf["sliding_window"], query_pre_attn_scalar=hf["query_pre_attn_scalar"],
                attn_logit_softcap=hf.get("attn_logit_softcapping"),
                final_logit_softcap=hf.get("final_logit_softcapping"),
                rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
                rms_norm_eps=hf.get("rms_norm_eps", 1e-6), pad_id=hf.get("pad_token_id", 0) or 0,
                eos_id=eos[0] if isinstance(eos, list) else eos, bos_id=hf.get("bos_token_id", 2))
        except KeyError as e:
            raise CheckpointError(f"config.json: missing key {e.args[0]!r}") from None

    def to_hf_config(self) -> dict:
        return {
            "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2",
            "vocab_size": self.vocab_size, "hidden_size": self.d_model, "intermediate_size": self.ffw_dim,
            "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads, "head_dim": self.head_dim,
            "hidden_activation": "gelu_pytorch_tanh", "sliding_window": self.sliding_window,
            "layer_types": layer_types_of(self.num_layers),
            "query_pre_attn_scalar": self.query_pre_attn_scalar,
            "attn_logit_softcapping": self.attn_logit_softcap,
            "final_logit_softcapping": self.final_logit_softcap,
            "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "default"},
            "rms_norm_eps": self.rms_norm_eps, "max_position_embeddings": 8192,
            "pad_token_id": self.pad_id, "eos_token_id": self.eos_id, "bos_token_id": self.bos_id,
            "tie_word_embeddings": True, "attention_bias": False, "attention_dropout": 0.0,
            "initializer_range": 0.02, "use_cache": True,
        }


PRESETS = {
    "gemma2-2b": GemmaConfig(vocab_size=256000, num_layers=26, d_model=2304, ffw_dim=9216, num_heads=8,
                             num_kv_heads=4, head_dim=256, sliding_window=4096, query_pre_attn_scalar=256),
    "gemma2-9b": GemmaConfig(vocab_size=256000, num_layers=42, d_model=3584, ffw_dim=14336, num_heads=16,
                             num_kv_heads=8, head_dim=256, sliding_window=4096, query_pre_attn_scalar=256),
    # 27B scales queries by d_model / num_heads = 144, not by head_dim = 128.
    "gemma2-27b": GemmaConfig(vocab_size=256000, num_layers=46, d_model=4608, ffw_dim=36864, num_heads=32,
                              num_kv_heads=16, head_dim=128, sliding_window=4096, query_pre_attn_scalar=144),
    # The benchmark model: 4.46 M parameters.
    "tiny": GemmaConfig(vocab_size=2048, num_layers=4, d_model=256, ffw_dim=1024, num_heads=4, num_kv_heads=2,
                        head_dim=64, sliding_window=64, query_pre_attn_scalar=64),
    # The quickstart agent (1.1 M parameters, the shipped tokenizer's vocabulary): fast enough to train on 2 CPU cores.
    "nano": GemmaConfig(vocab_size=2048, num_layers=4, d_model=128, ffw_dim=512, num_heads=4, num_kv_heads=2,
                        head_dim=32, sliding_window=64, query_pre_attn_scalar=32),
    # Unit-test size: 2 query heads per kv head, a short window, and a 27B-style query scale.
    "test": GemmaConfig(vocab_size=256, num_layers=4, d_model=64, ffw_dim=128, num_heads=4, num_kv_heads=2,
                        head_dim=16, sliding_window=8, query_pre_attn_scalar=24),
}
