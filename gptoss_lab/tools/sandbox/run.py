"""Running code in a sandbox kernel and reading what it sends, without ever raising on it.

Every message comes from the relay (``relay.py``: oversized and malformed ones already set aside
there), and is checked again here for the fields it must have before use. A message that cannot
be read or is malformed is counted and said in the text the model reads; the run goes on until the
kernel says it is idle (or its ``execute_reply`` arrives, if the idle status was lost).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Rich outputs (images, HTML) of one run kept for display: they live in the user's kernel and notebook.
MAX_OUTPUTS = 50
MAX_OUTPUT_BYTES = 8 * 2**20
# Most text (and messages) read from one run: past it the rest is drained and counted, not kept.
MAX_READ_BYTES = 64 * 2**20
MAX_MESSAGE_BYTES = 4 * 2**20  # the relay's sockets refuse larger frames (see relay.py)
# Output of earlier runs read during one run past which the kernel is restarted (it floods).
FLOOD_BYTES = 16 * 2**20


@dataclass
class RunResult:
    """What one ``run()`` produced.

    ``text`` is what the model reads: stdout, stderr, the result's text and tracebacks, in order,
    capped (head and tail kept, the cut said), and notes on what the sandbox did. ``outputs`` are the
    rich outputs for display (MIME bundles: image/png, text/html, text/plain). ``restarted`` says the
    kernel was restarted and its state lost. ``error``: the exception's ``Name: value``, or
    ``interrupted``, ``timeout``, ``kernel died: ...``.
    """

    text: str
    outputs: list[dict[str, Any]] = field(default_factory=list)
    timed_out: bool = False
    error: str | None = None
    restarted: bool = False
    seconds: float = 0.0


class Capped:
    """Text kept within ``limit`` characters: the head and a rolling tail, with the count of what was cut."""

    def __init__(self, limit: int):
        self.limit = limit
        self.head: list[str] = []
        self.head_len = 0
        self.tail = ""
        self.total = 0

    def add(self, text: str) -> None:
        self.total += len(text)
        half = self.limit // 2
        if self.head_len < half:
            take = text[: half - self.head_len]
            self.head.append(take)
            self.head_len += len(take)
            text = text[len(take):]
        if text:
            self.tail = (self.tail + text)[-half:]

    def value(self) -> str:
        head = "".join(self.head)
        cut = self.total - len(head) - len(self.tail)
        if cut <= 0:
            return head + self.tail
        return f"{head}\n[... {cut} characters cut: the output was {self.total} characters ...]\n{self.tail}"


def _str(content: dict[str, Any], key: str) -> str | None:
    value = content.get(key)
    return value if isinstance(value, str) else None


class Reader:
    """Collects one run's messages: text for the model, rich outputs for display, and what went wrong."""

    def __init__(self, msg_id: str, max_chars: int):
        self.msg_id = msg_id
        self.text = Capped(max_chars)
        self.outputs: list[dict[str, Any]] = []
        self.error: str | None = None
        self.idle = False
        self.replied = False
        self.kept_bytes = 0
        self.read_bytes = 0
        self.dropped_outputs = 0
        self.bad = 0  # messages that could not be decoded or lacked their fields
        self.seen = 0  # messages of this run (its busy and idle status at least, from a working kernel)
        self.foreign = 0  # output of earlier runs (code left running) read during this one
        self.foreign_bytes = 0
        self.dropped = 0  # messages too large (or of too many frames) to read: dropped by the relay
        self.resets = 0  # the IOPub connection was reset (an oversized frame, or the kernel closed it)

    def take(self, msg: Any) -> None:
        try:
            ok = isinstance(msg, dict) and isinstance(msg.get("parent_header"), dict)
            if not ok or msg["parent_header"].get("msg_id") != self.msg_id:
                return
            self.seen += 1
            kind, content = msg.get("msg_type"), msg.get("content")
            if not isinstance(content, dict) or not isinstance(kind, str):
                self.bad += 1
            elif not self._content(kind, content):
                self.bad += 1
        except Exception:  # whatever the kernel sent, the run goes on
            self.bad += 1

    def _content(self, kind: str, content: dict[str, Any]) -> bool:
        if kind == "stream":
            text = _str(content, "text")
            if text is None:
                return False
            self._text(text)
        elif kind in ("execute_result", "display_data"):
            data = content.get("data")
            if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
                return False
            size = sum(len(v) if isinstance(v, str) else len(repr(v)) for v in data.values())
            if len(self.outputs) < MAX_OUTPUTS and self.kept_bytes + size <= MAX_OUTPUT_BYTES:
                self.outputs.append(data)  # for display; the model reads only the text below
                self.kept_bytes += size
            else:
                self.dropped_outputs += 1
            plain = data.get("text/plain")
            if kind == "execute_result" and isinstance(plain, str):
                self._text(plain + "\n")
            elif "image/png" in data:
                self._text("[image]\n")
        elif kind == "error":
            name, value, tb = _str(content, "ename"), _str(content, "evalue"), content.get("traceback")
            if name is None or value is None or not isinstance(tb, list):
                return False
            self.error = f"{name}: {value}"
            self._text(ANSI.sub("", "\n".join(str(line) for line in tb)) + "\n")
        elif kind == "status":
            state = _str(content, "execution_state")
            if state is None:
                return False
            self.idle = self.idle or state == "idle"
        return True

    def _text(self, text: str) -> None:
        self.read_bytes += len(text)
        if self.read_bytes <= MAX_READ_BYTES:
            self.text.add(text)

    def count(self, counts: Any) -> None:
        """What the relay set aside: other requests' messages, oversized and undecodable ones."""
        if not isinstance(counts, dict):
            return
        get = lambda k: int(counts.get(k, 0)) if isinstance(counts.get(k, 0), int) else 0  # noqa: E731
        self.foreign += get("foreign")
        self.foreign_bytes += get("foreign_bytes")
        self.dropped += get("oversized")
        self.bad += get("undecodable")
        self.resets += get("disconnects")

    @property
    def flooded(self) -> bool:
        """Code left running floods the output: the kernel is of no use until it is restarted."""
        return self.foreign_bytes > FLOOD_BYTES or self.dropped + self.resets > 3

    def notes(self) -> list[str]:
        out = []
        if self.dropped_outputs:
            out.append(f"{self.dropped_outputs} rich outputs not kept: past {MAX_OUTPUTS} outputs or "
                       f"{MAX_OUTPUT_BYTES >> 20} MB")
        if self.read_bytes > MAX_READ_BYTES:
            out.append(f"output past {MAX_READ_BYTES >> 20} MB was not read")
        if self.dropped and not self.flooded:
            out.append(f"{self.dropped} messages from the kernel were too large to read and were dropped")
        if self.resets and not self.flooded and self.seen:
            out.append(f"the connection for the kernel's output was reset {self.resets} times (by an oversized "
                       "message, or by the kernel): output around it may be lost")
        if self.foreign > 100 and not self.flooded:
            out.append(f"code left running by an earlier run sent {self.foreign} messages during this one: "
                       "this run's own output may have been crowded out")
        if self.bad:
            out.append(f"{self.bad} messages from the kernel could not be read (undecodable or malformed) and were skipped")
        return out


def drain(relay: Any, budget_seconds: float = 0.2) -> None:
    """Read away what waited since the last run (output of code left running): it is not this run's."""
    end = time.monotonic() + budget_seconds
    while time.monotonic() < end and relay.read(0) is not None:
        pass


def collect(relay: Any, reader: Reader, *, stop: Callable[[], str | None], tick: Callable[[], None]) -> str | None:
    """Read the relay's events until the run is over. ``stop()`` says why to give up early (None: keep
    reading); ``tick()`` runs between events (interrupts, deadlines). Returns why it gave up, or None."""
    replied_at = None
    while True:
        why = stop()
        if why is not None:
            return why
        tick()
        doc = relay.read(0.05)
        if doc is not None:
            if doc.get("relay") == "dead":
                return "relay"
            if "counts" in doc:
                reader.count(doc["counts"])
            elif doc.get("parent") != reader.msg_id:
                reader.foreign += 1  # forwarded for an earlier request, read after it
            elif doc.get("channel") == "iopub":
                reader.take({"parent_header": {"msg_id": doc["parent"]}, "msg_type": doc.get("msg_type"),
                             "content": doc.get("content")})
            elif doc.get("channel") == "shell" and doc.get("msg_type") == "execute_reply":
                replied_at = replied_at or time.monotonic()
        if reader.idle:
            return None
        # The idle status can be lost (dropped past the queue bound in a flood): the reply on the
        # shell channel says the run is over too; give IOPub a moment to deliver the rest.
        if replied_at is not None and time.monotonic() - replied_at > 0.5:
            return None
