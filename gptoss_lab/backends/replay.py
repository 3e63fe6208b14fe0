"""The replay backend: a recorded raw completion streamed as if a model wrote it.

``%gptoss load replay:PATH [--tps N]``. The recording is what a server prints (special tokens written
out): the model's output, and possibly the tool replies and user messages between its turns. It may
open with comment lines starting with ``#`` and a blank line, saying what it is and where it came
from (hand-written, or recorded from which model): they are shown in the report, never replayed. Each
``stream()`` call yields the model's next stretch of output, up to and including its stop token
(``<|call|>`` or ``<|return|>``); tool replies and user messages in the recording are skipped, since
the tools run for real. It serves demos, tests, and sharing a GPU run with CPU-only readers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..harmony.events import CALL, END, RETURN, START
from ..harmony.parser import strip_file_newline
from .base import Cancel, Capabilities, LoadReport, TokenStep, cancelled

ASSISTANT = 173781  # the token "assistant"


def split_header(text: str) -> tuple[list[str], str]:
    """A recording's opening comment lines (``# ...`` up to a blank line) and the completion after them."""
    lines = text.split("\n")
    if not lines or not lines[0].startswith("#"):
        return [], text
    for i, line in enumerate(lines):
        if not line.strip():
            if all(x.startswith("#") for x in lines[:i]):
                return [x.lstrip("#").strip() for x in lines[:i]], "\n".join(lines[i + 1:])
            break
    return [], text


def segments(tokens: Sequence[int]) -> list[list[int]]:
    """Cut a recording into the model's stretches of output: each ends at a stop token (or the end)."""
    out: list[list[int]] = []
    i, n = 0, len(tokens)
    while i < n:
        # Between the model's stretches: skip whole messages by others (tool replies, user turns) and
        # the "<|start|>assistant" that the prompt, not the model, supplies.
        while i < n and tokens[i] == START:
            if i + 1 < n and tokens[i + 1] == ASSISTANT:
                i += 2
                break
            while i < n and tokens[i] != END:
                i += 1
            i += 1
        if i >= n:
            break
        j = i
        while j < n and tokens[j] not in (RETURN, CALL):
            j += 1
        out.append(list(tokens[i : j + 1]))
        i = j + 1
    return out


class ReplayBackend:
    """Streams a recorded completion. ``tps`` paces it (tokens per second); default: as fast as it can."""

    def __init__(self, source: str | Path, *, tps: float | None = None, text: str | None = None):
        from ..harmony.vocab import encoding

        t0 = time.perf_counter()
        self.path = None if text is not None else Path(source)
        if text is None:
            try:
                text = Path(source).read_text(encoding="utf-8")
            except OSError as e:
                raise FileNotFoundError(f"cannot read the recording {str(source)!r}: {e.strerror or e}") from e
        header, text = split_header(text)
        text = strip_file_newline(text)
        self.tps = tps
        self.segments = segments(encoding().encode(text, allowed_special="all"))
        if not self.segments:
            raise ValueError(f"the recording {str(source)!r} holds no model output")
        self.position = 0
        # A recording holds token ids only: no logprobs, routing or sinks, and nothing to cache.
        self.capabilities = Capabilities()
        name = f"replay:{source}"
        self.report = LoadReport(
            model=name, kind="replay", path=str(self.path or "<text>"), device="none (recorded)",
            dtype="-", moe_path="replay", attn_implementation="-", params=0, memory_bytes=0,
            load_seconds=time.perf_counter() - t0,
            engine="replay",
            notes=([" ".join(header)] if header else []) + [f"a recorded completion ({sum(map(len, self.segments))} tokens in {len(self.segments)} stretches), "
                   "not a model: tool calls in it run for real" + (f"; paced at {tps:g} tokens/s" if tps else "")],
        )

    def __repr__(self) -> str:
        return f"<gptoss-lab replay {self.report.model!r}: stretch {self.position} of {len(self.segments)}>"

    @property
    def exhausted(self) -> bool:
        return self.position >= len(self.segments)

    def reset(self) -> None:
        """Start the recording again from its first stretch."""
        self.position = 0

    def stream(
        self,
        prompt_ids: Sequence[int],
        *,
        max_tokens: int = 2048,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        logprobs: int = 0,
        routing: bool = False,
        sinks: bool = False,
        cancel: Cancel = None,
    ) -> Iterator[TokenStep]:
        """Yield the recording's next stretch of output (the prompt is not looked at)."""
        if self.exhausted:
            return
        stretch = self.segments[self.position]
        self.position += 1
        delay = 1.0 / self.tps if self.tps else 0.0
        next_at = time.monotonic()
        for k, token in enumerate(stretch):
            if k >= max_tokens or cancelled(cancel):
                return
            if delay:
                next_at += delay
                pause = next_at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            yield TokenStep(token)
