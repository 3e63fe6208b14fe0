"""A lenient, streaming Harmony parser: token ids in, typed events out.

openai-harmony's ``StreamableParser`` is strict: on output that real gpt-oss models do write
(``<|return|>`` after ``<|end|>``, broken headers, unknown roles, text after a stop token) it raises
and its state is lost. This parser follows the same format rules but never raises on model output
and never drops text: whatever it cannot place in a message becomes a ``Malformed`` event holding the
raw text (special tokens written out) and the reason, and it picks up again at the next ``<|start|>``.

It takes tokens one at a time (live generation) or in bulk (a recorded completion); bulk feeding
emits one ``ContentDelta`` per message per call, which is what makes it fast on large files.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from .events import (
    CALL,
    END,
    FIRST_SPECIAL,
    MESSAGE,
    RETURN,
    START,
    ContentDelta,
    Event,
    Malformed,
    MessageDone,
    MessageStarted,
    ParsedMessage,
    ToolCall,
    TurnDone,
    TurnEnd,
)
from .header import Header, parse_header

if TYPE_CHECKING:
    from openai_harmony import HarmonyEncoding

# Parser states.
_EXPECT_START = 0  # between messages
_HEADER = 1  # reading a header (after <|start|>, or at the beginning of a completion)
_CONTENT = 2  # reading a message's content
_BROKEN = 3  # reading the content of a message whose header named no role: kept raw

_STOP_NAMES = {RETURN: "return", CALL: "call"}
_CONTENT_BREAK = frozenset({START, END, RETURN, CALL})
_HEADER_BREAK = frozenset({START, END, RETURN, CALL, MESSAGE})


class HarmonyStreamParser:
    """Turns generated token ids into :mod:`gptoss_lab.harmony.events`.

    Parameters
    ----------
    encoding
        The Harmony encoding (default: :func:`gptoss_lab.encoding`).
    role
        The role of the first message when the output begins inside a header the model did not
        write, as a completion generated after ``<|start|>assistant`` does. Output that begins with
        ``<|start|>`` is read the same either way. ``None``: the output must begin with ``<|start|>``.

    Examples
    --------
    >>> parser = HarmonyStreamParser()
    >>> events = parser.feed(token_ids) + parser.close("end_of_input")
    """

    def __init__(self, encoding: HarmonyEncoding | None = None, *, role: str | None = "assistant"):
        if encoding is None:
            from .vocab import encoding as _encoding

            encoding = _encoding()
        self._encoding = encoding
        self.position = 0  # tokens fed so far
        self.messages: list[ParsedMessage] = []
        self._index = 0
        self._turn_open = True
        self._last_stop: int | None = None  # the stop token that ended the last turn, if any
        self._closed = False
        self._begin_header(role, opened_by_start=False, at=0)
        if role is None:
            self._state = _EXPECT_START
        self._stray: list[int] = []
        self._stray_at = 0

    # -- public ---------------------------------------------------------------------------------

    @property
    def in_message(self) -> bool:
        """True while a message (or its header) is open."""
        return self._state in (_CONTENT, _BROKEN) or (self._state == _HEADER and bool(self._header_tokens))

    @property
    def state(self) -> str:
        """Where the parser is: ``header``, ``content``, ``between`` (messages) or ``malformed``."""
        return {_EXPECT_START: "between", _HEADER: "header", _CONTENT: "content", _BROKEN: "malformed"}[self._state]

    @property
    def current_channel(self) -> str | None:
        return self._current.channel if self._state == _CONTENT else None

    def feed(self, tokens: Iterable[int]) -> list[Event]:
        """Parse more tokens; returns the events they complete (possibly none)."""
        if self._closed:
            raise RuntimeError("this parser was closed; start a new one for a new completion")
        toks = tokens if isinstance(tokens, (list, tuple)) else list(tokens)
        out: list[Event] = []
        n = len(toks)
        i = 0
        base = self.position
        while i < n:
            state = self._state
            if state == _CONTENT or state == _BROKEN:
                j = i
                while j < n and toks[j] not in _CONTENT_BREAK:
                    j += 1
                if j > i:
                    if state == _CONTENT:
                        self._content_bytes(toks[i:j], out)
                    else:
                        self._broken_tokens.extend(toks[i:j])
                if j == n:
                    break
                self.position = base + j
                self._end_message(toks[j], out)
                i = j + 1
            elif state == _HEADER:
                j = i
                while j < n and toks[j] not in _HEADER_BREAK:
                    j += 1
                self._header_tokens.extend(toks[i:j])
                if j == n:
                    break
                self.position = base + j
                self._header_break(toks[j], out)
                i = j + 1
            else:  # _EXPECT_START
                t = toks[i]
                if t == START:
                    self.position = base + i
                    self._flush_stray(out)
                    self._begin_header(None, opened_by_start=True, at=base + i)
                elif t in _STOP_NAMES and self._turn_open:
                    # After <|end|> this is vLLM #37072's <|end|><|return|>: the message was whole and
                    # the turn ends here, as it does when stray text came first.
                    self.position = base + i
                    self._flush_stray(out)
                    self._finish_turn(t, out)
                else:
                    # Anything else between messages is kept, special tokens too: a doubled <|end|> or a
                    # second stop token is output the model wrote, not structure.
                    self._keep_stray(t, base + i)
                i += 1
        self.position = base + n
        return out

    def close(self, reason: TurnEnd = "end_of_input") -> list[Event]:
        """The output ended: finish what is open (kept, marked incomplete) and end the turn.

        ``reason`` says why the output ended when it did not end on a stop token.
        """
        if self._closed:
            return []
        self._closed = True
        out: list[Event] = []
        if self._state == _CONTENT:
            self._finish_message(out, incomplete=True)
        elif self._state == _BROKEN:
            self._emit_broken(out, "output ended inside a message whose header could not be read")
        elif self._state == _HEADER and (self._header_tokens or self._opened_by_start):
            text = self._decode(self._header_tokens)
            if self._bare_text():
                # Plain text with no Harmony markup at all: it is the assistant's content.
                self._start_message(Header(role=self._implied_role or "assistant"), out)
                out.append(ContentDelta(self._index, None, text))
                self._content_parts.append(text)
                self._finish_message(out, incomplete=True)
            else:
                self._malformed(self._header_raw(), "output ended inside a message header", self._header_at, out)
        self._state = _EXPECT_START
        self._flush_stray(out)
        if self._turn_open:
            self._turn_open = False
            out.append(TurnDone(reason))
        return out

    @property
    def complete(self) -> bool:
        """True when the last turn ended on a stop token and nothing was left open after it."""
        return self._last_stop is not None and not self._turn_open

    # -- internals ------------------------------------------------------------------------------

    def _bytes(self, tokens: Sequence[int]) -> bytes:
        # surrogateescape round-trips the exact bytes, so a character split across tokens survives.
        return self._encoding.decode(tokens, errors="surrogateescape").encode("utf-8", "surrogateescape")

    def _decode(self, tokens: Sequence[int]) -> str:
        return self._encoding.decode(tokens, errors="replace")

    def _begin_header(self, implied_role: str | None, *, opened_by_start: bool, at: int) -> None:
        self._state = _HEADER
        self._implied_role = implied_role
        self._opened_by_start = opened_by_start
        self._header_tokens: list[int] = []
        self._header_at = at
        if opened_by_start and not self._turn_open:
            # A new message after a finished turn (a transcript of several turns) opens a new turn.
            self._turn_open = True
            self._last_stop = None

    def _header_raw(self) -> str:
        return ("<|start|>" if self._opened_by_start else "") + self._decode(self._header_tokens)

    def _header_break(self, t: int, out: list[Event]) -> None:
        if t == MESSAGE:
            header = parse_header(self._decode(self._header_tokens), self._implied_role)
            if header.role is None:
                self._state = _BROKEN
                self._broken_reason = "; ".join(header.problems)
                self._broken_tokens = list(self._header_tokens) + [MESSAGE]
                return
            if header.problems:
                self._malformed(self._header_raw() + "<|message|>", "; ".join(header.problems), self._header_at, out)
            self._start_message(header, out)
            return
        if t == START and not self._bare_text():
            # A header interrupted by a new <|start|>: keep its text, read the new header.
            if self._header_tokens or self._opened_by_start:
                self._malformed(self._header_raw(), "message header not closed by <|message|>", self._header_at, out)
            self._begin_header(None, opened_by_start=True, at=self.position)
            return
        if self._bare_text():
            # Plain text where the completion's first header was expected, cut by <|end|>, a stop
            # token or <|start|>: it is a channel-less message of the implied role, kept as written.
            text = self._decode(self._header_tokens)
            self._start_message(Header(role=self._implied_role or "assistant"), out)
            out.append(ContentDelta(self._index, None, text))
            self._content_parts.append(text)
            self._end_message(t, out)
            return
        # <|end|>, <|return|> or <|call|> before <|message|>: read the header as far as it goes and
        # keep the rest as the message's content (openai-harmony's non-strict reading).
        if self._header_tokens:
            header = parse_header(self._decode(self._header_tokens), self._implied_role, closed=False)
            if header.role is None:
                self._malformed(self._header_raw(), "; ".join(header.problems), self._header_at, out)
            else:
                self._start_message(header, out)
                if header.leftover:
                    out.append(ContentDelta(self._index, header.channel, header.leftover))
                    self._content_parts.append(header.leftover)
                self._state = _CONTENT
                self._end_message(t, out)
                return
        elif self._opened_by_start:
            self._malformed("<|start|>", "empty message", self._header_at, out)
        elif t == END:
            # An <|end|> where the completion's first header was expected closes no message.
            self._state = _EXPECT_START
            self._keep_stray(t, self.position)
            return
        self._state = _EXPECT_START
        if t in _STOP_NAMES and self._turn_open:
            self._finish_turn(t, out)

    def _bare_text(self) -> bool:
        """The completion began with plain text where its first header was expected."""
        return not self._opened_by_start and bool(self._header_tokens) and all(
            t < FIRST_SPECIAL for t in self._header_tokens
        )

    def _start_message(self, header: Header, out: list[Event]) -> None:
        self._current = header
        self._content_parts: list[str] = []
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._state = _CONTENT
        out.append(
            MessageStarted(self._index, header.role or "", header.name, header.channel, header.recipient, header.content_type)
        )

    def _content_bytes(self, tokens: Sequence[int], out: list[Event]) -> None:
        text = self._utf8.decode(self._bytes(tokens))
        if text:
            self._content_parts.append(text)
            out.append(ContentDelta(self._index, self._current.channel, text))

    def _end_message(self, t: int, out: list[Event]) -> None:
        """The current message's content ended at token ``t``."""
        if self._state == _BROKEN:
            self._emit_broken(out, self._broken_reason)
        else:
            self._finish_message(out, incomplete=False)
        self._state = _EXPECT_START
        if t == START:
            # A message not closed before the next <|start|>: recover by reading the new header.
            self._begin_header(None, opened_by_start=True, at=self.position)
        elif t in _STOP_NAMES:
            self._finish_turn(t, out)

    def _finish_message(self, out: list[Event], *, incomplete: bool) -> None:
        tail = self._utf8.decode(b"", final=True)  # dangling bytes of a split character
        if tail:
            self._content_parts.append(tail)
            out.append(ContentDelta(self._index, self._current.channel, tail))
        h = self._current
        msg = ParsedMessage(
            h.role or "", h.name, h.channel, h.recipient, h.content_type, "".join(self._content_parts), incomplete
        )
        self.messages.append(msg)
        out.append(MessageDone(self._index, msg))
        if msg.is_tool_call and not incomplete:
            out.append(ToolCall(self._index, msg))
        self._index += 1
        self._state = _EXPECT_START

    def _emit_broken(self, out: list[Event], reason: str) -> None:
        raw = "<|start|>" if self._opened_by_start else ""
        self._malformed(raw + self._decode(self._broken_tokens), reason, self._header_at, out)

    def _finish_turn(self, t: int, out: list[Event]) -> None:
        self._turn_open = False
        self._last_stop = t
        out.append(TurnDone(_STOP_NAMES[t]))  # type: ignore[arg-type]

    def _keep_stray(self, t: int, at: int) -> None:
        if not self._stray:
            self._stray_at = at
        self._stray.append(t)

    def _flush_stray(self, out: list[Event]) -> None:
        if not self._stray:
            return
        if self._last_stop is not None and not self._turn_open:
            reason = f"text after <|{_STOP_NAMES[self._last_stop]}|>"
        else:
            reason = "text outside a message (expected <|start|>)"
        self._malformed(self._decode(self._stray), reason, self._stray_at, out)
        self._stray = []

    def _malformed(self, raw: str, error: str, at: int, out: list[Event]) -> None:
        out.append(Malformed(raw, error, at))


def strip_file_newline(text: str) -> str:
    """Drop the line break a file adds after the last special token: it is the file's, not the model's."""
    for eol in ("\r\n", "\n"):
        if text.endswith("|>" + eol):
            return text[: -len(eol)]
    return text


def parse_tokens(
    tokens: Sequence[int],
    encoding: HarmonyEncoding | None = None,
    *,
    role: str | None = "assistant",
    reason: TurnEnd = "end_of_input",
) -> list[Event]:
    """Parse a whole completion at once; see :class:`HarmonyStreamParser`."""
    parser = HarmonyStreamParser(encoding, role=role)
    return parser.feed(tokens) + parser.close(reason)
