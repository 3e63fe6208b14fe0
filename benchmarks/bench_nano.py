"""gpt-oss-nano benchmarks: `make bench`.

1. The shipped checkpoint's size (goal: at most 8 MB) and the rebuilt full-vocabulary checkpoint's.
2. Rebuild and load times (first load rebuilds the 201088-row vocabulary once; later loads reuse it).
3. Generation speed on a real prompt (goal: at least 30 tokens/s on 2 CPU cores), and the ratio to
   transformers' own greedy generate() on the same prompt, measured side by side.
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
    import torch

    from gptoss_lab.backends import nano
    from gptoss_lab.backends.transformers_backend import STOP_TOKENS, load
    from gptoss_lab.harmony import conversation as conv
    from gptoss_lab.tools.python_tool import python_namespace

    rounds = int(os.environ.get("BENCH_ROUNDS", "5"))
    shipped = sum(f.stat().st_size for f in nano.PACKAGE_DIR.iterdir() if f.is_file())
    print(f"shipped checkpoint: {shipped / 1e6:.2f} MB (goal <= 8 MB)")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GPTOSS_LAB_CACHE_DIR"] = tmp
        t0 = time.perf_counter()
        folder = nano.materialize()
        rebuild = time.perf_counter() - t0
        full = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        t0 = time.perf_counter()
        m = load("nano")
        first = time.perf_counter() - t0
        print(f"rebuilt to the full vocabulary: {full / 1e6:.1f} MB in {rebuild:.2f} s; load {first:.2f} s")
        print(f"model: {m.report.device}, {m.report.moe_path}, {m.report.attn_implementation}")
        prompt = conv.render_for_completion([
            conv.system_message(reasoning="high", current_date="2026-11-28", builtin_tools=[python_namespace()]),
            conv.user_message("What is 4321*987?"),
        ])
        speeds = []
        for _ in range(rounds):
            m.reset()
            t0 = time.perf_counter()
            n = sum(1 for _ in m.stream(prompt, max_tokens=200, temperature=0))
            speeds.append(n / (time.perf_counter() - t0))
        ours = statistics.median(speeds)
        print(f"stream(): {ours:.1f} tokens/s, prompt {len(prompt)} tokens, {n} generated (goal >= 30 tokens/s)")
        ids = torch.tensor([prompt])
        hf = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            out = m.model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                   eos_token_id=sorted(STOP_TOKENS), pad_token_id=199999)
            hf.append((out.shape[1] - ids.shape[1]) / (time.perf_counter() - t0))
        theirs = statistics.median(hf)
        print(f"transformers generate(): {theirs:.1f} tokens/s; stream/generate speed ratio {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
