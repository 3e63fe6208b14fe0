"""MXFP4 as the MX spec defines it (E2M1 elements, E8M0 scales, low nibble first), checked against an
independent scalar decoder written from the spec and against transformers' own decoder."""

from __future__ import annotations

import math

import pytest
import torch

from gptoss_lab.backends import mxfp4

from .spec_mxfp4 import spec_decode, spec_e2m1


def test_e2m1_table_is_the_spec():
    assert [abs(spec_e2m1(c)) for c in range(8)] == list(mxfp4.E2M1_MAGNITUDES)
    block = torch.zeros(1, 16, dtype=torch.uint8)
    block[0, :8] = torch.tensor([0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE])  # codes 0..15 in order
    decoded = mxfp4.dequantize(block, torch.tensor([127], dtype=torch.uint8))
    assert decoded[:16].tolist() == [spec_e2m1(c) for c in range(16)]


def test_low_nibble_first_and_e8m0_scale():
    w = torch.zeros(32)
    w[0], w[1] = 1.0, -6.0  # elements 0 and 1 share byte 0: 1.0 in the low nibble, -6 in the high one
    blocks, scales = mxfp4.quantize(w)
    assert scales.tolist() == [127]  # amax 6 -> floor(log2 6) - 2 = 0 -> biased 127
    assert blocks[0, 0].item() == (0b0010) | (0b1111 << 4)
    big = torch.full((32,), 3.0 * 2**10)
    _, s = mxfp4.quantize(big)
    assert s.tolist() == [127 + 9]  # floor(log2(3072)) = 11; shared exponent 11 - 2 = 9


def test_representable_values_round_trip_exactly():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (4, 64), generator=g)
    scale_exp = torch.randint(-20, 20, (4, 2), generator=g)
    vals = torch.tensor([[spec_e2m1(int(c)) for c in row] for row in codes])
    # Make each block's max magnitude 6 (or 4) so that the spec's scale choice recovers scale_exp.
    vals[:, 0], vals[:, 32] = 6.0, -6.0
    w = torch.ldexp(vals, scale_exp.repeat_interleave(32, dim=1))
    blocks, scales = mxfp4.quantize(w)
    assert torch.equal(mxfp4.dequantize(blocks, scales), w)
    assert (scales.to(torch.int32) - 127).tolist() == scale_exp.tolist()


def test_ties_go_to_even_and_large_values_saturate():
    w = torch.zeros(32)
    w[:6] = torch.tensor([0.25, 0.75, 1.25, 2.5, 3.5, 5.0])
    w[31] = 6.0  # fixes the scale at 2**0
    out = mxfp4.dequantize(*mxfp4.quantize(w))
    assert out[:6].tolist() == [0.0, 1.0, 1.0, 2.0, 4.0, 4.0]
    w2 = torch.zeros(32)
    w2[0], w2[1] = 7.9, -7.5  # amax 7.9: scale 2**0, elements clamp to +-6
    assert mxfp4.dequantize(*mxfp4.quantize(w2))[:2].tolist() == [6.0, -6.0]


def test_zero_block_and_bad_shape():
    blocks, scales = mxfp4.quantize(torch.zeros(2, 32))
    assert blocks.eq(0).all() and scales.tolist() == [[0], [0]]
    with pytest.raises(ValueError, match="multiple of 32"):
        mxfp4.quantize(torch.zeros(3, 40))


def test_random_weights_error_bound_and_idempotence():
    w = torch.randn(3, 16, 128, generator=torch.Generator().manual_seed(1))
    blocks, scales = mxfp4.quantize(w)
    back = mxfp4.dequantize(blocks, scales)
    unit = torch.exp2((scales.to(torch.int32) - 127).float()).repeat_interleave(32, dim=-1)
    # Within half the widest grid gap (1 unit) below 6 units; the spec's scale rule clips (6, 8) to 6.
    assert ((back - w).abs() <= 2 * unit).all()
    inside = w.abs() <= 6 * unit
    assert ((back - w).abs()[inside] <= unit[inside]).all()
    again = mxfp4.quantize(back)
    assert torch.equal(again[0], blocks) and torch.equal(again[1], scales)


def test_agrees_with_the_spec_decoder_and_transformers():
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    w = torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(2)) * 0.05
    blocks, scales = mxfp4.quantize(w)
    ours = mxfp4.dequantize(blocks, scales)
    for e in range(2):
        for r in range(8):
            assert ours[e, r].tolist() == spec_decode(blocks[e, r], scales[e, r])
    theirs = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)  # (E, cols, rows)
    assert torch.equal(theirs.transpose(1, 2), ours)


def test_packed_bytes():
    assert mxfp4.packed_bytes(64) == 32 + 2
    assert math.isclose(mxfp4.packed_bytes(32 * 10**6) / (32 * 10**6), 4.25 / 8)
