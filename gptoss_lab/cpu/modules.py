"""The modules the engine swaps into transformers' ``GptOssForCausalLM``.

Only what holds the big weights changes: the experts (``PackedExperts``: MXFP4 as the checkpoint
stores it), the attention projections and the unembedding (``DenseLinear``: bf16 in memory, float32
arithmetic) and the embedding (``DenseEmbedding``). Routers, norms and sinks keep transformers' float32 weights
(their classes become ``layers.py``'s subclasses), so router hooks, attention weights and the KV cache
work as they do on every other path.
Weights are buffers, not parameters: the model's parameters (and so ``model.dtype``) stay float32.
Gradients reach the activations (a saliency map over the prompt's embeddings, say): where autograd records
(``needs_grad``), the packed kernels still run forward and their backward recomputes in float32, one
expert or one tile of a weight at a time, so memory stays near inference's; the weights get none.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..backends import mxfp4

# Up to this many tokens per expert (or per linear) run on the packed kernels; more go through torch's GEMM
# on float32 tiles made on the fly (a prefill is compute-bound, and the GEMM is the fastest there is).
SMALL_N = 32
TILE = 4096  # rows of a bf16 weight made float32 at a time, off the kernels' path


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd records an op on these tensors: grad mode on and one of them requires grad. Where it
    does, the engine takes differentiable paths (the fused ops' outputs would carry no gradient)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class PackedExperts(nn.Module):
    """gpt-oss's experts with MXFP4 weights kept packed: ``forward(hidden (T, H), idx (T, k), weights (T, k))``.

    ``ops`` is the C++ extension; ``None`` runs the pure-torch fallback (one expert dequantized at a time).
    """

    gate_up_proj_blocks: torch.Tensor  # (E, 2I, H/32*16) uint8: the checkpoint's blocks, rows flattened
    gate_up_proj_scales: torch.Tensor  # (E, 2I, H/32) uint8
    gate_up_proj_bias: torch.Tensor  # (E, 2I) float32
    down_proj_blocks: torch.Tensor  # (E, H, I/32*16)
    down_proj_scales: torch.Tensor  # (E, H, I/32)
    down_proj_bias: torch.Tensor  # (E, H)

    def __init__(self, tensors: dict[str, torch.Tensor], alpha: float, limit: float, ops: Any):
        super().__init__()
        for name in ("gate_up_proj_blocks", "gate_up_proj_scales", "down_proj_blocks", "down_proj_scales"):
            t = tensors[name]
            self.register_buffer(name, t.reshape(t.shape[0], t.shape[1], -1).contiguous())  # (E, rows, G*16 or G)
        self.register_buffer("gate_up_proj_bias", tensors["gate_up_proj_bias"].float().contiguous())
        self.register_buffer("down_proj_bias", tensors["down_proj_bias"].float().contiguous())
        self.num_experts = self.gate_up_proj_blocks.shape[0]
        self.hidden_size = self.down_proj_blocks.shape[1]
        self.intermediate_size = self.gate_up_proj_blocks.shape[1] // 2
        self.alpha, self.limit, self.ops = alpha, limit, ops

    def extra_repr(self) -> str:
        kind = f"kernels={self.ops.isa()}" if self.ops is not None else "pure-torch fallback"
        return f"experts={self.num_experts}, hidden={self.hidden_size}, intermediate={self.intermediate_size}, mxfp4, {kind}"

    def forward(self, hidden_states: torch.Tensor, router_indices: torch.Tensor, routing_weights: torch.Tensor) -> torch.Tensor:
        x = hidden_states.float().contiguous()  # (T, H)
        if self.ops is not None and needs_grad(x, routing_weights):
            return _PackedExpertsFn.apply(x, router_indices, routing_weights, self).to(hidden_states.dtype)
        if self.ops is not None:
            return self.ops.moe_forward(
                x, router_indices, routing_weights,
                self.gate_up_proj_blocks, self.gate_up_proj_scales, self.gate_up_proj_bias,
                self.down_proj_blocks, self.down_proj_scales, self.down_proj_bias,
                self.alpha, self.limit, SMALL_N,
            ).to(hidden_states.dtype)
        return self._torch_forward(x, router_indices, routing_weights).to(hidden_states.dtype)

    def _weight(self, kind: str, e: int) -> torch.Tensor:
        blocks = getattr(self, f"{kind}_blocks")[e]
        scales = getattr(self, f"{kind}_scales")[e]
        return mxfp4.dequantize(blocks.reshape(*scales.shape, 16), scales)  # (rows, cols) float32

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` on tokens ``x`` (n, H) in float32 torch ops, its weights dequantized: (n, H)."""
        gate_up = F.linear(x, self._weight("gate_up_proj", e), self.gate_up_proj_bias[e])  # (n, 2I)
        gate, up = gate_up[..., ::2].clamp(max=self.limit), gate_up[..., 1::2].clamp(-self.limit, self.limit)
        act = (up + 1) * (gate * torch.sigmoid(gate * self.alpha))
        return F.linear(act, self._weight("down_proj", e), self.down_proj_bias[e])

    def _torch_forward(self, x: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for e in torch.unique(idx).tolist():
            token, slot = torch.where(idx == e)
            out.index_add_(0, token, self.expert(e, x[token]) * weights[token, slot, None].float())
        return out


class _PackedExpertsFn(torch.autograd.Function):
    """The kernels' forward; backward recomputes each routed expert in float32 torch ops (one expert's
    weights dequantized at a time) for the gradients of the tokens and of their routing weights."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor, experts: PackedExperts) -> torch.Tensor:
        ctx.experts = experts
        ctx.save_for_backward(x, idx, weights)
        b = experts._buffers
        return experts.ops.moe_forward(x, idx, weights, b["gate_up_proj_blocks"], b["gate_up_proj_scales"],
                                       b["gate_up_proj_bias"], b["down_proj_blocks"], b["down_proj_scales"],
                                       b["down_proj_bias"], experts.alpha, experts.limit, SMALL_N)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, torch.Tensor, None]:
        x, idx, weights = ctx.saved_tensors
        grad_x, grad_w = torch.zeros_like(x), torch.zeros_like(weights)
        for e in torch.unique(idx).tolist():
            token, slot = torch.where(idx == e)
            with torch.enable_grad():
                xe = x[token].detach().requires_grad_()
                y = ctx.experts.expert(e, xe)
            g = grad[token]
            grad_x.index_add_(0, token, torch.autograd.grad(y, xe, g * weights[token, slot, None])[0])
            grad_w[token, slot] = (g * y.detach()).sum(-1).to(weights.dtype)
        return grad_x, None, grad_w, None


class DenseLinear(nn.Module):
    """A linear layer whose weight stays in the checkpoint's bf16 (float32 for other dtypes); float32 out."""

    weight: torch.Tensor  # (out, in)
    bias: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, ops: Any):
        super().__init__()
        self.packed = weight.dtype == torch.bfloat16 and ops is not None
        self.register_buffer("weight", weight.contiguous() if weight.dtype == torch.bfloat16 else weight.float())
        self.register_buffer("bias", None if bias is None else bias.float())
        self.out_features, self.in_features = weight.shape
        self.ops = ops

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {str(self.weight.dtype).replace('torch.', '')}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float().contiguous()
        if self.packed and needs_grad(x2):
            y = _DenseLinearFn.apply(x2, self)
        elif self.packed:
            y = self.ops.bf16_linear(x2, self.weight, self.bias, SMALL_N)
        elif self.weight.dtype == torch.float32:
            y = F.linear(x2, self.weight, self.bias)
        else:  # bf16 with no extension: float32 tiles, never the whole matrix at once
            y = torch.empty(x2.shape[0], self.out_features)
            for r in range(0, self.out_features, TILE):
                y[:, r:r + TILE] = F.linear(x2, self.weight[r:r + TILE].float(), None if self.bias is None else self.bias[r:r + TILE])
        return y.reshape(*shape[:-1], self.out_features)


class _DenseLinearFn(torch.autograd.Function):
    """The bf16 kernel's forward; backward: grad @ W in float32 tiles of the weight (nothing saved)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, linear: DenseLinear) -> torch.Tensor:
        ctx.linear = linear
        return linear.ops.bf16_linear(x, linear.weight, linear.bias, SMALL_N)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        w = ctx.linear.weight
        grad_x = grad.new_zeros(grad.shape[0], w.shape[1])
        for r in range(0, w.shape[0], TILE):
            grad_x.addmm_(grad[:, r:r + TILE], w[r:r + TILE].float())
        return grad_x, None


class DenseEmbedding(nn.Module):
    """The token embedding, in the checkpoint's dtype, looked up into float32.

    ``file`` (path, offset): ``weight`` is a copy-on-write memory map of the checkpoint there, and the
    lookup reads its rows from the file with ``pread`` rather than through the map. Reading through the
    map would cost far more than the rows: Linux maps a whole page-cache folio (up to 2 MB) on a fault,
    and the random rows of a 4k-token prompt would make nearly all 1.16 GB of 20b's embedding resident.
    Once ``weight`` is changed in place (its version moves) the lookup reads the map, changes included.
    """

    weight: torch.Tensor  # (vocab, hidden)

    def __init__(self, weight: torch.Tensor, padding_idx: int | None = None, *, file: tuple[Any, int] | None = None):
        super().__init__()
        as_stored = weight.dtype in (torch.bfloat16, torch.float32)  # else converted: the file's bytes no longer match
        self.file = open(file[0], "rb", buffering=0) if file is not None and as_stored else None
        self.offset = 0 if file is None else file[1]
        self.register_buffer("weight", weight if as_stored else weight.float())
        self.num_embeddings, self.embedding_dim = weight.shape
        self.padding_idx = padding_idx
        self._loaded_version = self.weight._version

    @property
    def mapped(self) -> bool:
        return self.file is not None

    def extra_repr(self) -> str:
        where = ", in the checkpoint's file" if self.mapped else ""
        return f"{self.num_embeddings}, {self.embedding_dim}, {str(self.weight.dtype).replace('torch.', '')}{where}"

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.file is None or self.weight._version != self._loaded_version:
            return F.embedding(ids, self.weight).float()
        wanted, where = torch.unique(ids, return_inverse=True)
        rows = torch.empty(len(wanted), self.embedding_dim, dtype=self.weight.dtype)
        size = self.embedding_dim * rows.element_size()
        view = memoryview(rows.view(torch.uint8).reshape(-1).numpy())  # type: ignore[arg-type]  # numpy arrays are buffers
        fd = self.file.fileno()
        for i, row in enumerate(wanted.tolist()):
            if not 0 <= row < self.num_embeddings:
                raise IndexError(f"token id {row} is outside the vocabulary (0..{self.num_embeddings - 1})")
            if os.preadv(fd, [view[i * size:(i + 1) * size]], self.offset + row * size) != size:
                raise OSError(f"{self.file.name} ended before token {row}'s embedding: was it changed since loading?")
        return rows[where].float()
