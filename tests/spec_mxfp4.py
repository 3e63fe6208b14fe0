"""An MXFP4 decoder written from the OCP MX v1.0 spec, one scalar at a time: the tests' independent reference."""

from __future__ import annotations

import torch


def spec_e2m1(code: int) -> float:
    """OCP MX v1.0, FP4 E2M1: 1 sign bit, 2 exponent bits (bias 1), 1 mantissa bit; exponent 0 is subnormal."""
    sign = -1.0 if code & 0b1000 else 1.0
    exp = (code >> 1) & 0b11
    man = code & 0b1
    if exp == 0:
        return sign * man * 0.5  # subnormal: 2**(1-bias) * (0 + m/2)
    return sign * 2.0 ** (exp - 1) * (1 + man / 2)


def spec_decode(blocks: torch.Tensor, scales: torch.Tensor) -> list[float]:
    """One row: bytes -> two elements each (low nibble first), times the block's E8M0 scale 2**(s-127)."""
    out = []
    for g in range(scales.shape[0]):
        scale = 2.0 ** (int(scales[g]) - 127)
        for byte in blocks[g].tolist():
            out.append(spec_e2m1(byte & 0x0F) * scale)
            out.append(spec_e2m1(byte >> 4) * scale)
    return out
