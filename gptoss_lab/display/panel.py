"""The live Harmony panel (anywidget): a header, and the turn's messages by channel.

Finished state lives in traits (``header``, ``messages``, ``errors``); live text goes as custom
messages, coalesced to about 20 a second, each carrying only what is new. A view opened later
rebuilds from the traits and asks (``sync``) for what is in flight. Stop sends ``stop``; opening or
closing an analysis sends ``open``, so that the static bundle that replaces the panel when the turn
ends (``static.turn_bundle``) keeps what the user had open.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import anywidget
import traitlets

from ..harmony.events import ContentDelta, Malformed, MessageDone, MessageStarted
from ..harmony.transcript import message_dict
from ..session import ToolResult, TurnFinished

FLUSH_SECONDS = 0.05  # at most ~20 live updates a second
HEADER_SECONDS = 0.5


def _meta(e: MessageStarted) -> dict[str, Any]:
    return {"role": e.role, "name": e.name, "channel": e.channel, "recipient": e.recipient, "content_type": e.content_type}


class HarmonyPanel(anywidget.AnyWidget):
    _esm = Path(__file__).with_name("panel.js")
    _css = Path(__file__).with_name("panel.css")
    header = traitlets.Dict().tag(sync=True)
    messages: traitlets.List[dict[str, Any]] = traitlets.List().tag(sync=True)
    errors: traitlets.List[dict[str, Any]] = traitlets.List().tag(sync=True)

    def __init__(self, header: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(header={"status": "running", **(header or {})}, **kwargs)
        self.cancel = threading.Event()
        self._lock = threading.RLock()
        self._pending: list[list[Any]] = []
        self._shown: list[dict[str, Any]] = []  # finished messages, for the final state and for sync
        self._live: dict[str, Any] | None = None  # the message being written: {"id", "meta", "text"}
        self._next_id = 0
        self._last_flush = 0.0
        self._last_header = 0.0
        self._t0 = time.monotonic()
        self._tokens = 0
        self._counts: dict[str, int] = {}
        self._open: set[int] = set()  # ids of the messages the user has open
        self.sent_messages = 0  # custom messages sent (for tests and benchmarks)
        self.sent_bytes = 0
        self.on_msg(self._on_front_end)

    # -- from the front end -------------------------------------------------------------------------

    def _on_front_end(self, _widget: Any, content: dict[str, Any], _buffers: Any) -> None:
        if content.get("type") == "stop":
            self.cancel.set()
            self._set_header(status="stopping")
        elif content.get("type") == "open" and isinstance(content.get("id"), int):
            with self._lock:
                (self._open.add if content.get("open") else self._open.discard)(content["id"])
        elif content.get("type") == "sync":
            with self._lock:
                events: list[list[Any]] = [["done", m["id"], m] for m in self._shown]
                if self._live is not None:
                    events.append(["start", self._live["id"], self._live["meta"]])
                    events.append(["delta", self._live["id"], "".join(self._live["text"])])
                # The snapshot holds what was pending: sent now, it must not come again in a batch.
                self._pending = []
                self._send_custom({"type": "state", "events": events})

    # -- from the session (any thread) --------------------------------------------------------------

    def add(self, event: Any) -> None:
        with self._lock:
            if isinstance(event, MessageStarted):
                meta = _meta(event)
                self._live = {"id": self._next_id, "meta": meta, "text": []}
                self._next_id += 1
                self._pending.append(["start", self._live["id"], meta])
            elif isinstance(event, ContentDelta) and self._live is not None:
                self._live["text"].append(event.text)
                self._tokens += 1
                channel = event.channel or "none"
                self._counts[channel] = self._counts.get(channel, 0) + 1
                last = self._pending[-1] if self._pending else None
                if last and last[0] == "delta" and last[1] == self._live["id"]:
                    last[2] += event.text  # coalesce: one delta per message per flush
                else:
                    self._pending.append(["delta", self._live["id"], event.text])
            elif isinstance(event, MessageDone):
                ident = self._live["id"] if self._live is not None else self._new_id()
                shown = {"id": ident, **event.message.to_dict(), "incomplete": event.message.incomplete}
                self._shown.append(shown)
                self._live = None
                # The front end has the text already: say only that the message is done.
                self._pending.append(["done", ident, {k: v for k, v in shown.items() if k != "content"}])
            elif isinstance(event, ToolResult):
                for reply in event.messages:
                    shown = {"id": self._new_id(), **message_dict(reply), "outputs": list(event.outputs)}
                    self._shown.append(shown)
                    self._pending.append(["tool", shown["id"], shown])
            elif isinstance(event, Malformed):
                shown = {"id": self._new_id(), "role": "error", "name": None, "channel": None, "recipient": None,
                         "content_type": None, "content": event.raw, "error": f"recovered malformed output: {event.error}"}
                self._shown.append(shown)
                self._pending.append(["error", shown["id"], shown])
            elif isinstance(event, TurnFinished):
                return
        self.flush()

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if self._pending and (force or now - self._last_flush >= FLUSH_SECONDS):
                batch, self._pending = self._pending, []
                self._last_flush = now
            else:
                batch = []
        if batch:
            self._send_custom({"type": "batch", "events": batch})
        if force or now - self._last_header >= HEADER_SECONDS:
            self._last_header = now
            elapsed = max(now - self._t0, 1e-9)
            self._set_header(tokens_per_s=round(self._tokens / elapsed, 1), counts=dict(self._counts))

    def _send_custom(self, content: dict[str, Any]) -> None:
        self.sent_messages += 1
        self.sent_bytes += len(json.dumps(content, ensure_ascii=False).encode())
        self.send(content)

    def _set_header(self, **changes: Any) -> None:
        self.header = {**self.header, **changes}

    def facts(self) -> dict[str, Any]:
        """The header's facts, for the static bundle."""
        h = self.header
        return {**{k: h.get(k) for k in ("model", "engine", "moe_path", "effort", "returns", "status", "tokens_per_s")},
                "tokens": self._tokens, "seconds": round(time.monotonic() - self._t0, 1)}

    def open_messages(self) -> list[int]:
        """Which of the turn's messages the user opened, counted as ``static.turn_html`` counts them
        (the panel's parser errors are not messages)."""
        with self._lock:
            ids = [m["id"] for m in self._shown if m.get("role") != "error"]
            if self._live is not None:
                ids.append(self._live["id"])
            return [i for i, ident in enumerate(ids) if ident in self._open]

    def finish(self, status: str) -> None:
        """The turn ended: send what is left, then make the whole turn state (for views opened later)."""
        self.flush(force=True)
        with self._lock:
            messages = list(self._shown)
            if self._live is not None:  # cut mid-message
                messages.append({"id": self._live["id"], **self._live["meta"], "content": "".join(self._live["text"]),
                                 "incomplete": True})
        self.messages = messages
        self._set_header(status=status)
