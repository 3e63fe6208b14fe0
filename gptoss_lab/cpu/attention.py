"""gpt-oss's eager attention (sinks included), bounded in memory: the engine's attention function.

The math is transformers' ``eager_attention_forward`` for gpt-oss: scores plus mask, the head's sink
logit appended as one more column, a max-subtracted softmax, the sink column dropped. Two things
differ, both about memory on a CPU: grouped heads attend to their shared key/value head through a
reshape instead of ``repeat_kv`` (a 4k-token cache would be copied 8x per layer per decoded token),
a long prompt's queries go in chunks, so a 2k-token prefill never holds (64, 2048, 2048) scores, and a
sliding-window layer multiplies only the keys inside its window (the cache keeps every layer's whole
history for the prefix cache; the mask gives the keys before the window exactly zero weight, so
leaving them out changes nothing but the time: half the layers at 4k tokens of context).
The attention weights are returned whenever the queries fit one chunk (every decoded token), so the
sinks' share and ``output_attentions`` work as with eager; for a chunked prefill they are ``None``.
A decoded token (one float32 query) runs the C++ extension's fused ``decode_attention`` when it is
built (the same math in one pass per key/value head: at 4k tokens a dozen torch ops and a batched
matmul of 8 rows took 2.8 ms a layer), unless autograd records it; the torch code below is the reference,
the fallback and the differentiable path.

Registered with transformers under ``NAME`` (and eager's mask function), for the models that ask for it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .modules import needs_grad

NAME = "gptoss_lab_cpu"
SCORE_BYTES = 16 * 2**20  # the most one chunk's scores may take (a few copies of it live at once)


def attention(
    module: Any,
    query: torch.Tensor,  # (B, H, q, D)
    key: torch.Tensor,  # (B, KV, k, D)
    value: torch.Tensor,  # (B, KV, k, D)
    attention_mask: torch.Tensor | None,  # (B, 1, q, k), additive
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    B, H, q, _ = query.shape
    k = key.shape[2]
    window = getattr(module, "sliding_window", None) if attention_mask is not None else None
    chunk = max(1, SCORE_BYTES // (B * H * (min(k, q + (window or k)) + 1) * query.element_size()))
    if (q == 1 and query.dtype == key.dtype == value.dtype == torch.float32 and (ops := _ops()) is not None
            and not needs_grad(query, key, value, module.sinks)):
        start = first_key(k - 1, window)
        flat = None if attention_mask is None else attention_mask[:, 0, 0, :k]
        out, probs = ops.decode_attention(query, key, value, flat, module.sinks, scaling, start)
        return out, probs
    if q <= chunk:
        return _attend(module, query, key, value, attention_mask, scaling, first_key(k - q, window))
    outs = []
    for s in range(0, q, chunk):
        mask = attention_mask[:, :, s:s + chunk] if attention_mask is not None else None
        outs.append(_attend(module, query[:, :, s:s + chunk], key, value, mask, scaling, first_key(k - q + s, window))[0])
    return torch.cat(outs, dim=1), None


def _ops() -> Any:
    from .build import ops

    return ops()


def first_key(first_query: int, window: int | None) -> int:
    """The first key a query at position ``first_query`` (or later) can see: 0 without a window."""
    return max(0, first_query - window) if window else 0


def _attend(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
            mask: torch.Tensor | None, scaling: float, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    full = key.shape[2]
    if start:  # keys before a sliding window: zero weight under the mask, so not multiplied at all
        key, value = key[:, :, start:], value[:, :, start:]
        mask = mask[..., start:full] if mask is not None else None
    B, H, q, D = query.shape
    KV, k = key.shape[1], key.shape[2]
    rep = H // KV  # query heads kv*rep .. kv*rep + rep - 1 share key/value head kv (as repeat_kv orders them)
    grouped = query.reshape(B, KV, rep * q, D)
    scores = torch.matmul(grouped, key.transpose(2, 3)).view(B, H, q, k) * scaling  # (B, H, q, k)
    if mask is not None:
        scores = scores + mask[..., :k]
    sinks = module.sinks.reshape(1, -1, 1, 1).expand(B, -1, q, -1).to(scores.dtype)
    combined = torch.cat([scores, sinks], dim=-1)
    combined = combined - combined.max(dim=-1, keepdim=True).values
    probs = F.softmax(combined, dim=-1, dtype=combined.dtype)[..., :-1]  # the sink column dropped
    probs = probs.to(value.dtype)
    out = torch.matmul(probs.reshape(B, KV, rep * q, k), value).view(B, H, q, D)
    if start:  # the weights over every key, as eager returns them
        probs = F.pad(probs, (start, 0))
    return out.transpose(1, 2).contiguous(), probs  # (B, q, H, D)


def register() -> str:
    """Make ``NAME`` a transformers attention implementation (idempotent) and return it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(NAME, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, eager_mask)
    return NAME
