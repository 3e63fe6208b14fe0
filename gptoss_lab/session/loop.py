"""One turn's loop: render, generate, parse, dispatch tool calls, append tool messages, repeat.

Data flows one way: backend steps -> parser events -> the turn's sinks (the transcript builder, the
token recorder when inspecting) -> the caller. A cancel (the panel's Stop, ``Chat.send(cancel=)``,
the kernel's interrupt) stops generation within one token (a local model's prompt within one decoder
layer, the part fed whole kept in its prefix cache) and a running tool within about a second
(the sandbox is interrupted, restarted if it does not yield); a call that arrives after the cancel
is answered "not run", so the conversation stays well formed and goes on with the next turn.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

from ..backends.base import Cancel, TokenStep, cancelled
from ..errors import BackendError
from ..harmony.events import CALL, FIRST_SPECIAL, RETURN, TurnEnd
from ..harmony.transcript import TranscriptBuilder
from .results import SamplingConfig, SessionEvent, ToolResult, TurnFinished, TurnResult

if TYPE_CHECKING:
    from openai_harmony import HarmonyEncoding

    from ..harmony.events import ParsedMessage
    from ..harmony.parser import HarmonyStreamParser
    from .chat import Chat

STOP_TOKENS = (RETURN, CALL)


class TokenRecorder:
    """The inspection sink: one dict per generated token, across the turn's rounds.

    A token belongs to the transcript message it is part of; an end or stop token to the message it
    closed. ``routing`` follows the backend's definition (the experts that processed the token as
    input), so the turn's last token has none.
    """

    def __init__(self, enc: HarmonyEncoding, transcript: TranscriptBuilder):
        self.enc = enc
        self.transcript = transcript
        self.tokens: list[dict[str, Any]] = []

    def add(self, step: TokenStep, parser: HarmonyStreamParser, round_: int) -> None:
        messages = self.transcript.messages
        state = parser.state
        inside = state in ("header", "content")
        owner = len(messages) - (0 if inside else 1)
        channel = parser.current_channel
        if not inside and 0 <= owner < len(messages):
            channel = messages[owner]["channel"]
        self.tokens.append({
            "id": step.token, "text": self.enc.decode([step.token]), "channel": channel,
            "state": state, "special": step.token >= FIRST_SPECIAL, "round": round_, "message": owner,
            "logprob": step.logprob, "alternatives": [list(a) for a in step.alternatives],
            "routing": [[list(ids), list(w)] for ids, w in step.routing] if step.routing else None,
            "sinks": [list(h) for h in step.sinks] if step.sinks else None,
        })


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str | None]:
    """The packages that shape a turn (read once: a lookup scans the installed distributions)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for pkg in ("gptoss-lab", "openai-harmony", "torch", "transformers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


class TurnLoop:
    """Runs one turn of ``chat``; iterate :meth:`run` for its events (the last is :class:`TurnFinished`)."""

    def __init__(self, chat: Chat, text: str, reasoning: str | None, sampling: SamplingConfig, cancel: Cancel):
        from ..harmony.vocab import encoding

        self.chat, self.text, self.sampling, self.cancel = chat, text, sampling, cancel
        self.reasoning = reasoning or chat.reasoning
        self.enc = encoding()
        self.transcript = TranscriptBuilder()
        self.recorder = TokenRecorder(self.enc, self.transcript) if sampling.inspect else None
        self.tool_results: list[ToolResult] = []
        self.rounds: list[dict[str, Any]] = []
        self.used = 0  # tokens generated so far, all rounds
        self.failure: BackendError | None = None  # the engine broke off (raised once the turn's result is made)
        self.final: str | None = None

    def run(self) -> Iterator[SessionEvent]:
        from ..harmony import conversation as conv

        t0 = time.monotonic()
        chat = self.chat
        user = conv.user_message(self.text)
        first_prompt = chat.prompt_ids([user], self.reasoning)
        turn_start = len(chat.history)
        chat.history.append(user)
        self.transcript.add_user(self.text)
        stop_reason: str = "return"
        round_ = 0
        while True:
            prompt = first_prompt if round_ == 0 else chat.prompt_ids(reasoning=self.reasoning, turn_start=turn_start)
            ended = yield from self._generate(prompt, round_)
            stop_reason = ended
            if ended == "failed":
                break
            calls = list(self.transcript.calls)
            self.transcript.calls.clear()
            if not calls or ended not in ("call", "stopped"):
                break
            round_ += 1
            if ended == "call" and round_ > chat.max_tool_rounds:
                stop_reason = "tool_rounds"
                for index, call in calls:  # answered, so that the conversation stays well formed
                    reply = chat.toolbox.not_run(call, f"the turn reached its limit of {chat.max_tool_rounds} tool rounds")
                    result = ToolResult(index, call, reply.messages, (), 0.0, "not run")
                    self.tool_results.append(result)
                    chat.history.extend(result.messages)
                    for message in result.messages:
                        self.transcript.add_message(message)
                    yield result
                break
            for index, call in calls:
                result = self._run_tool(index, call)
                self.tool_results.append(result)
                chat.history.extend(result.messages)
                for message in result.messages:
                    self.transcript.add_message(message)
                yield result
            if cancelled(self.cancel):
                stop_reason = "stopped"
                break
            if self.used >= self.sampling.max_tokens:
                stop_reason = "max_tokens"  # the budget is for the whole turn, tool rounds included
                break
        yield TurnFinished(self._result(first_prompt, stop_reason, time.monotonic() - t0))
        if self.failure is not None:
            raise self.failure

    def _generate(self, prompt: list[int], round_: int) -> Generator[SessionEvent, None, str]:
        """One round of the model's output; returns why it ended."""
        from ..harmony.parser import HarmonyStreamParser

        s = self.sampling
        parser = HarmonyStreamParser(self.enc, role="assistant")
        self.transcript.offset = self.used
        generated: list[int] = []
        try:
            for step in self.chat.model.stream(
                prompt, max_tokens=s.max_tokens - self.used, temperature=s.temperature, top_p=s.top_p,
                seed=None if s.seed is None else s.seed + round_, logprobs=s.logprobs if s.inspect else 0,
                routing=s.inspect, sinks=s.inspect, cancel=self.cancel,
            ):
                generated.append(step.token)
                events = parser.feed((step.token,))
                self.transcript.extend(events)
                if self.recorder is not None:
                    self.recorder.add(step, parser, round_)
                yield from events
        except BackendError as e:  # the engine broke off: what it wrote is kept, the error raised at the end
            self.failure = e
        self.used += len(generated)
        reason: TurnEnd
        if self.failure is not None:
            reason = "failed"
        elif generated and generated[-1] in STOP_TOKENS:
            reason = "return" if generated[-1] == RETURN else "call"
        elif cancelled(self.cancel):
            reason = "stopped"
        elif not generated:
            reason = "end_of_input"  # a replay with nothing left
        else:
            reason = "max_tokens"
        events = parser.close(reason)
        self.transcript.extend(events)
        yield from events
        self.rounds.append({"prompt_ids": prompt, "generated_ids": generated})
        for msg in parser.messages:
            if not msg.incomplete:
                self.chat.history.append(msg.to_harmony())
            if msg.role == "assistant" and msg.channel == "final" and not msg.incomplete:
                self.final = msg.content  # a cut final is in the transcript (incomplete), not the answer
        if reason == "call" and cancelled(self.cancel):
            return "stopped"  # the call is kept in the transcript, and answered "not run"
        return reason

    def _run_tool(self, index: int, call: ParsedMessage) -> ToolResult:
        t1 = time.monotonic()
        if cancelled(self.cancel):
            reply = self.chat.toolbox.not_run(call, "the user stopped the turn before this call ran")
            return ToolResult(index, call, reply.messages, (), 0.0, "not run")
        reply = self.chat.toolbox.dispatch(call, cancel=self.cancel)
        return ToolResult(index, call, reply.messages, reply.outputs, time.monotonic() - t1, reply.status)

    def _result(self, first_prompt: list[int], stop_reason: str, seconds: float) -> TurnResult:
        model, s = self.chat.model, self.sampling
        caps = model.capabilities
        extra: dict[str, Any] = {
            "complete": stop_reason in ("return", "call", "tool_rounds"),  # the output ended on a stop token
            "stop_reason": stop_reason,
            "model": model.report.model,
            "engine": model.report.engine,
            "reasoning": self.reasoning,
            "sampling": {"temperature": s.temperature, "top_p": s.top_p, "seed": s.seed, "max_tokens": s.max_tokens},
            "prompt_ids": first_prompt,
            "rounds": self.rounds,
            "tool_outputs": {str(r.index): list(r.outputs) for r in self.tool_results if r.outputs},
            "versions": dict(_versions()),
            "seconds": round(seconds, 3),
        }
        if self.failure is not None:
            extra["failure"] = f"{type(self.failure).__name__}: {self.failure}"
        if self.recorder is not None:
            extra["tokens"] = self.recorder.tokens
            extra["num_experts"] = caps.experts
            notes = []  # the sinks' note first: the inspection view shows it where a token's sinks would be
            if not caps.sinks:
                attn = model.report.attn_implementation
                notes.append(f"attention sinks are not recorded: {attn} attention does not expose its weights"
                             if caps.routing else f"the {model.report.engine} backend records no attention sinks")
            missing = [n for n, has in (("logprobs", caps.logprobs), ("expert routing", caps.routing)) if not has]
            if missing:
                notes.append(f"the {model.report.engine} backend returns no {' or '.join(missing)}")
            if notes:
                extra["inspect_notes"] = notes
        data = self.transcript.to_dict(**extra)
        return TurnResult(
            final=self.final, messages=self.transcript.messages, transcript=data, prompt_ids=first_prompt,
            stop_reason=stop_reason, tokens=self.recorder.tokens if self.recorder is not None else None,
            tool_results=self.tool_results, seconds=seconds, generated=self.used,
        )
