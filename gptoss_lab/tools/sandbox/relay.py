"""The parent's end of the relay (``_relay.py``): the one process that reads a sandbox kernel's
sockets, under a memory limit of its own, and writes the parent one bounded JSON line per message.

Requests go in as lines; events come out one at a time, never more than a line (``MAX_LINE_BYTES``)
held at once; a write to a relay that takes nothing in is given up after a deadline, never blocks.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .run import MAX_MESSAGE_BYTES
from .spawn import spawn

MAX_FRAMES = 16  # a kernel's message has 6 or 7 frames: more is a flood, not output
QUEUE_MESSAGES = 64  # per socket of the relay: what the kernel sends beyond it while nobody reads is dropped
RELAY = (Path(__file__).with_name("_relay.py")).read_text()
RELAY_MEMORY = 1024 * 2**20  # the relay's address space: past it, it dies (and the kernel is restarted)
MAX_LINE_BYTES = 2 * MAX_MESSAGE_BYTES  # one message as JSON, escapes included


class Relay:
    """The parent's end of the relay: requests in, one event (a dict) out per line, never more at once."""

    def __init__(self, conn: dict[str, Any]):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MALLOC_ARENA_MAX": "1", "LANG": "C.UTF-8"}
        self.proc = spawn([os.path.abspath(sys.executable), "-I", "-c", RELAY], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, env=env, die_with_parent=True, start_new_session=True)
        self._buf = b""
        self._skipping = False  # inside a line too long to keep: dropped up to its end
        self.dead = False
        self._write({"connection": conn, "memory_bytes": RELAY_MEMORY, "max_message_bytes": MAX_MESSAGE_BYTES,
                     "max_line_bytes": MAX_LINE_BYTES, "queue_messages": QUEUE_MESSAGES,
                     "max_frames": MAX_FRAMES})

    def _write(self, doc: dict[str, Any], seconds: float = 10.0) -> None:
        """Hand the relay a line without ever blocking for good: a relay stuck writing what nobody read
        (output left flowing since the last run) is read meanwhile, and what it wrote is thrown away:
        it belongs to no request of now."""
        import select

        assert self.proc.stdin is not None and self.proc.stdout is not None
        data = memoryview(json.dumps(doc).encode() + b"\n")
        fd_in, fd_out = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        os.set_blocking(fd_in, False)
        deadline = time.monotonic() + seconds
        while data and not self.dead:
            try:
                data = data[os.write(fd_in, data):]
                continue
            except BlockingIOError:
                pass
            except OSError:
                self.dead = True
                break
            if time.monotonic() > deadline:
                self.dead = True  # a relay that takes nothing in for this long is of no use
                break
            readable, _, _ = select.select([fd_out], [fd_in], [], 0.05)
            if readable:
                chunk = os.read(fd_out, 65536)
                if not chunk:
                    self.dead = True
                self._buf, self._skipping = b"", True  # a cut line: skipped up to its end

    def send(self, channel: str, msg_type: str, content: dict[str, Any] | None = None) -> str:
        """Send a request; on ``shell`` the relay then forwards what answers it. Returns its msg_id."""
        msg_id = secrets.token_hex(16)
        self._write({"send": channel, "msg_type": msg_type, "content": content or {}, "msg_id": msg_id})
        return msg_id

    def read(self, timeout: float) -> dict[str, Any] | None:
        """The next event, waiting up to ``timeout``; ``{"relay": "dead"}`` once the relay has gone."""
        import select

        while True:
            line = self._line()
            if line is not None:
                try:
                    doc = json.loads(line)
                except Exception:  # not JSON, or nested past the parser's depth (RecursionError)
                    continue
                if isinstance(doc, dict):
                    return doc
                continue
            if self.dead:
                return {"relay": "dead"}
            assert self.proc.stdout is not None
            fd = self.proc.stdout.fileno()
            if not select.select([fd], [], [], timeout)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                self.dead = True
                continue
            self._buf += chunk
            timeout = 0

    def _line(self) -> bytes | None:
        while True:
            i = self._buf.find(b"\n")
            if i < 0:
                if len(self._buf) > MAX_LINE_BYTES:  # never kept whole: the relay writes shorter lines
                    self._buf, self._skipping = b"", True
                return None
            line, self._buf = self._buf[:i], self._buf[i + 1:]
            if self._skipping:
                self._skipping = False
                continue
            return line

    def close(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
