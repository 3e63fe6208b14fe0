"""Typed exceptions for infrastructure failures. Each carries its context as attributes and a message
whose first line says what to do."""

from __future__ import annotations


class GptossLabError(Exception):
    """Base class of gptoss-lab's own exceptions."""


class WeightsNotFoundError(GptossLabError, FileNotFoundError):
    """The model's weights are not on this machine and cannot be downloaded now."""

    def __init__(self, message: str, *, model: str, cache_dir: str | None = None):
        super().__init__(message)
        self.model = model
        self.cache_dir = cache_dir


class ModelDoesNotFitError(GptossLabError, MemoryError):
    """The pre-flight check found that the model will not fit in the memory that is free."""

    def __init__(self, message: str, *, model: str, needed_bytes: int, available_bytes: int, device: str):
        super().__init__(message)
        self.model = model
        self.needed_bytes = needed_bytes
        self.available_bytes = available_bytes
        self.device = device


class TurnInProgressError(GptossLabError, RuntimeError):
    """A turn of this chat is still running; a second turn, a reset or a new model must wait for it."""


class BackendError(GptossLabError):
    """The engine broke off in the middle of a generation (a server that died or dropped the stream).
    The turn keeps what was generated (``Chat.results[-1]``, stop reason ``failed``), then this is raised."""
