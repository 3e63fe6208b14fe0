"""A decoded token's small layers in one call each: transformers' gpt-oss modules with a shorter forward.

On a CPU, a decoded 20b token spent ~20 ms of its ~120 ms outside the weight-reading kernels, in a dozen
torch ops a layer around the norms, the router and the attention's projections (each op a dispatch and
an allocation; the token's 3.7 GB stream has evicted whatever they touched). These classes are
subclasses of transformers' own ``GptOssRMSNorm``, ``GptOssTopKRouter`` and ``GptOssAttention``, swapped
in by class (``swap``), so weights, hooks, ``isinstance`` and transformers' output recording behave as
for the originals. For a few float32 tokens (a decoded token, a short continuation) their forward calls
the extension's fused op (``csrc/layers.cpp``: the same float32 arithmetic in one call); otherwise (a
prefill, another dtype, ``ops`` set to ``None``) it is transformers' forward.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.gpt_oss.modeling_gpt_oss import (
    GptOssAttention,
    GptOssDecoderLayer,
    GptOssRMSNorm,
    GptOssTopKRouter,
    eager_attention_forward,
)

from .attention import NAME as CPU_ATTENTION
from .attention import first_key
from .modules import SMALL_N, DenseLinear, PackedExperts


def _few(x: torch.Tensor) -> bool:
    return x.dtype == torch.float32 and x.device.type == "cpu" and x.numel() // x.shape[-1] <= SMALL_N


class FusedRMSNorm(GptOssRMSNorm):
    ops: Any = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.ops is None or not _few(hidden_states):
            return super().forward(hidden_states)
        return self.ops.rms_norm(hidden_states.contiguous(), self.weight, self.variance_epsilon)


class FusedRouter(GptOssTopKRouter):
    ops: Any = None

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.ops is None or not _few(hidden_states):
            return super().forward(hidden_states)
        return self.ops.router(hidden_states.contiguous(), self.weight, self.bias, self.top_k)


class FusedAttention(GptOssAttention):
    """q, k and v in one pass over their bf16 weights with the rotary embedding applied in the same call;
    the cache update, the attention function and ``o_proj`` are transformers' steps, unchanged."""

    ops: Any = None

    def _fusable(self, hidden_states: torch.Tensor) -> bool:
        projections = (self.q_proj, self.k_proj, self.v_proj)
        return (self.ops is not None and hidden_states.dim() == 3 and hidden_states.shape[0] == 1 and _few(hidden_states)
                and all(isinstance(p, DenseLinear) and p.packed and p.bias is not None for p in projections))

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                attention_mask: torch.Tensor | None, past_key_values: Any = None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        if not self._fusable(hidden_states):
            return super().forward(hidden_states, position_embeddings, attention_mask, past_key_values, **kwargs)
        input_shape = hidden_states.shape[:-1]  # (1, T)
        tokens = input_shape[1]
        cos, sin = position_embeddings  # (1, T, head_dim / 2)
        q, k, v = self.ops.qkv_rope(
            hidden_states.reshape(tokens, -1).contiguous(),
            self.q_proj.weight, self.q_proj.bias, self.k_proj.weight, self.k_proj.bias, self.v_proj.weight, self.v_proj.bias,
            cos.reshape(tokens, -1).float().contiguous(), sin.reshape(tokens, -1).float().contiguous(), self.head_dim,
        )  # q (1, heads, T, D), k and v (1, kv heads, T, D)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, weights = attend(self, q, k, v, attention_mask, dropout=0.0, scaling=self.scaling,
                              sliding_window=self.sliding_window, s_aux=self.sinks, **kwargs)
        return self.o_proj(out.reshape(*input_shape, -1).contiguous()), weights


class FusedDecoderLayer(GptOssDecoderLayer):
    """A decoded token's whole layer in two calls around the cache's update (``decode_layer_qkv``, then
    ``decode_layer_rest``: attention, o_proj, residual, norm, router, experts, residual), when nothing would
    see the difference: no hooks on the layer's parts (transformers' output recorders idle), its own
    attention function, the engine's modules throughout. Otherwise, or for several tokens, transformers'
    forward over the fused modules above. At 20b the Python between the ops of a decoded token was ~14 ms."""

    ops: Any = None

    def _parts(self) -> list[torch.nn.Module]:
        attn, mlp = self.self_attn, self.mlp
        return [self.input_layernorm, attn, attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj,
                self.post_attention_layernorm, mlp, mlp.router, mlp.experts]

    def _fusable(self, hidden_states: torch.Tensor, past_key_values: Any) -> bool:
        attn, experts = self.self_attn, self.mlp.experts
        if (self.ops is None or past_key_values is None or hidden_states.shape[:-1] != (1, 1)
                or hidden_states.dtype != torch.float32 or hidden_states.device.type != "cpu"
                or attn.config._attn_implementation != CPU_ATTENTION or _capturing()
                or not isinstance(attn, FusedAttention) or not attn._fusable(hidden_states)
                or not isinstance(experts, PackedExperts) or experts.ops is None
                or not (isinstance(attn.o_proj, DenseLinear) and attn.o_proj.packed)):
            return False
        return not any(_hooked(m) for m in self._parts()) and not _global_hooks()

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, past_key_values: Any = None, use_cache: bool | None = False,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs: Any) -> torch.Tensor:
        if position_embeddings is None or not self._fusable(hidden_states, past_key_values):
            return super().forward(hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                                   past_key_values=past_key_values, use_cache=use_cache,
                                   position_embeddings=position_embeddings, **kwargs)
        attn, norm, mlp = self.self_attn, self.post_attention_layernorm, self.mlp
        cos, sin = position_embeddings  # (1, 1, head_dim / 2)
        q, k, v = self.ops.decode_layer_qkv(
            hidden_states, self.input_layernorm.weight, self.input_layernorm.variance_epsilon,
            attn.q_proj.weight, attn.q_proj.bias, attn.k_proj.weight, attn.k_proj.bias, attn.v_proj.weight, attn.v_proj.bias,
            cos.reshape(1, -1).float().contiguous(), sin.reshape(1, -1).float().contiguous(), attn.head_dim)
        k, v = past_key_values.update(k, v, attn.layer_idx)
        n = k.shape[2]
        window = attn.sliding_window if attention_mask is not None else None  # as the attention function reads it
        mask = None if attention_mask is None else attention_mask[:, 0, 0, :n]
        e = mlp.experts
        return self.ops.decode_layer_rest(
            hidden_states, q, k, v, mask, attn.sinks, attn.scaling, first_key(n - 1, window),
            attn.o_proj.weight, attn.o_proj.bias, norm.weight, norm.variance_epsilon,
            mlp.router.weight, mlp.router.bias, mlp.router.top_k,
            e.gate_up_proj_blocks, e.gate_up_proj_scales, e.gate_up_proj_bias,
            e.down_proj_blocks, e.down_proj_scales, e.down_proj_bias, e.alpha, e.limit)


def _capturing() -> bool:
    """Whether transformers is recording an output of a layer's parts (``output_attentions``,
    ``output_router_logits``; a layer's own output, ``output_hidden_states``, is recorded either way)."""
    from transformers.utils.output_capturing import _active_collector

    return any(key in ("attentions", "router_logits") for key in _active_collector.get() or ())


def _hooked(module: torch.nn.Module) -> bool:
    """Whether ``module`` has hooks other than transformers' output recorders (idle unless recording)."""
    if module._forward_pre_hooks or getattr(module, "_backward_hooks", None):
        return True
    return any(getattr(h, "__name__", "") != "output_capturing_hook" for h in module._forward_hooks.values())


def _global_hooks() -> bool:
    from torch.nn.modules import module as m

    return bool(m._global_forward_hooks or m._global_forward_pre_hooks)


SWAPS = {GptOssRMSNorm: FusedRMSNorm, GptOssTopKRouter: FusedRouter, GptOssAttention: FusedAttention,
         GptOssDecoderLayer: FusedDecoderLayer}


def swap(model: torch.nn.Module, ops: Any) -> None:
    """Give every norm, router and attention of ``model`` its fused class (in place; nothing is copied)."""
    if ops is None:
        return
    for module in model.modules():
        fused = SWAPS.get(type(module))
        if fused is not None:
            module.__class__ = fused
            module.ops = ops
