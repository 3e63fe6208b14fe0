"""Backends turn prompt token ids into a stream of generated token steps (DESIGN.md)."""

from .base import Backend, TokenStep

__all__ = ["Backend", "TokenStep"]
