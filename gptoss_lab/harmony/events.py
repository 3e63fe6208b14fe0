"""Typed values that flow from the Harmony parser to the session and the display.

Every event is a frozen dataclass. ``index`` numbers the messages of one parse, in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Union

if TYPE_CHECKING:
    from openai_harmony import Message

# Special token ids of the o200k_harmony encoding (checked against the encoding in the tests).
RETURN = 200002  # <|return|>: the assistant's turn is over (a stop token)
CONSTRAIN = 200003  # <|constrain|>: the content type that follows is constrained (e.g. json)
CHANNEL = 200005  # <|channel|>
START = 200006  # <|start|>: a message header begins
END = 200007  # <|end|>: a message ends, the turn does not
MESSAGE = 200008  # <|message|>: the header ends, content begins
CALL = 200012  # <|call|>: the assistant called a tool (a stop token)
FIRST_SPECIAL = 199998  # ids below this are ordinary text tokens
VOCAB_SIZE = 201088

TurnEnd = Literal["return", "call", "max_tokens", "stopped", "end_of_input", "failed"]  # failed: the engine broke off


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """One message as the model wrote it, in Harmony's words.

    ``incomplete`` is true when the output ended (or was cut) before the message's end token.
    """

    role: str
    name: str | None
    channel: str | None
    recipient: str | None
    content_type: str | None
    content: str
    incomplete: bool = False

    @property
    def is_tool_call(self) -> bool:
        """An assistant message addressed to a tool (``to=python``, ``to=functions.x``, ...)."""
        return self.role == "assistant" and self.recipient not in (None, "all", "user", "assistant")

    def to_dict(self) -> dict[str, Any]:
        """The message as it stands in the transcript JSON (DESIGN.md)."""
        return {
            "role": self.role,
            "name": self.name,
            "channel": self.channel,
            "recipient": self.recipient,
            "content_type": self.content_type,
            "content": self.content,
        }

    def to_harmony(self) -> Message:
        """The same message as an ``openai_harmony.Message``, ready to render again."""
        from openai_harmony import Author, Message, Role, TextContent

        msg = Message(author=Author(role=Role(self.role), name=self.name), content=[TextContent(text=self.content)])
        if self.channel is not None:
            msg = msg.with_channel(self.channel)
        if self.recipient is not None:
            msg = msg.with_recipient(self.recipient)
        if self.content_type is not None:
            msg = msg.with_content_type(self.content_type)
        return msg


@dataclass(frozen=True, slots=True)
class MessageStarted:
    """A header was read: who writes, on which channel, to whom, in what content type."""

    index: int
    role: str
    name: str | None
    channel: str | None
    recipient: str | None
    content_type: str | None


@dataclass(frozen=True, slots=True)
class ContentDelta:
    """New text of the current message (always whole characters: UTF-8 split across tokens is joined)."""

    index: int
    channel: str | None
    text: str


@dataclass(frozen=True, slots=True)
class MessageDone:
    """A message ended (by its end token, or incomplete when the output stopped inside it)."""

    index: int
    message: ParsedMessage


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A finished assistant message addressed to a tool; the session dispatches it by ``recipient``."""

    index: int
    message: ParsedMessage

    @property
    def recipient(self) -> str:
        return self.message.recipient or ""


@dataclass(frozen=True, slots=True)
class TurnDone:
    """The assistant's turn ended, and why: ``return``/``call`` (stop tokens), ``max_tokens``,
    ``stopped`` (cancelled), or ``end_of_input`` (a recorded completion simply ended)."""

    reason: TurnEnd

    @property
    def complete(self) -> bool:
        return self.reason in ("return", "call")


@dataclass(frozen=True, slots=True)
class Malformed:
    """Text the parser could not place in a message, kept verbatim (special tokens written out)."""

    raw: str
    error: str
    token_index: int


Event = Union[MessageStarted, ContentDelta, MessageDone, ToolCall, TurnDone, Malformed]
