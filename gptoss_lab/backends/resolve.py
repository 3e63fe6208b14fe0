"""From a model name as users write it (``tiny``, a hub id, a folder, ``replay:PATH``) to a backend."""

from __future__ import annotations

from typing import Any


def open_model(name: str, *, tps: float | None = None, **load_options: Any) -> Any:
    """A backend for ``name``: ``replay:PATH`` replays a recording; anything else goes to :func:`load`."""
    if name.startswith("replay:"):
        from .replay import ReplayBackend

        return ReplayBackend(name[len("replay:"):], tps=tps)
    from .transformers_backend import load

    return load(name, **load_options)
