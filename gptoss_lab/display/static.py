"""A finished turn as a static bundle: what a saved, shared or converted notebook shows with no kernel,
no widget manager and no script.

``turn_bundle`` gives ``text/html`` (the header facts; every message with its channel, recipient and
content type; the analysis collapsed in ``<details>`` and labelled as raw, unfiltered chain of thought;
tool calls with their code and the tool's real output, images included; the final answer rendered from
Markdown; errors where the parser met them), ``text/markdown``, ``text/plain`` (every channel, labelled)
and the transcript JSON, which the JupyterLab extension (``labextension/``) renders interactively.
A live panel's output is replaced by this bundle, in place, when its turn ends.

The HTML carries its look in one ``<style>`` block and in its elements (``<details>``, ``<pre>``,
``<blockquote>``), so it still reads right where styles are stripped (GitHub).
"""

from __future__ import annotations

import base64
import binascii
import html
from collections.abc import Iterable
from typing import Any

from .bundle import MIME

STYLE = """<style>
.gls{font-family:system-ui,sans-serif;font-size:13px;border:1px solid #ddd;border-radius:6px;padding:0 0 4px 0}
.gls-head{padding:6px 8px;background:#f5f5f5;border-bottom:1px solid #ddd;display:flex;flex-wrap:wrap;gap:8px}
.gls-msg{border-left:3px solid #ccc;margin:6px 8px;padding:2px 8px}
.gls-label,.gls-msg>summary{font-size:12px;color:#555}
.gls-msg>summary{cursor:pointer}
.gls-msg pre{white-space:pre-wrap;word-break:break-word;margin:2px 0;font-size:12px}
.gls-analysis{border-left-color:#9a6dd7;background:rgba(154,109,215,.05)}
.gls-commentary{border-left-color:#3b82c4}.gls-call{border-left-color:#d4a017}
.gls-tool{border-left-color:#2e9e6a;background:rgba(46,158,106,.05)}.gls-final{border-left-color:#1a7f37}
.gls-error{border-left-color:#c0392b;color:#c0392b}.gls img{max-width:100%}
.gls code.gls-ct{font-size:11px;background:#eee;padding:0 3px;border-radius:3px}
</style>"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def markdown_html(text: str) -> str:
    """Markdown to HTML, CommonMark with raw HTML off: nothing the model writes becomes markup."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table").render(text)


def label(m: dict[str, Any]) -> str:
    """How a message is named in every view: its role, channel and recipient in their own case."""
    if m.get("role") == "tool":
        return f"{m.get('name') or 'tool'} returned"
    if m.get("role") in ("user", "system", "developer"):
        return str(m["role"])
    channel = m.get("channel") or "message"
    if m.get("recipient"):
        return f"{channel} → {m['recipient']}"
    if channel == "analysis":
        return "analysis: raw, unfiltered chain of thought"
    return channel


def kind(m: dict[str, Any]) -> str:
    if m.get("role") == "tool":
        return "tool"
    if m.get("role") != "assistant":
        return "user"
    if m.get("recipient"):
        return "call"
    return str(m.get("channel") or "final")


def _png(data: Any) -> str | None:
    """Base64 PNG data as given by a tool, only if it really is base64 (it goes into an attribute)."""
    if not isinstance(data, str):
        return None
    try:
        base64.b64decode(data.replace("\n", ""), validate=True)
    except (binascii.Error, ValueError):
        return None
    return data.replace("\n", "")


def outputs_html(outputs: Iterable[dict[str, Any]]) -> str:
    """A tool's rich outputs: images inline; HTML as escaped source in a sandboxed frame (no script runs)."""
    parts = []
    for o in outputs:
        png = _png(o.get("image/png"))
        if png is not None:
            parts.append(f'<img alt="an image the tool made" src="data:image/png;base64,{png}">')
        elif o.get("text/html"):
            parts.append(f'<iframe sandbox="" style="width:100%;min-height:120px;border:1px solid #eee" srcdoc="{esc(o["text/html"])}"></iframe>')
    return "".join(parts)


def message_html(m: dict[str, Any], outputs: Iterable[dict[str, Any]] = (), open_: bool = False) -> str:
    k = kind(m)
    ct = f' <code class="gls-ct">{esc(m["content_type"])}</code>' if m.get("content_type") else ""  # <|constrain|>json
    cut = " <i>(cut off)</i>" if m.get("incomplete") else ""
    name = f"{esc(label(m))}{ct}{cut}"
    content = str(m.get("content") or "")
    body = markdown_html(content) if k == "final" else f"<pre>{esc(content)}</pre>"
    extra = outputs_html(outputs)
    if k == "analysis":
        return (f'<details class="gls-msg gls-analysis"{" open" if open_ else ""}><summary>{name}</summary>'
                f"{body}{extra}</details>")
    return f'<div class="gls-msg gls-{k}"><div class="gls-label"><b>{name}</b></div>{body}{extra}</div>'


def header_html(facts: dict[str, Any]) -> str:
    shown = [(k, facts.get(k)) for k in ("model", "engine", "moe_path", "effort", "returns", "status", "tokens", "seconds",
                                         "tokens_per_s")]
    names = {"moe_path": "MoE path", "tokens_per_s": "tok/s", "effort": "reasoning effort"}
    cells = "".join(f"<span><b>{esc(names.get(k, k))}</b> {esc(v)}</span>" for k, v in shown if v not in (None, ""))
    return f'<div class="gls-head">{cells}</div>'


def turn_html(transcript: dict[str, Any], facts: dict[str, Any], open_messages: Iterable[int] = (),
              inspection: str = "") -> str:
    """The whole turn as HTML: header, every message in order, tool outputs after the tool's reply,
    the parser's errors (with where they happened), then the inspection views when there are any.
    ``open_messages`` counts the assistant's and tools' messages only (the ones the live panel shows)."""
    opened = set(open_messages)
    outputs = transcript.get("tool_outputs") or {}
    messages = transcript.get("messages") or []
    parts = [STYLE, '<div class="gls">', header_html(facts)]
    written = 0  # the model's and the tools' messages, counted as the live panel shows them
    for i, m in enumerate(messages):
        # a call's rich outputs go with the tool's reply, the message after the call
        shown = outputs.get(str(i - 1), []) if m.get("role") == "tool" else []
        parts.append(message_html(m, shown, open_=written in opened and kind(m) != "user"))
        written += kind(m) != "user"
    for e in transcript.get("errors") or []:
        where = f" at token {e['token_index']}" if e.get("token_index") is not None else ""
        parts.append(f'<div class="gls-msg gls-error"><div class="gls-label"><b>recovered malformed output{esc(where)}: '
                     f'{esc(e.get("reason", ""))}</b></div><pre>{esc(e.get("raw", ""))}</pre></div>')
    if transcript.get("stop_reason") == "stopped":
        parts.append('<div class="gls-msg gls-error"><div class="gls-label"><b>stopped</b>: the turn was stopped; '
                     'what was written is kept above</div></div>')
    if transcript.get("failure"):
        parts.append(f'<div class="gls-msg gls-error"><div class="gls-label"><b>failed</b>: {esc(transcript["failure"])}</div></div>')
    if inspection:
        parts.append(f'<div class="gls-msg">{inspection}</div>')
    parts.append("</div>")
    return "".join(parts)


def turn_text(transcript: dict[str, Any]) -> str:
    """Every channel as plain text, each message under its label."""
    lines = []
    for m in transcript.get("messages") or []:
        lines.append(f"[{label(m)}{' ' + m['content_type'] if m.get('content_type') else ''}]")
        lines.append(str(m.get("content") or ""))
    for e in transcript.get("errors") or []:
        lines.append(f"[recovered malformed output: {e.get('reason', '')}]")
        lines.append(str(e.get("raw", "")))
    return "\n".join(lines)


def static_bundle(transcript: dict[str, Any], facts: dict[str, Any], markdown: str, *,
                  open_messages: Iterable[int] = (), inspection: str = "") -> dict[str, Any]:
    return {
        MIME: transcript,
        "text/html": turn_html(transcript, facts, open_messages, inspection),
        "text/markdown": markdown,
        "text/plain": turn_text(transcript),
    }


def turn_bundle(result: Any, facts: dict[str, Any], *, open_messages: Iterable[int] = (),
                show_analysis: bool = False) -> dict[str, Any]:
    """The static bundle of a finished turn (see the module's help)."""
    inspection = ""
    if result.tokens:
        from .inspect import static_html

        inspection = static_html(result)
    return static_bundle(result.transcript, facts, result.markdown(show_analysis=show_analysis),
                         open_messages=open_messages, inspection=inspection)


def failed_bundle(messages: list[dict[str, Any]], facts: dict[str, Any], error: BaseException,
                  open_messages: Iterable[int] = ()) -> dict[str, Any]:
    """A turn that failed before it had a result: what the panel showed, and the error where it stopped."""
    from ..harmony.transcript import FORMAT

    keep = ("role", "name", "channel", "recipient", "content_type", "content")
    transcript = {"format": FORMAT, "messages": [{k: m.get(k) for k in keep} for m in messages if m.get("role") != "error"],
                  "complete": False, "errors": [], "stop_reason": "failed", "failure": f"{type(error).__name__}: {error}"}
    out = static_bundle(transcript, facts, f"*The turn failed: {type(error).__name__}: {error}*", open_messages=open_messages)
    out["text/plain"] += f"\n[failed: {transcript['failure']}]"
    return out
