"""The ``gptoss-lab`` command line.

A command that prints a transcript writes exactly one JSON document to stdout; notes go to stderr.
Unreadable input exits with status 2 and one line that says what to do.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn


class InputError(Exception):
    """Input the command cannot read; the message is the one line the user sees."""


def _fail(message: str) -> NoReturn:
    print(f"gptoss-lab: {message}", file=sys.stderr)
    raise SystemExit(2)


def _read_input(path: str) -> bytes:
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise InputError(f"cannot read {path!r}: {e.strerror or e}") from e


def _token_ids(data: bytes, source: str) -> list[int]:
    from .harmony.events import VOCAB_SIZE

    try:
        ids = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{source} is not a JSON list of token ids ({e}); drop --tokens to parse raw text") from e
    if not isinstance(ids, list) or not all(type(t) is int for t in ids):
        raise InputError(f"{source} must hold a JSON list of integers, e.g. [200005, 35644, 200008]")
    bad = next((t for t in ids if not 0 <= t < VOCAB_SIZE), None)
    if bad is not None:
        raise InputError(f"token id {bad} in {source} is outside the Harmony vocabulary (0..{VOCAB_SIZE - 1})")
    return ids


def _text_ids(data: bytes, source: str) -> list[int]:
    from .harmony.vocab import encoding

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(
            f"{source} is not UTF-8 text (bad byte at offset {e.start}); pass token ids with --tokens"
        ) from e
    from .harmony.parser import strip_file_newline

    text = strip_file_newline(text)
    # Special tokens are written out, as servers print them: read them as the special tokens they are.
    return encoding().encode(text, allowed_special="all")


def cmd_parse(args: argparse.Namespace) -> int:
    from .harmony.parser import HarmonyStreamParser
    from .harmony.transcript import TranscriptBuilder
    from .harmony.vocab import encoding

    source = "standard input" if args.file == "-" else repr(args.file)
    try:
        data = _read_input(args.file)
        ids = _token_ids(data, source) if args.tokens else _text_ids(data, source)
    except InputError as e:
        _fail(str(e))
    parser = HarmonyStreamParser(encoding(), role="assistant")
    builder = TranscriptBuilder()
    builder.extend(parser.feed(ids))
    builder.extend(parser.close("end_of_input"))
    doc = builder.to_dict()
    for err in builder.errors:
        print(f"gptoss-lab: recovered: {err['reason']} (at token {err['token_index']})", file=sys.stderr)
    _write_json(doc)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .backends.doctor import doctor, render

    report = doctor(args.device)
    if args.json:
        _write_json(report)
    else:
        print(render(report))
    return 0


def cmd_init_tiny(args: argparse.Namespace) -> int:
    from .backends.tiny import init_tiny, preset_config, write_random_checkpoint

    try:
        if args.preset:
            path = write_random_checkpoint(args.dir, preset_config(args.preset), seed=args.seed)
        else:
            path = init_tiny(
                args.dir, seed=args.seed, layers=args.layers, hidden=args.hidden, experts=args.experts, top_k=args.top_k
            )
    except ValueError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"cannot write {args.dir!r}: {e.strerror or e}")
    print(f"wrote a random-weight gpt-oss checkpoint (MXFP4 experts) to {path}", file=sys.stderr)
    print(path)
    return 0


class _Terminal:
    """Streams a turn's channels to a terminal: labelled, analysis dimmed (when it is a terminal)."""

    def __init__(self, out: Any):
        self.out = out
        tty = hasattr(out, "isatty") and out.isatty()
        self.dim, self.bold, self.reset = ("\x1b[2m", "\x1b[1m", "\x1b[0m") if tty else ("", "", "")

    def __call__(self, event: Any) -> None:
        from .harmony.events import ContentDelta, Malformed, MessageDone, MessageStarted
        from .session import ToolResult

        w = self.out.write
        if isinstance(event, MessageStarted):
            label = event.channel or "message"
            if event.recipient:
                label += f" -> {event.recipient}"
            if event.channel == "analysis" and not event.recipient:
                label += " (raw chain of thought, unfiltered)"
            w(f"{self.bold}[{label}]{self.reset}\n" + (self.dim if event.channel == "analysis" else ""))
        elif isinstance(event, ContentDelta):
            w(event.text)
        elif isinstance(event, MessageDone):
            w(f"{self.reset}\n\n")
        elif isinstance(event, ToolResult):
            w(f"{self.bold}[{event.call.recipient} returned]{self.reset}\n{event.text}\n\n")
        elif isinstance(event, Malformed):
            w(f"{self.bold}[recovered malformed output: {event.error}]{self.reset} {event.raw!r}\n")
        self.out.flush()


def cmd_ask(args: argparse.Namespace) -> int:
    import os

    from .backends.resolve import load
    from .errors import GptossLabError
    from .session import Chat, TurnFinished

    name = args.model or os.environ.get("GPTOSS_LAB_MODEL")
    if not name:
        from .backends.source import default_model

        name, why = default_model()
        print(f"gptoss-lab: no --model given, using {name}: {why}", file=sys.stderr)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()] if args.tools else []
    try:
        model = load(name, tps=args.tps)
        chat = Chat(model, reasoning=args.reasoning, tools=tools, instructions=args.developer)
    except (GptossLabError, ValueError, FileNotFoundError) as e:
        _fail(str(e).splitlines()[0])
    print(f"gptoss-lab: model {model.report.model}: {model.report.moe_path}, {model.report.device}", file=sys.stderr)
    show = None if args.json else _Terminal(sys.stdout)
    result = None
    try:
        for event in chat.stream(args.prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                                 seed=args.seed, inspect=args.inspect):
            if isinstance(event, TurnFinished):
                result = event.result
            elif show is not None:
                show(event)
    finally:
        chat.close()
    assert result is not None
    if args.json:
        _write_json(result.transcript)
    elif result.final is None:
        print(f"(no final answer: {result.stop_reason})")
    return 0


def _write_json(doc: dict[str, Any]) -> None:
    out = json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
    sys.stdout.buffer.write(out.encode("utf-8"))
    sys.stdout.flush()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="gptoss-lab", description="Study and use OpenAI's gpt-oss models: tools for the terminal."
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "parse",
        help="read a raw gpt-oss completion and print its transcript JSON",
        description=(
            "Read a raw completion (special tokens written out, as servers print them; it may start "
            "inside an assistant turn or with <|start|>) and print the transcript JSON. Malformed output "
            "is recovered: text that fits no message goes to 'errors', never lost."
        ),
    )
    p.add_argument("file", nargs="?", default="-", help="the completion file, or - for standard input (default)")
    p.add_argument("--tokens", action="store_true", help="the input is a JSON list of token ids, not text")
    p.set_defaults(func=cmd_parse)

    p = sub.add_parser(
        "doctor",
        help="what this machine would do with gpt-oss-20b and gpt-oss-120b (no network, no weights)",
        description="Report the device, the package versions, the MoE path this machine would use and why, "
        "and per model its size and whether it fits.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--device", default="auto", help="auto (default), cuda, cuda:N or cpu")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser(
        "init-tiny",
        help="write a random-weight gpt-oss checkpoint in the official MXFP4 layout",
        description="Write a small gpt-oss checkpoint with random weights, the real vocabulary (201088) and "
        "MXFP4 experts in the official layout, loadable by gptoss_lab.load(DIR) and by plain transformers.",
    )
    p.add_argument("dir", help="the folder to write (created if needed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64, help="hidden size, a multiple of 32")
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--top-k", type=int, default=2, dest="top_k")
    p.add_argument("--preset", choices=["gpt-oss-20b", "gpt-oss-120b"], default=None,
                   help="the full shape of a published model instead (random weights written layer by layer: "
                   "13 GB for 20b, 65 GB for 120b)")
    p.set_defaults(func=cmd_init_tiny)

    p = sub.add_parser(
        "ask",
        help="one turn with a model from the terminal: channels streamed, tools run for real",
        description="Send PROMPT to a model and stream its Harmony channels (analysis dimmed), running its "
        "tool calls; with --json print the transcript as one JSON document instead.",
    )
    p.add_argument("prompt")
    p.add_argument("--model", "-m", default=None, help="nano, tiny, a hub id, a folder, or replay:PATH (default: $GPTOSS_LAB_MODEL, else gpt-oss on a GPU, else nano)")
    p.add_argument("-r", "--reasoning", default="medium", choices=["low", "medium", "high"])
    p.add_argument("--tools", default="", help="comma-separated; the terminal offers python")
    p.add_argument("--developer", default=None, help="developer instructions")
    p.add_argument("--max-tokens", type=int, default=2048)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--tps", type=float, default=None, help="pace a replay (tokens per second)")
    p.add_argument("--inspect", action="store_true", help="record tokens, logprobs and routing in the transcript")
    p.add_argument("--json", action="store_true", help="print the transcript as one JSON document")
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser(
        "serve-test-model",
        help="serve gpt-oss-nano on 127.0.0.1 with llama.cpp, to try the remote path on a laptop",
        description="Build llama.cpp's server from PyPI's llama-cpp-python sdist (once, into the cache: about "
        "7 minutes on 2 cores), convert nano to GGUF (once), and serve it on loopback until Ctrl-C. "
        "Then, in a notebook: %gptoss load http://127.0.0.1:PORT",
    )
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--api-key-env", default=None, help="require the key held in this environment variable")
    p.set_defaults(func=cmd_serve_test_model)
    return ap


def cmd_serve_test_model(args: argparse.Namespace) -> int:
    import os
    import time

    from .serving import llamacpp

    key = os.environ.get(args.api_key_env, "") if args.api_key_env else None
    if args.api_key_env and not key:
        print(f"gptoss-lab: ${args.api_key_env} is not set", file=sys.stderr)
        return 2
    print("building llama.cpp's server and converting nano (once; the first time takes minutes) ...", file=sys.stderr)
    model = llamacpp.nano_gguf()
    with llamacpp.Server(model, port=args.port, api_key=key) as srv:
        hint = f" --api-key-env {args.api_key_env}" if args.api_key_env else ""
        print(f"serving gpt-oss-nano (llama.cpp {llamacpp.LLAMA_CPP_PYTHON}) at {srv.url}\n"
              f"in a notebook: %gptoss load {srv.url}{hint}\nCtrl-C stops it", flush=True)
        try:
            while srv.proc.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
