"""gpt-oss's eager attention (sinks included), bounded in memory: the engine's attention function.

The math is transformers' ``eager_attention_forward`` for gpt-oss: scores plus mask, the head's sink
logit appended as one more column, a max-subtracted softmax, the sink column dropped. Two things
differ, both about memory on a CPU: grouped heads attend to their shared key/value head through a
reshape instead of ``repeat_kv`` (a 4k-token cache would be copied 8x per layer per decoded token),
and a long prompt's queries go in chunks, so a 2k-token prefill never holds (64, 2048, 2048) scores.
The attention weights are returned whenever the queries fit one chunk (every decoded token), so the
sinks' share and ``output_attentions`` work as with eager; for a chunked prefill they are ``None``.

Registered with transformers under ``NAME`` (and eager's mask function), for the models that ask for it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

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
    chunk = max(1, SCORE_BYTES // (B * H * (k + 1) * query.element_size()))
    if q <= chunk:
        return _attend(module, query, key, value, attention_mask, scaling)
    outs = []
    for s in range(0, q, chunk):
        mask = attention_mask[:, :, s:s + chunk] if attention_mask is not None else None
        outs.append(_attend(module, query[:, :, s:s + chunk], key, value, mask, scaling)[0])
    return torch.cat(outs, dim=1), None


def _attend(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
            mask: torch.Tensor | None, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
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
    return out.transpose(1, 2).contiguous(), probs  # (B, q, H, D)


def register() -> str:
    """Make ``NAME`` a transformers attention implementation (idempotent) and return it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(NAME, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, eager_mask)
    return NAME
