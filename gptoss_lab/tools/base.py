"""The tool protocol, and the toolbox that dispatches the model's calls by recipient.

A call is an assistant message addressed to a tool: ``to=python``, ``to=functions.get_weather``,
``to=browser.search``. A tool answers with tool messages, authored by the tool and addressed
``to=assistant`` on the call's channel. A tool failure is never an exception: the model reads it as a
tool message (``Error: ...``) and can act on it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from openai_harmony import Message, ToolDescription, ToolNamespaceConfig

    from ..harmony.events import ParsedMessage


@runtime_checkable
class Tool(Protocol):
    """A tool the model can call.

    ``namespace`` is the first part of the recipient (``python``, ``functions``, ``browser``).
    Built-in tools (python, browser) are declared in the system message with ``system_config()``;
    function tools in the developer message with ``description`` (a ToolDescription).
    """

    namespace: str

    def matches(self, recipient: str) -> bool: ...

    def call(self, message: ParsedMessage) -> list[Message]: ...


def reply(message: ParsedMessage, text: str, *, name: str | None = None) -> Message:
    """The tool message that answers ``message``: authored by the tool, on the call's channel, to the assistant."""
    from ..harmony.conversation import tool_message

    return tool_message(name or message.recipient or "tool", text, channel=message.channel, recipient="assistant")


class Toolbox:
    """The tools of a conversation: their declarations, and dispatch of calls by recipient.

    Plain Python functions given here become function tools (see :func:`gptoss_lab.tool`).
    """

    def __init__(self, tools: Iterable[Tool | Callable[..., Any]] = ()):
        from .functions import FunctionTool, tool

        self.tools: list[Any] = []
        for t in tools:
            if not isinstance(t, Tool) and callable(t):
                t = t if isinstance(t, FunctionTool) else tool(t)
            self.tools.append(t)
        names = [self.recipient_name(t) for t in self.tools]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"two tools answer to the same name: {', '.join(sorted(dupes))}")

    @staticmethod
    def recipient_name(t: Any) -> str:
        return f"functions.{t.name}" if t.namespace == "functions" else t.namespace

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.tools)

    def __len__(self) -> int:
        return len(self.tools)

    def names(self) -> list[str]:
        return [self.recipient_name(t) for t in self.tools]

    def builtin_configs(self) -> list[ToolNamespaceConfig]:
        """The declarations for the system message (python, browser)."""
        return [t.system_config() for t in self.tools if hasattr(t, "system_config")]

    def function_descriptions(self) -> list[ToolDescription]:
        """The declarations for the developer message (``functions.*``)."""
        return [t.description for t in self.tools if t.namespace == "functions"]

    def find(self, recipient: str) -> Any | None:
        for t in self.tools:
            if t.matches(recipient):
                return t
        return None

    def dispatch(self, message: ParsedMessage) -> list[Message]:
        """Run the call in ``message`` and return the tool messages for the model. Never raises on model input."""
        recipient = (message.recipient or "").strip()
        t = self.find(recipient)
        if t is None:
            known = ", ".join(self.names()) or "none"
            return [reply(message, f"Error: there is no tool {recipient!r}. The tools are: {known}.")]
        try:
            return t.call(message)
        except Exception as e:  # a tool's own bug still reaches the model as a tool message
            return [reply(message, f"Error: the tool {recipient} failed: {type(e).__name__}: {e}")]

    def close(self) -> None:
        for t in self.tools:
            close = getattr(t, "close", None)
            if close is not None:
                close()


def as_text(value: Any) -> str:
    """A tool result as the text the model reads."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)
