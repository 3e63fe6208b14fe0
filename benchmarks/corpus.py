"""Realistic raw gpt-oss completions, generated deterministically (no downloads).

A completion starts inside an assistant turn (as generated after ``<|start|>assistant``) and runs
through several turns: analysis, a python call and its reply, a function call with
``<|constrain|>json``, a Markdown final answer with CJK and emoji, then the next user message.
Messages are about 390 tokens, like real analysis messages.
"""

from __future__ import annotations

import random

WORDS = (
    "the user asks about a function that computes prime numbers we need to check the edge cases first then "
    "write a short answer with an example maybe use python to verify the result quickly and carefully consider "
    "whether the input can be negative or zero also think about performance for large values of n the sieve "
    "of eratosthenes is fine here let us compute and compare results before we answer in markdown"
).split()
EXTRA = ["日本語", "東京", "数据", "🎉", "👍🏽", "Zürich", "naïve", "—", "λ", "∑", "`code`", "**bold**", "\n\n", "\n- "]


def _text(rng: random.Random, n_words: int) -> str:
    out = []
    for _ in range(n_words):
        out.append(rng.choice(EXTRA) if rng.random() < 0.04 else rng.choice(WORDS))
    return " ".join(out).replace(" \n", "\n")


def realistic_completion(target_tokens: int = 200_000, seed: int = 0, words_per_message: int = 330) -> str:
    """A raw completion of about ``target_tokens`` tokens, special tokens written out."""
    from gptoss_lab import encoding

    enc = encoding()
    rng = random.Random(seed)
    parts: list[str] = []
    total = 0
    first = True
    while total < target_tokens:
        turn = []
        if not first:
            turn.append(f"<|start|>user<|message|>{_text(rng, 12)}<|end|><|start|>assistant")
        first = False
        turn.append(f"<|channel|>analysis<|message|>{_text(rng, words_per_message)}<|end|>")
        a, b = rng.randint(2, 9999), rng.randint(2, 9999)
        turn.append(f"<|start|>assistant<|channel|>analysis to=python code<|message|>print({a}*{b})<|call|>")
        turn.append(f"<|start|>python to=assistant<|channel|>analysis<|message|>{a * b}\n<|end|>")
        turn.append(f"<|start|>assistant<|channel|>analysis<|message|>{_text(rng, words_per_message)}<|end|>")
        turn.append(
            "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
            '<|message|>{"city": "東京"}<|call|>'
        )
        turn.append(
            '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"temp_c": 21}<|end|>'
        )
        turn.append(f"<|start|>assistant<|channel|>final<|message|>{_text(rng, words_per_message)}<|return|>")
        chunk = "".join(turn)
        total += len(enc.encode(chunk, allowed_special="all"))
        parts.append(chunk)
    return "".join(parts)


if __name__ == "__main__":
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    sys.stdout.write(realistic_completion(n))
