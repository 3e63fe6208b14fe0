"""The loop: render, generate, parse, dispatch tool calls, append tool messages, repeat.

``Chat`` owns the conversation across turns. ``Chat.stream(text)`` yields the parser's events as the
model writes, a :class:`ToolResult` for every tool call run, and ends with :class:`TurnFinished`
holding the :class:`TurnResult`; ``Chat.send(text)`` runs the same loop and returns the result.
A ``cancel`` Event stops generation within one token and keeps the partial transcript.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .harmony.events import (
    CALL,
    FIRST_SPECIAL,
    RETURN,
    ContentDelta,
    Event,
    Malformed,
    MessageDone,
    MessageStarted,
    ToolCall,
    TurnDone,
)
from .harmony.transcript import FORMAT, message_dict

if TYPE_CHECKING:
    from openai_harmony import Message

    from .harmony.events import ParsedMessage

STOP_TOKENS = (RETURN, CALL)


@dataclass(frozen=True)
class ToolResult:
    """A tool call that was run: the call, the tool's reply messages, rich outputs, time taken."""

    index: int  # the call message's index in the turn's transcript
    call: ParsedMessage
    messages: tuple[Message, ...]
    outputs: tuple[dict[str, Any], ...] = ()
    seconds: float = 0.0

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
        from .display.inspect import InspectView

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
        from .display.bundle import MIME

        return {"text/markdown": self.markdown(), MIME: self.transcript, "text/plain": repr(self)}


@dataclass(frozen=True)
class TurnFinished:
    result: TurnResult


SessionEvent = Any  # harmony events, ToolResult, TurnFinished


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out = {}
    for pkg in ("gptoss-lab", "openai-harmony", "torch", "transformers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def make_tools(tools: Iterable[Any], namespace: dict[str, Any] | None = None, **python_options: Any) -> list[Any]:
    """Tools from names (``python``, ``browser``, a function's name in ``namespace``) or objects."""
    out = []
    for t in tools:
        if t == "python":
            from .tools.python_tool import PythonTool

            out.append(PythonTool(**python_options))
        elif t == "browser":
            from .tools.browser import BrowserTool

            mine = [v for v in (namespace or {}).values() if isinstance(v, BrowserTool)]
            if len(mine) != 1:
                raise ValueError(
                    "the browser tool needs a backend: make one, e.g. web = BrowserTool(LocalBackend('docs/')) "
                    "(from gptoss_lab.tools.browser), then use --tools web"
                )
            out.append(mine[0])
        elif isinstance(t, str):
            from .tools.base import Tool

            found = (namespace or {}).get(t)
            if found is None or not (callable(found) or isinstance(found, Tool)):
                raise ValueError(f"unknown tool {t!r}: use python, browser, or the name of a function or tool you defined")
            out.append(found)
        else:
            out.append(t)
    return out


class Chat:
    """A multi-turn conversation with a model, tools included.

    Parameters
    ----------
    model
        A backend: ``gptoss_lab.load(...)`` or a replay.
    reasoning
        ``"low"``, ``"medium"`` or ``"high"``.
    tools
        ``"python"``, ``"browser"``, Python functions (function tools) or tool objects.
    instructions
        The developer message's instructions.
    identity
        The system message's first line (default: gpt-oss's own).
    max_tool_rounds
        How many times one turn may call tools before it is stopped.
    """

    def __init__(
        self,
        model: Any,
        *,
        reasoning: str = "medium",
        tools: Iterable[Any] = (),
        instructions: str | None = None,
        identity: str | None = None,
        current_date: str | None = "today",
        max_tool_rounds: int = 8,
    ):
        from .harmony.conversation import reasoning_effort
        from .tools.base import Toolbox

        reasoning_effort(reasoning)  # fail now on a bad value
        self.model = model
        self.reasoning = reasoning
        self.instructions = instructions
        self.identity = identity
        self.current_date = current_date
        self.max_tool_rounds = max_tool_rounds
        self.toolbox = Toolbox(make_tools(tools))
        self.history: list[Message] = []
        self.results: list[TurnResult] = []

    # -- the prompt ---------------------------------------------------------------------------------

    def header_messages(self, reasoning: str | None = None) -> list[Message]:
        from .harmony import conversation as conv

        kwargs = {} if self.identity is None else {"model_identity": self.identity}
        system = conv.system_message(
            reasoning=reasoning or self.reasoning,
            current_date=self.current_date,
            builtin_tools=self.toolbox.builtin_configs(),
            **kwargs,
        )
        functions = self.toolbox.function_descriptions()
        out = [system]
        if self.instructions or functions:
            out.append(conv.developer_message(self.instructions, functions))
        return out

    def prompt_ids(self, extra: Iterable[Message] = (), reasoning: str | None = None) -> list[int]:
        """The token ids the model is sent next (with ``extra`` messages appended)."""
        from .harmony.conversation import render_for_completion

        return render_for_completion(self.header_messages(reasoning) + self.history + list(extra))

    def reset(self) -> None:
        """Forget the conversation (the tools, and the python tool's state, stay)."""
        self.history.clear()
        self.results.clear()

    def close(self) -> None:
        self.toolbox.close()

    # -- a turn -------------------------------------------------------------------------------------

    def send(self, text: str, **options: Any) -> TurnResult:
        """Run one turn (the tool loop included) and return its result."""
        result = None
        for event in self.stream(text, **options):
            if isinstance(event, TurnFinished):
                result = event.result
        assert result is not None
        return result

    def stream(
        self,
        text: str,
        *,
        reasoning: str | None = None,
        max_tokens: int = 4096,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        inspect: bool = False,
        logprobs: int = 5,
        cancel: threading.Event | Callable[[], bool] | None = None,
    ) -> Iterator[SessionEvent]:
        """Run one turn, yielding events as they happen; the last one is :class:`TurnFinished`."""
        from .harmony import conversation as conv
        from .harmony.vocab import encoding

        enc = encoding()
        t0 = time.monotonic()
        user = conv.user_message(text)
        first_prompt = self.prompt_ids([user], reasoning)
        kept = len(self.history)
        try:
            yield from self._turn(enc, text, user, first_prompt, reasoning, max_tokens, temperature, top_p, seed,
                                  inspect, logprobs, cancel, t0)
        except BaseException:
            del self.history[kept:]  # a turn that failed leaves the conversation as it was
            raise

    def _turn(self, enc: Any, text: str, user: Message, first_prompt: list[int], reasoning: str | None,
              max_tokens: int, temperature: float, top_p: float, seed: int | None, inspect: bool, logprobs: int,
              cancel: Any, t0: float) -> Iterator[SessionEvent]:
        from .backends.base import cancelled
        from .harmony.parser import HarmonyStreamParser

        self.history.append(user)
        transcript_messages: list[dict[str, Any]] = [{"role": "user", "name": None, "channel": None,
                                                       "recipient": None, "content_type": None, "content": text}]
        errors: list[dict[str, Any]] = []
        tokens: list[dict[str, Any]] = [] if inspect else None  # type: ignore[assignment]
        tool_results: list[ToolResult] = []
        rounds_meta: list[dict[str, Any]] = []
        incomplete: list[int] = []
        used = 0
        stop_reason = "return"
        final: str | None = None
        rounds = 0
        while True:
            if rounds and used >= max_tokens:
                stop_reason = "max_tokens"  # the budget is for the whole turn, tool rounds included
                break
            prompt = first_prompt if rounds == 0 else self.prompt_ids(reasoning=reasoning)
            parser = HarmonyStreamParser(enc, role="assistant")
            calls: list[tuple[int, ParsedMessage]] = []
            generated: list[int] = []
            last = None
            for step in self.model.stream(
                prompt, max_tokens=max_tokens - used, temperature=temperature, top_p=top_p,
                seed=None if seed is None else seed + rounds, logprobs=logprobs if inspect else 0,
                routing=inspect, sinks=inspect, cancel=cancel,
            ):
                last = step.token
                generated.append(step.token)
                events = parser.feed((step.token,))
                yield from self._note(events, transcript_messages, errors, calls, incomplete)
                if inspect:
                    state = parser.state
                    # the transcript message this token belongs to (the one it closed, for end tokens)
                    owner = len(transcript_messages) - (0 if state in ("header", "content") else 1)
                    channel = parser.current_channel
                    if state not in ("header", "content") and 0 <= owner < len(transcript_messages):
                        channel = transcript_messages[owner]["channel"]
                    tokens.append({
                        "id": step.token, "text": enc.decode([step.token]), "channel": channel,
                        "state": state, "special": step.token >= FIRST_SPECIAL, "round": rounds, "message": owner,
                        "logprob": step.logprob, "alternatives": [list(a) for a in step.alternatives],
                        "routing": [[list(ids), list(w)] for ids, w in step.routing] if step.routing else None,
                        "sinks": [list(h) for h in step.sinks] if step.sinks else None,
                    })
            used += len(generated)
            if last in STOP_TOKENS:
                reason = "return" if last == RETURN else "call"
            elif cancelled(cancel):
                reason = "stopped"
            elif not generated:
                reason = "end_of_input"  # a replay with nothing left
            else:
                reason = "max_tokens"
            yield from self._note(parser.close(reason), transcript_messages, errors, calls, incomplete)
            rounds_meta.append({"prompt_ids": prompt, "generated_ids": generated})
            for msg in parser.messages:
                if not msg.incomplete:
                    self.history.append(msg.to_harmony())
                if msg.role == "assistant" and msg.channel == "final":
                    final = msg.content
            stop_reason = reason
            if reason != "call" or not calls:
                break
            rounds += 1
            if rounds > self.max_tool_rounds:
                stop_reason = "tool_rounds"
                break
            for index, call in calls:
                t1 = time.monotonic()
                replies = self.toolbox.dispatch(call)
                tool = self.toolbox.find(call.recipient or "")
                outputs = tuple(getattr(getattr(tool, "last", None), "outputs", ()) or ()) if tool else ()
                result = ToolResult(index, call, tuple(replies), outputs, time.monotonic() - t1)
                tool_results.append(result)
                self.history.extend(replies)
                transcript_messages.extend(message_dict(r) for r in replies)
                yield result
            if cancelled(cancel):
                stop_reason = "stopped"
                break
        transcript = {
            "format": FORMAT,
            "messages": transcript_messages,
            "complete": stop_reason in ("return", "call"),
            "errors": errors,
            "stop_reason": stop_reason,
            "model": getattr(getattr(self.model, "report", None), "model", type(self.model).__name__),
            "reasoning": reasoning or self.reasoning,
            "sampling": {"temperature": temperature, "top_p": top_p, "seed": seed, "max_tokens": max_tokens},
            "prompt_ids": first_prompt,
            "rounds": rounds_meta,
            "tool_outputs": {str(r.index): list(r.outputs) for r in tool_results if r.outputs},
            "versions": _versions(),
            "seconds": round(time.monotonic() - t0, 3),
        }
        if incomplete:
            transcript["incomplete_messages"] = incomplete
        if inspect:
            transcript["tokens"] = tokens
            config = getattr(getattr(self.model, "model", None), "config", None)
            transcript["num_experts"] = getattr(config, "num_local_experts", None)
            if not hasattr(self.model, "model"):
                transcript["inspect_notes"] = ["a replay is not a model: no logprobs, routing or attention sinks"]
            elif not getattr(self.model, "exposes_sinks", False):
                impl = self.model.report.attn_implementation
                transcript["inspect_notes"] = [f"attention sinks are not recorded: {impl} attention does not expose its weights"]
        result = TurnResult(
            final=final, messages=transcript_messages, transcript=transcript, prompt_ids=first_prompt,
            stop_reason=stop_reason, tokens=tokens, tool_results=tool_results,
            seconds=time.monotonic() - t0, generated=used,
        )
        self.results.append(result)
        yield TurnFinished(result)

    @staticmethod
    def _note(
        events: list[Event],
        messages: list[dict[str, Any]],
        errors: list[dict[str, Any]],
        calls: list[tuple[int, ParsedMessage]],
        incomplete: list[int],
    ) -> Iterator[Event]:
        for e in events:
            if isinstance(e, MessageDone):
                if e.message.incomplete:
                    incomplete.append(len(messages))
                messages.append(e.message.to_dict())
            elif isinstance(e, ToolCall):
                calls.append((len(messages) - 1, e.message))
            elif isinstance(e, Malformed):
                errors.append({"raw": e.raw, "reason": e.error, "token_index": e.token_index})
            yield e


__all__ = ["Chat", "ContentDelta", "MessageStarted", "ToolResult", "TurnDone", "TurnFinished", "TurnResult"]
