"""The transcript JSON of DESIGN.md, built in one place: :class:`TranscriptBuilder`.

``{"format": "gptoss-lab.transcript/1", "messages": [...], "complete": bool, "errors": [...], ...}``

The builder is an event sink. ``gptoss-lab parse`` feeds it one parse; the session feeds it a whole
turn: the user's message, each round of the model's output (parser events), and the tools' replies.
Error positions index the turn's generated tokens across all its rounds, as ``tokens`` does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .events import Event, Malformed, MessageDone, ParsedMessage, ToolCall, TurnDone

FORMAT = "gptoss-lab.transcript/1"


def message_dict(message: Any) -> dict[str, Any]:
    """An ``openai_harmony.Message`` (a tool's reply, say) as it stands in the transcript JSON."""
    return {
        "role": message.author.role.value,
        "name": message.author.name,
        "channel": message.channel,
        "recipient": message.recipient,
        "content_type": message.content_type,
        "content": "".join(getattr(c, "text", "") for c in message.content),
    }


class TranscriptBuilder:
    """Collects a transcript: messages in order, errors, which messages were cut, how the output ended.

    ``offset`` is added to every error's ``token_index``: the session sets it to the number of tokens
    generated in the turn's earlier rounds, so that positions index the whole turn's tokens.
    """

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.incomplete: list[int] = []
        self.calls: list[tuple[int, ParsedMessage]] = []  # tool calls: (message index, the call)
        self.stop_reason: str | None = None
        self.offset = 0

    def add(self, event: Event) -> None:
        if isinstance(event, MessageDone):
            if event.message.incomplete:
                self.incomplete.append(len(self.messages))
            self.messages.append(event.message.to_dict())
        elif isinstance(event, ToolCall):
            self.calls.append((len(self.messages) - 1, event.message))
        elif isinstance(event, Malformed):
            self.errors.append({"raw": event.raw, "reason": event.error, "token_index": event.token_index + self.offset})
        elif isinstance(event, TurnDone):
            self.stop_reason = event.reason

    def extend(self, events: Iterable[Event]) -> TranscriptBuilder:
        for event in events:
            self.add(event)
        return self

    def add_message(self, message: Any) -> int:
        """A message the model did not write (the user's, a tool's reply: ``openai_harmony.Message``);
        returns its index."""
        self.messages.append(message_dict(message))
        return len(self.messages) - 1

    def add_user(self, text: str) -> None:
        self.messages.append({"role": "user", "name": None, "channel": None, "recipient": None,
                              "content_type": None, "content": text})

    @property
    def complete(self) -> bool:
        return self.stop_reason in ("return", "call")

    def to_dict(self, **extra: Any) -> dict[str, Any]:
        """The JSON-able transcript; ``extra`` keys (tokens, sampling settings, ...) are added as given."""
        out: dict[str, Any] = {
            "format": FORMAT,
            "messages": self.messages,
            "complete": self.complete,
            "errors": self.errors,
            "stop_reason": self.stop_reason,
        }
        if self.incomplete:  # a cut message is kept whole; say which one it was
            out["incomplete_messages"] = list(self.incomplete)
        out.update(extra)
        return out


def transcript(events: Iterable[Event], **extra: Any) -> dict[str, Any]:
    """Build the transcript dict from a sequence of events."""
    return TranscriptBuilder().extend(events).to_dict(**extra)
