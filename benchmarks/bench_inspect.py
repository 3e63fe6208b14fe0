"""Inspection overhead: `make bench`.

Tokens per second on the tiny checkpoint, side by side in one run (median of interleaved rounds):
the backend's bare stream, a Chat turn with inspection off (goal: within 5% of the bare stream), and a
Chat turn with inspection on (logprobs, expert routing, attention sinks; aim: at most 15% slower).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import gptoss_lab
    from gptoss_lab.backends.tiny import init_tiny

    rounds = int(os.environ.get("BENCH_ROUNDS", "5"))
    n = 96
    with tempfile.TemporaryDirectory() as tmp:
        m = gptoss_lab.load(str(init_tiny(Path(tmp) / "tiny", seed=0)))
    chat = gptoss_lab.Chat(m, current_date=None)
    prompt = chat.prompt_ids([__import__("gptoss_lab.harmony.conversation", fromlist=["x"]).user_message("Hello")])

    def bare() -> float:
        m.reset()
        t0 = time.perf_counter()
        k = sum(1 for _ in m.stream(prompt, max_tokens=n, temperature=0))
        return k / (time.perf_counter() - t0)

    def turn(inspect: bool) -> float:
        chat.reset()
        m.reset()
        t0 = time.perf_counter()
        r = chat.send("Hello", max_tokens=n, temperature=0, inspect=inspect)
        return r.generated / (time.perf_counter() - t0)

    bare(), turn(False), turn(True)
    a, b, c = [], [], []
    for _ in range(rounds):
        a.append(bare())
        b.append(turn(False))
        c.append(turn(True))
    sa, sb, sc = statistics.median(a), statistics.median(b), statistics.median(c)
    print(f"inspection overhead, {n} tokens on the tiny checkpoint ({m.report.device}; median of {rounds}):")
    print(f"  backend stream, bare          {sa:7.1f} tokens/s")
    print(f"  Chat turn, inspection off     {sb:7.1f} tokens/s   ratio {sb / sa:5.3f} (goal: within 5%)")
    print(f"  Chat turn, inspection on      {sc:7.1f} tokens/s   ratio {sc / sb:5.3f} vs off "
          f"({(1 - sc / sb) * 100:+.1f}% slower; aim: at most 15%)")


if __name__ == "__main__":
    main()
