"""Inspection views of a turn recorded with ``inspect=True``: tokens with their channel, parser state,
logprob and alternatives; the experts each token was routed to; expert load per channel; the attention
sinks' share. The widget (anywidget) carries a static HTML rendering too, for saved notebooks and nbconvert.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import anywidget
import traitlets

CHANNELS = ("all", "analysis", "commentary", "final")


def view_data(result: Any) -> dict[str, Any]:
    """What the view needs, JSON-able: tokens, sizes, the expert load per channel, texts of alternatives."""
    from ..harmony.vocab import encoding

    if result.tokens is None:
        raise ValueError("no token data: run the turn with inspect=True (%%gptoss --inspect)")
    tokens = result.tokens
    routed = next((t["routing"] for t in tokens if t["routing"]), None)
    enc = encoding()
    alt_ids = sorted({a[0] for t in tokens for a in t["alternatives"]})
    load = {c: result.expert_load(None if c == "all" else c) for c in CHANNELS}
    notes = result.transcript.get("inspect_notes") or []
    return {
        "tokens": tokens,
        "num_layers": len(routed) if routed else 0,
        "num_experts": max([len(r) for rows in load.values() for r in rows] + [result.transcript.get("num_experts") or 0]),
        "load": load,
        "texts": {i: enc.decode([i]) for i in alt_ids},
        "sink_note": notes[0] if notes else "",
    }


def _cell(value: float, peak: float) -> str:
    alpha = 0.08 + 0.92 * (value / peak) if value and peak else 0
    return f'<td style="width:10px;height:10px;border:1px solid #eee;background:rgba(214,83,36,{alpha:.3f})" title="{value}"></td>'


def static_html(result: Any, limit: int = 4000) -> str:
    """The same view as plain HTML (no script): coloured tokens with their details on hover, and the
    expert load of the turn per layer. It is what saved notebooks, nbconvert and GitHub show."""
    colours = {"analysis": "rgba(154,109,215,.18)", "commentary": "rgba(59,130,196,.18)", "final": "rgba(26,127,55,.18)"}
    spans = []
    for i, t in enumerate(result.tokens[:limit]):
        bg = "rgba(60,60,60,.75);color:#fff" if t["special"] else colours.get(t["channel"] or "", "rgba(120,120,120,.12)")
        tip = f"#{i} id {t['id']} channel {t['channel']} parser {t['state']}"
        if t["logprob"] is not None:
            tip += f" logprob {t['logprob']:.3f}"
        if t["routing"]:
            tip += " experts " + " | ".join(",".join(map(str, ids)) for ids, _ in t["routing"])
        spans.append(f'<span style="background:{bg}" title="{html.escape(tip)}">{html.escape(t["text"])}</span>')
    load = result.expert_load()
    peak = max([v for row in load for v in row] + [1])
    experts = len(load[0]) if load else 0
    head = "<tr><th></th>" + "".join(f"<th style='font-size:8px;font-weight:normal'>{e}</th>" for e in range(experts)) + "</tr>"
    rows = "".join(f"<tr><th style='font-size:9px'>L{i}</th>{''.join(_cell(v, peak) for v in row)}</tr>" for i, row in enumerate(load))
    more = f"<div><i>{len(result.tokens) - limit} more tokens not shown</i></div>" if len(result.tokens) > limit else ""
    legend = ("<div style='display:flex;align-items:center;gap:4px;font-size:11px'>0 "
              "<div style='display:inline-block;width:120px;height:10px;background:linear-gradient(to right,"
              f"rgba(214,83,36,.08),rgba(214,83,36,1))'></div> {peak} tokens</div>")
    table = f"<table style='border-collapse:collapse'>{head}{rows}</table>{legend}" if load else \
        "<div><i>no expert routing was recorded</i></div>"
    return (
        "<div><div style='font-family:monospace;white-space:pre-wrap;line-height:1.8'>" + "".join(spans) + "</div>" + more
        + "<div style='font-weight:600;margin-top:6px'>Expert load over the turn: how many tokens each expert "
        "(columns) processed in each layer (rows)</div>" + table + "</div>"
    )


class InspectView(anywidget.AnyWidget):
    """Tokens and expert routing of one turn. ``selection`` is the selected span ``[start, end]``."""

    _esm = Path(__file__).with_name("inspect.js")
    _css = Path(__file__).with_name("inspect.css")
    _data = traitlets.Dict().tag(sync=True)
    selection = traitlets.List([0, 0]).tag(sync=True)

    def __init__(self, result: Any, **kwargs: Any):
        super().__init__(_data=view_data(result), **kwargs)
        self._result = result

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = super()._repr_mimebundle_(**kwargs)
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        if data is not None:
            data["text/html"] = static_html(self._result)
        return bundle
