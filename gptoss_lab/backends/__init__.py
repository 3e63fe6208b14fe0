"""Backends turn prompt token ids into a stream of generated token steps (DESIGN.md); the contract
they all keep is in :mod:`gptoss_lab.backends.base`."""

from .base import Backend, Capabilities, LoadReport, TokenStep

__all__ = ["Backend", "Capabilities", "LoadReport", "TokenStep"]
