"""``%gptoss compare``: the same prompt at several reasoning efforts, side by side."""

from __future__ import annotations

import html
from typing import Any


def load_distance(a: list[list[int]], b: list[list[int]]) -> float | None:
    """How differently two turns used the experts: the total-variation distance between their expert
    load distributions, averaged over layers (0 = the same experts as often, 1 = no expert in common)."""
    if not a or not b:
        return None
    dists = []
    for row_a, row_b in zip(a, b):
        n = max(len(row_a), len(row_b))
        sa, sb = sum(row_a) or 1, sum(row_b) or 1
        pa = [x / sa for x in row_a] + [0.0] * (n - len(row_a))
        pb = [x / sb for x in row_b] + [0.0] * (n - len(row_b))
        dists.append(0.5 * sum(abs(x - y) for x, y in zip(pa, pb)))
    return sum(dists) / len(dists)


class Comparison(dict):
    """``{effort: TurnResult}`` for one prompt, shown as a side-by-side table."""

    def __init__(self, prompt: str, results: dict[str, Any], seed: int | None):
        super().__init__(results)
        self.prompt = prompt
        self.seed = seed

    def rows(self) -> list[dict[str, Any]]:
        base = next(iter(self.values()), None)
        out = []
        for effort, r in self.items():
            tokens = r.tokens or []
            out.append({
                "effort": effort,
                "analysis_tokens": sum(1 for t in tokens if t["channel"] == "analysis" and t["state"] == "content"),
                "tokens": r.generated,
                "seconds": round(r.seconds, 2),
                "final": r.final,
                "stop_reason": r.stop_reason,
                "expert_load_distance": None if base is None or r is base or not tokens
                else load_distance(base.expert_load(), r.expert_load()),
            })
        return out

    def _repr_html_(self) -> str:
        rows = self.rows()
        head = "".join(f"<th>{html.escape(r['effort'])}</th>" for r in rows)
        first = rows[0]["effort"] if rows else ""

        def line(label: str, explain: str, cells: list[str]) -> str:
            name = f"<th style='text-align:left;vertical-align:top'>{label}<div style='font-weight:normal;font-size:11px;color:#666'>{explain}</div></th>"
            return "<tr>" + name + "".join(f"<td style='vertical-align:top'>{c}</td>" for c in cells) + "</tr>"

        def analysis(effort: str) -> str:
            text = self[effort].analysis()
            if not text:
                return "<i>(no analysis)</i>"
            return (f"<details><summary>{len(text.split())} words</summary><pre style='white-space:pre-wrap;max-width:28em'>"
                    f"{html.escape(text)}</pre></details>")

        body = [
            line("analysis tokens", "tokens of reasoning the model wrote (analysis channel)", [str(r["analysis_tokens"]) for r in rows]),
            line("tokens generated", "every token of the turn: headers, analysis, tool calls, answer", [str(r["tokens"]) for r in rows]),
            line("seconds", "the turn's time on this machine, tool calls included", [str(r["seconds"]) for r in rows]),
            line("ended by", "return: a final answer; length: the token budget ran out", [html.escape(r["stop_reason"]) for r in rows]),
            line(f"expert use vs {html.escape(first)}",
                 f"how differently the turn used the experts than at {html.escape(first)}: 0 = the same experts as often, "
                 "1 = none in common (total-variation distance of expert load, averaged over layers)",
                 ["-" if r["expert_load_distance"] is None else f"{r['expert_load_distance']:.2f}" for r in rows]),
            line("analysis", "raw, unfiltered chain of thought: not for end users", [analysis(r["effort"]) for r in rows]),
            line("final answer", "", [f"<div style='white-space:pre-wrap;max-width:28em'>{html.escape(r['final'] or '(none)')}</div>" for r in rows]),
        ]
        seed = "" if self.seed is None else f", seed {self.seed}"
        return (f"<div><b>{html.escape(self.prompt)}</b> at each reasoning effort{seed}</div>"
                f"<table><tr><th></th>{head}</tr>{''.join(body)}</table>")

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return self.bundle()

    def bundle(self) -> dict[str, Any]:
        """The comparison as a static bundle (no kernel needed): HTML, Markdown, text, and each effort's transcript."""
        md = [f"**{self.prompt}** at each reasoning effort", "", "| effort | analysis tokens | tokens | seconds | final answer |",
              "|---|---|---|---|---|"]
        md += [f"| {r['effort']} | {r['analysis_tokens']} | {r['tokens']} | {r['seconds']} | {(r['final'] or '(none)').replace('|', '/')} |"
               for r in self.rows()]
        return {"text/html": self._repr_html_(), "text/markdown": "\n".join(md), "text/plain": repr(self),
                "application/json": {"prompt": self.prompt, "seed": self.seed,
                                     "transcripts": {e: r.transcript for e, r in self.items()}}}

    def __repr__(self) -> str:
        return "\n".join(f"{r['effort']:>6}: {r['analysis_tokens']} analysis tokens, {r['tokens']} tokens, "
                         f"{r['seconds']} s, final={r['final']!r}" for r in self.rows())


def progress_bundle(prompt: str, state: dict[str, str]) -> dict[str, Any]:
    """What ``%gptoss compare`` shows while it runs: each effort's state."""
    lines = [f"{effort}: {what}" for effort, what in state.items()]
    items = "".join(f"<li><b>{html.escape(e)}</b>: {html.escape(w)}</li>" for e, w in state.items())
    return {"text/html": f"<div>Comparing <b>{html.escape(prompt)}</b> at each reasoning effort</div><ul>{items}</ul>",
            "text/plain": f"Comparing {prompt!r}\n" + "\n".join(lines)}
