"""The CPU MXFP4 engine on a gpt-oss-20b-shaped random checkpoint (24 layers, 32 experts, official layout).

Printed, side by side in one run: load time and peak resident memory; prefill tokens/s for a 2k-token
prompt; decode tokens/s at 1k and 4k tokens of context; the memory read bandwidth measured here and the
decode bound it sets (bytes read per token / bandwidth), with our decode speed as a share of it; the
decode speed of the same kernels on float32 activations (``set_fixed_point(False)``), of the AVX2
kernels where the CPU has AVX-512, and of the pure-torch fallback, on the same loaded weights. The model runs in a child process so
that its peak resident memory is its own. Random weights: speed and memory are real, the text is noise.

Then llama.cpp (gptoss_lab/serving/llamacpp.py: built from PyPI's llama-cpp-python sdist, the same weights
converted to GGUF) decodes after the same 1k-token prompt, for comparison.

Options: --quick (decode only, 1k context), --no-llamacpp, --json FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GiB = 2**30


def read_bandwidth(buffer, repeats: int = 5) -> float:
    """Bytes/s of the fastest full read (torch's float32 sum, its threads) of a buffer far larger than the
    caches: the model's own unembedding (1.16 GB), so that no memory is added to the peak. Best of N."""
    x = buffer.view(-1).view(__import__("torch").float32)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best


def bytes_per_token(model) -> int:
    """What one decoded token reads: k of E experts per layer, every dense weight, one embedding row."""
    from gptoss_lab.cpu.modules import DenseEmbedding, PackedExperts

    total = 0
    for mod in model.modules():
        own = sum(t.numel() * t.element_size() for t in list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False)))
        if isinstance(mod, PackedExperts):
            total += own * model.config.num_experts_per_tok // mod.num_experts
        elif isinstance(mod, DenseEmbedding):
            total += mod.embedding_dim * mod.weight.element_size()
        else:
            total += own
    return total


def child(folder: str, quick: bool) -> dict:
    import resource

    import torch

    from gptoss_lab import load

    def peak() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    out: dict = {"threads": torch.get_num_threads()}
    t = time.perf_counter()
    m = load(folder)
    out.update(load_seconds=round(time.perf_counter() - t, 1), moe_path=m.report.moe_path,
               memory_bytes=m.report.memory_bytes, peak_rss_after_load=peak(), bytes_per_token=bytes_per_token(m.model))
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 199998, (4096,), generator=g).tolist()

    unembedding = m.model.lm_head.weight

    def decode(n_ctx: int, tokens: int = 17) -> float:
        stamps = []
        for _ in m.stream(prompt[:n_ctx], max_tokens=tokens, temperature=0):
            stamps.append(time.perf_counter())
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])  # the steps after the first: decode only

    def measured(key: str, n_ctx: int) -> None:
        # the bandwidth right before and right after the decode it bounds (this machine's neighbours vary)
        before = read_bandwidth(unembedding)
        out[f"decode_tok_s_{key}"] = round(decode(n_ctx), 2)
        out[f"read_bandwidth_{key}"] = max(before, read_bandwidth(unembedding))

    if quick:
        list(m.stream(prompt[:1024], max_tokens=1, temperature=0))
        measured("1k", 1024)
    else:
        t = time.perf_counter()
        list(m.stream(prompt[:2048], max_tokens=1, temperature=0))  # a 2k-token prompt, prefilled whole
        out["prefill_tok_s_2k"] = round(2048 / (time.perf_counter() - t), 1)
        list(m.stream(prompt[:4096], max_tokens=1, temperature=0))  # the cache up to 4k (not timed)
        measured("4k", 4096)
        measured("1k", 1024)  # the cache cut back to 1023 tokens
    out["peak_rss"] = peak()
    # The same kernels on float activations (the e2m1 lookup in float32), right after: what fixed point buys.
    from gptoss_lab.cpu import build

    ops = build.ops()
    if ops is not None:
        ops.set_fixed_point(False)
        out["decode_tok_s_1k_float_lookup"] = round(decode(1024), 2)
        ops.set_fixed_point(True)
        if ops.isa() == "avx512":  # what a laptop without AVX-512 runs, on the same cores
            ops.set_isa("avx2")
            out["decode_tok_s_1k_avx2"] = round(decode(1024), 2)
            ops.set_isa("best")
    # The pure-torch fallback on the same weights: what a machine without a compiler gets.
    for mod in m.model.modules():
        if hasattr(mod, "ops"):
            mod.ops = None
        if hasattr(mod, "packed"):
            mod.packed = False
    out["fallback_decode_tok_s_1k"] = round(decode(1024, tokens=4), 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-llamacpp", action="store_true", help="skip the llama.cpp comparison")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.quick)))
        return 0

    from benchmarks import cpu_checkpoint

    t = time.perf_counter()
    folder = cpu_checkpoint.ensure()
    made = time.perf_counter() - t
    print(f"checkpoint: {folder} (gpt-oss-20b shape, random weights{f', made in {made:.0f} s' if made > 5 else ''})")
    cmd = [sys.executable, __file__, "--child", str(folder)] + (["--quick"] if args.quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
        return proc.returncode
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    per_token = r["bytes_per_token"]
    print(f"engine: {r['moe_path']}, {r['threads']} threads of {os.cpu_count()} cores; weights held "
          f"{r['memory_bytes'] / GiB:.2f} GiB; load {r['load_seconds']} s")
    print(f"peak resident memory: {r['peak_rss'] / GiB:.2f} GiB (after load: {r['peak_rss_after_load'] / GiB:.2f} GiB)")
    print(f"bytes read per decoded token: {per_token / 1e9:.2f} GB (weights; the KV cache adds 0.1 GB per 1k tokens)")
    if "prefill_tok_s_2k" in r:
        print(f"prefill, 2k-token prompt: {r['prefill_tok_s_2k']} tok/s")
    for key in ("1k", "4k"):
        if f"decode_tok_s_{key}" not in r:
            continue
        bw, speed = r[f"read_bandwidth_{key}"], r[f"decode_tok_s_{key}"]
        r[f"decode_bound_tok_s_{key}"] = bound = bw / per_token
        print(f"decode at {key} context: {speed} tok/s; read bandwidth {bw / 1e9:.1f} GB/s -> bound {bound:.2f} tok/s; "
              f"{speed / bound:.0%} of the bound")
    if "decode_tok_s_1k_float_lookup" in r:
        print(f"the MXFP4 kernels on float32 activations (the lookup they replace), decode at 1k: "
              f"{r['decode_tok_s_1k_float_lookup']} tok/s (fixed point {r['decode_tok_s_1k'] / r['decode_tok_s_1k_float_lookup']:.2f}x)")
    if "decode_tok_s_1k_avx2" in r:
        print(f"the AVX2 kernels (CPUs without AVX-512), decode at 1k: {r['decode_tok_s_1k_avx2']} tok/s "
              f"({r['decode_tok_s_1k_avx2'] / r['decode_tok_s_1k']:.2f}x the AVX-512 ones)")
    print(f"pure-torch fallback, decode at 1k: {r['fallback_decode_tok_s_1k']} tok/s "
          f"(kernels {r['decode_tok_s_1k'] / r['fallback_decode_tok_s_1k']:.1f}x faster)")
    if not args.no_llamacpp:
        compare_llamacpp(folder, r)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    return 0


def compare_llamacpp(folder: Path, r: dict) -> None:
    import torch

    from gptoss_lab.serving import llamacpp

    prompt = torch.randint(0, 199998, (4096,), generator=torch.Generator().manual_seed(0)).tolist()[:1024]
    try:
        t = time.perf_counter()
        model = llamacpp.gguf(folder)
        llamacpp.server()
        if time.perf_counter() - t > 5:
            print(f"llama.cpp {llamacpp.LLAMA_CPP_PYTHON} built and the weights converted in {time.perf_counter() - t:.0f} s")
        buffer = torch.ones(r["bytes_per_token"] // 12, dtype=torch.float32)  # ~1.2 GB, as the child's unembedding
        before = read_bandwidth(buffer)
        got = llamacpp.decode_speed(model, prompt)
        bandwidth = max(before, read_bandwidth(buffer))
        del buffer
    except Exception as e:  # no cmake, no network for the sdist, a converter that changed: say so, keep our figures
        print(f"llama.cpp: not measured ({type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''})")
        return
    r["llamacpp"] = got
    print(f"llama.cpp (llama-cpp-python {llamacpp.LLAMA_CPP_PYTHON}'s copy, {os.cpu_count()} threads), same weights, "
          f"after the same 1k-token prompt: decode {got['decode_tok_s']:.2f} tok/s, prefill {got['prefill_tok_s']:.1f} tok/s; "
          f"ours decodes at {r['decode_tok_s_1k'] / got['decode_tok_s']:.2f}x its speed")
    # the bus moves between the two measurements: each against the bound of its own moment (same bytes a token)
    got["read_bandwidth"] = bandwidth
    ours = r["decode_tok_s_1k"] / (r["read_bandwidth_1k"] / r["bytes_per_token"])
    theirs = got["decode_tok_s"] / (bandwidth / r["bytes_per_token"])
    print(f"  against the bandwidth bound of each one's moment: llama.cpp {theirs:.0%} ({bandwidth / 1e9:.1f} GB/s), "
          f"ours {ours:.0%} ({r['read_bandwidth_1k'] / 1e9:.1f} GB/s): ours {ours / theirs:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
