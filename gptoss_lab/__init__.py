"""gptoss-lab: study and use OpenAI's open-weight gpt-oss models inside Jupyter.

``import gptoss_lab`` is cheap and needs no GPU: heavy libraries load where they are used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Chat", "Sandbox", "__version__", "encoding", "load", "tool"]

if TYPE_CHECKING:
    from .backends.resolve import load
    from .harmony.vocab import encoding
    from .session import Chat
    from .tools.functions import tool
    from .tools.sandbox import Sandbox

_LAZY = {
    "encoding": ("gptoss_lab.harmony.vocab", "encoding"),
    "load": ("gptoss_lab.backends.resolve", "load"),
    "tool": ("gptoss_lab.tools.functions", "tool"),
    "Sandbox": ("gptoss_lab.tools.sandbox", "Sandbox"),
    "Chat": ("gptoss_lab.session", "Chat"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gptoss_lab' has no attribute {name!r}")


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where the JupyterLab extension (built from labextension/) lies in the package, for JupyterLab."""
    return [{"src": "labextension", "dest": "gptoss-lab"}]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext gptoss_lab``: registers ``%gptoss`` and ``%%gptoss``."""
    from .magics import GptossMagics, async_cells

    magics = GptossMagics(ipython)
    ipython.register_magics(magics)
    ipython._gptoss_lab_magics = magics
    if getattr(ipython, "kernel", None) is not None and async_cells not in ipython.input_transformers_cleanup:
        # In a kernel a cell runs awaiting its turn, so that the panel's Stop button is heard.
        ipython.input_transformers_cleanup.append(async_cells)


def unload_ipython_extension(ipython: Any) -> None:
    from .magics import async_cells

    magics = getattr(ipython, "_gptoss_lab_magics", None)
    if magics is not None:
        magics.close()
    if async_cells in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.remove(async_cells)
