"""A decoded token's layers in fewer calls: transformers' gpt-oss modules with a shorter forward.

On a CPU, a decoded 20b token spent ~20 ms of its ~120 ms outside the weight-reading kernels, in a dozen
torch ops a layer around the norms, the router and the attention's projections (each op a dispatch and
an allocation; the token's 3.7 GB stream has evicted whatever they touched), and then ~14 ms in the
Python between the ops. These classes are subclasses of transformers' own ``GptOssRMSNorm``,
``GptOssTopKRouter``, ``GptOssAttention`` and ``GptOssDecoderLayer``, swapped in by class (``swap``), so
weights, ``isinstance`` and transformers' output recording behave as for the originals. For a few float32
tokens (a decoded token, a short continuation) their forward calls the extension's fused ops
(``csrc/layers.cpp``: the same float32 arithmetic), and a decoder layer runs a decoded token in two calls;
a module with a hook of its own is always called as a module (a layer whose part has one, or whose
outputs transformers is recording, takes transformers' forward), so every hook sees every token.
Otherwise (a prefill, another dtype, training, autograd recording, ``ops`` set to ``None``) it is
transformers' forward.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.nn.modules import module as torch_module
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.gpt_oss.modeling_gpt_oss import (
    GptOssAttention,
    GptOssDecoderLayer,
    GptOssRMSNorm,
    GptOssTopKRouter,
    eager_attention_forward,
)
from transformers.utils.output_capturing import _active_collector

from .attention import NAME as CPU_ATTENTION
from .attention import first_key
from .modules import SMALL_N, DenseLinear, PackedExperts, needs_grad


def _few(x: torch.Tensor) -> bool:
    """A few float32 tokens on the CPU: what the fused ops take (more go to transformers' batched torch ops)."""
    return x.dtype == torch.float32 and x.device.type == "cpu" and x.numel() // x.shape[-1] <= SMALL_N


class FusedRMSNorm(GptOssRMSNorm):
    """gpt-oss's RMSNorm; a few float32 tokens in one call (``rms_norm``)."""

    ops: Any = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.ops is None or not _few(hidden_states) or needs_grad(hidden_states, self.weight):
            return super().forward(hidden_states)
        return self.ops.rms_norm(hidden_states.contiguous(), self.weight, self.variance_epsilon)


class FusedRouter(GptOssTopKRouter):
    """gpt-oss's router: (logits, top-k scores, top-k indices); a few float32 tokens in one call (``router``)."""

    ops: Any = None

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.ops is None or not _few(hidden_states) or needs_grad(hidden_states, self.weight, self.bias):
            return super().forward(hidden_states)
        return self.ops.router(hidden_states.contiguous(), self.weight, self.bias, self.top_k)


class FusedAttention(GptOssAttention):
    """q, k and v in one pass over their bf16 weights with the rotary embedding applied in the same call;
    the cache update, the attention function and ``o_proj`` are transformers' steps, unchanged."""

    ops: Any = None

    def _fusable(self, hidden_states: torch.Tensor) -> bool:
        projections = (self.q_proj, self.k_proj, self.v_proj)  # called as modules otherwise: their hooks must fire
        return (self.ops is not None and not self.training and hidden_states.dim() == 3 and hidden_states.shape[0] == 1
                and _few(hidden_states) and not needs_grad(hidden_states) and not _global_hooks()
                and all(type(p) is DenseLinear and p.packed and p.bias is not None and not _hooked(p) for p in projections))

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
        out, weights = attend(self, q, k, v, attention_mask, dropout=0.0, scaling=self.scaling,  # not training
                              sliding_window=self.sliding_window, s_aux=self.sinks, **kwargs)
        return self.o_proj(out.reshape(*input_shape, -1).contiguous()), weights


class FusedDecoderLayer(GptOssDecoderLayer):
    """A decoded token's whole layer in two calls around the cache's update (``decode_layer_qkv``, then
    ``decode_layer_rest``: attention, o_proj, residual, norm, router, experts, residual), when nothing would
    see the difference: no hooks on the layer's parts (transformers' output recorders idle), its own
    attention function, the engine's modules throughout. Otherwise, or for several tokens, transformers'
    forward over the fused modules above. At 20b the Python between the ops of a decoded token was ~14 ms."""

    ops: Any = None

    def _parts(self) -> tuple[Any, ...]:
        # Straight from the module dicts: nn.Module's __getattr__ is ~0.5 us a lookup, and a decoded token
        # made ~50 of them a layer here.
        mods: dict[str, Any] = self._modules
        attn, mlp = mods["self_attn"], mods["mlp"]
        a, m = attn._modules, mlp._modules
        return (mods["input_layernorm"], attn, a["q_proj"], a["k_proj"], a["v_proj"], a["o_proj"],
                mods["post_attention_layernorm"], mlp, m["router"], m["experts"])

    def _fusable(self, hidden_states: torch.Tensor, past_key_values: Any, parts: tuple[Any, ...]) -> bool:
        norm1, attn, q, k, v, o, norm2, _, router, experts = parts
        if (self.ops is None or self.training or past_key_values is None or hidden_states.shape[:-1] != (1, 1)
                or hidden_states.dtype != torch.float32 or hidden_states.device.type != "cpu"
                or not hidden_states.is_contiguous()
                or type(attn) is not FusedAttention or type(experts) is not PackedExperts or experts.ops is None
                or type(router) is not FusedRouter or router.weight.dtype != torch.float32
                or not all(type(p) is DenseLinear and p.packed and p._buffers["bias"] is not None for p in (q, k, v, o))
                or attn.config._attn_implementation != CPU_ATTENTION or _capturing()
                or (torch.is_grad_enabled()  # the parameters' lookups only then
                    and needs_grad(hidden_states, norm1.weight, attn.sinks, norm2.weight, router.weight, router.bias))):
            return False
        return not any(_hooked(m) for m in parts) and not _global_hooks()

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, past_key_values: Any = None, use_cache: bool | None = False,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs: Any) -> torch.Tensor:
        parts = self._parts()
        if position_embeddings is None or not self._fusable(hidden_states, past_key_values, parts):
            return super().forward(hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                                   past_key_values=past_key_values, use_cache=use_cache,
                                   position_embeddings=position_embeddings, **kwargs)
        norm1, attn, q, k, v, o, norm2, _, router, e = parts
        cos, sin = position_embeddings  # (1, 1, head_dim / 2)
        qb, kb, vb, ob, eb = q._buffers, k._buffers, v._buffers, o._buffers, e._buffers
        query, key, value = self.ops.decode_layer_qkv(
            hidden_states, norm1._parameters["weight"], norm1.variance_epsilon, qb["weight"], qb["bias"],
            kb["weight"], kb["bias"], vb["weight"], vb["bias"],
            cos.reshape(1, -1).float().contiguous(), sin.reshape(1, -1).float().contiguous(), attn.head_dim)
        key, value = past_key_values.update(key, value, attn.layer_idx)
        n = key.shape[2]
        window = attn.sliding_window if attention_mask is not None else None  # as the attention function reads it
        mask = None if attention_mask is None else attention_mask[:, 0, 0, :n]
        rp = router._parameters
        return self.ops.decode_layer_rest(
            hidden_states, query, key, value, mask, attn._parameters["sinks"], attn.scaling, first_key(n - 1, window),
            ob["weight"], ob["bias"], norm2._parameters["weight"], norm2.variance_epsilon, rp["weight"], rp["bias"],
            router.top_k, eb["gate_up_proj_blocks"], eb["gate_up_proj_scales"], eb["gate_up_proj_bias"],
            eb["down_proj_blocks"], eb["down_proj_scales"], eb["down_proj_bias"], e.alpha, e.limit)


def _capturing() -> bool:
    """Whether transformers is recording an output of a layer's parts (``output_attentions``,
    ``output_router_logits``; a layer's own output, ``output_hidden_states``, is recorded either way)."""
    return any(key in ("attentions", "router_logits") for key in _active_collector.get() or ())


def _hooked(module: torch.nn.Module) -> bool:
    """Whether ``module`` has hooks other than transformers' output recorders (idle unless recording)."""
    if not module._forward_hooks and not module._forward_pre_hooks:
        return False
    if module._forward_pre_hooks:
        return True
    return any(getattr(h, "__name__", "") != "output_capturing_hook" for h in module._forward_hooks.values())


def _global_hooks() -> bool:
    """Whether hooks registered for every module (``register_module_forward_hook``) are set."""
    return bool(torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks)


SWAPS = {GptOssRMSNorm: FusedRMSNorm, GptOssTopKRouter: FusedRouter, GptOssAttention: FusedAttention,
         GptOssDecoderLayer: FusedDecoderLayer}


def swap(model: torch.nn.Module, ops: Any) -> None:
    """Give every norm, router, attention and decoder layer of ``model`` its fused class (in place; nothing
    is copied). Their weights and hooks stay as they are; ``module.ops = None`` gives one back its original
    forward."""
    if ops is None:
        return
    for module in model.modules():
        fused = SWAPS.get(type(module))
        if fused is not None:
            module.__class__ = fused
            module.ops = ops
