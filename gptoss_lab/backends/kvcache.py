"""The backend's KV cache: transformers' ``DynamicCache`` whose layers grow in steps instead of by concatenation.

``DynamicLayer.update`` appends with ``torch.cat``, which copies the layer's whole history for every
token: at 1k tokens of context on a CPU that was 100 ms of a 20b token's 355 ms. These layers keep a
buffer with room to spare (grown ``STEP`` tokens at a time, so at most ``STEP`` tokens are ever unused)
and expose ``keys``/``values`` as views of its filled part; crop, reset and the rest behave as before.
A layer's buffer always has room for one more token than it holds (between 1 and ``STEP``).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

STEP = 512


class GrowingLayer(DynamicLayer):
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._len = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        need = self._len + n
        if self._len and self._k is not None and self._k.shape[:2] != key_states.shape[:2]:
            # DynamicLayer's torch.cat fails here too; a silent restart would drop the history
            raise ValueError(f"the cache holds (batch, heads) {tuple(self._k.shape[:2])}, the update has "
                             f"{tuple(key_states.shape[:2])}: reset the cache before changing the batch")
        if self._k is None or self._v is None or need > self._k.shape[-2] or self._k.shape[:2] != key_states.shape[:2]:
            self._grow(key_states, value_states, need)
        assert self._k is not None and self._v is not None
        self._k[:, :, self._len:need] = key_states
        self._v[:, :, self._len:need] = value_states
        self._len = need
        return self._expose()

    def _grow(self, k: torch.Tensor, v: torch.Tensor, need: int) -> None:
        # Room for at least one more token: a prompt of a multiple of STEP tokens would otherwise copy the
        # whole cache again at the first token of the reply.
        cap = (need // STEP + 1) * STEP
        new_k = k.new_empty(*k.shape[:2], cap, k.shape[-1])
        new_v = v.new_empty(*v.shape[:2], cap, v.shape[-1])
        if self._k is not None and self._v is not None and self._len:  # the same (batch, heads): update checked
            new_k[:, :, :self._len] = self._k[:, :, :self._len]
            new_v[:, :, :self._len] = self._v[:, :, :self._len]
        self._k, self._v = new_k, new_v

    def _expose(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._k is not None and self._v is not None
        keys, values = self._k[:, :, :self._len], self._v[:, :, :self._len]
        self.keys, self.values = keys, values
        return keys, values

    def get_seq_length(self) -> int:
        return self._len if self.is_initialized else 0

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative count of tokens to remove, got {tokens_to_remove}")
        if tokens_to_remove == 0 or not self.is_initialized:
            return
        self._len = max(0, self._len + tokens_to_remove)
        self._expose()

    def reset(self) -> None:
        self._k = self._v = None
        self._len = 0
        super().reset()


class GrowingCache(DynamicCache):
    """A ``DynamicCache`` of :class:`GrowingLayer` (every layer keeps its whole history, as the backend needs)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer_class_to_replicate = GrowingLayer
