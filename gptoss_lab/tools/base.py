"""The tool protocol, and the toolbox that dispatches the model's calls by recipient.

A call is an assistant message addressed to a tool: ``to=python``, ``to=functions.get_weather``,
``to=browser.search``. A tool answers with tool messages, authored by the tool and addressed
``to=assistant`` on the call's channel. A tool failure is never an exception: the model reads it as a
tool message (``Error: ...``) and can act on it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Union, runtime_checkable

from ..backends.base import Cancel, cancelled

if TYPE_CHECKING:
    from openai_harmony import Message, ToolDescription, ToolNamespaceConfig

    from ..harmony.events import ParsedMessage

# After a stop, how long a tool may take to return before the turn goes on without it. The python
# tool yields well within it: its sandbox restarts a kernel that ignores the interrupt after ~1 s.
STOP_GRACE_SECONDS = 1.5


@dataclass(frozen=True)
class ToolReply:
    """What a call gave: the tool messages the model reads, rich outputs for display (MIME bundles),
    and ``status`` (``done``, ``interrupted``, ``abandoned``, ``not run``; see ToolResult)."""

    messages: tuple[Message, ...]
    outputs: tuple[dict[str, Any], ...] = ()
    status: str = "done"


@runtime_checkable
class Tool(Protocol):
    """A tool the model can call.

    ``namespace`` is the first part of the recipient (``python``, ``functions``, ``browser``).
    ``call`` answers a call message with tool messages (a list, or a :class:`ToolReply` that adds
    rich outputs). Built-in tools (python, browser) also have ``system_config()`` (see
    :class:`BuiltinTool`); function tools a ``description`` for the developer message.
    """

    namespace: str

    def matches(self, recipient: str) -> bool: ...

    def call(self, message: ParsedMessage) -> list[Message] | ToolReply: ...


@runtime_checkable
class BuiltinTool(Protocol):
    """A tool declared in the system message (python, browser)."""

    def system_config(self) -> ToolNamespaceConfig: ...


@runtime_checkable
class Interruptible(Protocol):
    """A tool whose running call can be stopped from another thread (the python tool's sandbox)."""

    def interrupt(self) -> None: ...


@runtime_checkable
class Closable(Protocol):
    def close(self) -> None: ...


def reply(message: ParsedMessage, text: str, *, name: str | None = None) -> Message:
    """The tool message that answers ``message``: authored by the tool, on the call's channel, to the assistant."""
    from ..harmony.conversation import tool_message

    return tool_message(name or message.recipient or "tool", text, channel=message.channel, recipient="assistant")


ToolLike = Union[Tool, Callable[..., Any]]


class Toolbox:
    """The tools of a conversation: their declarations, and dispatch of calls by recipient.

    Plain Python functions given here become function tools (see :func:`gptoss_lab.tool`).
    """

    def __init__(self, tools: Iterable[ToolLike] = ()):
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
        return f"functions.{t.name}" if t.namespace == "functions" else str(t.namespace)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.tools)

    def __len__(self) -> int:
        return len(self.tools)

    def names(self) -> list[str]:
        return [self.recipient_name(t) for t in self.tools]

    def builtin_configs(self) -> list[ToolNamespaceConfig]:
        """The declarations for the system message (python, browser)."""
        return [t.system_config() for t in self.tools if isinstance(t, BuiltinTool)]

    def function_descriptions(self) -> list[ToolDescription]:
        """The declarations for the developer message (``functions.*``)."""
        return [t.description for t in self.tools if t.namespace == "functions"]

    def find(self, recipient: str) -> Any | None:
        for t in self.tools:
            if t.matches(recipient):
                return t
        return None

    def not_run(self, message: ParsedMessage, why: str) -> ToolReply:
        """The reply to a call that was not run, so that the conversation stays well formed."""
        return ToolReply((reply(message, f"[not run: {why}]"),), status="not run")

    def dispatch(self, message: ParsedMessage, *, cancel: Cancel = None) -> ToolReply:
        """Run the call in ``message`` and return what the model reads. Never raises on model input.

        With ``cancel``: once it is set the tool is interrupted (where it can be), and a tool that has
        not returned :data:`STOP_GRACE_SECONDS` later is left behind with a reply saying so.
        """
        recipient = (message.recipient or "").strip()
        t = self.find(recipient)
        if t is None:
            known = ", ".join(self.names()) or "none"
            return ToolReply((reply(message, f"Error: there is no tool {recipient!r}. The tools are: {known}."),))
        if cancel is None:
            try:
                return self._call(t, recipient, message)
            except BaseException:  # the kernel's interrupt: the tool's code must not run on
                if isinstance(t, Interruptible):
                    t.interrupt()
                raise
        box: list[ToolReply] = []

        def work() -> None:
            try:
                box.append(self._call(t, recipient, message))
            except BaseException as e:  # SystemExit in a function tool, say: the model reads it
                box.append(ToolReply((reply(message, f"Error: the tool {recipient} failed: {type(e).__name__}: {e}"),)))

        worker = threading.Thread(target=work, name=f"gptoss-lab-tool-{recipient}", daemon=True)
        worker.start()
        stopped_at = None
        try:
            while worker.is_alive():
                worker.join(0.02)
                if stopped_at is None and cancelled(cancel):
                    stopped_at = time.monotonic()
                if stopped_at is not None and isinstance(t, Interruptible):
                    t.interrupt()  # again at every poll: a run that was just starting is stopped too
                if stopped_at is not None and worker.is_alive() and time.monotonic() - stopped_at > STOP_GRACE_SECONDS:
                    text = (f"[stopped by the user: {recipient} did not return within {STOP_GRACE_SECONDS:g} s of "
                            "the stop; it may still be running, and its result will not be seen]")
                    return ToolReply((reply(message, text),), status="abandoned")
        except BaseException:
            if isinstance(t, Interruptible):
                t.interrupt()
            raise
        got = box[0]
        if stopped_at is not None and got.status == "done":
            return ToolReply(got.messages, got.outputs, "interrupted")
        return got

    @staticmethod
    def _call(t: Any, recipient: str, message: ParsedMessage) -> ToolReply:
        try:
            out = t.call(message)
        except Exception as e:  # a tool's own bug still reaches the model as a tool message
            return ToolReply((reply(message, f"Error: the tool {recipient} failed: {type(e).__name__}: {e}"),))
        return out if isinstance(out, ToolReply) else ToolReply(tuple(out))

    def close(self) -> None:
        for t in self.tools:
            if isinstance(t, Closable):
                t.close()


def as_text(value: Any) -> str:
    """A tool result as the text the model reads."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)
