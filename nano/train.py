"""Train gpt-oss-nano on the corpus (``python -m nano.train``; ``make nano``).

Seeded and deterministic in its data: the same seed gives the same corpus, vocabulary and
initialisation. Every ``--eval-every`` steps it decodes held-out arithmetic and weather prompts
greedily (the tool's output computed in-process, for speed; ``nano.evaluate`` runs the real
sandbox) and logs the copy score, which says more than the loss: a loss of 0.6 is compatible
with never copying a number. The best-scoring weights are kept and exported.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import time
from pathlib import Path

import torch

from gptoss_lab.backends import nano as nano_ckpt
from gptoss_lab.backends.mxfp4 import dequantize, quantize
from gptoss_lab.backends.tiny import tiny_config
from gptoss_lab.harmony import conversation as conv
from gptoss_lab.harmony.events import CALL, RETURN
from gptoss_lab.harmony.vocab import encoding

from . import corpus

SHAPE = {"layers": 4, "hidden": 128, "experts": 8, "top_k": 2, "heads": 2, "kv_heads": 1, "head_dim": 64,
         "intermediate": 128, "sliding_window": 128}


def build_vocab(enc, seed: int) -> list[int]:
    """Every id the corpus can produce: sampled sequences, every city, country and number chunk."""
    ids: set[int] = set()
    rng = random.Random(seed + 1)
    for _ in range(800):
        ids.update(corpus.sequence(enc, rng)[0])
    for effort in corpus.EFFORTS:
        for city in corpus.CITIES:
            t = corpus.weather_turn(random.Random(city), effort, True)
            t.messages[0] = conv.assistant_message(city)
            for m in [conv.user_message(t.user)] + t.messages:
                ids.update(enc.render(m))
        for country, capital in corpus.CAPITALS.items():
            ids.update(enc.encode(f"What is the capital of {country}? The capital of {country} is {capital}.",
                                  allowed_special=set()))
    for n in range(1000):
        for text in (str(n), f"{n:02d}", f"{n:03d}"):
            ids.update(enc.encode(text, allowed_special=set()))
    for k in range(-9999, 10000, 37):
        ids.update(enc.encode(f"= {k}\n", allowed_special=set()))
    return sorted(ids)


def batches(enc, vocab: list[int], seed: int, batch: int, max_len: int):
    index = {t: k for k, t in enumerate(vocab)}
    other = len(vocab)
    rng = random.Random(seed)
    while True:
        seqs = [corpus.sequence(enc, rng, max_len) for _ in range(batch)]
        n = max(len(s[0]) for s in seqs)
        ids = torch.full((batch, n), other, dtype=torch.long)
        mask = torch.zeros((batch, n), dtype=torch.long)
        loss_mask = torch.zeros((batch, n), dtype=torch.bool)
        for i, (s, m) in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor([index.get(t, other) for t in s])
            mask[i, : len(s)] = 1
            loss_mask[i, : len(m)] = torch.tensor(m, dtype=torch.bool)
        yield ids, mask, loss_mask


def project_experts(model) -> None:
    """Round the expert weights to what MXFP4 can hold (the shipped file stores them so)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if nano_ckpt.is_expert(name):
                blocks, scales = quantize(p.transpose(1, 2))
                p.copy_(dequantize(blocks, scales).reshape(p.shape[0], p.shape[2], p.shape[1]).transpose(1, 2))


# -- the copy score ------------------------------------------------------------------------------------


def probe_set(seed: int, n: int = 16):
    rng = random.Random(seed + 99)
    items = []
    for k in range(n):
        effort = corpus.EFFORTS[k % 3]
        if k % 4 == 3:
            city = rng.choice(corpus.CITIES)
            items.append(("weather", effort, f"What's the weather in {city}?", city, rng.randint(-15, 40)))
        else:
            op = rng.choice(list(corpus.OPS))
            a, b = corpus.operands(rng, train=False)
            text, expr, value = corpus.arithmetic_prompt(op, a, b)
            items.append(("arithmetic", effort, text, expr, value))
    return items


@torch.no_grad()
def greedy(model, ids: list[int], stops: set[int], limit: int) -> list[int]:
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    x = torch.tensor([ids])
    out: list[int] = []
    for _ in range(limit):
        logits = model(input_ids=x, past_key_values=cache, use_cache=True).logits[0, -1]
        t = int(logits.argmax())
        out.append(t)
        if t in stops:
            break
        x = torch.tensor([[t]])
    return out


def copy_score(model, enc, vocab: list[int], items) -> dict:
    index = {t: k for k, t in enumerate(vocab)}
    other = len(vocab)
    sub = lambda toks: [index.get(t, other) for t in toks]  # noqa: E731
    full = lambda toks: [vocab[t] if t < other else 0 for t in toks]  # noqa: E731
    stops = {index[RETURN], index[CALL]}
    model.eval()
    got = {"call_ok": 0, "answer_ok": 0, "n": 0}
    for kind, effort, text, key, value in items:
        weather = kind == "weather"
        msgs = corpus.header(effort, "2026-11-28", python=not weather, weather=1 if weather else 0)
        msgs.append(conv.user_message(text))
        prompt = list(conv.render_for_completion(msgs, encoding=enc))
        gen = full(greedy(model, sub(prompt), stops, 120))
        got["n"] += 1
        s = enc.decode(gen)
        want = f'{{"city":"{key}"}}' if weather else f"print({key})"
        if not s.endswith("<|call|>") or want not in s:
            continue
        got["call_ok"] += 1
        reply = (corpus.weather_reply(key, value, False) if weather else f"{value}\n")
        name = "functions.get_weather" if weather else "python"
        tool = conv.tool_message(name, reply, channel="commentary" if weather else "analysis", recipient="assistant")
        prompt2 = prompt + gen + list(enc.render(tool)) + enc.encode("<|start|>assistant", allowed_special="all")
        s2 = enc.decode(full(greedy(model, sub(prompt2), stops, 80)))
        final = s2.split("<|channel|>final<|message|>")[-1] if "<|channel|>final" in s2 else ""
        if re.search(rf"(?<![\d-]){re.escape(str(value))}(?!\d)", final):
            got["answer_ok"] += 1
    model.train()
    return got


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--max-len", type=int, default=640)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="artifacts/nano", help="logs and weights during training")
    ap.add_argument("--out", default=str(nano_ckpt.PACKAGE_DIR), help="where the best model is exported")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    enc = encoding()
    t0 = time.time()
    vocab = build_vocab(enc, args.seed)
    print(f"sub-vocabulary: {len(vocab)} ids (+1 other), built in {time.time() - t0:.1f}s", flush=True)

    from transformers import GptOssForCausalLM

    config = tiny_config(vocab_size=len(vocab) + 1, **SHAPE)
    config._attn_implementation = "eager"
    config.pad_token_id = config.bos_token_id = config.eos_token_id = None  # ids of the full vocabulary
    model = GptOssForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.copy_(model.model.embed_tokens.weight)  # start tied: copying is then an identity map
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    start = 0
    if args.resume and (work / "last.pt").is_file():
        state = torch.load(work / "last.pt")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    other_prior = torch.zeros(len(vocab) + 1)
    other_prior[-1] = math.log(nano_ckpt.FULL_VOCAB - len(vocab))
    items = probe_set(args.seed)
    data = batches(enc, vocab, args.seed + start, args.batch, args.max_len)
    best = (-1, -1)
    log = open(work / "log.jsonl", "a")
    model.train()
    quant_from = int(args.steps * 0.9)
    t_start = time.time()
    tokens = 0
    for step in range(start, args.steps):
        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / args.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        ids, mask, loss_mask = next(data)
        out = model(input_ids=ids, attention_mask=mask, output_router_logits=True)
        logits = out.logits[:, :-1].float()
        # The "other" row stands for every id the corpus never uses (199514 of them once rebuilt): train it
        # as that many, or sampling picks one of them whenever the model is unsure (85% at one digit, seen).
        logits = logits + other_prior
        target = ids[:, 1:]
        m = loss_mask[:, 1:]
        lm = torch.nn.functional.cross_entropy(logits[m], target[m])
        loss = lm + 0.01 * out.aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step >= quant_from:
            project_experts(model)
        tokens += int(mask.sum())
        if step % 25 == 0:
            rate = tokens / (time.time() - t_start)
            print(f"step {step} loss {lm.item():.4f} aux {out.aux_loss.item():.3f} lr {lr:.2e} {rate:.0f} tok/s "
                  f"{(time.time() - t_start) / 60:.1f} min", flush=True)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            score = copy_score(model, enc, vocab, items)
            rec = {"step": step + 1, "loss": round(lm.item(), 4), "minutes": round((time.time() - t_start) / 60, 1),
                   **score}
            print("eval", json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1}, work / "last.pt")
            key = (score["answer_ok"] + score["call_ok"], step)
            if key >= best:
                best = key
                torch.save({"model": model.state_dict(), "step": step + 1, "score": score}, work / "best.pt")
    state = torch.load(work / "best.pt")
    model.load_state_dict(state["model"])
    project_experts(model)
    marker = {
        "kind": "nano",
        "name": "gpt-oss-nano",
        "trained": True,
        "random_weights": False,
        "description": "a teaching toy trained by gptoss-lab on a synthetic Harmony corpus (see the model card)",
        "seed": args.seed,
        "steps": state["step"],
        "shape": SHAPE,
        "sub_vocab": len(vocab),
        "train_score": state["score"],
    }
    nano_ckpt.export(model, vocab, args.out, marker)
    print(f"exported step {state['step']} to {args.out}: {state['score']}", flush=True)


if __name__ == "__main__":
    main()
