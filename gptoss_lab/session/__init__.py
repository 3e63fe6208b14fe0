"""The session layer: the conversation and the loop (render, generate, parse, dispatch tool calls,
append tool messages, repeat), the worker thread a turn runs on, and the busy state.

``Chat.stream(text)`` yields the parser's events as the model writes, a :class:`ToolResult` for every
tool call, and ends with :class:`TurnFinished` holding the :class:`TurnResult`; ``Chat.send(text)``
returns the result; ``Chat.start(text)`` runs the turn on a worker thread (:class:`RunningTurn`).
"""

from __future__ import annotations

from ..errors import TurnInProgressError
from ..harmony.events import ContentDelta, MessageStarted, TurnDone
from .chat import Chat, RunningTurn, make_tools
from .loop import STOP_TOKENS, TokenRecorder, TurnLoop
from .results import SamplingConfig, SessionEvent, ToolResult, TurnFinished, TurnResult

__all__ = [
    "STOP_TOKENS", "Chat", "ContentDelta", "MessageStarted", "RunningTurn", "SamplingConfig", "SessionEvent",
    "TokenRecorder", "ToolResult", "TurnDone", "TurnFinished", "TurnInProgressError", "TurnLoop", "TurnResult",
    "make_tools",
]
