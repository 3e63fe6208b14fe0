"""The gpt-oss model shapes, and what they weigh: before any download, from the config alone.

The presets hold the published configs of gpt-oss-20b and gpt-oss-120b; any ``GptOssConfig`` (or a
dict with the same keys) can be sized the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .mxfp4 import packed_bytes


@dataclass(frozen=True)
class Shape:
    """The numbers that decide a gpt-oss model's size (field names as in ``GptOssConfig``)."""

    num_hidden_layers: int
    num_local_experts: int
    num_experts_per_tok: int = 4
    hidden_size: int = 2880
    intermediate_size: int = 2880
    num_attention_heads: int = 64
    num_key_value_heads: int = 8
    head_dim: int = 64
    vocab_size: int = 201088
    tie_word_embeddings: bool = False

    @classmethod
    def of(cls, config: Any) -> Shape:
        """Read a ``GptOssConfig``, a config dict or a ``Shape``."""
        if isinstance(config, Shape):
            return config
        get = config.get if isinstance(config, Mapping) else lambda k, d=None: getattr(config, k, d)
        kwargs = {}
        for name in cls.__dataclass_fields__:
            value = get(name, None)
            if value is not None:
                kwargs[name] = value
        if "head_dim" not in kwargs and "hidden_size" in kwargs and "num_attention_heads" in kwargs:
            kwargs["head_dim"] = kwargs["hidden_size"] // kwargs["num_attention_heads"]
        return cls(**kwargs)


@dataclass(frozen=True)
class Preset:
    name: str
    hub_id: str
    shape: Shape


PRESETS: dict[str, Preset] = {
    "gpt-oss-20b": Preset("gpt-oss-20b", "openai/gpt-oss-20b", Shape(num_hidden_layers=24, num_local_experts=32)),
    "gpt-oss-120b": Preset("gpt-oss-120b", "openai/gpt-oss-120b", Shape(num_hidden_layers=36, num_local_experts=128)),
}


def preset_for(model: str) -> Preset | None:
    """The preset a hub id or name refers to (``openai/gpt-oss-20b``, ``gpt-oss-20b``), if any."""
    key = model.rstrip("/").split("/")[-1].lower()
    return PRESETS.get(key)


@dataclass(frozen=True)
class Size:
    params: int  # all parameters
    active_params: int  # parameters one token computes with: top-k experts, no embedding lookup
    expert_weights: int  # the expert matrices: what MXFP4 packs
    weights_bytes_mxfp4: int  # experts packed, everything else bf16: the published checkpoints
    weights_bytes_bf16: int  # everything bf16: what a dequantized load holds
    weights_bytes_fp32: int  # everything float32: transformers' CPU inference
    weights_bytes_cpu: int = 0  # the CPU engine: experts packed, dense weights bf16, norms/router/biases/sinks float32
    mapped_bytes_cpu: int = 0  # of which the CPU engine maps from the file (the untied embedding): resident per row read
    kv_values_per_token: int = 0  # keys and values the cache holds per token, all layers

    def bytes_for(self, moe_path: str) -> int:
        return {"mxfp4": self.weights_bytes_mxfp4, "bf16": self.weights_bytes_bf16, "fp32": self.weights_bytes_fp32}[moe_path]


def size_of(config: Any) -> Size:
    """Count parameters and bytes of a gpt-oss model from its config."""
    s = Shape.of(config)
    h, i, e = s.hidden_size, s.intermediate_size, s.num_local_experts
    q, kv = s.num_attention_heads * s.head_dim, s.num_key_value_heads * s.head_dim
    attention = (h * q + q) + 2 * (h * kv + kv) + (q * h + h) + s.num_attention_heads  # q, k, v, o, sinks
    norms = 2 * h
    router = e * h + e
    expert_w = e * (h * 2 * i + i * h)  # gate_up_proj and down_proj
    expert_b = e * (2 * i + h)
    per_layer = attention + norms + router + expert_w + expert_b
    embeddings = s.vocab_size * h * (1 if s.tie_word_embeddings else 2)
    total = s.num_hidden_layers * per_layer + embeddings + h
    expert_weights = s.num_hidden_layers * expert_w
    dense = s.num_hidden_layers * (h * q + 2 * h * kv + q * h) + embeddings  # what stays bf16 on the CPU engine
    small = total - expert_weights - dense  # biases, norms, router, sinks: float32 there
    active = total - expert_weights - s.num_hidden_layers * expert_b
    active += s.num_hidden_layers * s.num_experts_per_tok * (expert_w + expert_b) // e
    if not s.tie_word_embeddings:
        active -= s.vocab_size * h  # the input embedding is a lookup (as OpenAI counts 3.6B / 5.1B)
    return Size(
        params=total,
        active_params=active,
        expert_weights=expert_weights,
        weights_bytes_mxfp4=(total - expert_weights) * 2 + packed_bytes(expert_weights),
        weights_bytes_bf16=total * 2,
        weights_bytes_fp32=total * 4,
        weights_bytes_cpu=packed_bytes(expert_weights) + dense * 2 + small * 4,
        mapped_bytes_cpu=0 if s.tie_word_embeddings else s.vocab_size * h * 2,
        kv_values_per_token=s.num_hidden_layers * 2 * kv,
    )
