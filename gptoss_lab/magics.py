"""``%gptoss`` and ``%%gptoss``: the model in the notebook.

Line magic::

    %gptoss load [MODEL] [--device D] [--dtype T] [--tps N] a hub id, a folder, nano, tiny, or replay:PATH
                                                            (none: gpt-oss on a GPU, else nano; it says why)
    %gptoss load http://HOST:PORT [--engine vllm|llama.cpp] [--served-model NAME] [--api-key-env VAR]
                                                            a vLLM or llama.cpp server, driven by token ids
    %gptoss status                                          the model's report and the conversation
    %gptoss reset                                           forget the conversation
    %gptoss prompt                                          exactly what is sent next, special tokens shown
    %gptoss tools                                           the tools and how they are declared
    %gptoss compare PROMPT [--efforts low,medium,high] [--seed N]     the prompt at each effort, side by side

Cell magic: the cell is the user's message (``{var}`` is taken from your namespace)::

    %%gptoss [-r low|medium|high] [--tools python,browser,NAME] [--system TEXT] [--developer TEXT]
             [--new] [-o VAR] [--max-tokens N] [--temperature T] [--seed N] [--show-analysis] [--inspect]
"""

from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Iterator
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from .display.bundle import MIME
from .display.static import failed_bundle, turn_bundle
from .session import Chat, RunningTurn, make_tools

SUBCOMMANDS = ("load", "status", "reset", "prompt", "tools", "compare")


def _fill(text: str, namespace: dict[str, Any]) -> str:
    """``{name}`` becomes the value of ``name`` in the user's namespace; anything else stays as written."""
    import re

    return re.sub(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: str(namespace[m[1]]) if m[1] in namespace else m[0], text)


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """No library warnings in the cell (transformers' logger, Python warnings) while a model loads, and
    no widget progress bars (transformers' are tqdm.auto widgets: saved, they say "Loading widget...")."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    logger = logging.getLogger("transformers")
    level, bars = logger.level, hf_logging.is_progress_bar_enabled()
    logger.setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()


def _one_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


@magics_class
class GptossMagics(Magics):
    def __init__(self, shell: Any):
        super().__init__(shell)
        self.model: Any = None
        self.chat: Chat | None = None
        self.tools: dict[str, Any] = {}  # name -> tool, kept across cells (the python tool's state too)
        self.last: Any = None

    @property
    def _ns(self) -> dict[str, Any]:
        assert self.shell is not None, "the magics are registered with a shell"
        return self.shell.user_ns  # type: ignore[no-any-return]

    def _not_busy(self, what: str) -> None:
        """A turn still running (or winding down after Stop) must end before ``what``."""
        if self.chat is not None and self.chat.busy:
            raise UsageError(f"a %%gptoss turn is still running: press Stop (or interrupt the kernel) and wait "
                             f"for it to end before {what}")

    # -- the line magic -----------------------------------------------------------------------------

    @magic_arguments()
    @argument("-r", "--reasoning", choices=["low", "medium", "high"], default=None, help="reasoning effort")
    @argument("--tools", default=None, help="comma-separated: python, browser, or names of your functions")
    @argument("--system", default=None, help="the system message's identity line")
    @argument("--developer", default=None, help="developer instructions")
    @argument("--new", action="store_true", help="start a new conversation")
    @argument("-o", "--output", default=None, metavar="VAR", help="store the result in VAR")
    @argument("--max-tokens", type=int, default=8192, help="the most tokens one turn may generate")
    @argument("--temperature", type=float, default=1.0)
    @argument("--top-p", type=float, default=1.0)
    @argument("--seed", type=int, default=None)
    @argument("--show-analysis", action="store_true", help="put the analysis in the text/markdown output too")
    @argument("--inspect", action="store_true", help="record tokens, logprobs and expert routing")
    @line_cell_magic
    def gptoss(self, line: str, cell: str | None = None) -> Any:
        """Talk to a gpt-oss model loaded in this kernel.

        ``%gptoss load MODEL`` | ``status`` | ``reset`` | ``prompt`` | ``tools`` (see the module help);
        ``%%gptoss [options]`` sends the cell as the user's message and streams the reply's channels.
        """
        if cell is None:
            return self._line(line)
        return self._cell(line, cell)

    def _line(self, line: str) -> Any:
        words = shlex.split(line)
        if not words or words[0] not in SUBCOMMANDS:
            raise UsageError(f"%gptoss takes one of: {', '.join(SUBCOMMANDS)} (e.g. %gptoss load nano); "
                             "use %%gptoss for a message")
        return getattr(self, f"_{words[0]}")(words[1:])

    def _load(self, args: list[str]) -> Any:
        import argparse

        from .backends.resolve import load
        from .errors import GptossLabError

        ap = argparse.ArgumentParser(prog="%gptoss load", add_help=False, exit_on_error=False)
        ap.add_argument("model", nargs="?", default=None)
        ap.add_argument("--device", default=None)
        ap.add_argument("--dtype", default=None)
        ap.add_argument("--tps", type=float, default=None)
        ap.add_argument("--engine", default=None, choices=["vllm", "llama.cpp"])
        ap.add_argument("--served-model", default=None)
        ap.add_argument("--api-key-env", default=None)
        try:
            opts = ap.parse_args(args)
        except (argparse.ArgumentError, SystemExit) as e:
            raise UsageError(f"%gptoss load [MODEL] [--device D] [--dtype T] [--tps N] | %gptoss load http://HOST:PORT "
                             f"[--engine vllm|llama.cpp] [--served-model NAME] [--api-key-env VAR]: {e}") from None
        self._not_busy("loading another model")
        name = opts.model
        if name is None:
            from .backends.source import default_model

            name, why = default_model()
            print(f"Loading {name}: {why}.")
        load_options = {k: v for k, v in (("device", opts.device), ("dtype", opts.dtype), ("engine", opts.engine),
                                          ("served_model", opts.served_model), ("api_key_env", opts.api_key_env)) if v is not None}
        try:
            with _quiet_libraries():  # what they warn of, the report says in words, once
                model = load(name, tps=opts.tps, **load_options)
        except (GptossLabError, ValueError, FileNotFoundError) as e:
            raise UsageError(_one_line(e)) from None
        self.model = model
        self.chat = None
        return model.report

    def _compare(self, args: list[str]) -> Any:
        import argparse

        from .display.compare import Comparison, progress_bundle
        from .harmony.events import ContentDelta
        from .session.results import TurnFinished

        ap = argparse.ArgumentParser(prog="%gptoss compare", add_help=False, exit_on_error=False)
        ap.add_argument("prompt", nargs="+")  # quoted or not: %gptoss compare What is 2+2?
        ap.add_argument("--efforts", default="low,medium,high")
        ap.add_argument("--seed", type=int, default=0)
        ap.add_argument("--max-tokens", type=int, default=2048)
        ap.add_argument("--tools", default=None)
        usage = "%gptoss compare PROMPT [--efforts low,medium,high] [--seed N] [--max-tokens N] [--tools T]"
        try:
            opts, unknown = ap.parse_known_args(args)
        except (argparse.ArgumentError, SystemExit) as e:
            raise UsageError(f"{usage}: {e}") from None
        if unknown:
            raise UsageError(f"{usage}: unknown option {' '.join(unknown)}")
        prompt = " ".join(opts.prompt)
        efforts = [e.strip() for e in opts.efforts.split(",") if e.strip()]
        bad = [e for e in efforts if e not in ("low", "medium", "high")]
        if bad or not efforts:
            raise UsageError(f"--efforts takes low, medium and/or high, not {', '.join(bad) or 'nothing'}")
        model = self._require_model()
        self._not_busy("comparing")
        tools = [] if opts.tools is None else [self._tool(t.strip()) for t in opts.tools.split(",") if t.strip()]
        results: dict[str, Any] = {}
        state = {e: "waiting" for e in efforts}
        handle = display(progress_bundle(prompt, state), raw=True, display_id=True)
        try:
            for effort in efforts:
                model.reset()  # each effort from the same start (a replay: its first stretch)
                chat = Chat(model, reasoning=effort, tools=tools)
                tokens, shown = 0, 0.0
                for event in chat.stream(prompt, seed=opts.seed, max_tokens=opts.max_tokens, inspect=True):
                    if isinstance(event, ContentDelta):
                        tokens += 1
                        now = time.monotonic()
                        if handle is not None and now - shown > 0.5:
                            state[effort], shown = f"running: {tokens} tokens ({event.channel or 'header'})", now
                            handle.update(progress_bundle(prompt, state), raw=True)
                    elif isinstance(event, TurnFinished):
                        results[effort] = event.result
                        state[effort] = f"done: {event.result.generated} tokens in {event.result.seconds:.1f} s"
                if handle is not None:
                    handle.update(progress_bundle(prompt, state), raw=True)
        finally:
            model.reset()  # the conversation's next turn starts from a clean cache (a replay: from its start)
        comparison = Comparison(prompt, results, opts.seed)
        self._ns["_gptoss_compare"] = comparison
        if handle is not None:  # the progress line goes; the comparison is the cell's result
            handle.update({"text/plain": ""}, raw=True)
        return comparison

    def _tool(self, name: str) -> Any:
        if name == "python" and name in self.tools:
            return self.tools[name]  # kept across cells: the sandbox's state is the point
        try:
            (found,) = make_tools([name], self._ns)  # functions: as defined now
        except ValueError as e:
            raise UsageError(_one_line(e)) from None
        if name == "python":
            self.tools[name] = found
        return found

    def _require_model(self) -> Any:
        if self.model is None:
            raise UsageError("no model is loaded: run %gptoss load (nano without a GPU; or a hub id, a folder, replay:PATH) first")
        return self.model

    def _status(self, args: list[str]) -> Any:
        self._require_model()
        lines = [str(self.model.report)]
        if self.chat is not None:
            lines.append(f"conversation: {len(self.chat.results)} turns, {len(self.chat.history)} messages; "
                         f"reasoning {self.chat.reasoning}; tools: {', '.join(self.chat.toolbox.names()) or 'none'}")
            python = self.tools.get("python")
            if python is not None:
                report = python.sandbox.report
                lines.append(f"python sandbox: {report.isolation}")
                lines += [f"  {k}: {v}" for k, v in report.layers.items()]
        print("\n".join(lines))

    def _reset(self, args: list[str]) -> None:
        self._not_busy("resetting")
        if self.chat is not None:
            self.chat.reset()  # the conversation, and the model's cached prefix
        elif self.model is not None:
            self.model.reset()
        print("gptoss: conversation reset")

    def _prompt(self, args: list[str]) -> None:
        from .harmony.vocab import encoding

        chat = self._chat_for(None)
        ids = chat.prompt_ids()
        print(f"# {len(ids)} tokens; the next %%gptoss cell is added as a user message before <|start|>assistant\n")
        print(encoding().decode_utf8(ids))

    def _tools(self, args: list[str]) -> None:
        from .harmony import conversation as conv
        from .harmony.vocab import encoding
        from .tools.base import BuiltinTool

        chat = self._chat_for(None)
        if not len(chat.toolbox):
            print("no tools: use %%gptoss --tools python,browser,NAME")
            return
        enc = encoding()
        for t in chat.toolbox:
            if isinstance(t, BuiltinTool):
                config = t.system_config()
                print(f"# {config.name} (system message)\n{config.description}\n")
        functions = chat.toolbox.function_descriptions()
        if functions:
            print("# functions (developer message)\n" + enc.decode_utf8(enc.render(conv.developer_message(functions=functions))))

    # -- the cell magic -----------------------------------------------------------------------------

    def _chat_for(self, opts: Any) -> Chat:
        self._require_model()
        tools = None if opts is None or opts.tools is None else [t.strip() for t in opts.tools.split(",") if t.strip()]
        if self.chat is None or (opts is not None and opts.new):
            self._not_busy("starting a new conversation")
            self.chat = Chat(self.model)
            if opts is not None and opts.new:
                self.model.reset()
        if tools is not None:
            chosen = [self._tool(name) for name in tools]
            from .tools.base import Toolbox

            self.chat.toolbox = Toolbox(chosen)
        if opts is not None:
            if opts.reasoning:
                self.chat.reasoning = opts.reasoning
            if opts.developer is not None:
                self.chat.instructions = opts.developer
            if opts.system is not None:
                self.chat.identity = opts.system
        return self.chat

    def _prepare(self, line: str, cell: str) -> tuple[Any, str, Chat]:
        opts = parse_argstring(self.gptoss, line)
        self._not_busy("sending another message")  # before anything of the running chat changes
        text = _fill(cell, self._ns).strip()
        if not text:
            raise UsageError("%%gptoss needs a message in the cell")
        if opts.output is not None and not opts.output.isidentifier():
            raise UsageError(f"-o takes a variable name, not {opts.output!r}")
        return opts, text, self._chat_for(opts)

    def _cell(self, line: str, cell: str) -> None:
        """The cell run synchronously: the kernel's interrupt (KeyboardInterrupt) stops it."""
        opts, text, chat = self._prepare(line, cell)
        turn = self._new_turn(chat, text, opts)
        try:
            while not turn.over:
                try:
                    if not turn.take(timeout=0.1):
                        turn.panel.flush()
                except KeyboardInterrupt:  # stop within a token, keep what was written
                    turn.stop()
        finally:
            result = turn.finish()
        self._keep(result, opts)  # with --inspect, the turn's bundle carries the token and routing views

    async def _cell_async(self, line: str, cell: str) -> None:
        """The cell as a notebook runs it: awaiting, so the kernel handles the panel's Stop button
        meanwhile; the kernel's interrupt cancels the await and stops the turn the same way."""
        import asyncio

        opts, text, chat = self._prepare(line, cell)
        turn = self._new_turn(chat, text, opts)
        try:
            while not turn.over:
                try:
                    if turn.take(timeout=0):
                        await asyncio.sleep(0)  # a burst of events still lets the kernel hear Stop
                    else:
                        turn.panel.flush()  # live text does not wait for the next event
                        await asyncio.sleep(0.02)
                except asyncio.CancelledError:  # the kernel's interrupt: stop, then keep draining
                    turn.stop()
        finally:
            result = turn.finish()
        self._keep(result, opts)  # with --inspect, the turn's bundle carries the token and routing views

    def _new_turn(self, chat: Chat, text: str, opts: Any) -> _Turn:
        return _Turn(self, chat, text, opts)

    def _keep(self, result: Any, opts: Any) -> None:
        if result is None:
            return
        self.last = result
        self._ns["_gptoss"] = result
        if opts.output:
            self._ns[opts.output] = result

    def close(self) -> None:
        from .tools.base import Toolbox

        Toolbox(self.tools.values()).close()


__all__ = ["GptossMagics", "MIME"]


class _Turn:
    """One %%gptoss turn on display: the chat runs it on its worker thread; the cell's thread shows its
    events in the panel and, on Stop or the kernel's interrupt, asks it to stop."""

    def __init__(self, magics: GptossMagics, chat: Chat, text: str, opts: Any):
        from .display.panel import HarmonyPanel

        report = magics._require_model().report
        self.opts = opts
        caps = magics._require_model().capabilities
        returns = [name for name, has in (("logprobs", caps.logprobs), ("routing", caps.routing), ("sinks", caps.sinks)) if has]
        self.panel = HarmonyPanel(header={"model": report.model, "engine": report.engine, "moe_path": report.moe_path,
                                          "effort": chat.reasoning, "returns": " · ".join(returns) or "token ids only"})
        self.handle = display(self.panel, display_id=True)
        self.failure: BaseException | None = None
        try:
            self.running: RunningTurn = chat.start(
                text, max_tokens=opts.max_tokens, temperature=opts.temperature, top_p=opts.top_p, seed=opts.seed,
                inspect=opts.inspect, cancel=self.panel.cancel,
            )
        except BaseException:
            self.panel.finish("failed")
            raise

    @property
    def over(self) -> bool:
        return self.running.over

    def take(self, timeout: float) -> bool:
        """Show the next event, waiting up to ``timeout``; False when there was none."""
        try:
            event = self.running.get(timeout=timeout)
        except BaseException as e:
            if not self.running.over:
                raise  # the kernel's interrupt while waiting: the cell stops the turn
            self.failure = e  # the turn failed: raised from finish(), in the cell
            return True
        if event is None:
            return self.running.over
        self.panel.add(event)
        return True

    def stop(self) -> None:
        self.running.stop()

    def finish(self) -> Any:
        if not self.over:  # left early (a second interrupt): the worker stops within a token
            self.stop()
        result = self.running.result
        status = "failed" if self.failure is not None else "stopped" if result is None or result.stopped else "done"
        self.panel.finish(status)
        # The live panel gives way, in place, to the static bundle: saved, the notebook needs no kernel.
        if self.handle is not None:
            opened, facts = self.panel.open_messages(), self.panel.facts()
            if result is not None:
                data = turn_bundle(result, facts, open_messages=opened, show_analysis=self.opts.show_analysis)
            else:
                data = failed_bundle(self.panel.messages, facts, self.failure or RuntimeError("the turn ended without a result"), opened)
            # the extension's renderer reads the open messages from the output's metadata
            self.handle.update(data, metadata={MIME: {"open_messages": opened}}, raw=True)
            self.panel.close()
        if self.failure is not None:
            raise self.failure
        return result


def async_cells(lines: list[str]) -> list[str]:
    """An input transformer: a ``%%gptoss`` cell becomes an awaited call, so that while the turn runs
    the kernel still handles widget messages (the panel's Stop button). ``%%gptoss?`` is left alone."""
    if not lines:
        return lines
    first = lines[0].rstrip("\n")
    if not first.startswith("%%gptoss") or first[8:9] not in ("", " ", "\t") or first.rstrip().endswith("?"):
        return lines
    line, cell = first[8:].strip(), "".join(lines[1:])
    # The line is expanded as IPython expands a cell magic's line ({var}, $var), in the cell's namespace.
    return [f"await get_ipython()._gptoss_lab_magics._cell_async(get_ipython().var_expand({line!r}), {cell!r})\n"]
