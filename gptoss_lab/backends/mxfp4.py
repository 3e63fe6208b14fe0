"""MXFP4 as gpt-oss stores its experts (OCP Microscaling Formats v1.0, MXFP4).

Each run of 32 consecutive values along a row shares one scale:

- elements are FP4 E2M1 (sign, 2 exponent bits, 1 mantissa bit): magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6;
- the scale is E8M0 (a biased exponent): ``2 ** (s - 127)``;
- two elements per byte, the lower-indexed element in the low nibble.

A checkpoint stores a weight ``W`` of shape ``(E, rows, cols)`` as ``*_blocks`` uint8
``(E, rows, cols/32, 16)`` and ``*_scales`` uint8 ``(E, rows, cols/32)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

BLOCK = 32
E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_EMAX = 2  # the largest normal E2M1 value is 1.5 * 2**2
SCALE_BIAS = 127


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``w`` (``..., cols``; cols a multiple of 32) to MXFP4 ``(blocks, scales)``.

    The shared exponent is ``floor(log2(amax)) - 2`` (the spec's rule), elements round to the
    nearest E2M1 value with ties to even and saturate at +-6; an all-zero block gets scale 2**-127.
    """
    import torch

    *prefix, cols = w.shape
    if cols % BLOCK:
        raise ValueError(f"MXFP4 needs rows whose length is a multiple of {BLOCK}, got {cols}")
    x = w.detach().to(torch.float32).reshape(*prefix, cols // BLOCK, BLOCK)  # (..., G, 32)
    amax = x.abs().amax(dim=-1)  # (..., G)
    log2 = torch.floor(torch.log2(amax.clamp(min=torch.finfo(torch.float32).tiny)))
    exp = torch.where(amax > 0, log2 - E2M1_EMAX, torch.full_like(log2, -SCALE_BIAS))
    exp = exp.clamp(-SCALE_BIAS, SCALE_BIAS).to(torch.int32)  # (..., G)
    mag = torch.ldexp(x.abs(), -exp.unsqueeze(-1)).clamp(max=6.0)  # (..., G, 32), in [0, 6]

    grid = torch.tensor(E2M1_MAGNITUDES, dtype=torch.float32, device=w.device)
    hi = torch.searchsorted(grid, mag.contiguous()).clamp(max=7)  # first grid value >= mag
    lo = (hi - 1).clamp(min=0)
    d_lo = mag - grid[lo]
    d_hi = grid[hi] - mag
    take_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))  # ties to the even code
    idx = torch.where(take_hi, hi, lo)
    sign = (x < 0) & (idx > 0)  # zero is always +0
    codes = (idx | (sign.to(idx.dtype) << 3)).to(torch.uint8)  # (..., G, 32)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)  # low nibble first: (..., G, 16)
    scales = (exp + SCALE_BIAS).to(torch.uint8)
    return blocks.contiguous(), scales.contiguous()


def dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The inverse: ``(..., G, 16)`` blocks and ``(..., G)`` scales to ``(..., G * 32)`` values."""
    import torch

    lut = torch.tensor(E2M1_MAGNITUDES + tuple(-m for m in E2M1_MAGNITUDES), dtype=torch.float32, device=blocks.device)
    lo = (blocks & 0x0F).long()
    hi = (blocks >> 4).long()
    vals = torch.stack([lut[lo], lut[hi]], dim=-1).flatten(-2)  # (..., G, 32)
    out = torch.ldexp(vals, scales.to(torch.int32).unsqueeze(-1) - SCALE_BIAS)
    out = out.flatten(-2)
    return out if dtype is None else out.to(dtype)


def packed_bytes(n_values: int) -> int:
    """Bytes MXFP4 takes for ``n_values`` weights: 4 bits each plus one scale byte per 32."""
    return n_values // 2 + n_values // BLOCK
