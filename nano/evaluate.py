"""Evaluate gpt-oss-nano through the real tool loop (``python -m nano.evaluate``; ``make nano-eval``).

The model is loaded with ``gptoss_lab.load`` (the path every checkpoint takes), each prompt is one
turn of a fresh :class:`gptoss_lab.Chat`, python calls run in the real sandbox and ``get_weather`` is a
real function tool. Arithmetic operands are held out of the training corpus (``corpus.held_out``);
weather temperatures are drawn here, so the answer can only be right if the model copies it.

Reported: well-formed Harmony (the parser found no malformed output, the turn ended with
``<|return|>`` and has a final answer), right answers per task, analysis length per reasoning
effort on the same prompts, and generation speed (tokens per second of model time, tools excluded).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import time
from typing import Any

from . import corpus


def number_in(text: str | None, value: int) -> bool:
    return bool(text) and re.search(rf"(?<![\d-]){re.escape(str(value))}(?![\d])", text) is not None  # type: ignore[arg-type]


def items(n_arith: int, n_weather: int, n_capital: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for k in range(n_arith):
        op = list(corpus.OPS)[k % len(corpus.OPS)]
        a, b = corpus.operands(rng, train=False)
        text, expr, value = corpus.arithmetic_prompt(op, a, b)
        out.append({"kind": "arithmetic", "prompt": text, "expected": value, "expr": expr})
    for _ in range(n_weather):
        city = rng.choice(corpus.CITIES)
        out.append({"kind": "weather", "prompt": f"What's the weather in {city}?", "city": city,
                    "expected": rng.randint(-15, 40)})
    for country in rng.sample(sorted(corpus.CAPITALS), n_capital):
        out.append({"kind": "capital", "prompt": f"What is the capital of {country}?",
                    "expected": corpus.CAPITALS[country]})
    return out


def run(model: Any, item: dict[str, Any], effort: str, python: Any, temperature: float, seed: int) -> dict[str, Any]:
    import gptoss_lab

    temps = {"value": item["expected"]}

    @gptoss_lab.tool
    def get_weather(city: str) -> dict:
        """Get the current weather in a city."""
        return {"city": city, "temperature": temps["value"]}

    tools: list[Any] = []
    if item["kind"] == "arithmetic":
        tools = [python]
    elif item["kind"] == "weather":
        tools = [get_weather]
    chat = gptoss_lab.Chat(model, reasoning=effort, tools=tools)
    t0 = time.monotonic()
    r = chat.send(item["prompt"], temperature=temperature, seed=seed, max_tokens=400)
    seconds = time.monotonic() - t0
    tool_seconds = sum(t.seconds for t in r.tool_results)
    calls = [m for m in r.messages if m["role"] == "assistant" and m["recipient"]]
    analysis = [m["content"] for m in r.messages if m["role"] == "assistant" and m["channel"] == "analysis"
                and not m["recipient"]]
    from gptoss_lab.harmony.vocab import encoding

    enc = encoding()
    well_formed = not r.transcript["errors"] and r.stop_reason == "return" and r.final is not None
    if item["kind"] == "arithmetic":
        called = any(c["recipient"] == "python" and c["content"].strip() == f"print({item['expr']})" for c in calls)
        right = number_in(r.final, item["expected"])
    elif item["kind"] == "weather":
        called = any(c["recipient"] == "functions.get_weather" and json.loads(c["content"] or "null") == {"city": item["city"]}
                     for c in calls if c["content"].strip().startswith("{"))
        right = number_in(r.final, item["expected"])
    else:
        called = not calls
        right = bool(r.final) and item["expected"] in r.final
    return {
        **item, "effort": effort, "final": r.final, "stop_reason": r.stop_reason, "well_formed": well_formed,
        "errors": len(r.transcript["errors"]), "called_right": called, "right": right,
        "analysis_tokens": sum(len(enc.encode(a, allowed_special=set())) for a in analysis),
        "generated": r.generated, "model_seconds": max(seconds - tool_seconds, 1e-9),
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def rate(rs: list[dict[str, Any]], key: str) -> float:
        return round(sum(bool(r[key]) for r in rs) / len(rs), 4) if rs else float("nan")

    tool_rows = [r for r in rows if r["kind"] in ("arithmetic", "weather")]
    out: dict[str, Any] = {
        "completions": len(rows),
        "well_formed": rate(rows, "well_formed"),
        "tool_answers_right": rate(tool_rows, "right"),
        "tokens_per_second": round(sum(r["generated"] for r in rows) / sum(r["model_seconds"] for r in rows), 1),
    }
    for kind in ("arithmetic", "weather", "capital"):
        rs = [r for r in rows if r["kind"] == kind]
        out[kind] = {"n": len(rs), "right": rate(rs, "right"), "called_right": rate(rs, "called_right"),
                     "well_formed": rate(rs, "well_formed")}
    out["analysis_tokens_by_effort"] = {
        e: round(statistics.mean(r["analysis_tokens"] for r in rows if r["effort"] == e), 1)
        for e in ("low", "medium", "high") if any(r["effort"] == e for r in rows)
    }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nano")
    ap.add_argument("--arithmetic", type=int, default=60)
    ap.add_argument("--weather", type=int, default=30)
    ap.add_argument("--capitals", type=int, default=30)
    ap.add_argument("--efforts", default="low,medium,high")
    ap.add_argument("--temperature", type=float, default=1.0, help="1.0 is what users get by default; 0 is greedy")
    ap.add_argument("--seed", type=int, default=1234, help="the prompts' seed (operands, cities, temperatures)")
    ap.add_argument("--json", default=None, help="write every completion and the summary here")
    args = ap.parse_args(argv)

    import gptoss_lab
    from gptoss_lab.tools.python_tool import PythonTool

    model = gptoss_lab.load(args.model)
    print(model.report, file=sys.stderr)
    python = PythonTool()
    rows = []
    try:
        for effort in [e.strip() for e in args.efforts.split(",") if e.strip()]:
            for k, item in enumerate(items(args.arithmetic, args.weather, args.capitals, args.seed)):
                row = run(model, item, effort, python, args.temperature, seed=k)
                rows.append(row)
                if not (row["well_formed"] and row["right"]):
                    print(f"  [{effort}] {item['prompt']!r}: final={row['final']!r} stop={row['stop_reason']} "
                          f"well_formed={row['well_formed']} called_right={row['called_right']}", file=sys.stderr)
    finally:
        python.close()
    summary = summarize(rows)
    summary["model"] = model.report.model
    summary["temperature"] = args.temperature
    print(json.dumps(summary, indent=2))
    if args.json:
        from pathlib import Path

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "completions": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
