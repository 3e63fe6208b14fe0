"""What every backend gives: prompt token ids in, a stream of generated token steps out.

A backend knows nothing of Harmony or widgets (DESIGN.md). The transformers backend (the model in
this kernel) and the replay backend (a recorded completion) both implement :class:`Backend`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, Union, runtime_checkable

# Per layer: the ids of the top-k experts that processed the token, and their weights.
Routing = tuple[tuple[tuple[int, ...], tuple[float, ...]], ...]
Cancel = Union[threading.Event, Callable[[], bool], None]


@dataclass(frozen=True, slots=True)
class TokenStep:
    """One generated token.

    ``logprob`` and ``alternatives`` (the top-K ``(token, logprob)`` pairs, most likely first) are set
    when logprobs were asked for; they come from the model's own distribution (log-softmax of the
    logits, before temperature). ``routing`` is set when routing was asked for: the experts that
    processed this token as input, so a turn's last token (the stop token, never fed) has none.
    ``sinks`` is set when asked for and the attention exposes its weights (eager attention): per layer,
    per head, the share of this token's attention that the learned sink absorbed.
    """

    token: int
    logprob: float | None = None
    alternatives: tuple[tuple[int, float], ...] = ()
    routing: Routing | None = None
    sinks: tuple[tuple[float, ...], ...] | None = None


@runtime_checkable
class Backend(Protocol):
    def stream(
        self,
        prompt_ids: Sequence[int],
        *,
        max_tokens: int = 2048,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        logprobs: int = 0,
        routing: bool = False,
        sinks: bool = False,
        cancel: Cancel = None,
    ) -> Iterator[TokenStep]: ...


def cancelled(cancel: Cancel) -> bool:
    """True once ``cancel`` (an Event or a callable) says stop."""
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())
