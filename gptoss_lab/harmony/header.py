"""Reading a Harmony message header, leniently.

A header is the text between ``<|start|>`` and ``<|message|>``, e.g.
``assistant<|channel|>commentary to=functions.get_weather <|constrain|>json``. The rules follow
openai-harmony's own parser for well-formed headers (the tests compare the two); where that parser
raises (an empty channel, ``to=`` after the content type, ``<|constrain|> json``, ``assistant:name``,
leftover words), this one still reads what it can and reports the rest as problems.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

CHANNEL_MARK = "<|channel|>"
CONSTRAIN_MARK = "<|constrain|>"
ROLES = ("system", "developer", "user", "assistant", "tool")
UNNAMED_ROLE = "assistant"  # the role of a header that names none
# Authors of tool messages are named after the tool (``python``, ``functions.lookup_weather``,
# ``browser.search``): a lone word like these is a tool's name, not an unknown role.
_TOOL_NAME = re.compile(r"^(?:python|browser|container|functions)(?:\.[\w\-]+)*$|^[A-Za-z_][\w\-]*(?:\.[\w\-]+)+$")
_CHANNEL_END = re.compile(r"[\s<]")


@dataclass(slots=True)
class Header:
    role: str | None
    name: str | None = None
    channel: str | None = None
    recipient: str | None = None
    content_type: str | None = None
    problems: list[str] = field(default_factory=list)
    # Text that was not header metadata: only kept when the header never reached <|message|>.
    leftover: str = ""


def _take_channel(text: str, header: Header) -> str:
    idx = text.find(CHANNEL_MARK)
    if idx < 0:
        return text
    after = text[idx + len(CHANNEL_MARK) :]
    m = _CHANNEL_END.search(after)
    end = m.start() if m else len(after)
    if end == 0:
        header.problems.append("channel marker without a channel name")
    else:
        header.channel = after[:end]
    return text[:idx] + after[end:]


def _take_role(parts: list[str], implied_role: str | None, header: Header) -> list[str]:
    if implied_role is not None:
        header.role = implied_role
        if parts and parts[0] == implied_role:
            return parts[1:]
        return parts
    if not parts:
        header.problems.append("message header without a role")
        return parts
    first = parts[0]
    if first in ROLES:
        header.role = first
        return parts[1:]
    role, sep, name = first.partition(":")
    if sep and role in ROLES and name:
        header.role, header.name = role, name
        return parts[1:]
    if len(parts) > 1 or first.startswith("to=") or _TOOL_NAME.match(first):
        # openai-harmony's rule: an unknown first word followed by more header is a tool's name.
        header.role, header.name = "tool", first
        return parts[1:]
    for known in ROLES:
        if first.startswith(known):
            # e.g. "assistantassistant", seen from gpt-oss-120b: keep the message, say what was odd.
            header.role = known
            header.problems.append(f"unknown role {first!r} read as {known!r}")
            return parts[1:]
    header.problems.append(f"unknown role {first!r}")
    return parts


def _take_recipient_and_type(parts: list[str], header: Header) -> None:
    others: list[str] = []
    for part in parts:
        if part.startswith("to=") and header.recipient is None:
            header.recipient = part[3:]
        elif part.startswith(CONSTRAIN_MARK) and header.content_type is None:
            header.content_type = part
        else:
            others.append(part)
    if not others:
        return
    if header.recipient is None and header.content_type is None:
        if len(others) == 1:
            # openai-harmony 0.0.8 reads a single unmarked word as the recipient.
            header.recipient = others.pop()
        else:
            header.content_type = others.pop()
            header.recipient = others.pop()
    elif header.content_type is None:
        header.content_type = others.pop()
    elif header.recipient is None:
        header.recipient = others.pop()
    if others:
        header.problems.append(f"unexpected text in message header: {' '.join(others)!r}")


def parse_header(text: str, implied_role: str | None, *, closed: bool = True) -> Header:
    """Read a decoded header (special tokens written out).

    Parameters
    ----------
    text
        The header's text, without the leading ``<|start|>``.
    implied_role
        The role when the header follows a ``<|start|>role`` the model did not write itself
        (a completion generated after ``<|start|>assistant``). A header that names no role, only
        a channel or nothing, is read with :data:`UNNAMED_ROLE` implied.
    closed
        False when the header never reached ``<|message|>`` (a stop token or the end of the output
        came first): then only the role and channel are read and the rest is kept as ``leftover``,
        the message's likely content (as openai-harmony's non-strict mode does).
    """
    if implied_role is None and not text.partition(CHANNEL_MARK)[0].strip() and (closed or CHANNEL_MARK in text):
        # No role at all (``<|start|><|channel|>analysis<|message|>``): models that leave out the
        # assistant tag write this, so read it as the start of a completion is read.
        implied_role = UNNAMED_ROLE
    header = Header(role=None)
    text = _take_channel(text, header)
    if not closed:
        stripped = text.strip()
        word = stripped.split(None, 1)[0] if stripped else ""
        parts = _take_role([word] if word else [], implied_role, header)
        header.leftover = stripped[len(word) :].lstrip() if not parts else stripped
        return header
    text = text.strip()
    if CONSTRAIN_MARK in text:
        text = text.replace(CONSTRAIN_MARK, " " + CONSTRAIN_MARK).strip()
    parts = text.split()
    # "<|constrain|> json": the marker and its type were split by a space.
    merged: list[str] = []
    for part in parts:
        if merged and merged[-1] == CONSTRAIN_MARK:
            merged[-1] += part
        else:
            merged.append(part)
    parts = _take_role(merged, implied_role, header)
    _take_recipient_and_type(parts, header)
    return header
