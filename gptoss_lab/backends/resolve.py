"""From a model name as users write it to a backend: the one place that knows every kind of name.

``%gptoss load NAME``, ``gptoss-lab ask --model NAME`` and ``gptoss_lab.load(NAME)`` all come here, so
they accept the same names: a hub id, a local folder, ``nano``, ``tiny``, or ``replay:PATH``. A served
model (``http://HOST:PORT``, vLLM or llama.cpp) is not here yet: such a name gets a clear refusal.
"""

from __future__ import annotations

from typing import Any

from .base import Backend

REPLAY = "replay:"


def load(model: str | None = None, *, tps: float | None = None, **load_options: Any) -> Backend:
    """Open the model called ``model`` and return its backend.

    Parameters
    ----------
    model
        ``replay:PATH`` replays a recorded completion (``tps`` paces it, tokens per second); a hub
        id (``openai/gpt-oss-20b``), a local checkpoint folder, ``"nano"`` or ``"tiny"`` load the
        model into this process with transformers (``load_options``: ``device``, ``dtype``,
        ``attn_implementation``, ``check_fit``; see :func:`gptoss_lab.backends.transformers_backend.load`).
        ``None``: the cached gpt-oss weights on a GPU, else nano (the report says which, and why).

    Raises
    ------
    WeightsNotFoundError, ModelDoesNotFitError
        From the transformers backend (missing weights, not enough memory), with what to do.
    FileNotFoundError, ValueError
        A recording that cannot be read or holds no model output.
    """
    if model is not None and model.startswith(("http://", "https://")):
        raise ValueError(f"{model}: remote engines (a vLLM or llama.cpp server) are not supported by this version "
                         "yet; load a hub id, a folder, nano, tiny or replay:PATH")
    if model is not None and model.startswith(REPLAY):
        from .replay import ReplayBackend

        unknown = sorted(k for k, v in load_options.items() if v is not None)
        if unknown:
            raise ValueError(f"a replay takes no {', '.join(unknown)} option: it is a recording, not a model")
        return ReplayBackend(model[len(REPLAY):], tps=tps)
    if tps is not None:
        raise ValueError("--tps paces a replay (replay:PATH); a model generates at its own speed")
    from .transformers_backend import load as load_transformers

    return load_transformers(model, **load_options)
