"""The MIME bundle every result carries, so saved notebooks, nbconvert, GitHub and the lab extension
show it without a kernel."""

from __future__ import annotations

from typing import Any

MIME = "application/vnd.gptoss-lab.transcript+json"


def bundle(result: Any, *, show_analysis: bool = False) -> dict[str, Any]:
    """text/markdown (the final answer; the analysis only when asked), the transcript, and text/plain."""
    return {
        "text/markdown": result.markdown(show_analysis=show_analysis),
        MIME: result.transcript,
        "text/plain": repr(result),
    }
