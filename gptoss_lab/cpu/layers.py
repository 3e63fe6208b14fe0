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
    GptOssRMSNorm,
    GptOssTopKRouter,
    eager_attention_forward,
)

from .modules import SMALL_N, DenseLinear


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


SWAPS = {GptOssRMSNorm: FusedRMSNorm, GptOssTopKRouter: FusedRouter, GptOssAttention: FusedAttention}


def swap(model: torch.nn.Module, ops: Any) -> None:
    """Give every norm, router and attention of ``model`` its fused class (in place; nothing is copied)."""
    if ops is None:
        return
    for module in model.modules():
        fused = SWAPS.get(type(module))
        if fused is not None:
            module.__class__ = fused
            module.ops = ops
