"""``Chat``: a conversation with a model across turns, and the one place a turn runs.

``Chat.send(text)`` runs a turn (the tool loop included) and returns its :class:`TurnResult`;
``Chat.stream(text)`` yields its events in the caller's thread; ``Chat.start(text)`` runs it on the
chat's worker thread and returns a :class:`RunningTurn` (the notebook uses this: its cell stays free to
show events and hear Stop). While a turn runs the chat is ``busy``: a second turn or a reset is a
:class:`TurnInProgressError`, never a race.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ..backends.base import cancelled
from ..errors import TurnInProgressError
from .loop import TurnLoop
from .results import SamplingConfig, SessionEvent, TurnFinished, TurnResult

if TYPE_CHECKING:
    from openai_harmony import Message

    from ..backends.base import Backend, Cancel


def make_tools(tools: Iterable[Any], namespace: dict[str, Any] | None = None, **python_options: Any) -> list[Any]:
    """Tools from names (``python``, ``browser``, a function's name in ``namespace``) or objects."""
    from ..tools.base import Tool

    out: list[Any] = []
    for t in tools:
        if t == "python":
            from ..tools.python_tool import PythonTool

            out.append(PythonTool(**python_options))
        elif t == "browser":
            from ..tools.browser import BrowserTool

            mine = [v for v in (namespace or {}).values() if isinstance(v, BrowserTool)]
            if len(mine) != 1:
                raise ValueError(
                    "the browser tool needs a backend: make one, e.g. web = BrowserTool(LocalBackend('docs/')) "
                    "(from gptoss_lab.tools.browser), then use --tools web"
                )
            out.append(mine[0])
        elif isinstance(t, str):
            found = (namespace or {}).get(t)
            if found is None or not (callable(found) or isinstance(found, Tool)):
                raise ValueError(f"unknown tool {t!r}: use python, browser, or the name of a function or tool you defined")
            out.append(found)
        else:
            out.append(t)
    return out


_END = object()


class Stop:
    """The cancel a turn runs with: set by :meth:`set` (Stop, ``RunningTurn.stop``) or once the
    caller's own cancel (an Event or a callable) says stop, and set for good from then on, so that
    every part of the turn (backend, tools, the loop) sees the same answer."""

    def __init__(self, given: Cancel = None):
        self.event = threading.Event()
        self.given = given

    def __call__(self) -> bool:
        if not self.event.is_set() and cancelled(self.given):
            self.event.set()
        return self.event.is_set()

    def set(self) -> None:
        self.event.set()


class RunningTurn:
    """A turn running on its chat's worker thread.

    ``get(timeout)`` hands over the next event (None when there is none within ``timeout``, or once
    the turn is over: see ``over``); ``stop()`` asks the turn to end (generation within one token, a
    local model's prompt within one decoder layer, a running tool within about a second); ``wait()`` takes every event until the end and returns the
    result. A failure of the turn (the model raising) is raised by ``get``/``wait`` in the
    consumer's thread. The chat is no longer busy once ``over`` is true.
    """

    def __init__(self, chat: Chat, loop: TurnLoop, cancel: Stop):
        self.chat = chat
        self.cancel = cancel
        self.result: TurnResult | None = None
        self.over = False
        self._events: queue.Queue[Any] = queue.Queue()
        self._loop = loop
        self.thread = threading.Thread(target=self._work, name="gptoss-lab-turn", daemon=True)

    def _work(self) -> None:
        failure: BaseException | None = None
        try:
            for event in self.chat._guarded(self._loop):
                self._events.put(event)
        except BaseException as e:  # handed to the consumer's thread
            failure = e
        finally:
            self.chat._release(self)  # first: whoever sees the end may start the next turn at once
            if failure is not None:
                self._events.put(failure)
            self._events.put(_END)

    @property
    def running(self) -> bool:
        """True until the worker thread has ended (a stopped turn still winds down for a moment)."""
        return self.thread.is_alive()

    def stop(self) -> None:
        self.cancel.set()

    def get(self, timeout: float | None = 0) -> SessionEvent | None:
        """The next event, waiting up to ``timeout`` seconds (0: not at all; None: until one comes)."""
        if self.over:
            return None
        try:
            event = self._events.get_nowait() if timeout == 0 else self._events.get(timeout=timeout)
        except queue.Empty:
            return None
        if event is _END:
            self.over = True
            return None
        if isinstance(event, BaseException):
            self.over = True
            raise event
        if isinstance(event, TurnFinished):
            self.result = event.result
        return event  # type: ignore[no-any-return]

    def wait(self, timeout: float | None = None) -> TurnResult | None:
        """Take every event until the turn is over (or ``timeout`` seconds have passed) and return the
        result (None if it gave none). Interrupted (Ctrl-C, the kernel's interrupt), it stops the turn,
        waits for it to end (the partial result is kept in ``chat.results``), then re-raises."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not self.over and (deadline is None or time.monotonic() < deadline):
                self.get(timeout=0.05)
        except KeyboardInterrupt:
            self.stop()
            while not self.over:
                self.get(timeout=0.05)
            raise
        return self.result


class Chat:
    """A multi-turn conversation with a model, tools included.

    Parameters
    ----------
    model
        A backend: ``gptoss_lab.load(...)`` (a model in this process, or ``replay:PATH``).
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
        model: Backend,
        *,
        reasoning: str = "medium",
        tools: Iterable[Any] = (),
        instructions: str | None = None,
        identity: str | None = None,
        current_date: str | None = "today",
        max_tool_rounds: int = 8,
    ):
        from ..harmony.conversation import reasoning_effort
        from ..tools.base import Toolbox

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
        self._busy = threading.Lock()
        self._running: RunningTurn | None = None

    # -- the prompt ---------------------------------------------------------------------------------

    def header_messages(self, reasoning: str | None = None) -> list[Message]:
        from ..harmony import conversation as conv

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

    def prompt_ids(self, extra: Iterable[Message] = (), reasoning: str | None = None,
                   turn_start: int | None = None) -> list[int]:
        """The token ids the model is sent next (with ``extra`` messages appended).

        The analysis of every finished turn is left out, as gpt-oss was trained; ``turn_start`` (the
        history index where the turn being run began) keeps that turn's analysis and tool calls."""
        from ..harmony.conversation import render_for_completion

        header = self.header_messages(reasoning)
        keep = None if turn_start is None else len(header) + turn_start
        return render_for_completion(header + self.history + list(extra), keep_from=keep)

    # -- state --------------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while a turn runs (in a stream, or on the worker thread until it has wound down)."""
        return self._busy.locked()

    def _claim(self) -> None:
        if not self._busy.acquire(blocking=False):
            raise TurnInProgressError("a turn of this chat is still running: stop it (or wait for it) first")

    def _release(self, running: RunningTurn | None = None) -> None:
        if running is None or self._running is running:
            self._running = None
        self._busy.release()

    def reset(self) -> None:
        """Forget the conversation, and the model's cached prefix (a replay starts again).
        The tools, and the python tool's state, stay."""
        if not self._busy.acquire(blocking=False):
            raise TurnInProgressError("cannot reset while a turn is running: stop it first")
        try:
            self.history.clear()
            self.results.clear()
            self.model.reset()
        finally:
            self._busy.release()

    def close(self) -> None:
        if self._running is not None:
            self._running.stop()
        self.toolbox.close()

    # -- a turn -------------------------------------------------------------------------------------

    def send(self, text: str, **options: Any) -> TurnResult:
        """Run one turn (the tool loop included) and return its result.

        It runs on the chat's worker thread while this one waits: the kernel's interrupt (Ctrl-C)
        stops the turn within about 2 s, keeps its partial result in ``results``, then raises.

        Options: ``reasoning``, ``sampling`` (a :class:`SamplingConfig`), any of its fields
        (``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``inspect``, ``logprobs``), ``cancel``.
        """
        result = self.start(text, **options).wait()
        assert result is not None
        return result

    def _loop(self, text: str, reasoning: str | None, sampling: SamplingConfig | None, cancel: Stop,
              options: dict[str, Any]) -> TurnLoop:
        from ..harmony.conversation import reasoning_effort

        if reasoning is not None:
            reasoning_effort(reasoning)
        config = (sampling or SamplingConfig()).replace(**options)
        return TurnLoop(self, text, reasoning, config, cancel)

    def stream(self, text: str, *, reasoning: str | None = None, sampling: SamplingConfig | None = None,
               cancel: threading.Event | Callable[[], bool] | None = None, **options: Any) -> Iterator[SessionEvent]:
        """Run one turn in this thread, yielding events as they happen; the last is :class:`TurnFinished`."""
        loop = self._loop(text, reasoning, sampling, Stop(cancel), options)
        self._claim()
        try:
            yield from self._guarded(loop)
        finally:
            self._release()

    def start(self, text: str, *, reasoning: str | None = None, sampling: SamplingConfig | None = None,
              cancel: threading.Event | Callable[[], bool] | None = None, **options: Any) -> RunningTurn:
        """Run one turn on the chat's worker thread; returns at once with the :class:`RunningTurn`."""
        stop = Stop(cancel)
        loop = self._loop(text, reasoning, sampling, stop, options)
        self._claim()
        running = RunningTurn(self, loop, stop)
        self._running = running
        try:
            running.thread.start()
        except BaseException:
            self._release(running)
            raise
        return running

    def _guarded(self, loop: TurnLoop) -> Iterator[SessionEvent]:
        kept = len(self.history)
        try:
            for event in loop.run():
                if isinstance(event, TurnFinished):
                    self.results.append(event.result)
                yield event
        except BaseException:
            del self.history[kept:]  # a turn that failed leaves the conversation as it was
            raise
