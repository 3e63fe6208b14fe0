"""What a turn gives back: its sampling config, the tool calls it ran, and its result."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from openai_harmony import Message

    from ..harmony.events import Event, ParsedMessage


@dataclass(frozen=True)
class SamplingConfig:
    """How one turn samples.

    ``max_tokens`` is the budget of the whole turn (tool rounds included); ``temperature=0`` is
    greedy; with a ``seed`` the turn repeats exactly (round ``r`` samples with ``seed + r``).
    ``inspect`` records every generated token (logprob with ``logprobs`` alternatives, expert
    routing, attention sinks, where the backend has them).
    """

    max_tokens: int = 4096
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    inspect: bool = False
    logprobs: int = 5

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, not {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be 0 (greedy) or more, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")
        if self.logprobs < 0:
            raise ValueError(f"logprobs must be 0 or more, not {self.logprobs}")

    def replace(self, **options: Any) -> SamplingConfig:
        """This config with some options changed; an unknown option is a TypeError that names the known ones."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown sampling option {', '.join(unknown)}: use {', '.join(sorted(known))}")
        return dataclasses.replace(self, **options) if options else self


@dataclass(frozen=True)
class ToolResult:
    """A tool call and its outcome: the call, the tool's reply messages, rich outputs, time taken.

    ``status``: ``done``; ``interrupted`` (the turn was stopped while it ran, and the tool stopped);
    ``abandoned`` (stopped, and the tool did not return in time: it may still be running);
    ``not run`` (the call came after the turn was stopped).
    """

    index: int  # the call message's index in the turn's transcript
    call: ParsedMessage
    messages: tuple[Message, ...]
    outputs: tuple[dict[str, Any], ...] = ()
    seconds: float = 0.0
    status: str = "done"

    @property
    def text(self) -> str:
        return "\n".join(m.content[0].text for m in self.messages if m.content)


@dataclass
class TurnResult:
    """One turn: ``final`` (the answer, or None), ``messages`` (this turn's messages as transcript
    dicts), ``transcript`` (the JSON-able dict of DESIGN.md), ``prompt_ids`` (the turn's first prompt);
    with ``inspect=True`` also ``tokens`` (one dict per generated token)."""

    final: str | None
    messages: list[dict[str, Any]]
    transcript: dict[str, Any]
    prompt_ids: list[int]
    stop_reason: str
    tokens: list[dict[str, Any]] | None = None
    tool_results: list[ToolResult] = field(default_factory=list)
    seconds: float = 0.0
    generated: int = 0

    @property
    def stopped(self) -> bool:
        return self.stop_reason == "stopped"

    @property
    def complete(self) -> bool:
        return bool(self.transcript.get("complete"))

    def token_table(self) -> list[dict[str, Any]]:
        """One flat row per generated token (``pandas.DataFrame(result.token_table())`` works):
        index, id, text, channel, state, logprob, the best alternative, and per layer the top expert."""
        if self.tokens is None:
            raise ValueError("no token data: run the turn with inspect=True (%%gptoss --inspect)")
        rows = []
        for i, t in enumerate(self.tokens):
            row = {"index": i, "id": t["id"], "text": t["text"], "channel": t["channel"], "state": t["state"],
                   "special": t["special"], "round": t["round"], "logprob": t["logprob"]}
            alts = [a for a in t["alternatives"] if a[0] != t["id"]]
            row["best_alternative"] = alts[0][0] if alts else None
            row["best_alternative_logprob"] = alts[0][1] if alts else None
            for layer, (ids, weights) in enumerate(t["routing"] or []):
                row[f"layer{layer}_expert"] = ids[0]
                row[f"layer{layer}_weight"] = weights[0]
            for layer, heads in enumerate(t.get("sinks") or []):
                row[f"layer{layer}_sink"] = sum(heads) / len(heads)
            rows.append(row)
        return rows

    def inspect_view(self) -> Any:
        """The tokens and expert routing of this turn as an interactive view (needs ``inspect=True``)."""
        from ..display.inspect import InspectView

        return InspectView(self)

    def expert_load(self, channel: str | None = None) -> list[list[int]]:
        """How often each expert was chosen, per layer (``[layer][expert]``), over the turn or one channel."""
        if self.tokens is None:
            raise ValueError("no token data: run the turn with inspect=True (%%gptoss --inspect)")
        load: list[list[int]] = []
        for t in self.tokens:
            if t["routing"] is None or (channel is not None and t["channel"] != channel):
                continue
            for layer, (ids, _) in enumerate(t["routing"]):
                while len(load) <= layer:
                    load.append([])
                for e in ids:
                    row = load[layer]
                    row.extend([0] * (e + 1 - len(row)))
                    row[e] += 1
        width = max([self.transcript.get("num_experts") or 0] + [len(r) for r in load])
        return [r + [0] * (width - len(r)) for r in load]

    def analysis(self) -> str:
        return "\n\n".join(m["content"] for m in self.messages if m["channel"] == "analysis" and m["role"] == "assistant")

    def markdown(self, show_analysis: bool = False) -> str:
        """The text/markdown fallback: the final answer (and the raw analysis only when asked)."""
        parts = []
        if show_analysis and self.analysis():
            quoted = "\n".join("> " + line for line in self.analysis().splitlines())
            parts.append("**Analysis** (raw, unfiltered chain of thought)\n\n" + quoted)
        if self.final is not None:
            parts.append(self.final)
        elif self.stopped:
            parts.append("*Stopped before a final answer.*")
        else:
            parts.append(f"*No final answer ({self.stop_reason}).*")
        return "\n\n".join(parts)

    def __repr__(self) -> str:
        final = (self.final or "")[:60]
        return f"<TurnResult {self.stop_reason}, {len(self.messages)} messages, final={final!r}>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        from ..display.bundle import MIME

        return {"text/markdown": self.markdown(), MIME: self.transcript, "text/plain": repr(self)}


@dataclass(frozen=True)
class TurnFinished:
    """The last event of a turn."""

    result: TurnResult


# What a turn yields, in order: the parser's events as the model writes, a ToolResult per call,
# and last a TurnFinished.
SessionEvent = Union["Event", ToolResult, TurnFinished]
