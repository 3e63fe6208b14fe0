"""From a model name as users write it to a backend: the one place that knows every kind of name.

``%gptoss load NAME``, ``gptoss-lab ask --model NAME`` and ``gptoss_lab.load(NAME)`` all come here, so
they accept the same names: a hub id, a local folder, ``nano``, ``tiny``, ``replay:PATH``, or a served
model (``http://HOST:PORT``: vLLM or llama.cpp, driven by token ids; see ``remote.py``).
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
        ``http://HOST:PORT`` drives a vLLM or llama.cpp server by token ids (``load_options``: ``engine``,
        ``served_model``, ``api_key_env``).

    Raises
    ------
    WeightsNotFoundError, ModelDoesNotFitError
        From the transformers backend (missing weights, not enough memory), with what to do.
    FileNotFoundError, ValueError
        A recording that cannot be read or holds no model output.
    """
    if model is not None and model.startswith(("http://", "https://")):
        from .remote import RemoteBackend

        remote = {k: load_options.pop(k) for k in ("engine", "served_model", "api_key_env") if k in load_options}
        unknown = sorted(k for k, v in load_options.items() if v is not None)
        if unknown or tps is not None:
            raise ValueError(f"a served model takes no {', '.join(unknown or ['tps'])} option: the server decides that")
        return RemoteBackend(model, **{k: v for k, v in remote.items() if v is not None})
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
