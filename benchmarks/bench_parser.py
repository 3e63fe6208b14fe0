"""Harmony parser benchmarks: `make bench`.

1. `gptoss-lab parse` on a 200k-token raw completion, start-up included, side by side with a bare
   openai-harmony script doing the same job (import, encode, StreamableParser, JSON): the ratio.
2. Throughput through the events layer, tokens/s: bulk (a recorded completion) and one token at a
   time (live generation), next to openai-harmony's StreamableParser fed one token at a time.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.corpus import realistic_completion  # noqa: E402


def wall(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    import openai_harmony

    import gptoss_lab
    from gptoss_lab.harmony import HarmonyStreamParser, vocab

    enc = gptoss_lab.encoding()
    rounds = int(os.environ.get("BENCH_ROUNDS", "5"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "completion.txt"
        path.write_text(realistic_completion(200_000), encoding="utf-8")
        n_tokens = len(enc.encode(path.read_text(encoding="utf-8"), allowed_special="all"))
        env = {"PATH": os.environ.get("PATH", ""), "GPTOSS_LAB_CACHE_DIR": str(vocab.cache_dir())}
        bare_env = dict(env, TIKTOKEN_ENCODINGS_BASE=str(vocab.vocab_dir()))
        ours_cmd = [sys.executable, "-m", "gptoss_lab", "parse", str(path)]
        bare_cmd = [sys.executable, str(HERE / "bare_harmony_parse.py"), str(path)]
        wall(ours_cmd, env), wall(bare_cmd, bare_env)  # warm the file cache for both
        ours, bare = [], []
        for _ in range(rounds):  # interleaved, so that both see the same machine
            ours.append(wall(ours_cmd, env))
            bare.append(wall(bare_cmd, bare_env))
        o, b = statistics.median(ours), statistics.median(bare)
        print(f"parse CLI, {n_tokens} tokens, start-up included (median of {rounds}):")
        print(f"  gptoss-lab parse          {o:6.3f} s")
        print(f"  bare openai-harmony       {b:6.3f} s")
        print(f"  ratio gptoss-lab / bare   {o / b:6.2f}x   (goal: at most 1.5x)")

        ids = enc.encode(path.read_text(encoding="utf-8"), allowed_special="all")

    def best(fn, repeat=3) -> float:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    def bulk() -> None:
        p = HarmonyStreamParser(enc)
        p.feed(ids)
        p.close()

    def per_token() -> None:
        p = HarmonyStreamParser(enc)
        feed = p.feed
        for t in ids:
            feed((t,))
        p.close()

    def harmony_per_token() -> None:
        p = openai_harmony.StreamableParser(enc, openai_harmony.Role.ASSISTANT)
        for t in ids:
            p.process(t)
            _ = p.last_content_delta  # what a live display reads per token

    print(f"\nparser throughput through the events layer ({len(ids)} tokens, best of 3):")
    for name, fn in [
        ("events, bulk feed", bulk),
        ("events, one token at a time", per_token),
        ("openai-harmony StreamableParser, per token", harmony_per_token),
    ]:
        s = best(fn)
        print(f"  {name:44s} {len(ids) / s:12,.0f} tokens/s")


if __name__ == "__main__":
    main()
