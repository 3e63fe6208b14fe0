"""Model backend benchmarks: `make bench`.

On the tiny random-weight checkpoint (real vocabulary and architecture), on whatever device this
machine has; every comparison is measured side by side in this run:

1. stream() vs transformers' own greedy generate(), 96 tokens (goal: at most 1.10x).
2. Time to first token with 4k tokens of history: a cold prompt vs a tool-loop continuation that
   the prefix cache serves (goal: at most 0.35x).
3. tokens/s and memory.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import torch

    from gptoss_lab.backends.tiny import init_tiny
    from gptoss_lab.backends.transformers_backend import STOP_TOKENS, load

    rounds = int(os.environ.get("BENCH_ROUNDS", "5"))
    with tempfile.TemporaryDirectory() as tmp:
        m = load(str(init_tiny(Path(tmp) / "tiny", seed=0)))
    print(f"model: tiny random-weight checkpoint on {m.report.device} ({m.report.moe_path}, {m.report.attn_implementation})")
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 199998, (64,), generator=g).tolist()

    def ours() -> float:
        m.reset()
        t0 = time.perf_counter()
        n = sum(1 for _ in m.stream(prompt, max_tokens=96, temperature=0))
        assert n == 96
        return time.perf_counter() - t0

    def bare() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            m.model.generate(torch.tensor([prompt], device=m.device), max_new_tokens=96, min_new_tokens=96,
                             do_sample=False, eos_token_id=sorted(STOP_TOKENS), pad_token_id=199999)
        return time.perf_counter() - t0

    ours(), bare()  # warm up both
    a, b = [], []
    for _ in range(rounds):
        a.append(ours())
        b.append(bare())
    sa, sb = statistics.median(a), statistics.median(b)
    print(f"\n96 greedy tokens (median of {rounds}, interleaved):")
    print(f"  stream()                 {sa:6.3f} s   {96 / sa:6.1f} tokens/s")
    print(f"  transformers generate()  {sb:6.3f} s   {96 / sb:6.1f} tokens/s")
    print(f"  ratio stream / generate  {sa / sb:6.3f}x  (goal: at most 1.10x)")

    history = torch.randint(0, 199998, (4096,), generator=g).tolist()
    reply = [200006, 29010, 316, 28, 173781, 200005, 35644, 200008, 19, 200007, 200006, 173781]

    def ttft(prompt_ids: list[int]) -> float:
        t0 = time.perf_counter()
        next(iter(m.stream(prompt_ids, max_tokens=1, temperature=0)))
        return time.perf_counter() - t0

    cold, warm = [], []
    for _ in range(rounds):
        m.reset()
        cold.append(ttft(history + reply))
        m.reset()
        first = [s.token for s in m.stream(history, max_tokens=8, temperature=0)]
        warm.append(ttft(history + first + reply))
        assert m.last_prefill["prefilled"] == len(reply) + 1
    sc, sw = statistics.median(cold), statistics.median(warm)
    print(f"\ntime to first token, {len(history)} tokens of history (median of {rounds}):")
    print(f"  cold prompt              {sc * 1000:8.1f} ms")
    print(f"  tool-loop continuation   {sw * 1000:8.1f} ms   (prefilled {len(reply) + 1} new tokens)")
    print(f"  ratio continuation/cold  {sw / sc:8.3f}x  (goal: at most 0.35x)")

    print("\nmemory:")
    print(f"  model footprint          {m.report.memory_bytes / 1e6:8.1f} MB")
    if m.device.type == "cuda":
        print(f"  GPU peak allocated       {torch.cuda.max_memory_allocated() / 1e6:8.1f} MB")
    print(f"  process peak RSS         {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3:8.1f} MB")


if __name__ == "__main__":
    main()
