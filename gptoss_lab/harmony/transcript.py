"""The transcript JSON of DESIGN.md, built from parser events.

``{"format": "gptoss-lab.transcript/1", "messages": [...], "complete": bool, "errors": [...], ...}``
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .events import Event, Malformed, MessageDone, ParsedMessage, TurnDone

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
    """An event sink that collects a transcript: finished messages, errors and how the output ended."""

    def __init__(self) -> None:
        self.messages: list[ParsedMessage] = []
        self.errors: list[dict[str, Any]] = []
        self.stop_reason: str | None = None

    def add(self, event: Event) -> None:
        if isinstance(event, MessageDone):
            self.messages.append(event.message)
        elif isinstance(event, Malformed):
            self.errors.append({"raw": event.raw, "reason": event.error, "token_index": event.token_index})
        elif isinstance(event, TurnDone):
            self.stop_reason = event.reason

    def extend(self, events: Iterable[Event]) -> TranscriptBuilder:
        for event in events:
            self.add(event)
        return self

    @property
    def complete(self) -> bool:
        return self.stop_reason in ("return", "call")

    def to_dict(self, **extra: Any) -> dict[str, Any]:
        """The JSON-able transcript; ``extra`` keys (tokens, sampling settings, ...) are added as given."""
        out: dict[str, Any] = {
            "format": FORMAT,
            "messages": [m.to_dict() for m in self.messages],
            "complete": self.complete,
            "errors": self.errors,
            "stop_reason": self.stop_reason,
        }
        # A cut message is kept whole; say which one it was.
        incomplete = [i for i, m in enumerate(self.messages) if m.incomplete]
        if incomplete:
            out["incomplete_messages"] = incomplete
        out.update(extra)
        return out


def transcript(events: Iterable[Event], **extra: Any) -> dict[str, Any]:
    """Build the transcript dict from a sequence of events."""
    return TranscriptBuilder().extend(events).to_dict(**extra)
