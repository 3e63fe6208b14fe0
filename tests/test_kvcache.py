"""The backend's growing KV cache against transformers' own DynamicCache (which appends with torch.cat)."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from gptoss_lab.backends.kvcache import STEP, GrowingCache


def _feed(cache, chunks, layer=0):
    out = None
    for k, v in chunks:
        out = cache.update(k, v, layer)
    return out


def _chunks(sizes, batch=1, heads=2, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, heads, n, dim, generator=g), torch.randn(batch, heads, n, dim, generator=g)) for n in sizes]


def test_keys_and_values_equal_dynamic_cache_across_steps():
    # a prompt of exactly STEP tokens, then single tokens past the buffer's end, then a second prompt
    chunks = _chunks([STEP, 1, 1, STEP - 1, 3])
    grown, ref = _feed(GrowingCache(), chunks), _feed(DynamicCache(), chunks)
    assert grown[0].shape == ref[0].shape == (1, 2, 2 * STEP + 4, 4)
    assert torch.equal(grown[0], ref[0]) and torch.equal(grown[1], ref[1])


def test_crop_then_update_overwrites_the_cut_part():
    chunks = _chunks([10, 5])
    cache = GrowingCache()
    _feed(cache, chunks[:1])
    cache.crop(-4)
    assert cache.get_seq_length() == 6
    k, v = _feed(cache, chunks[1:])
    assert torch.equal(k, torch.cat([chunks[0][0][:, :, :6], chunks[1][0]], dim=2))
    assert torch.equal(v, torch.cat([chunks[0][1][:, :, :6], chunks[1][1]], dim=2))


def test_reset_then_another_batch_starts_afresh():
    cache = GrowingCache()
    _feed(cache, _chunks([7]))
    cache.reset()
    k, _ = _feed(cache, _chunks([3], batch=2, seed=1))
    assert k.shape == (2, 2, 3, 4) and cache.get_seq_length() == 3


def test_another_batch_without_reset_is_refused_and_keeps_the_history():
    cache = GrowingCache()
    first = _chunks([7])
    _feed(cache, first)
    with pytest.raises(ValueError, match="reset the cache"):
        _feed(cache, _chunks([1], batch=2, seed=1))
    assert cache.get_seq_length() == 7
    assert torch.equal(cache.layers[0].keys, first[0][0])
